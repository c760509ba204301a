//! Typed errors for everything that reads model files.
//!
//! Every variant names the file (and, where it applies, the tensor or field) so that a user
//! who points rlzero at a broken checkpoint learns *what* is broken, not just that something is.

use std::path::PathBuf;

/// Errors raised while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON, or a field has the wrong type.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A required configuration field is absent.
    #[error("{file}: missing field `{field}`")]
    MissingField { file: PathBuf, field: String },
    /// A configuration field is present but its value cannot be used.
    #[error("{file}: field `{field}`: {reason}")]
    InvalidField {
        file: PathBuf,
        field: String,
        reason: String,
    },
    /// The architecture is not one the decoder implements.
    #[error("{file}: unsupported architecture `{arch}` (supported: llama, qwen2, qwen3)")]
    UnsupportedArchitecture { file: PathBuf, arch: String },
    /// A safetensors file is truncated or malformed.
    #[error("{file}: invalid safetensors: {reason}")]
    Safetensors { file: PathBuf, reason: String },
    /// A GGUF file is truncated or malformed.
    #[error("{file}: invalid GGUF: {reason}")]
    Gguf { file: PathBuf, reason: String },
    /// A tensor's element type cannot be converted to a float weight.
    #[error("{file}: tensor `{tensor}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        file: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// The checkpoint lacks a tensor the architecture needs.
    #[error("{source_name}: missing tensor `{tensor}`")]
    MissingTensor { source_name: String, tensor: String },
    /// A tensor exists but its shape does not match the configuration.
    #[error("{source_name}: tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        source_name: String,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// The tokenizer file or GGUF tokenizer metadata could not be turned into a tokenizer.
    #[error("{source_name}: tokenizer: {reason}")]
    Tokenizer { source_name: String, reason: String },
    /// The chat template failed to parse or render.
    #[error("{source_name}: chat template: {reason}")]
    ChatTemplate { source_name: String, reason: String },
    /// Downloading from (or resolving in the cache of) the Hugging Face Hub failed.
    #[error("hub repo `{repo}` file `{file}`: {reason}")]
    Hub {
        repo: String,
        file: String,
        reason: String,
    },
    /// The caller passed inputs that do not fit the model (shapes, ids, masks).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A LoRA configuration field has a value that cannot be used (or is not implemented).
    #[error("LoRA config: field `{field}`: {reason}")]
    InvalidLoraConfig { field: &'static str, reason: String },
    /// A LoRA operation on a decoder in the wrong state (trainable base, adapters already on).
    #[error("LoRA: {0}")]
    Lora(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ModelError::io(path, e))
}

/// Reads and parses a JSON file, naming it in the error.
pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}
