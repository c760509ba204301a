//! Errors of the GRPO trainer: every one names what was wrong (a config field, an input shape).

use thiserror::Error;

/// Everything the trainer can fail with.
#[derive(Debug, Error)]
pub enum GrpoError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] rlzero_model::ModelError),
    /// Sampling completions failed.
    #[error(transparent)]
    Rollout(#[from] rlzero_rollout::RolloutError),
    /// Scoring completions failed.
    #[error(transparent)]
    Reward(#[from] rlzero_rewards::RewardError),
    /// A configuration value is out of range or inconsistent with another.
    #[error("config field `{field}`: {message}")]
    Config {
        /// The field's path in the TOML config (`loss.epsilon`, `sampling.temperature`, …).
        field: String,
        /// What is wrong and what would be valid.
        message: String,
    },
    /// A config file could not be read or parsed.
    #[error("config file {path}: {message}")]
    ConfigFile {
        /// The file as given.
        path: String,
        /// The I/O or TOML parse error, with its line.
        message: String,
    },
    /// The optimizer found no gradient for a parameter that is not marked frozen (candle-nn's
    /// optimizers silently skip such parameters; a silently untrained weight is a bug).
    #[error(
        "no gradient for optimizer parameter {index} (shape {shape:?}); \
         mark it frozen (`AdamW::set_frozen`) if that is intended"
    )]
    MissingGradient {
        /// Position of the parameter in `AdamW::vars()`.
        index: usize,
        /// The parameter's shape.
        shape: Vec<usize>,
    },
    /// A checkpoint file is missing, truncated, corrupted, foreign or from a newer rlzero.
    #[error("checkpoint {file}: {reason}")]
    Checkpoint {
        /// The file (or directory) at fault.
        file: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Resuming with a config that changes the run (any field but `max_steps`).
    #[error(
        "resuming {checkpoint} with a different config: {} differ{}; pass force to resume anyway",
        fields.join(", "),
        if fields.len() == 1 { "s" } else { "" }
    )]
    ConfigChanged {
        /// The checkpoint directory.
        checkpoint: std::path::PathBuf,
        /// Config fields whose values differ (`loss.beta`, `sampling.temperature`, …).
        fields: Vec<String>,
    },
    /// A caller passed inputs of the wrong shape or content.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// `Result` with [`GrpoError`].
pub type Result<T> = std::result::Result<T, GrpoError>;

impl GrpoError {
    /// A [`GrpoError::Config`] for `field`.
    pub fn config(field: &str, message: impl Into<String>) -> Self {
        Self::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }
}
