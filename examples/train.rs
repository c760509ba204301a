//! Train any supported model with GRPO on a task with verifiable answers, into a run folder.
//!
//!     ./scripts/fetch-models.sh      # the default model, SmolLM2-135M-Instruct
//!     cargo run --release --example train -- --task addition --steps 40
//!     cargo run --release --example train -- --task gsm8k --data ../shared/data/gsm8k/train.jsonl
//!     cargo run --release --example train -- --resume runs/addition-1764500000
//!     cargo run --release --example train -- --help
//!
//! The GRPO settings come from `--config FILE` (a `GrpoConfig` TOML; every field documented in
//! `crates/rlzero-grpo/src/config.rs`), then the flags below override it; the resolved config is
//! printed and saved as `<run>/config.toml`. The run folder (`rlzero::run::RunDir`) gets
//! `metrics.jsonl`, `completions.jsonl`, `eval.jsonl` (held-out evaluation before training,
//! every `--eval-every` steps, and after), `checkpoints/`, `plots/*.svg`, `report.html`, and
//! the trained model in transformers' layout under `final/`.
//!
//! `--explain [STEP]` prints one group of step STEP (default 1) number by number, so the GRPO
//! arithmetic can be redone by hand (README, "Explain one step"), and saves it as
//! `<run>/explain-step-STEP.txt`. `--log-level` sets the `tracing` log on stderr.
//!
//! `--resume RUN` continues a run from its newest checkpoint with the flags it was started
//! with (stored in `run.json`), exactly as if it had not stopped. Only `--steps` may change, to
//! extend the run; that moves the end of the LR schedule (the default decays linearly to 0 at
//! the last step), so from the resume point on the learning rates differ from the first plan.
#[path = "cli/mod.rs"]
mod cli;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use cli::{one_line, reference_text, LogArgs, TaskArgs};
use indicatif::{ProgressBar, ProgressStyle};
use rlzero::grpo::checkpoint::{latest, CheckpointPolicy};
use rlzero::grpo::{GrpoConfig, LossType, Precision, TrainPrompt, Trainer};
use rlzero::model::export::{save_pretrained, ExportOptions};
use rlzero::model::lora::LoraConfig;
use rlzero::model::WeightMode;
use rlzero::run::explain::{explain_group, pick_group, ExplainInput};
use rlzero::run::ledger::{Ledger, LedgerOptions, R1Reference, REFLECTION_PHRASES};
use rlzero::run::{evaluate, EvalOptions, EvalResult, RunDir};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// GRPO training on a task with verifiable rewards.
#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(
    about = "GRPO training on a task with verifiable rewards, into a run folder (metrics, plots, report, checkpoints, final model)"
)]
struct Args {
    #[command(flatten)]
    task: TaskArgs,
    #[command(flatten)]
    #[serde(default)]
    log: LogArgs,
    /// A GrpoConfig TOML file; the flags below override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Optimizer steps (`max_steps`, the LR schedule's length).
    #[arg(long)]
    steps: Option<u64>,
    /// Learning rate (`optim.lr`).
    #[arg(long)]
    lr: Option<f64>,
    /// Prompts per step (`prompts_per_step`).
    #[arg(long)]
    prompts_per_step: Option<usize>,
    /// Completions per prompt, G (`num_generations`).
    #[arg(long)]
    num_generations: Option<usize>,
    /// Completion token budget (`sampling.max_completion_length`).
    #[arg(long)]
    max_completion_length: Option<usize>,
    /// Sampling temperature (`sampling.temperature`).
    #[arg(long)]
    temperature: Option<f64>,
    /// Loss (`loss.loss_type`): grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo.
    #[arg(long)]
    loss_type: Option<String>,
    /// Compute precision (`precision`): f32 (default), or bf16 with f32 master weights and
    /// optimizer state (for a GPU; slower on the CPU). Full fine-tuning only.
    #[arg(long, value_name = "f32|bf16")]
    #[serde(default)]
    precision: Option<String>,
    /// KL coefficient β (`loss.beta`); > 0 keeps a frozen reference model.
    #[arg(long)]
    beta: Option<f64>,
    /// Seed of every random stream (`seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Train LoRA adapters of this rank on a frozen base instead of every weight.
    #[arg(long)]
    lora_r: Option<usize>,
    /// The run folder (default `runs/<task>-<unix time>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its newest checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// With --resume: continue even if the stored config differs from the checkpoint's.
    #[arg(long)]
    force: bool,
    /// Checkpoint every N optimizer steps (0: only at the end).
    #[arg(long, default_value_t = 10)]
    save_every: u64,
    /// Checkpoints kept (the newest); `checkpoints/best` (best held-out greedy accuracy, with
    /// --eval-every) is kept besides.
    #[arg(long, default_value_t = 2)]
    keep_last: usize,
    /// Evaluate on the held-out questions every N steps (0: before and after only).
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Sampled completions per held-out question (mean reward, pass@k); greedy is always run.
    #[arg(long, default_value_t = 4)]
    eval_samples: usize,
    /// Skip exporting the trained model to `<run>/final`.
    #[arg(long)]
    no_export: bool,
    /// A wall-clock budget: stop after the first step that ends past it, then evaluate,
    /// checkpoint and export as after `--steps`. The LR schedule still spans `--steps`. Counts
    /// this invocation only (a resumed run gets a fresh budget).
    #[arg(long, value_name = "MINUTES")]
    #[serde(default)]
    max_minutes: Option<f64>,
    /// US$ per device-hour for the run's cost estimate (default: a 2-vCPU cloud VM, an
    /// assumption; see `rlzero::run::ledger`).
    #[arg(long, default_value_t = 0.10)]
    usd_per_hour: f64,
    /// What the run ran on, in words, for the ledger (default: from --device, e.g.
    /// "2-vCPU CPU machine" or "1 CUDA GPU").
    #[arg(long)]
    #[serde(default, alias = "device")]
    device_label: Option<String>,
    /// Print one group of step STEP (default 1) number by number: rewards, group mean and
    /// std, advantages, each completion's ratio, clip, KL and term of the loss, with hand
    /// checks; also saved as `<run>/explain-step-STEP.txt`.
    #[arg(long, num_args = 0..=1, default_missing_value = "1", value_name = "STEP")]
    explain: Option<u64>,
    /// With --explain: which group (prompt) of the step, from 1 (default: the first whose
    /// rewards differ, since a group of equal rewards has all advantages 0).
    #[arg(long, requires = "explain", value_name = "GROUP")]
    explain_group: Option<usize>,
}

