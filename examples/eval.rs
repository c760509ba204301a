//! Evaluate a model on a task's held-out questions: greedy accuracy, mean reward and pass@k of
//! sampled completions, mean length, and the rate of each reward (e.g. format) — for a base
//! model and for a trained one (`<run>/final` is a model directory) alike.
//!
//!     cargo run --release --example eval -- --task addition
//!     cargo run --release --example eval -- --task addition --model runs/addition-1764500000/final
//!     cargo run --release --example eval -- --task gsm8k --data ../shared/data/gsm8k/test.jsonl --eval-size 200
#[path = "cli/mod.rs"]
mod cli;

use std::io::IsTerminal;

use anyhow::Result;
use clap::Parser;
use cli::{one_line, reference_text, LogArgs, TaskArgs};
use indicatif::{ProgressBar, ProgressStyle};
use rlzero::model::WeightMode;
use rlzero::rollout::SamplingParams;
use rlzero::run::{evaluate, EvalOptions};

/// Held-out evaluation of a model on a task.
#[derive(Debug, Parser)]
#[command(about = "Held-out evaluation: greedy accuracy, mean reward, pass@k, reward rates")]
struct Args {
    #[command(flatten)]
    task: TaskArgs,
    #[command(flatten)]
    log: LogArgs,
    /// Sampled completions per question (mean reward, pass@k); 0 for greedy only.
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// k of pass@k (at most --samples).
    #[arg(long, default_value_t = 4)]
    pass_k: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Completion token budget.
    #[arg(long, default_value_t = 256)]
    max_completion_length: usize,
    /// Questions per progress update (the evaluation runs in batches of this many).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Seed of the sampled completions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the numbers as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    rlzero::malloc::keep_freed_memory();
    let a = Args::parse();
    a.log.init()?;
    let m = a.task.load_model(WeightMode::Frozen)?;
    let (_, held_out) = a.task.prompts(&m.tokenizer)?;
    anyhow::ensure!(
        !held_out.is_empty(),
        "no held-out questions (--eval-size 0?)"
    );
    let rewards = a.task.rewards();
    let opts = EvalOptions {
        params: SamplingParams {
            max_new_tokens: a.max_completion_length,
            temperature: a.temperature,
            eos_token_ids: m.generation.eos_token_ids.clone(),
            seed: a.seed,
            ..SamplingParams::default()
        },
        samples: a.samples,
        pass_k: a.pass_k,
        success_threshold: 1.0,
        seed_step: 0,
    };
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(held_out.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} questions  ETA {eta}",
    )?);
    // Batches, so the bar moves; each batch is seeded by its index, so the result does not
    // depend on anything but the flags.
    let mut parts = Vec::new();
    for (i, chunk) in held_out.chunks(a.batch.max(1)).enumerate() {
        let o = EvalOptions {
            seed_step: i as u64,
            ..opts.clone()
        };
        parts.push((
            chunk.len(),
            evaluate(&m.decoder, &m.tokenizer, chunk, &rewards, &o)?,
        ));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let n = held_out.len() as f64;
    let avg = |f: &dyn Fn(&rlzero::run::EvalResult) -> f64| {
        parts.iter().map(|(k, r)| *k as f64 * f(r)).sum::<f64>() / n
    };
    println!(
        "model {}  task {:?}  {} held-out questions",
        a.task.model,
        a.task.task,
        held_out.len()
    );
    println!(
        "greedy accuracy   {:.1} %",
        100.0 * avg(&|r| r.greedy_accuracy)
    );
    if a.samples > 0 {
        println!(
            "mean reward       {:.3}  ({} samples per question, T = {})",
            avg(&|r| r.mean_reward),
            a.samples,
            a.temperature
        );
        println!(
            "pass@{:<12} {:.1} %",
            parts[0].1.k,
            100.0 * avg(&|r| r.pass_at_k)
        );
    }
    println!("mean length       {:.1} tokens", avg(&|r| r.mean_length));
    for (j, (name, _)) in parts[0].1.rates.iter().enumerate() {
        println!("rate {name:<12} {:.1} %", 100.0 * avg(&|r| r.rates[j].1));
    }
    println!("\n{:<40} {:>8} | greedy completion", "question", "answer");
    let greedy: Vec<&String> = parts.iter().flat_map(|(_, r)| &r.greedy).collect();
    for (p, g) in held_out.iter().zip(greedy).take(8) {
        let q = p.text.rsplit("user").next().unwrap_or(&p.text);
        println!(
            "{:<40} {:>8} | {}",
            one_line(q.trim(), 40),
            reference_text(&p.reference),
            one_line(g, 60)
        );
    }
    if let Some(path) = &a.json {
        let v = serde_json::json!({
            "model": a.task.model,
            "questions": held_out.len(),
            "greedy_accuracy": avg(&|r| r.greedy_accuracy),
            "mean_reward": avg(&|r| r.mean_reward),
            "pass_at_k": avg(&|r| r.pass_at_k),
            "k": parts[0].1.k,
            "mean_length": avg(&|r| r.mean_length),
        });
        rlzero::model::atomic::write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}
