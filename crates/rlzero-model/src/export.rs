//! Saving a decoder the way transformers' `save_pretrained` does, so the rest of the ecosystem
//! (transformers, PEFT, llama.cpp's converters, the Hub) reads what rlzero trained.
//!
//! [`save_pretrained`] writes, into one directory:
//! * `model.safetensors` (HF tensor names, header metadata `{"format": "pt"}` as transformers
//!   writes and expects), or past [`ExportOptions::max_shard_bytes`] the shards
//!   `model-00001-of-0000N.safetensors` plus `model.safetensors.index.json`;
//! * `config.json` with the keys transformers 5.24 writes for the architecture (the version the
//!   parity fixtures in `tests/fixtures/` come from; rope settings under `rope_parameters`);
//! * `generation_config.json`, `tokenizer.json`, and `tokenizer_config.json` with the chat
//!   template and special tokens.
//!
//! An adapted (LoRA) decoder is saved merged (`W + s·B·A`, as PEFT's `merge_and_unload`);
//! [`save_adapter`] writes the adapter alone in PEFT's layout.
//!
//! **Nothing is half-written.** Each file goes to a temporary name in the target directory, is
//! fsynced, then renamed over its final name, and the directory is fsynced, so every file is
//! either the old one or the new one. Everything that can fail on the content (config, tokenizer)
//! is checked before the first write. Weight files of an earlier save with another shard layout
//! are removed right after the new weights are in place; a failure after that (a full disk while
//! writing `config.json`) can leave new weights beside the old config files.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};

use crate::atomic::{sync_dir, write_atomic, write_safetensors};
use crate::config::{Architecture, RopeScaling};
use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::loader::GenerationConfig;
use crate::tokenizer::TextTokenizer;

/// The config format version written to `config.json` (see the module docs).
pub const TRANSFORMERS_FORMAT_VERSION: &str = "5.24.0";

/// Options of [`save_pretrained`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// Largest shard in bytes of tensor data; a model above it is split into shards with an
    /// index file. Default 5 GB (5·10⁹), transformers 4.x's default `max_shard_size="5GB"`: small
    /// enough for the Hub's per-file limits and for loading on modest machines.
    pub max_shard_bytes: u64,
    /// Convert the weights to this dtype before saving (`None`, the default: keep theirs).
    pub dtype: Option<DType>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            max_shard_bytes: 5_000_000_000,
            dtype: None,
        }
    }
}

/// What [`save_pretrained`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// Every file written, in the order written.
    pub files: Vec<PathBuf>,
    /// Tensor data bytes over all shards.
    pub total_bytes: u64,
}

fn export_err(file: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Export {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

fn dtype_name(d: DType, file: &Path) -> Result<&'static str> {
    Ok(match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        other => return Err(export_err(file, format!("weights of dtype {other:?}"))),
    })
}

