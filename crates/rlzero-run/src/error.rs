//! Errors of run folders: each names the file or folder at fault.

use std::path::PathBuf;

/// Why a run-folder operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A log or JSON file is malformed.
    #[error("{path}: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        reason: String,
    },
    /// `create` was pointed at a folder that already holds a run.
    #[error("{0} already holds a run (config.toml or metrics.jsonl exists); resume it or choose another folder")]
    Exists(PathBuf),
    /// `resume` was pointed at a folder without a run.
    #[error("{0} holds no run (no config.toml)")]
    NotARun(PathBuf),
    /// A model-layer error (atomic writes).
    #[error(transparent)]
    Model(#[from] rlzero_model::ModelError),
}

/// `Result` with [`RunError`].
pub type Result<T> = std::result::Result<T, RunError>;
