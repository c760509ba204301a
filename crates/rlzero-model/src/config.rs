//! Decoder configuration, read from a Hugging Face `config.json` (or built from GGUF metadata).
//!
//! The three supported families differ in only a few switches, so one [`DecoderConfig`] with an
//! [`Architecture`] enum covers them:
//!
//! | family | q/k/v bias | q/k RMSNorm | notes |
//! |---|---|---|---|
//! | Llama (SmolLM2, TinyLlama, Llama-3.x) | `attention_bias` (default false) | no | llama3 rope scaling |
//! | Qwen2 / Qwen2.5 | always | no | |
//! | Qwen3 | `attention_bias` (default false) | yes, per head | explicit `head_dim` |
//!
//! ```
//! let json = serde_json::json!({
//!     "model_type": "llama", "vocab_size": 128, "hidden_size": 64,
//!     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
//!     "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
//! });
//! let cfg = rlzero_model::DecoderConfig::from_json(&json, "config.json".as_ref()).unwrap();
//! assert_eq!(cfg.head_dim, 16);
//! assert!(!cfg.tie_word_embeddings);
//! ```

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};

/// The decoder families rlzero implements. Matched exhaustively wherever behaviour differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM`: SmolLM2, TinyLlama, Llama-3.x.
    Llama,
    /// `Qwen2ForCausalLM`: Qwen2 and Qwen2.5 (q/k/v projections carry a bias).
    Qwen2,
    /// `Qwen3ForCausalLM`: RMSNorm on each head of q and k before rotary.
    Qwen3,
}

impl Architecture {
    /// Parses HF's `model_type` (also GGUF's `general.architecture`, which uses the same names).
    pub fn parse(name: &str, file: &Path) -> Result<Self> {
        match name {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            other => Err(ModelError::UnsupportedArchitecture {
                file: file.to_path_buf(),
                arch: other.to_string(),
            }),
        }
    }
}

/// How rotary frequencies are rescaled for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq_i = theta^(-2i/d)`.
    None,
    /// Llama 3.1's piecewise rescaling (transformers `_compute_llama3_parameters`): long
    /// wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    Llama3 {
        /// Divisor of the long wavelengths (`factor`, required).
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are divided
        /// by `factor` (`low_freq_factor`, default 1).
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept
        /// (`high_freq_factor`, default 4).
        high_freq_factor: f64,
        /// Context length the model was pre-trained with (`original_max_position_embeddings`,
        /// default 8192).
        original_max_position_embeddings: f64,
    },
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// Divisor of every rotary frequency (`factor`, required).
        factor: f64,
    },
    /// Per-frequency divisors, as llama.cpp bakes llama3 scaling into `rope_freqs.weight`.
    Divisors(Vec<f32>),
}

/// Everything the decoder needs to know about a checkpoint's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// The decoder family (`model_type`).
    pub architecture: Architecture,
    /// Rows of the embedding and of `lm_head` (`vocab_size`).
    pub vocab_size: usize,
    /// Width of the residual stream (`hidden_size`).
    pub hidden_size: usize,
    /// Width of the MLP's gate/up projections (`intermediate_size`).
    pub intermediate_size: usize,
    /// Number of decoder layers (`num_hidden_layers`).
    pub num_hidden_layers: usize,
    /// Number of query heads (`num_attention_heads`).
    pub num_attention_heads: usize,
    /// Grouped-query attention: each k/v head serves `num_attention_heads / num_key_value_heads`
    /// query heads. Defaults to `num_attention_heads` (plain multi-head attention).
    pub num_key_value_heads: usize,
    /// Defaults to `hidden_size / num_attention_heads`; Qwen3 sets it explicitly.
    pub head_dim: usize,
    /// ε of every RMSNorm (`rms_norm_eps`, default 1e-6).
    pub rms_norm_eps: f64,
    /// Defaults to 10000 (the Llama-1 value transformers uses when absent).
    pub rope_theta: f64,
    /// Long-context rescaling of the rotary frequencies (`rope_scaling`, default none).
    pub rope_scaling: RopeScaling,
    /// Longest sequence the checkpoint was trained for (`max_position_embeddings`, default 2048).
    pub max_position_embeddings: usize,
    /// Whether `lm_head` reuses `embed_tokens`. Default false, as in transformers.
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections: always for Qwen2, `attention_bias` otherwise.
    pub attention_bias: bool,
    /// Bias on the MLP projections (Llama `mlp_bias`, default false).
    pub mlp_bias: bool,
    /// Beginning-of-sequence token id (`bos_token_id`; the first if a list).
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (`eos_token_id`, an integer or a list; empty if absent).
    pub eos_token_ids: Vec<u32>,
}

/// Typed accessors over a JSON object that name the file and field in every error.
pub(crate) struct Fields<'a> {
    pub file: &'a Path,
    pub obj: &'a Value,
}

