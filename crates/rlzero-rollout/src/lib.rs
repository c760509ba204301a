//! # rlzero-rollout
//!
//! Fast batched sampling for GRPO: prompts are prefilled once, their KV caches shared by their
//! G samples, decoding batched across every live sequence; reproducible per sample; log-probs
//! equal to the trainer's. See [`rollout()`].

pub mod attention;
pub mod error;
pub mod fast_forward;
pub mod kernels;
pub mod kv_cache;
pub mod params;
pub mod rng;
pub mod rollout;
pub mod sampler;

pub use error::{Result, RolloutError};
pub use params::SamplingParams;
pub use rollout::{rollout, rollout_with_stats, Completion, FinishReason, RolloutStats};
