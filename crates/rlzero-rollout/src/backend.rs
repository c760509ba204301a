//! The model half of a rollout: one batched step over independent sequences, each with its own
//! KV cache. `rollout()` is written once against a crate-private `StepModel` trait; two backends
//! implement it:
//!
//! * the fast CPU path (`fast_forward.rs`): hand-written kernels on the f32
//!   weights' own memory (or a bf16 copy of the linear maps, `FastCpuBf16`), caches as plain
//!   `Vec<f32>`;
//! * the tensor path (`tensor_forward.rs`): the decoder's own candle modules
//!   (attention, RoPE, MLP, norms) on whatever device and dtype its weights live, caches as
//!   tensors on that device. It also runs unmerged LoRA adapters (merged into a copy of each
//!   adapted weight for the rollout, without dropout, as PEFT's eval mode).
//!
//! Both return the logits of each sequence's last new token as host f32 rows, so sampling, the
//! per-sample random streams and the stop rules are shared (and identical) for both.

use crate::error::Result;
use crate::fast_forward::StepProfile;

/// Which model step (backend) a rollout runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RolloutBackend {
    /// The fast CPU path when the decoder is f32 on the CPU without LoRA adapters, the tensor
    /// path otherwise (a GPU, bf16/f16 weights, unmerged adapters). The default.
    #[default]
    Auto,
    /// Always the fast CPU path; errors for a decoder it cannot run
    /// ([`crate::RolloutError::UnsupportedModel`], [`crate::RolloutError::AdaptersNotMerged`]).
    FastCpu,
    /// The fast CPU path streaming the linear maps and the LM head as bf16, rounded from the f32
    /// weights when the rollout starts (so it follows every optimizer step). Half the bytes per
    /// decode step, the same f32 arithmetic after loading, but a slightly different policy: the
    /// completions' `logprobs` are the bf16 sampler's, so a trainer must score them with its own
    /// f32 forward (GRPO's `old_logprobs = recompute`), not reuse them as the f32 policy's. The
    /// gap is measured by `examples/rollout_bench.rs` (`BACKEND=fast-bf16`). Same errors as
    /// `FastCpu`.
    FastCpuBf16,
    /// Always the tensor path, on the decoder's own device and dtype.
    Tensor,
}

/// A decoder that advances sequences through their KV caches.
pub(crate) trait StepModel {
    /// One sequence's keys and values, all layers (sampling runs on rayon threads).
    type Cache: Send;

    /// An empty cache with room for `capacity` tokens (it grows in chunks past that).
    fn new_cache(&self, capacity: usize) -> Result<Self::Cache>;

    /// A copy of `cache` that shares nothing with it (a prompt's prefill fanned out to its
    /// samples), with room for `extra` more tokens.
    fn fork(&self, cache: &Self::Cache, extra: usize) -> Result<Self::Cache>;

    /// Appends `tokens[s]` to sequence `s` (whose cache is `caches[s]`) and returns the f32
    /// logits `(S, V)` after each sequence's last new token, row-major on the host.
    fn step(
        &self,
        caches: &mut [&mut Self::Cache],
        tokens: &[&[u32]],
        prof: &mut StepProfile,
    ) -> Result<Vec<f32>>;
}
