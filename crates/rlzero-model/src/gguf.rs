//! Loading llama.cpp GGUF files (llama, qwen2, qwen3) into trainable f32 weights.
//!
//! Every quant type candle reads (F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, Q2K–Q8K) is dequantized
//! to f32, so a Q4_1 file trains like any other checkpoint (its values are the Q4_1 ones).
//! Tensor names are mapped to HF's, and llama.cpp's interleaved-rotary row order for llama
//! Q/K is undone, so one decoder serves both sources. qwen2/qwen3 are stored in NeoX order and
//! need no permutation.
//!
//! llama.cpp's `convert_hf_to_gguf.py` permutes a Q/K weight of `n` heads as
//! `w.reshape(n, 2, d/2, in).swapaxes(1, 2)`; [`unpermute_rows`] applies the inverse
//! `w.reshape(n, d/2, 2, in).swapaxes(1, 2)`.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::config::{Architecture, DecoderConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::validate::candle_msg;

/// Dequantized tensors under HF names, and llama.cpp's `rope_freqs` divisors if the file has them.
pub type GgufTensors = (HashMap<String, Tensor>, Option<Vec<f32>>);

/// An opened GGUF file: its metadata and tensor directory (tensor data is read on demand).
pub struct GgufFile {
    /// Where the file was opened from (named in every error).
    pub path: PathBuf,
    /// candle's parsed header: metadata and tensor infos.
    pub content: Content,
}

