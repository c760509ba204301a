//! One entry point for every checkpoint source: a Hub repo id, a local HF directory, a GGUF file.
//!
//! ```no_run
//! use rlzero_model::{load, LoadOptions, ModelSource};
//! let m = load(&ModelSource::parse("models/SmolLM2-135M-Instruct.Q4_1.gguf"), &LoadOptions::default())?;
//! println!("{} layers, vocab {}", m.config.num_hidden_layers, m.config.vocab_size);
//! # Ok::<(), rlzero_model::ModelError>(())
//! ```

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::config::{DecoderConfig, Fields, RopeScaling};
use crate::decoder::Decoder;
use crate::error::{read_json, ModelError, Result};
use crate::gguf::GgufFile;
use crate::gguf_tokenizer::tokenizer_from_gguf;
use crate::hub::{HubOptions, HubRepo};
use crate::safetensors_io::{read_all, shard_files};
use crate::tokenizer::TextTokenizer;
use crate::weights::{WeightMode, Weights};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `org/name` at a revision (branch, tag or commit), through the Hub cache.
    Hub {
        /// `org/name`.
        repo_id: String,
        /// Branch, tag or commit hash (`main` when the spec has no `@revision`).
        revision: String,
    },
    /// A directory holding `config.json`, `tokenizer.json` and safetensors weights.
    Dir(PathBuf),
    /// A llama.cpp GGUF file (weights, config and tokenizer in one).
    Gguf(PathBuf),
}

impl ModelSource {
    /// `path/to/model.gguf` → GGUF; an existing directory → Dir; otherwise a Hub id, with an
    /// optional `@revision` (`HuggingFaceTB/SmolLM2-135M-Instruct@main`).
    pub fn parse(spec: &str) -> Self {
        let path = Path::new(spec);
        if spec.ends_with(".gguf") {
            return Self::Gguf(path.to_path_buf());
        }
        if path.is_dir() {
            return Self::Dir(path.to_path_buf());
        }
        match spec.split_once('@') {
            Some((repo, rev)) => Self::Hub {
                repo_id: repo.to_string(),
                revision: rev.to_string(),
            },
            None => Self::Hub {
                repo_id: spec.to_string(),
                revision: "main".to_string(),
            },
        }
    }
}

/// How to materialise the weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weight dtype. Default f32: training needs it, and on CPU bf16 is converted to f32 per op
    /// anyway (slower).
    pub dtype: DType,
    /// Default CPU.
    pub device: Device,
    /// Default [`WeightMode::Trainable`].
    pub mode: WeightMode,
    /// Default [`HubOptions::from_env`].
    pub hub: HubOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            mode: WeightMode::Trainable,
            hub: HubOptions::from_env(),
        }
    }
}

/// Generation defaults shipped with a checkpoint (`generation_config.json`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Ids that end a completion; generation_config's list wins over config.json's.
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence id (`bos_token_id`), else config.json's.
    pub bos_token_id: Option<u32>,
    /// Padding id (`pad_token_id`; for GGUF, the tokenizer's), if any.
    pub pad_token_id: Option<u32>,
    /// Suggested sampling temperature (`temperature`, never negative), if given.
    pub temperature: Option<f64>,
    /// Suggested nucleus-sampling mass (`top_p`, in [0, 1]), if given.
    pub top_p: Option<f64>,
    /// Suggested top-k cutoff (`top_k`), if given.
    pub top_k: Option<usize>,
}

impl GenerationConfig {
    /// Reads `generation_config.json`, falling back to `cfg`'s token ids.
    pub fn from_file(path: Option<&Path>, cfg: &DecoderConfig) -> Result<Self> {
        let mut g = Self {
            eos_token_ids: cfg.eos_token_ids.clone(),
            bos_token_id: cfg.bos_token_id,
            ..Self::default()
        };
        if let Some(path) = path {
            let json = read_json(path)?;
            let f = Fields {
                file: path,
                obj: &json,
            };
            if !json.is_object() {
                return Err(ModelError::InvalidField {
                    file: path.to_path_buf(),
                    field: "<root>".into(),
                    reason: "expected a JSON object".into(),
                });
            }
            let vocab = Some(cfg.vocab_size);
            let eos = f.token_ids("eos_token_id", vocab)?;
            if !eos.is_empty() {
                g.eos_token_ids = eos;
            }
            if let Some(b) = f.token_ids("bos_token_id", vocab)?.first() {
                g.bos_token_id = Some(*b);
            }
            g.pad_token_id = f.token_ids("pad_token_id", vocab)?.first().copied();
            g.temperature = f.opt_f64("temperature")?;
            g.top_p = f.opt_f64("top_p")?;
            g.top_k = f.opt_usize("top_k")?;
            // serde_json only yields finite numbers; the ranges are what a sampler can use.
            if let Some(t) = g.temperature.filter(|t| *t < 0.0) {
                return Err(ModelError::InvalidField {
                    file: path.to_path_buf(),
                    field: "temperature".into(),
                    reason: format!("{t} must not be negative"),
                });
            }
            if let Some(p) = g.top_p.filter(|p| !(0.0..=1.0).contains(p)) {
                return Err(ModelError::InvalidField {
                    file: path.to_path_buf(),
                    field: "top_p".into(),
                    reason: format!("{p} must be in [0, 1]"),
                });
            }
        }
        Ok(g)
    }
}

