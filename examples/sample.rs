//! Chat with a model: each line you type is a user message, answered with the model's chat
//! template and the sampling flags below. `/reset` clears the conversation.
//!
//!     cargo run --release --example sample
//!     cargo run --release --example sample -- --model runs/addition-1764500000/final --greedy
//!     echo "What is 7 + 5?" | cargo run --release --example sample
#[path = "cli/mod.rs"]
mod cli;

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;
use clap::Parser;
use rlzero::model::device::parse_device;
use rlzero::model::{load, LoadOptions, Message, ModelSource, WeightMode};
use rlzero::rollout::{rollout, SamplingParams};

/// Chat with a model from the command line.
#[derive(Debug, Parser)]
#[command(about = "Chat with a model (Hub id, HF directory or .gguf)")]
struct Args {
    /// The model: a Hugging Face repo id, a local directory, or a .gguf file.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: String,
    /// A system message put first in the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Always take the most likely token.
    #[arg(long)]
    greedy: bool,
    /// Token budget per answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute device: `cpu`, or `cuda` / `cuda:N` in a build with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    log: cli::LogArgs,
}

fn main() -> Result<()> {
    let a = Args::parse();
    a.log.init()?;
    let opts = LoadOptions {
        mode: WeightMode::Frozen,
        device: parse_device(&a.device)?,
        ..LoadOptions::default()
    };
    let m = load(&ModelSource::parse(&a.model), &opts)?;
    let p = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        greedy: a.greedy,
        max_new_tokens: a.max_new_tokens,
        eos_token_ids: m.generation.eos_token_ids.clone(),
        seed: a.seed,
        ..SamplingParams::default()
    };
    p.validate()?;
    let interactive = std::io::stdin().is_terminal();
    let mut history: Vec<Message> = a.system.iter().map(Message::system).collect();
    let prompt = |h: &str| {
        if interactive {
            print!("{h}");
            let _ = std::io::stdout().flush();
        }
    };
    prompt("> ");
    for (turn, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim() == "/reset" {
            history.retain(|m| m.role == "system");
            prompt("> ");
            continue;
        }
        history.push(Message::user(line.trim()));
        let text = m.tokenizer.apply_chat_template(&history, true)?;
        let ids = m.tokenizer.encode(&text, false)?;
        let out = rollout(&m.decoder, &m.tokenizer, &[ids], 1, &p, turn as u64)?;
        let answer = out.into_iter().next().map(|c| c.text).unwrap_or_default();
        println!("{}", answer.trim());
        history.push(Message::assistant(answer));
        prompt("> ");
    }
    Ok(())
}