impl GgufFile {
    /// Reads the header; a truncated or malformed file is a [`ModelError::Gguf`] (or a
    /// [`ModelError::InvalidField`] for a bad `general.alignment`). The header is validated by
    /// this crate's own scanner (`gguf_scan`) before candle parses it, so every size candle later
    /// trusts has been bounded by the file's length.
    pub fn open(path: &Path) -> Result<Self> {
        crate::gguf_scan::scan(path)?;
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let gguf_err = |reason: String| ModelError::Gguf {
            file: path.to_path_buf(),
            reason,
        };
        // The scan rules out the inputs candle 0.11 is known to panic on (alignment 0); the
        // guard keeps any other panic in its reader an error naming the file.
        let content = crate::validate::contain(|| Content::read(&mut BufReader::new(file)))
            .map_err(gguf_err)?
            .map_err(|e| gguf_err(candle_msg(&e)))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    pub(crate) fn err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            file: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// A metadata value, if present.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingField {
            file: self.path.clone(),
            field: key.to_string(),
        }
    }

    fn bad(&self, key: &str, e: candle_core::Error) -> ModelError {
        ModelError::InvalidField {
            file: self.path.clone(),
            field: key.to_string(),
            reason: candle_msg(&e),
        }
    }

    pub(crate) fn meta_str(&self, key: &str) -> Result<&str> {
        let v = self.meta(key).ok_or_else(|| self.missing(key))?;
        v.to_string()
            .map(|s| s.as_str())
            .map_err(|e| self.bad(key, e))
    }

    /// An unsigned integer of any GGUF integer width.
    pub(crate) fn meta_u64(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.meta(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => {
                return Err(ModelError::InvalidField {
                    file: self.path.clone(),
                    field: key.to_string(),
                    reason: format!("expected a non-negative integer, got {other:?}"),
                })
            }
        };
        Ok(Some(n))
    }

    /// [`GgufFile::meta_u64`] as a `usize` (range-checked, never truncated).
    pub(crate) fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
        self.meta_u64(key)?
            .map(|n| {
                usize::try_from(n).map_err(|_| ModelError::InvalidField {
                    file: self.path.clone(),
                    field: key.to_string(),
                    reason: format!("{n} does not fit in a usize"),
                })
            })
            .transpose()
    }

    /// A token id field: must fit a `u32` (the range against the vocabulary is checked by the
    /// caller, which knows it).
    pub(crate) fn meta_token_id(&self, key: &str) -> Result<Option<u32>> {
        self.meta_u64(key)?
            .map(|n| crate::validate::token_id(&self.path, key, n, None))
            .transpose()
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.meta(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x as f64)),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(_) => self.meta_usize(key).map(|x| x.map(|x| x as f64)),
        }
    }

    /// The architecture named by `general.architecture`.
    pub fn architecture(&self) -> Result<Architecture> {
        Architecture::parse(self.meta_str("general.architecture")?, &self.path)
    }

    /// The decoder configuration implied by the metadata and the tensor directory.
    pub fn config(&self) -> Result<DecoderConfig> {
        let architecture = self.architecture()?;
        let arch = self.meta_str("general.architecture")?.to_string();
        let req = |k: &str| -> Result<usize> {
            let key = format!("{arch}.{k}");
            self.meta_usize(&key)?.ok_or_else(|| self.missing(&key))
        };
        let hidden_size = req("embedding_length")?;
        let num_attention_heads = req("attention.head_count")?;
        let num_key_value_heads = self
            .meta_usize(&format!("{arch}.attention.head_count_kv"))?
            .unwrap_or(num_attention_heads);
        let head_dim = self
            .meta_usize(&format!("{arch}.attention.key_length"))?
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        let embd = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor {
                source_name: self.path.display().to_string(),
                tensor: "token_embd.weight".into(),
            })?;
        let vocab_size = match embd.shape.dims() {
            [vocab, _] => *vocab,
            dims => {
                return Err(self.err(format!(
                    "tensor `token_embd.weight` has shape {dims:?}, expected (vocab, hidden)"
                )))
            }
        };
        let has = |name: &str| self.content.tensor_infos.contains_key(name);
        let rope_scaling = match self.meta(&format!("{arch}.rope.scaling.type")) {
            Some(_) => match self.meta_str(&format!("{arch}.rope.scaling.type"))? {
                "linear" => RopeScaling::Linear {
                    factor: self
                        .meta_f64(&format!("{arch}.rope.scaling.factor"))?
                        .unwrap_or(1.0),
                },
                "none" => RopeScaling::None,
                other => {
                    return Err(ModelError::InvalidField {
                        file: self.path.clone(),
                        field: format!("{arch}.rope.scaling.type"),
                        reason: format!("`{other}` is not supported"),
                    })
                }
            },
            None => RopeScaling::None,
        };
        let cfg = DecoderConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: req("feed_forward_length")?,
            num_hidden_layers: req("block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self
                .meta_f64(&format!("{arch}.attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            rope_theta: self
                .meta_f64(&format!("{arch}.rope.freq_base"))?
                .unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: self
                .meta_usize(&format!("{arch}.context_length"))?
                .unwrap_or(2048),
            tie_word_embeddings: !has("output.weight"),
            attention_bias: has("blk.0.attn_q.bias"),
            mlp_bias: has("blk.0.ffn_up.bias"),
            bos_token_id: self.meta_token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: self
                .meta_token_id("tokenizer.ggml.eos_token_id")?
                .into_iter()
                .collect(),
        };
        // Name the GGUF key a bad value came from, not the config field it became.
        cfg.validate(&self.path).map_err(|e| match e {
            ModelError::InvalidField {
                file,
                field,
                reason,
            } => ModelError::InvalidField {
                file,
                field: gguf_key(&arch, &field),
                reason,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Dequantizes every tensor to f32 under its HF name. llama Q/K rows are un-permuted;
    /// `rope_freqs.weight` (llama3 scaling baked in by llama.cpp) is returned separately as the
    /// per-frequency divisors it holds. Each tensor's shape is checked against its role in `cfg`
    /// before its data is read.
    pub fn tensors(&self, cfg: &DecoderConfig) -> Result<GgufTensors> {
        let file = File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        let mut reader = BufReader::new(file);
        let mut out = HashMap::new();
        let mut rope_freqs = None;
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let hf = match name.as_str() {
                "rope_freqs.weight" => None,
                _ => Some(hf_name(name).ok_or_else(|| {
                    self.err(format!(
                        "unexpected tensor `{name}` for a {:?} model",
                        cfg.architecture
                    ))
                })?),
            };
            let expected = match &hf {
                None => Some(vec![cfg.head_dim / 2]),
                Some(hf) => crate::validate::expected_shape(cfg, hf),
            };
            let got = self
                .content
                .tensor_infos
                .get(name)
                .map(|i| i.shape.dims().to_vec())
                .unwrap_or_default();
            match expected {
                None => {
                    return Err(self.err(format!(
                        "unexpected tensor `{name}` for a {:?} model with {} layers",
                        cfg.architecture, cfg.num_hidden_layers
                    )))
                }
                Some(expected) if expected != got => {
                    return Err(ModelError::ShapeMismatch {
                        source_name: self.path.display().to_string(),
                        tensor: name.clone(),
                        expected,
                        got,
                    })
                }
                Some(_) => {}
            }
            // Sizes were bounded by the header scan; the guard keeps any panic left in candle's
            // tensor reader or dequantizers an error naming the file and tensor.
            let t = crate::validate::contain(|| -> Result<Tensor> {
                let q = self
                    .content
                    .tensor(&mut reader, name, &Device::Cpu)
                    .map_err(|e| self.err(format!("tensor `{name}`: {}", candle_msg(&e))))?;
                q.dequantize(&Device::Cpu).map_err(|e| {
                    self.err(format!(
                        "tensor `{name}` ({:?}): {}",
                        q.dtype(),
                        candle_msg(&e)
                    ))
                })
            })
            .map_err(|e| self.err(format!("tensor `{name}`: {e}")))??;
            let Some(hf) = hf else {
                rope_freqs = Some(t.flatten_all()?.to_vec1::<f32>()?);
                continue;
            };
            let t = match (cfg.architecture, hf.rsplit('.').nth(1)) {
                (Architecture::Llama, Some("q_proj")) => {
                    unpermute_rows(&t, cfg.num_attention_heads)
                }
                (Architecture::Llama, Some("k_proj")) => {
                    unpermute_rows(&t, cfg.num_key_value_heads)
                }
                _ => Ok(t),
            }
            .map_err(|e| self.err(format!("tensor `{name}`: {e}")))?;
            out.insert(hf, t);
        }
        Ok((out, rope_freqs))
    }
}

/// The GGUF metadata key (or tensor) a [`DecoderConfig`] field is read from.
fn gguf_key(arch: &str, field: &str) -> String {
    let key = match field {
        "vocab_size" => return "token_embd.weight".into(),
        "bos_token_id" | "eos_token_id" => return format!("tokenizer.ggml.{field}"),
        "hidden_size" => "embedding_length",
        "intermediate_size" => "feed_forward_length",
        "num_hidden_layers" => "block_count",
        "num_attention_heads" => "attention.head_count",
        "num_key_value_heads" => "attention.head_count_kv",
        "head_dim" => "attention.key_length",
        "rms_norm_eps" => "attention.layer_norm_rms_epsilon",
        "rope_theta" => "rope.freq_base",
        "max_position_embeddings" => "context_length",
        "rope_scaling.factor" => "rope.scaling.factor",
        other => return other.to_string(),
    };
    format!("{arch}.{key}")
}

/// HF's name for a llama.cpp tensor name, `None` for names this decoder has no slot for.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    let hf_module = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_module}.{param}"))
}

/// Undoes llama.cpp's interleaved-rotary row permutation of a Q or K weight `(n·d, in)` (or
/// bias `(n·d,)`) with `n_heads` heads: rows `(h, j, r)` of shape `(n, d/2, 2)` go back to
/// `(h, r, j)`.
pub fn unpermute_rows(t: &Tensor, n_heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let (rows, rest) = match dims.split_first() {
        Some((rows, rest)) => (*rows, rest.iter().product::<usize>()),
        None => (0, 1),
    };
    if n_heads == 0 || rows == 0 || !rows.is_multiple_of(2 * n_heads) {
        return Err(ModelError::InvalidInput(format!(
            "cannot un-permute {rows} rows over {n_heads} heads"
        )));
    }
    let half = rows / n_heads / 2;
    let out = t
        .reshape((n_heads, half, 2, rest))? // (n, d/2, 2, in)
        .transpose(1, 2)? // (n, 2, d/2, in)
        .contiguous()?
        .reshape(dims)?;
    Ok(out)
}

/// The inverse of [`unpermute_rows`]: what llama.cpp's converter writes. Used to build test
/// files and by anyone exporting to GGUF.
pub fn permute_rows(t: &Tensor, n_heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let (rows, rest) = match dims.split_first() {
        Some((rows, rest)) => (*rows, rest.iter().product::<usize>()),
        None => (0, 1),
    };
    if n_heads == 0 || rows == 0 || !rows.is_multiple_of(2 * n_heads) {
        return Err(ModelError::InvalidInput(format!(
            "cannot permute {rows} rows over {n_heads} heads"
        )));
    }
    let half = rows / n_heads / 2;
    Ok(t.reshape((n_heads, 2, half, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}
