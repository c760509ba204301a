//! Typed errors for rollouts: every bad request names the prompt or the parameter at fault.

use rlzero_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("no prompts given")]
    NoPrompts,
    #[error("prompt {index} is empty")]
    EmptyPrompt { index: usize },
    #[error("prompt {index} has {len} tokens; the model's context is {max} (prompt plus at least one new token must fit)")]
    PromptTooLong {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("prompt {index} holds token id {id}, outside the vocabulary (size {vocab})")]
    TokenOutOfVocab { index: usize, id: u32, vocab: usize },
    #[error("group size (completions per prompt) must be at least 1")]
    ZeroGroupSize,
    #[error("sampling parameter `{name}` = {value}: {reason}")]
    InvalidParam {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("the fast rollout path runs on CPU f32 weights; this model is {0}")]
    UnsupportedModel(String),
    /// The decoder carries LoRA adapters; the fast path reads `Linear::weight` only and would
    /// sample from the base model.
    #[error("this decoder has LoRA adapters, which the fast rollout path would ignore; merge adapters first: Decoder::merged()")]
    AdaptersNotMerged,
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, RolloutError>;