/// The resolved GRPO config: file or defaults, then the flags.
fn resolve_config(a: &Args) -> Result<GrpoConfig> {
    let mut c = match &a.config {
        Some(p) => GrpoConfig::from_file(p)?,
        // Without a file: 4 prompts × 8 completions, forward/backward 8 sequences at a time
        // (the same update as one pass) with activation recomputation (the default): without
        // it candle keeps ~4 MB of activations per token for SmolLM2's backward, and 8
        // sequences of 300 tokens needed over 24 GB; with it, one layer's at a time plus the
        // pass's (8·C, V) logits.
        None => GrpoConfig {
            max_steps: 50,
            prompts_per_step: 4,
            num_generations: 8,
            sequences_per_pass: Some(8),
            ..GrpoConfig::default()
        },
    };
    if let Some(x) = a.steps {
        c.max_steps = x;
    }
    if let Some(x) = a.lr {
        c.optim.lr = x;
    }
    if let Some(x) = a.prompts_per_step {
        c.prompts_per_step = x;
    }
    if let Some(x) = a.num_generations {
        c.num_generations = x;
    }
    if let Some(x) = a.max_completion_length {
        c.sampling.max_completion_length = x;
    }
    if let Some(x) = a.temperature {
        c.sampling.temperature = x;
    }
    if let Some(x) = &a.loss_type {
        c.loss.loss_type = serde_json::from_value::<LossType>(json!(x))
            .with_context(|| format!("--loss-type {x}: not a loss type"))?;
    }
    if let Some(x) = a.beta {
        c.loss.beta = x;
    }
    if let Some(x) = &a.precision {
        c.precision = serde_json::from_value::<Precision>(json!(x))
            .with_context(|| format!("--precision {x}: expected f32 or bf16"))?;
    }
    if let Some(x) = a.seed {
        c.seed = x;
    }
    if let Some(r) = a.lora_r {
        c.lora = Some(LoraConfig {
            r,
            lora_alpha: 2.0 * r as f64,
            ..LoraConfig::default()
        });
    }
    c.validate()?;
    Ok(c)
}