impl Fields<'_> {
    fn get(&self, field: &str) -> Option<&Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }
    fn invalid(&self, field: &str, reason: impl Into<String>) -> ModelError {
        ModelError::InvalidField {
            file: self.file.to_path_buf(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }
    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.invalid(field, format!("expected a non-negative integer, got {v}"))
                }),
        }
    }
    pub fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| ModelError::MissingField {
                file: self.file.to_path_buf(),
                field: field.to_string(),
            })
    }
    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.invalid(field, format!("expected a number, got {v}"))),
        }
    }
    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(field, format!("expected true or false, got {v}"))),
        }
    }
    pub fn opt_str(&self, field: &str) -> Result<Option<&str>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.invalid(field, format!("expected a string, got {v}"))),
        }
    }
    /// A token id field that may be a single integer or a list (`eos_token_id: [1, 2]`). Each id
    /// must fit a `u32` and, when `vocab` is given, be inside the vocabulary.
    pub fn token_ids(&self, field: &str, vocab: Option<usize>) -> Result<Vec<u32>> {
        let one = |x: &Value| {
            let id = x
                .as_u64()
                .ok_or_else(|| self.invalid(field, format!("expected a token id, got {x}")))?;
            crate::validate::token_id(self.file, field, id, vocab)
        };
        match self.get(field) {
            None => Ok(vec![]),
            Some(Value::Array(xs)) if xs.len() > 1024 => Err(self.invalid(
                field,
                format!("{} token ids, expected at most 1024", xs.len()),
            )),
            Some(Value::Array(xs)) => xs.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}

impl DecoderConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = crate::error::read_json(path)?;
        Self::from_json(&json, path)
    }

    /// Parses an HF config object; `file` is only used to name errors.
    pub fn from_json(json: &Value, file: &Path) -> Result<Self> {
        let f = Fields { file, obj: json };
        if !json.is_object() {
            return Err(f.invalid("<root>", "expected a JSON object"));
        }
        let model_type = f
            .opt_str("model_type")?
            .ok_or_else(|| ModelError::MissingField {
                file: file.to_path_buf(),
                field: "model_type".into(),
            })?;
        let architecture = Architecture::parse(model_type, file)?;
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let num_key_value_heads = f
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0, // rejected by validate()
        };
        // transformers 5 moved `rope_theta` / `rope_scaling` into `rope_parameters`; older
        // checkpoints keep them at the top level. Accept both.
        let rope_obj = json.get("rope_parameters").filter(|v| v.is_object());
        let rope_fields = Fields {
            file,
            obj: rope_obj.unwrap_or(&Value::Null),
        };
        let rope_theta = match rope_obj {
            Some(_) => rope_fields.opt_f64("rope_theta")?,
            None => None,
        }
        .or(f.opt_f64("rope_theta")?)
        .unwrap_or(10_000.0);
        let scaling_obj = rope_obj.or(json.get("rope_scaling").filter(|v| v.is_object()));
        let rope_scaling = match scaling_obj {
            None => RopeScaling::None,
            Some(obj) => parse_rope_scaling(&Fields { file, obj })?,
        };
        let sliding = f.opt_bool("use_sliding_window")?.unwrap_or(false);
        if sliding {
            return Err(f.invalid(
                "use_sliding_window",
                "sliding-window attention is not implemented",
            ));
        }
        let attention_bias = match architecture {
            Architecture::Qwen2 => true,
            Architecture::Llama | Architecture::Qwen3 => {
                f.opt_bool("attention_bias")?.unwrap_or(false)
            }
        };
        let cfg = Self {
            architecture,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias,
            mlp_bias: f.opt_bool("mlp_bias")?.unwrap_or(false),
            bos_token_id: f.token_ids("bos_token_id", None)?.first().copied(),
            eos_token_ids: f.token_ids("eos_token_id", None)?,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Checks the invariants the decoder relies on; called once by every constructor: every
    /// dimension positive and below a cap far above any real model (so no product of them
    /// overflows and no allocation is sized by a corrupted value), heads dividing evenly, an even
    /// `head_dim`, finite positive `rms_norm_eps` / `rope_theta` / rope scaling factors, and
    /// token ids inside the vocabulary.
    pub fn validate(&self, file: &Path) -> Result<()> {
        crate::validate::config(self, file)
    }

    /// Number of query heads sharing one k/v head.
    pub fn gqa_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

fn parse_rope_scaling(f: &Fields<'_>) -> Result<RopeScaling> {
    let kind = match f.opt_str("rope_type")? {
        Some(k) => Some(k),
        None => f.opt_str("type")?,
    };
    let factor = || {
        f.opt_f64("factor")?
            .ok_or_else(|| ModelError::MissingField {
                file: f.file.to_path_buf(),
                field: "rope_scaling.factor".into(),
            })
    };
    match kind {
        None | Some("default") => Ok(RopeScaling::None),
        Some("linear") => Ok(RopeScaling::Linear { factor: factor()? }),
        Some("llama3") => Ok(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: f.opt_f64("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: f.opt_f64("high_freq_factor")?.unwrap_or(4.0),
            original_max_position_embeddings: f
                .opt_usize("original_max_position_embeddings")?
                .unwrap_or(8192) as f64,
        }),
        Some(other) => Err(f.invalid(
            "rope_scaling.rope_type",
            format!("`{other}` is not supported (default, linear, llama3)"),
        )),
    }
}
