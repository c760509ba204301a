//! What the train / eval / sample examples share: the model and task flags, prompts and
//! rewards for a task, and the held-out evaluation's settings.
#![allow(dead_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use rlzero::grpo::TrainPrompt;
use rlzero::model::device::parse_device;
use rlzero::model::{load, LoadOptions, LoadedModel, ModelSource, TextTokenizer, WeightMode};
use rlzero::rewards::{Countdown, FormatReward, NumericAnswer, Reference, RewardSet};
use rlzero::run::tasks::{Example, Task};
use serde::{Deserialize, Serialize};

/// Log flags: rlzero's libraries log through `tracing` (model loads, run folders, checkpoints,
/// skipped steps at info/warn; each step's figures at debug); this installs the subscriber.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
pub struct LogArgs {
    /// Log level or filter for the stderr log: error, warn, info, debug, trace, or a
    /// `tracing` filter such as `rlzero_grpo=debug`. Default: `RUST_LOG`, else info.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

impl LogArgs {
    /// Installs the stderr subscriber; a bad filter is an error naming the flag.
    pub fn init(&self) -> Result<()> {
        use tracing_subscriber::EnvFilter;
        let filter = match &self.log_level {
            Some(level) => EnvFilter::try_new(level)
                .with_context(|| format!("--log-level {level}: not a level or filter"))?,
            None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        };
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .init();
        Ok(())
    }
}

fn default_device() -> String {
    "cpu".into()
}

/// The default model: fetched by `./scripts/fetch-models.sh`.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Which task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum TaskKind {
    /// `a + b` with `--digits`-digit operands, generated from the seed.
    Addition,
    /// TinyZero's Countdown with `--countdown-numbers` numbers, generated from the seed.
    Countdown,
    /// GSM8K from `--data` (a JSONL with `question` and `answer`).
    Gsm8k,
    /// Any JSONL from `--data` with `--prompt-key` / `--answer-key` fields.
    Jsonl,
}

/// Model and task flags.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct TaskArgs {
    /// The model: a Hugging Face repo id (`org/name[@revision]`, through the same cache as
    /// Python), a local directory with config.json + safetensors, or a .gguf file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Compute device: `cpu`, or `cuda` / `cuda:N` in a build with `--features cuda`.
    /// Rollouts take the fast CPU kernels on `cpu` and the decoder's tensor ops on a GPU.
    #[arg(long, default_value = "cpu")]
    #[serde(default = "default_device")]
    pub device: String,
    /// The task.
    #[arg(long, value_enum, default_value = "addition")]
    pub task: TaskKind,
    /// The JSONL file of `gsm8k` and `jsonl` tasks (e.g. ../shared/data/gsm8k/train.jsonl).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Digits per operand of `addition` (difficulty).
    #[arg(long, default_value_t = 1)]
    pub digits: u32,
    /// Numbers per `countdown` puzzle (difficulty).
    #[arg(long, default_value_t = 3)]
    pub countdown_numbers: usize,
    /// Question field of a `jsonl` task.
    #[arg(long, default_value = "prompt")]
    pub prompt_key: String,
    /// Answer field of a `jsonl` task.
    #[arg(long, default_value = "answer")]
    pub answer_key: String,
    /// Training questions drawn.
    #[arg(long, default_value_t = 2000)]
    pub train_size: usize,
    /// Held-out questions (never trained on; split by a hash of the question text).
    #[arg(long, default_value_t = 40)]
    pub eval_size: usize,
    /// Seed of the task generator (procedural tasks).
    #[arg(long, default_value_t = 0)]
    pub task_seed: u64,
    /// Weight of a reward for the `<think>…</think><answer>…</answer>` format (0: off; the
    /// answer verifier alone then decides, reading the last <answer>, `####`, \boxed{} or
    /// the last number).
    #[arg(long, default_value_t = 0.0)]
    pub format_weight: f64,
    /// Strict answers: only a bare number inside the last <answer></answer> counts (no `####`,
    /// \boxed{} or last-number fallback), so the model must learn the format too.
    #[arg(long)]
    #[serde(default)]
    pub strict_answer: bool,
}

impl TaskArgs {
    /// The task these flags describe.
    pub fn task(&self) -> Result<Task> {
        let data = || {
            self.data
                .clone()
                .context("this task reads a JSONL file: pass --data PATH")
        };
        Ok(match self.task {
            TaskKind::Addition => Task::Addition {
                digits: self.digits,
            },
            TaskKind::Countdown => Task::Countdown {
                numbers: self.countdown_numbers,
            },
            TaskKind::Gsm8k => Task::Gsm8k { path: data()? },
            TaskKind::Jsonl => Task::Jsonl {
                path: data()?,
                prompt_key: self.prompt_key.clone(),
                answer_key: self.answer_key.clone(),
            },
        })
    }

    /// The model, trainable or frozen, on `--device`.
    pub fn load_model(&self, mode: WeightMode) -> Result<LoadedModel> {
        let opts = LoadOptions {
            mode,
            device: parse_device(&self.device)?,
            ..LoadOptions::default()
        };
        load(&ModelSource::parse(&self.model), &opts)
            .with_context(|| format!("loading the model {}", self.model))
    }

    /// Train and held-out prompts, through the model's chat template.
    pub fn prompts(&self, tok: &TextTokenizer) -> Result<(Vec<TrainPrompt>, Vec<TrainPrompt>)> {
        let task = self.task()?;
        let (train, eval) = task.examples(self.task_seed, self.train_size, self.eval_size)?;
        anyhow::ensure!(!train.is_empty(), "the task gave no training questions");
        let build = |xs: Vec<Example>| -> Result<Vec<TrainPrompt>> {
            xs.into_iter()
                .map(|e| {
                    let user = format!("{}\n{}", e.question, task.instruction());
                    Ok(TrainPrompt::chat(tok, &user, e.reference)?)
                })
                .collect()
        };
        Ok((build(train)?, build(eval)?))
    }

    /// The task's verifier (weight 1), plus the format reward when `--format-weight` > 0.
    pub fn rewards(&self) -> RewardSet {
        let set = match self.task {
            TaskKind::Countdown => RewardSet::new().with(Countdown::default(), 1.0),
            _ if self.strict_answer => RewardSet::new().with(NumericAnswer::strict(), 1.0),
            _ => RewardSet::new().with(NumericAnswer::default(), 1.0),
        };
        if self.format_weight > 0.0 {
            set.with(FormatReward::default(), self.format_weight)
        } else {
            set
        }
    }
}

/// Shortens `s` to one line of at most `n` characters for tables.
pub fn one_line(s: &str, n: usize) -> String {
    let flat: String = s.chars().map(|c| if c == '\n' { '⏎' } else { c }).collect();
    if flat.chars().count() > n {
        flat.chars().take(n - 1).collect::<String>() + "…"
    } else {
        flat
    }
}

/// The question part of a templated prompt's reference, for tables.
pub fn reference_text(r: &Reference) -> String {
    match r {
        Reference::None => "–".into(),
        Reference::Answer(a) => one_line(a.rsplit("####").next().unwrap_or(a).trim(), 12),
        Reference::Countdown { target, .. } => target.to_string(),
    }
}
