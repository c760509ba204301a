// README.md is the crate's front page, and its Rust snippets compile as doctests, so what it
// shows cannot drift from the API.
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
//!
//! ## Modules
//!
//! * [`model`]: trainable Llama / Qwen2 / Qwen3 decoders, loading from the Hub, HF directories
//!   and GGUF files, tokenizers and chat templates, LoRA.
//! * [`rollout`]: batched sampling with a KV cache whose log-probs are the trainer's.
//! * [`rewards`]: verifiable rewards (format, numeric answer, countdown, …), no candle inside.
//! * [`grpo`]: GRPO and its successors, matching TRL 1.16's math; [`grpo::Trainer::step`].
//! * [`run`]: run folders (config, metrics/completions/eval JSONL), SVG curves, HTML report.
//! * [`malloc`]: an opt-in allocator setting for training binaries.
//! * [`candle_core`], [`candle_nn`]: the tensor library, re-exported (`use rlzero::candle_core::Tensor`).

// The tensor library the API speaks, re-exported so one `rlzero` dependency is enough and its
// version always matches the one rlzero was built with.
pub use candle_core;
pub use candle_nn;

pub use rlzero_grpo as grpo;
pub use rlzero_model as model;
pub use rlzero_rewards as rewards;
pub use rlzero_rollout as rollout;
pub use rlzero_run as run;

pub mod malloc;