fn eval_options(cfg: &GrpoConfig, eos: &[u32], samples: usize, step: u64) -> EvalOptions {
    EvalOptions {
        params: cfg.sampling_params(eos.to_vec()),
        samples,
        pass_k: samples.max(1),
        success_threshold: 1.0,
        // Far from the training batches' seed slots (batch · 2^16 + round).
        seed_step: (1 << 40) + step,
    }
}

fn run_eval(t: &Trainer, held_out: &[TrainPrompt], a: &Args, eos: &[u32]) -> Result<EvalResult> {
    let rewards = a.task.rewards();
    let merged = t.policy().merged()?;
    let opts = eval_options(t.config(), eos, a.eval_samples, t.step_count());
    Ok(evaluate(&merged, t.tokenizer(), held_out, &rewards, &opts)?)
}

fn describe(e: &EvalResult) -> String {
    format!(
        "greedy accuracy {:.1} %, mean reward {:.3}, pass@{} {:.1} %, length {:.1}",
        100.0 * e.greedy_accuracy,
        e.mean_reward,
        e.k,
        100.0 * e.pass_at_k,
        e.mean_length
    )
}

fn main() -> Result<()> {
    rlzero::malloc::keep_freed_memory();
    let cli = Args::parse();
    cli.log.init()?;
    if let Some(m) = cli.max_minutes.filter(|m| !(m.is_finite() && *m > 0.0)) {
        anyhow::bail!("--max-minutes must be a positive number of minutes, got {m}");
    }
    // A resumed run takes the flags it was started with; only --steps may extend it.
    let (a, run_root) = match &cli.resume {
        Some(dir) => {
            let info: Value = serde_json::from_slice(
                &std::fs::read(dir.join("run.json"))
                    .with_context(|| format!("{}: not a run folder", dir.display()))?,
            )?;
            let mut a: Args = serde_json::from_value(info["args"].clone()).with_context(|| {
                format!(
                    "{}/run.json: flags of another rlzero version",
                    dir.display()
                )
            })?;
            if cli.steps.is_some() {
                a.steps = cli.steps;
            }
            (a, dir.clone())
        }
        None => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let root = cli.out.clone().unwrap_or_else(|| {
                PathBuf::from(format!("runs/{:?}-{now}", cli.task.task).to_lowercase())
            });
            (cli.clone(), root)
        }
    };
    // A resumed run keeps the config it was started with (its saved config.toml, so a changed
    // default cannot alter it); only --steps may extend it.
    let cfg = match &cli.resume {
        Some(dir) => {
            let mut c = GrpoConfig::from_file(&dir.join("config.toml"))?;
            if let Some(steps) = cli.steps {
                c.max_steps = steps;
            }
            c.validate()?;
            c
        }
        None => resolve_config(&a)?,
    };
    let toml = cfg.to_toml_string()?;
    println!("== resolved config\n{toml}");

    let model = a.task.load_model(WeightMode::Trainable)?;
    let eos = model.generation.eos_token_ids.clone();
    let generation = model.generation.clone();
    let (train, held_out) = a.task.prompts(&model.tokenizer)?;
    println!(
        "== {} ({} training questions, {} held out), model {}",
        a.task.task().map(|t| format!("{t:?}"))?,
        train.len(),
        held_out.len(),
        a.task.model
    );
    let ckpt = CheckpointPolicy {
        root: run_root.join("checkpoints"),
        save_every: a.save_every,
        keep_last: a.keep_last,
    };
    let (mut trainer, mut run, skip, before) = match (&cli.resume, latest(&ckpt.root)?) {
        (Some(_), Some(dir)) => {
            let (t, r) = Trainer::resume(cfg.clone(), model, a.task.rewards(), &dir, cli.force)?;
            println!(
                "== resumed from {} at step {}",
                dir.display(),
                t.step_count()
            );
            let run = RunDir::resume(&run_root, t.step_count(), t.batches_sampled())?;
            (t, run, r.prompts_drawn as usize, None)
        }
        (Some(dir), None) => bail!("{}: no checkpoint to resume from", dir.display()),
        (None, _) => {
            let info = json!({
                "args": a,
                "rlzero_version": env!("CARGO_PKG_VERSION"),
                "started_unix": SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
            });
            let mut run = RunDir::create(&run_root, &toml, &info)?;
            let t = Trainer::new(cfg.clone(), model, a.task.rewards())?;
            let before = (!held_out.is_empty())
                .then(|| run_eval(&t, &held_out, &a, &eos))
                .transpose()?;
            if let Some(e) = &before {
                println!("== before training: {}", describe(e));
                run.log_eval(0, &Value::Object(e.to_json()))?;
            }
            (t, run, 0, before)
        }
    };

    let total = cfg.max_steps;
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps  {elapsed} elapsed, ETA {eta}  {msg}",
    )?);
    bar.set_position(trainer.step_count());
    let mut stream = train.iter().cloned().cycle().skip(skip);
    let started = Instant::now();
    while trainer.step_count() < total {
        let report = trainer.step(&mut stream)?;
        let m = &report.metrics;
        let mut extra = Map::new();
        if m.step_time > 0.0 {
            extra.insert(
                "tokens_per_s".into(),
                json!(m.completion_tokens as f64 / m.step_time),
            );
        }
        run.log_step(&report, extra)?;
        // With μ = num_iterations > 1 one call advances `step` by μ: explain the call that
        // covered STEP. (Taken from this command line, so a resumed run can be explained too.)
        let first = m.step.saturating_sub(m.iterations as u64);
        if let Some(want) = cli.explain.filter(|&s| s > first && s <= m.step) {
            if m.skipped {
                say(
                    &bar,
                    format!("--explain {want}: that step was skipped, nothing to explain"),
                );
            } else {
                // A bad group number must not end a training run: say so and go on.
                match explain(&a, cli.explain_group, &trainer, &report) {
                    Ok(text) => {
                        bar.suspend(|| println!("{text}"));
                        let path = run.path().join(format!("explain-step-{want}.txt"));
                        rlzero::model::atomic::write_atomic(&path, text.as_bytes())?;
                    }
                    Err(e) => say(&bar, format!("--explain {want}: {e:#}")),
                }
            }
        }
        if m.skipped {
            say(
                &bar,
                format!("step skipped: {}", m.skip_reason.as_deref().unwrap_or("?")),
            );
            continue;
        }
        bar.set_position(m.step);
        bar.set_message(format!(
            "reward {:.3} ± {:.3}, {:.1} s/step",
            m.reward, m.reward_std, m.step_time
        ));
        if bar.is_hidden() {
            println!(
                "step {:>4}  reward {:.3} ± {:.3}  length {:.1}  {:.1} s",
                m.step, m.reward, m.reward_std, m.mean_length, m.step_time
            );
        }
        if a.eval_every > 0 && m.step % a.eval_every == 0 && m.step < total && !held_out.is_empty()
        {
            let e = run_eval(&trainer, &held_out, &a, &eos)?;
            say(&bar, format!("step {}: held-out {}", m.step, describe(&e)));
            run.log_eval(m.step, &Value::Object(e.to_json()))?;
            if ckpt.save_if_best(&trainer, e.greedy_accuracy, true)? {
                say(
                    &bar,
                    format!(
                        "step {}: new best held-out accuracy, saved to checkpoints/best",
                        m.step
                    ),
                );
            }
        }
        ckpt.maybe_save(&trainer, Value::Null)?;
        if let Some(minutes) = cli.max_minutes {
            if started.elapsed().as_secs_f64() >= minutes * 60.0 {
                say(
                    &bar,
                    format!("--max-minutes {minutes}: stopping after step {}", m.step),
                );
                break;
            }
        }
    }
    bar.finish_and_clear();
    println!(
        "== {} steps in {:.0} s",
        trainer.step_count(),
        started.elapsed().as_secs_f64()
    );
    finish(
        &a,
        &mut trainer,
        &mut run,
        &held_out,
        before.as_ref(),
        &eos,
        &ckpt,
        &generation,
    )
}