/// A loaded checkpoint: configuration, decoder, tokenizer and generation defaults.
pub struct LoadedModel {
    /// The checkpoint's shape (from `config.json` or GGUF metadata).
    pub config: DecoderConfig,
    /// The model, with weights as [`LoadOptions`] asked.
    pub decoder: Decoder,
    /// Tokenizer, chat template and special tokens.
    pub tokenizer: TextTokenizer,
    /// Generation defaults (end-of-sequence ids, sampling hints).
    pub generation: GenerationConfig,
}

/// The files of an HF-format checkpoint, wherever they live.
struct HfFiles {
    config: PathBuf,
    generation_config: Option<PathBuf>,
    tokenizer: PathBuf,
    tokenizer_config: Option<PathBuf>,
    chat_template: Option<PathBuf>,
    weights: Vec<PathBuf>,
}

fn dir_files(dir: &Path) -> Result<HfFiles> {
    let opt = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    let req = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(ModelError::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "required file not found"),
            ))
        }
    };
    let weights = match opt("model.safetensors.index.json") {
        Some(index) => shard_files(&index)?
            .iter()
            .map(|f| req(f))
            .collect::<Result<_>>()?,
        None => vec![req("model.safetensors")?],
    };
    Ok(HfFiles {
        config: req("config.json")?,
        generation_config: opt("generation_config.json"),
        tokenizer: req("tokenizer.json")?,
        tokenizer_config: opt("tokenizer_config.json"),
        chat_template: opt("chat_template.jinja"),
        weights,
    })
}

fn hub_files(repo: &HubRepo) -> Result<HfFiles> {
    let weights = match repo.get("model.safetensors.index.json")? {
        Some(index) => shard_files(&index)?
            .iter()
            .map(|f| repo.require(f))
            .collect::<Result<_>>()?,
        None => vec![repo.require("model.safetensors")?],
    };
    Ok(HfFiles {
        config: repo.require("config.json")?,
        generation_config: repo.get("generation_config.json")?,
        tokenizer: repo.require("tokenizer.json")?,
        tokenizer_config: repo.get("tokenizer_config.json")?,
        chat_template: repo.get("chat_template.jinja")?,
        weights,
    })
}

fn load_hf(files: HfFiles, source_name: String, opts: &LoadOptions) -> Result<LoadedModel> {
    let config = DecoderConfig::from_file(&files.config)?;
    let generation = GenerationConfig::from_file(files.generation_config.as_deref(), &config)?;
    let tokenizer = TextTokenizer::from_hf_files(
        &files.tokenizer,
        files.tokenizer_config.as_deref(),
        files.chat_template.as_deref(),
        generation.eos_token_ids.clone(),
    )?;
    let tensors = read_all(&files.weights)?;
    let weights = Weights::new(source_name, tensors, opts.dtype, &opts.device, opts.mode)?;
    let decoder = Decoder::new(&config, &weights, opts.mode)?;
    Ok(LoadedModel {
        config,
        decoder,
        tokenizer,
        generation,
    })
}

/// Loads only the decoder from a GGUF file (no tokenizer): for tests and custom pipelines.
pub fn load_gguf_decoder(path: &Path, opts: &LoadOptions) -> Result<Decoder> {
    let file = GgufFile::open(path)?;
    gguf_decoder(&file, opts)
}

fn gguf_decoder(file: &GgufFile, opts: &LoadOptions) -> Result<Decoder> {
    let mut config = file.config()?;
    let (tensors, rope_freqs) = file.tensors(&config)?;
    if let Some(divisors) = rope_freqs {
        config.rope_scaling = RopeScaling::Divisors(divisors);
        // Entry count and finite positive divisors.
        config.validate(&file.path)?;
    }
    let weights = Weights::new(
        file.path.display().to_string(),
        tensors,
        opts.dtype,
        &opts.device,
        opts.mode,
    )?;
    Decoder::new(&config, &weights, opts.mode)
}

/// Loads a model from any [`ModelSource`].
pub fn load(source: &ModelSource, opts: &LoadOptions) -> Result<LoadedModel> {
    tracing::info!(?source, dtype = ?opts.dtype, mode = ?opts.mode, "loading model");
    let t = std::time::Instant::now();
    let model = load_any(source, opts)?;
    tracing::debug!(
        architecture = ?model.config.architecture,
        layers = model.config.num_hidden_layers,
        vocab = model.config.vocab_size,
        seconds = t.elapsed().as_secs_f64(),
        "model loaded"
    );
    Ok(model)
}

fn load_any(source: &ModelSource, opts: &LoadOptions) -> Result<LoadedModel> {
    match source {
        ModelSource::Dir(dir) => load_hf(dir_files(dir)?, dir.display().to_string(), opts),
        ModelSource::Hub { repo_id, revision } => {
            let repo = HubRepo::new(repo_id.clone(), revision.clone(), opts.hub.clone());
            load_hf(hub_files(&repo)?, format!("{repo_id}@{revision}"), opts)
        }
        ModelSource::Gguf(path) => {
            let file = GgufFile::open(path)?;
            let tokenizer = tokenizer_from_gguf(&file)?;
            let decoder = gguf_decoder(&file, opts)?;
            let config = decoder.cfg.clone();
            let generation = GenerationConfig {
                eos_token_ids: tokenizer.eos_token_ids.clone(),
                bos_token_id: config.bos_token_id,
                pad_token_id: tokenizer.pad_token_id,
                ..GenerationConfig::default()
            };
            Ok(LoadedModel {
                config,
                decoder,
                tokenizer,
                generation,
            })
        }
    }
}
