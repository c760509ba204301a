//! Sampling controls, validated once before a rollout starts.
//!
//! Processing order follows transformers' `generate`: repetition penalty and the EOS ban of
//! `min_new_tokens` on the raw logits, then temperature, top-k, top-p, min-p.

use crate::error::{Result, RolloutError};

/// How completions are sampled. `Default` is plain ancestral sampling at temperature 1.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature `T > 0`; the distribution is `softmax(logits / T)`. Default 1.0, the
    /// R1-Zero / TRL setting, so the sampler explores what the policy actually believes.
    pub temperature: f64,
    /// Pick the arg-max instead of sampling (temperature then only scales reported log-probs).
    /// Default false.
    pub greedy: bool,
    /// Keep only the `k` most likely tokens; `None` (default) keeps all.
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set of most likely tokens with mass ≥ `top_p`.
    /// Default 1.0 (off).
    pub top_p: f64,
    /// Drop tokens whose probability is below `min_p · p_max`. Default 0.0 (off).
    pub min_p: f64,
    /// CTRL-style penalty on tokens already in the prompt or completion: positive logits are
    /// divided by it, negative ones multiplied. Default 1.0 (off).
    pub repetition_penalty: f64,
    /// Hard cap on generated tokens. Default 256.
    pub max_new_tokens: usize,
    /// EOS is banned until this many tokens exist (forces fixed-length work in benchmarks).
    /// Default 0.
    pub min_new_tokens: usize,
    /// Token ids that end a completion (the model's `generation_config` EOS ids).
    pub eos_token_ids: Vec<u32>,
    /// Strings that end a completion once its decoded text contains them (the text is cut
    /// right after the stop string; the tokens up to the one completing it are kept).
    pub stop_strings: Vec<String>,
    /// Base seed; each sample's stream is derived from (seed, step, prompt, sample).
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            greedy: false,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            max_new_tokens: 256,
            min_new_tokens: 0,
            eos_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Rejects values that would make sampling undefined.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, value: String, reason: &'static str| {
            Err(RolloutError::InvalidParam {
                name,
                value,
                reason,
            })
        };
        // The sampler and the trainer scale logits by 1/T in f32: it must be finite there.
        if !(self.temperature.is_finite()
            && self.temperature > 0.0
            && ((1.0 / self.temperature) as f32).is_finite())
        {
            return bad(
                "temperature",
                self.temperature.to_string(),
                "must be finite and > 0, with 1/T finite in f32 (T ≥ 3e-39; use `greedy` for arg-max)",
            );
        }
        if self.top_k == Some(0) {
            return bad("top_k", "0".into(), "must be ≥ 1, or None to disable");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p.to_string(), "must be in (0, 1]");
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p.to_string(), "must be in [0, 1)");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty.to_string(),
                "must be finite and > 0",
            );
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "0".into(), "must be ≥ 1");
        }
        if self.min_new_tokens > self.max_new_tokens {
            return bad(
                "min_new_tokens",
                self.min_new_tokens.to_string(),
                "must not exceed max_new_tokens",
            );
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return bad(
                "stop_strings",
                "\"\"".into(),
                "an empty stop string would stop at once",
            );
        }
        Ok(())
    }
}