/// Prints above the progress bar, or plainly when the bar is hidden (output not a terminal:
/// indicatif drops `println` on a hidden bar).
fn say(bar: &ProgressBar, msg: String) {
    if bar.is_hidden() {
        println!("{msg}");
    } else {
        bar.println(msg);
    }
}

/// `--explain`: the chosen group of this step, as text.
fn explain(
    a: &Args,
    group: Option<usize>,
    trainer: &Trainer,
    report: &rlzero::grpo::StepReport,
) -> Result<String> {
    let rewards = a.task.rewards();
    let group = match group {
        Some(0) => bail!("--explain-group counts from 1"),
        Some(g) => g - 1,
        None => pick_group(report).context("--explain: the step trained no completion")?,
    };
    let x = ExplainInput {
        report,
        config: trainer.config(),
        reward_names: &rewards.names(),
        reward_weights: &rewards.weights(),
        phrases: &REFLECTION_PHRASES,
    };
    let groups = report
        .samples
        .iter()
        .map(|s| s.prompt_index + 1)
        .max()
        .unwrap_or(0);
    explain_group(&x, group).with_context(|| {
        format!(
            "--explain-group {}: the step trained {groups} groups",
            group + 1
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn finish(
    a: &Args,
    trainer: &mut Trainer,
    run: &mut RunDir,
    held_out: &[TrainPrompt],
    before: Option<&EvalResult>,
    eos: &[u32],
    ckpt: &CheckpointPolicy,
    generation: &rlzero::model::GenerationConfig,
) -> Result<()> {
    let step = trainer.step_count();
    ckpt.save_now(trainer, Value::Null)?;
    if !held_out.is_empty() {
        let after = run_eval(trainer, held_out, a, eos)?;
        println!("== after training:  {}", describe(&after));
        run.log_eval(step, &Value::Object(after.to_json()))?;
        if let Some(before) = before {
            println!(
                "\n{:<44} {:>8} | {:<22} | {:<22}",
                "held-out question", "answer", "before (greedy)", "after (greedy)"
            );
            for (i, p) in held_out.iter().take(8).enumerate() {
                let q = p.text.rsplit("user").next().unwrap_or(&p.text);
                println!(
                    "{:<44} {:>8} | {:<22} | {:<22}",
                    one_line(q.trim(), 44),
                    reference_text(&p.reference),
                    one_line(&before.greedy[i], 22),
                    one_line(&after.greedy[i], 22)
                );
            }
        }
    }
    // The compute ledger, beside DeepSeek-R1's figures.
    let opts = LedgerOptions {
        params: trainer
            .policy()
            .named_parameters()
            .iter()
            .map(|(_, t)| t.elem_count() as u64)
            .sum(),
        lora: trainer.config().lora.is_some(),
        devices: 1.0,
        usd_per_device_hour: a.usd_per_hour,
        device: a.device_label.clone().unwrap_or_else(|| {
            if a.task.device.starts_with("cuda") {
                "1 CUDA GPU".into()
            } else {
                format!("{}-vCPU CPU machine", rayon::current_num_threads())
            }
        }),
        num_generations: trainer.config().num_generations,
        extra_forwards: f64::from(u8::from(trainer.config().loss.beta > 0.0))
            + f64::from(u8::from(
                trainer.config().num_iterations > 1
                    && trainer.config().old_logprobs == rlzero::grpo::OldLogprobs::Recompute,
            )),
    };
    let lines = rlzero::run::read_jsonl(&run.path().join("metrics.jsonl"))?;
    let ledger = Ledger::from_metrics(&lines, &opts);
    let r1 = R1Reference::default();
    println!("\n== compute and cost\n{}", ledger.summary(&opts, &r1));
    rlzero::model::atomic::write_atomic(
        &run.path().join("ledger.json"),
        serde_json::to_string_pretty(&ledger.to_json(&opts, &r1))?.as_bytes(),
    )?;
    rlzero::run::plots::write_plots(run.path())?;
    let report = rlzero::run::report::write_report(
        run.path(),
        &format!("rlzero run: {}", run.path().display()),
        &ledger.html(&opts, &r1),
    )?;
    if !a.no_export {
        let out = run.path().join("final");
        save_pretrained(
            trainer.policy(),
            trainer.tokenizer(),
            generation,
            &out,
            &ExportOptions::default(),
        )?;
        println!("== trained model (transformers layout): {}", out.display());
    }
    println!("== report: {}", report.display());
    println!("== run folder: {}", Path::new(run.path()).display());
    Ok(())
}
