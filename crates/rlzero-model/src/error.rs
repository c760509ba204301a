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
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON, or a field has the wrong type.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file at fault.
        path: PathBuf,
        /// The parse or type error from serde_json.
        #[source]
        source: serde_json::Error,
    },
    /// A required configuration field is absent.
    #[error("{file}: missing field `{field}`")]
    MissingField {
        /// The file at fault.
        file: PathBuf,
        /// The name (or GGUF key) of the absent field.
        field: String,
    },
    /// A configuration field is present but its value cannot be used.
    #[error("{file}: field `{field}`: {reason}")]
    InvalidField {
        /// The file at fault.
        file: PathBuf,
        /// The name (or GGUF key) of the bad field.
        field: String,
        /// Why the value cannot be used.
        reason: String,
    },
    /// A device string (`--device`) names no device this build can open.
    #[error("device `{spec}`: {reason}")]
    Device {
        /// The string given.
        spec: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The architecture is not one the decoder implements.
    #[error("{file}: unsupported architecture `{arch}` (supported: llama, qwen2, qwen3)")]
    UnsupportedArchitecture {
        /// The file at fault.
        file: PathBuf,
        /// The architecture name found (`model_type` or `general.architecture`).
        arch: String,
    },
    /// A safetensors file is truncated or malformed.
    #[error("{file}: invalid safetensors: {reason}")]
    Safetensors {
        /// The file at fault.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A GGUF file is truncated or malformed.
    #[error("{file}: invalid GGUF: {reason}")]
    Gguf {
        /// The file at fault.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor's element type cannot be converted to a float weight.
    #[error("{file}: tensor `{tensor}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The file at fault.
        file: PathBuf,
        /// The tensor's name in that file.
        tensor: String,
        /// The element type found.
        dtype: String,
    },
    /// The checkpoint lacks a tensor the architecture needs.
    #[error("{source_name}: missing tensor `{tensor}`")]
    MissingTensor {
        /// The checkpoint (a path or repo id).
        source_name: String,
        /// The name of the absent tensor.
        tensor: String,
    },
    /// A tensor exists but its shape does not match the configuration.
    #[error("{source_name}: tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The checkpoint (a path or repo id).
        source_name: String,
        /// The tensor's name.
        tensor: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape found in the checkpoint.
        got: Vec<usize>,
    },
    /// The tokenizer file or GGUF tokenizer metadata could not be turned into a tokenizer.
    #[error("{source_name}: tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizer file (or GGUF file) at fault.
        source_name: String,
        /// What went wrong.
        reason: String,
    },
    /// The chat template failed to parse or render.
    #[error("{source_name}: chat template: {reason}")]
    ChatTemplate {
        /// The template's source name (its file, or the tokenizer when it has no template).
        source_name: String,
        /// The parse or render error.
        reason: String,
    },
    /// Downloading from (or resolving in the cache of) the Hugging Face Hub failed.
    #[error("hub repo `{repo}` file `{file}`: {reason}")]
    Hub {
        /// The repo id.
        repo: String,
        /// The file within the repo.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// The caller passed inputs that do not fit the model (shapes, ids, masks).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A LoRA configuration field has a value that cannot be used (or is not implemented).
    #[error("LoRA config: field `{field}`: {reason}")]
    InvalidLoraConfig {
        /// The LoRA config field at fault.
        field: &'static str,
        /// Why its value cannot be used.
        reason: String,
    },
    /// A LoRA operation on a decoder in the wrong state (trainable base, adapters already on).
    #[error("LoRA: {0}")]
    Lora(String),
    /// A model cannot be written in the requested format (a setting without a `config.json`
    /// form, an unsupported dtype), or writing it failed.
    #[error("export {file}: {reason}")]
    Export {
        /// The file that could not be written.
        file: PathBuf,
        /// Why.
        reason: String,
    },
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
