//! Typed errors for rollouts: every bad request names the prompt or the parameter at fault.

use rlzero_model::ModelError;

/// Why a rollout could not run.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The prompt list is empty.
    #[error("no prompts given")]
    NoPrompts,
    /// A prompt has no tokens (a sequence needs at least one position to condition on).
    #[error("prompt {index} is empty")]
    EmptyPrompt {
        /// Position of the prompt in the request.
        index: usize,
    },
    /// A prompt leaves no room for a single new token in the model's context.
    #[error("prompt {index} has {len} tokens; the model's context is {max} (prompt plus at least one new token must fit)")]
    PromptTooLong {
        /// Position of the prompt in the request.
        index: usize,
        /// Its length in tokens.
        len: usize,
        /// The model's `max_position_embeddings`.
        max: usize,
    },
    /// A prompt token is not in the model's vocabulary.
    #[error("prompt {index} holds token id {id}, outside the vocabulary (size {vocab})")]
    TokenOutOfVocab {
        /// Position of the prompt in the request.
        index: usize,
        /// The offending id.
        id: u32,
        /// The model's vocabulary size.
        vocab: usize,
    },
    /// Zero completions per prompt were asked for.
    #[error("group size (completions per prompt) must be at least 1")]
    ZeroGroupSize,
    /// A sampling parameter (or an argument of [`crate::unstable`]) is out of its range.
    #[error("sampling parameter `{name}` = {value}: {reason}")]
    InvalidParam {
        /// The parameter's field name.
        name: &'static str,
        /// The value given, formatted.
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// The decoder is not CPU f32 (or its weights are not contiguous).
    #[error("the fast rollout path runs on CPU f32 weights; this model is {0}")]
    UnsupportedModel(String),
    /// The decoder carries LoRA adapters; the fast path reads `Linear::weight` only and would
    /// sample from the base model.
    #[error("this decoder has LoRA adapters, which the fast rollout path would ignore; merge adapters first: Decoder::merged()")]
    AdaptersNotMerged,
    /// An error from the model layer (tokenizer, decoder).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`RolloutError`].
pub type Result<T> = std::result::Result<T, RolloutError>;