/// `config.json` as transformers 5.24 writes it for this decoder. Errors when a setting has no
/// `config.json` form (llama.cpp's per-frequency rope divisors from a GGUF file).
pub fn config_json(decoder: &Decoder, dtype: DType) -> Result<Value> {
    let c = decoder.config();
    let file = Path::new("config.json");
    let mut rope = Map::new();
    rope.insert("rope_theta".into(), json!(c.rope_theta));
    match &c.rope_scaling {
        RopeScaling::None => {
            rope.insert("rope_type".into(), json!("default"));
        }
        RopeScaling::Linear { factor } => {
            rope.insert("rope_type".into(), json!("linear"));
            rope.insert("factor".into(), json!(factor));
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            rope.insert("rope_type".into(), json!("llama3"));
            rope.insert("factor".into(), json!(factor));
            rope.insert("low_freq_factor".into(), json!(low_freq_factor));
            rope.insert("high_freq_factor".into(), json!(high_freq_factor));
            rope.insert(
                "original_max_position_embeddings".into(),
                json!(*original_max_position_embeddings as u64),
            );
        }
        RopeScaling::Divisors(_) => {
            return Err(export_err(
                file,
                "rope scaling given as llama.cpp's per-frequency divisors (a GGUF \
                 `rope_freqs` tensor) has no config.json form; transformers can only express \
                 it as llama3/linear parameters, which the GGUF file does not carry",
            ))
        }
    }
    let eos = match c.eos_token_ids.as_slice() {
        [one] => json!(one),
        [] => Value::Null,
        many => json!(many),
    };
    let mut m = Map::new();
    let (arch_class, model_type) = match c.architecture {
        Architecture::Llama => ("LlamaForCausalLM", "llama"),
        Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Architecture::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
    };
    m.insert("architectures".into(), json!([arch_class]));
    m.insert("attention_dropout".into(), json!(0.0));
    m.insert("bos_token_id".into(), json!(c.bos_token_id));
    m.insert("dtype".into(), json!(dtype_name(dtype, file)?));
    m.insert("eos_token_id".into(), eos);
    m.insert("hidden_act".into(), json!("silu"));
    m.insert("hidden_size".into(), json!(c.hidden_size));
    m.insert("initializer_range".into(), json!(0.02));
    m.insert("intermediate_size".into(), json!(c.intermediate_size));
    m.insert(
        "max_position_embeddings".into(),
        json!(c.max_position_embeddings),
    );
    m.insert("model_type".into(), json!(model_type));
    m.insert("num_attention_heads".into(), json!(c.num_attention_heads));
    m.insert("num_hidden_layers".into(), json!(c.num_hidden_layers));
    m.insert("num_key_value_heads".into(), json!(c.num_key_value_heads));
    m.insert("pad_token_id".into(), Value::Null);
    m.insert("rms_norm_eps".into(), json!(c.rms_norm_eps));
    m.insert("rope_parameters".into(), Value::Object(rope));
    m.insert("tie_word_embeddings".into(), json!(c.tie_word_embeddings));
    m.insert(
        "transformers_version".into(),
        json!(TRANSFORMERS_FORMAT_VERSION),
    );
    m.insert("use_cache".into(), json!(true));
    m.insert("vocab_size".into(), json!(c.vocab_size));
    match c.architecture {
        Architecture::Llama => {
            m.insert("attention_bias".into(), json!(c.attention_bias));
            m.insert("head_dim".into(), json!(c.head_dim));
            m.insert("mlp_bias".into(), json!(c.mlp_bias));
            m.insert("pretraining_tp".into(), json!(1));
        }
        Architecture::Qwen2 | Architecture::Qwen3 => {
            // Qwen2 always has q/k/v biases and derives head_dim; Qwen3 states both.
            if c.architecture == Architecture::Qwen2 {
                let implied = c.hidden_size / c.num_attention_heads.max(1);
                if c.head_dim != implied || c.mlp_bias {
                    return Err(export_err(
                        file,
                        format!(
                            "Qwen2's config.json cannot express head_dim {} (≠ hidden/heads = \
                             {implied}) or an MLP bias",
                            c.head_dim
                        ),
                    ));
                }
            } else {
                m.insert("attention_bias".into(), json!(c.attention_bias));
                m.insert("head_dim".into(), json!(c.head_dim));
            }
            m.insert(
                "layer_types".into(),
                json!(vec!["full_attention"; c.num_hidden_layers]),
            );
            m.insert("max_window_layers".into(), json!(28));
            m.insert("sliding_window".into(), Value::Null);
            m.insert("use_sliding_window".into(), json!(false));
        }
    }
    Ok(Value::Object(m))
}

/// `generation_config.json`: the token ids and sampling defaults the checkpoint came with.
pub fn generation_config_json(g: &GenerationConfig) -> Value {
    let mut m = Map::new();
    m.insert("bos_token_id".into(), json!(g.bos_token_id));
    m.insert(
        "eos_token_id".into(),
        match g.eos_token_ids.as_slice() {
            [one] => json!(one),
            many => json!(many),
        },
    );
    if let Some(p) = g.pad_token_id {
        m.insert("pad_token_id".into(), json!(p));
    }
    if let Some(t) = g.temperature {
        m.insert("temperature".into(), json!(t));
    }
    if let Some(p) = g.top_p {
        m.insert("top_p".into(), json!(p));
    }
    if let Some(k) = g.top_k {
        m.insert("top_k".into(), json!(k));
    }
    m.insert(
        "transformers_version".into(),
        json!(TRANSFORMERS_FORMAT_VERSION),
    );
    Value::Object(m)
}

/// Writes `decoder` (merged, if it carries LoRA adapters), its tokenizer and generation config
/// to `dir` (created if missing) as transformers' `save_pretrained` lays them out.
pub fn save_pretrained(
    decoder: &Decoder,
    tokenizer: &TextTokenizer,
    generation: &GenerationConfig,
    dir: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary> {
    if opts.max_shard_bytes == 0 {
        return Err(export_err(dir, "max_shard_bytes must be positive"));
    }
    let merged;
    let decoder = if decoder.has_adapters() {
        merged = decoder.merged()?;
        &merged
    } else {
        decoder
    };
    let dtype = opts.dtype.unwrap_or(decoder.dtype());
    // Everything that can fail on the content is computed before the first byte is written.
    let config = config_json(decoder, dtype)?;
    let tokenizer_json = tokenizer.to_json()?;
    let tokenizer_config = tokenizer.tokenizer_config_json();
    let generation = generation_config_json(generation);
    let tensors = decoder
        .named_parameters()
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.detach().to_dtype(dtype)?.contiguous()?)))
        .collect::<Result<Vec<(String, Tensor)>>>()?;
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;

    let mut files = Vec::new();
    let (shards, total_bytes) = write_weights(dir, &tensors, opts.max_shard_bytes, &mut files)?;
    // At once, so no loader ever sees the new weights beside an old index (or the reverse).
    remove_stale_weights(dir, &shards)?;
    for (name, value) in [
        ("config.json", &config),
        ("generation_config.json", &generation),
        ("tokenizer_config.json", &tokenizer_config),
    ] {
        let path = dir.join(name);
        write_atomic(&path, &pretty(value, &path)?)?;
        files.push(path);
    }
    let path = dir.join("tokenizer.json");
    write_atomic(&path, tokenizer_json.as_bytes())?;
    files.push(path);
    sync_dir(dir)?;
    Ok(ExportSummary { files, total_bytes })
}

