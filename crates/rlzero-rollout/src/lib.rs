//! # rlzero-rollout
//!
//! Fast batched sampling for GRPO: prompts are prefilled once, their KV caches shared by their
//! G samples, decoding batched across every live sequence; reproducible per sample; log-probs
//! equal to the trainer's. See [`rollout()`].

#![warn(missing_docs)]

// The decode kernels, KV cache and sampler internals are implementation details of
// `rollout()`: private, so they can change (and take shortcuts on pre-validated input) freely.
mod attention;
pub mod backend;
pub mod error;
mod fast_forward;
mod kernels;
mod kv_cache;
pub mod params;
mod rng;
pub mod rollout;
mod sampler;
mod tensor_forward;
pub mod unstable;

pub use backend::RolloutBackend;
pub use error::{Result, RolloutError};
pub use fast_forward::StepProfile;
pub use params::SamplingParams;
pub use rollout::{
    rollout, rollout_on, rollout_with_stats, Completion, FinishReason, RolloutStats,
};