/// Writes the safetensors file(s) and, when sharded, the index; returns the weight file names.
fn write_weights(
    dir: &Path,
    tensors: &[(String, Tensor)],
    max_shard: u64,
    files: &mut Vec<PathBuf>,
) -> Result<(Vec<String>, u64)> {
    // Greedy in checkpoint order, as transformers' `split_torch_state_dict_into_shards` does; a
    // tensor larger than the limit gets a shard of its own.
    let mut groups: Vec<Vec<&(String, Tensor)>> = vec![vec![]];
    let mut size = 0u64;
    let mut total = 0u64;
    for t in tensors {
        let bytes = (t.1.elem_count() * t.1.dtype().size_in_bytes()) as u64;
        if size > 0 && size + bytes > max_shard {
            groups.push(vec![]);
            size = 0;
        }
        if let Some(g) = groups.last_mut() {
            g.push(t);
        }
        size += bytes;
        total += bytes;
    }
    let n = groups.len();
    let names: Vec<String> = if n == 1 {
        vec!["model.safetensors".into()]
    } else {
        (1..=n)
            .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
            .collect()
    };
    let mut weight_map = Map::new();
    for (group, name) in groups.iter().zip(&names) {
        let path = dir.join(name);
        write_safetensors(&path, group.iter().map(|(n, t)| (n.as_str(), t)))?;
        files.push(path);
        for (t, _) in group.iter() {
            weight_map.insert(t.clone(), json!(name));
        }
    }
    let index = dir.join("model.safetensors.index.json");
    if n > 1 {
        let v = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_atomic(&index, &pretty(&v, &index)?)?;
        files.push(index);
    }
    Ok((names, total))
}

/// Removes weight files of an earlier save that the new one does not use (a single file after
/// shards, or shards of another count), so a loader cannot pick up stale weights.
fn remove_stale_weights(dir: &Path, keep: &[String]) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_weights = name == "model.safetensors"
            || (name.starts_with("model-") && name.ends_with(".safetensors"))
            || (name == "model.safetensors.index.json" && keep.len() == 1);
        if is_weights && !keep.contains(&name) {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| ModelError::io(&p, e))?;
        }
    }
    Ok(())
}

fn pretty(v: &Value, path: &Path) -> Result<Vec<u8>> {
    let mut s = serde_json::to_vec_pretty(v).map_err(|e| export_err(path, e.to_string()))?;
    s.push(b'\n');
    Ok(s)
}

/// Writes the LoRA adapters of `decoder` in PEFT's layout: `adapter_model.safetensors` (names
/// `base_model.model.model.layers.N.<group>.<proj>.lora_A.weight` / `lora_B.weight`, as
/// [`Decoder::named_trainable`] gives them) and `adapter_config.json`. `base_model` names the
/// base checkpoint for PEFT's `from_pretrained` (a Hub id or path).
pub fn save_adapter(decoder: &Decoder, dir: &Path, base_model: &str) -> Result<ExportSummary> {
    let cfg = decoder
        .lora_config()
        .ok_or_else(|| export_err(dir, "the decoder has no LoRA adapters to save"))?;
    let tensors = decoder
        .named_trainable()?
        .into_iter()
        .map(|(n, v)| Ok((n, v.as_tensor().detach().contiguous()?)))
        .collect::<Result<Vec<(String, Tensor)>>>()?;
    let targets: Vec<&str> = cfg.target_modules.iter().map(|t| t.name()).collect();
    let config = json!({
        "alpha_pattern": {},
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": cfg.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": cfg.use_rslora,
    });
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let path = dir.join("adapter_model.safetensors");
    let total = tensors
        .iter()
        .map(|(_, t)| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum();
    write_safetensors(&path, tensors.iter().map(|(n, t)| (n.as_str(), t)))?;
    let cfg_path = dir.join("adapter_config.json");
    write_atomic(&cfg_path, &pretty(&config, &cfg_path)?)?;
    sync_dir(dir)?;
    Ok(ExportSummary {
        files: vec![path, cfg_path],
        total_bytes: total,
    })
}
