//! LoRA: low-rank adapters on a frozen decoder (Hu et al. 2021), initialised and scaled as
//! Hugging Face PEFT's `LoraConfig` / `lora.Linear` do.
//!
//! An adapted linear map with frozen `W` `(out, in)` and trainable `A` `(r, in)`, `B` `(out, r)`:
//!
//! `y = x Wᵀ (+ b) + s · (x Aᵀ) Bᵀ`, with `s = α / r` (or `α / √r` with rsLoRA, Kalajdzievski 2023).
//!
//! `A ~ U(−1/√in, 1/√in)` (PEFT: `kaiming_uniform_(lora_A.weight, a=√5)`, whose bound is
//! `gain·√3/√fan_in` with `gain = √(2/(1+5))`, i.e. `1/√in`) and `B = 0`, so an adapted decoder
//! starts out computing exactly the base model. Only `A` and `B` are variables; the base weights
//! go through [`crate::frozen_linear`], so backward never runs a weight-gradient gemm for them.
//!
//! [`Decoder::merged`] folds the adapters in (`W' = W + s·B·A`) for the rollout path, which reads
//! `Linear::weight` directly and would otherwise ignore them.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use rlzero_model::layers::Linear;
//! use rlzero_model::lora::{LoraAdapter, LoraConfig, TargetModule};
//!
//! let cfg: LoraConfig =
//!     serde_json::from_str(r#"{"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}"#)?;
//! cfg.validate()?;
//! assert_eq!((cfg.scale(), cfg.target_modules[1]), (2.0, TargetModule::VProj));
//! let adapter = LoraAdapter::new(4, 3, &cfg, 0, DType::F32, &Device::Cpu)?; // A (2, 4), B (3, 2)
//! let lin = Linear { weight: Tensor::ones((3, 4), DType::F32, &Device::Cpu)?, bias: None, lora: Some(adapter) };
//! let x = Tensor::ones((1, 4), DType::F32, &Device::Cpu)?; // (N 1, in 4)
//! assert_eq!(lin.forward(&x)?.to_vec2::<f32>()?, vec![vec![4f32; 3]]); // B = 0: the base map
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::decoder::{Decoder, DecoderLayer};
use crate::error::{ModelError, Result};
use crate::layers::Linear;
use crate::weights::{WeightMode, Weights};

/// A projection LoRA can adapt, named as in HF checkpoints (serde: `"q_proj"`, …, `"down_proj"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetModule {
    /// `self_attn.q_proj`.
    QProj,
    /// `self_attn.k_proj`.
    KProj,
    /// `self_attn.v_proj`.
    VProj,
    /// `self_attn.o_proj`.
    OProj,
    /// `mlp.gate_proj`.
    GateProj,
    /// `mlp.up_proj`.
    UpProj,
    /// `mlp.down_proj`.
    DownProj,
}

impl TargetModule {
    /// Every projection of a layer, in checkpoint order.
    pub const ALL: [TargetModule; 7] = [
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::OProj,
        Self::GateProj,
        Self::UpProj,
        Self::DownProj,
    ];

    /// The module's checkpoint name, e.g. `q_proj`.
    pub fn name(self) -> &'static str {
        match self {
            Self::QProj => "q_proj",
            Self::KProj => "k_proj",
            Self::VProj => "v_proj",
            Self::OProj => "o_proj",
            Self::GateProj => "gate_proj",
            Self::UpProj => "up_proj",
            Self::DownProj => "down_proj",
        }
    }

    /// The submodule holding it: `self_attn` or `mlp`.
    pub fn group(self) -> &'static str {
        match self {
            Self::QProj | Self::KProj | Self::VProj | Self::OProj => "self_attn",
            Self::GateProj | Self::UpProj | Self::DownProj => "mlp",
        }
    }
}

/// LoRA hyper-parameters, with PEFT's `LoraConfig` field names and defaults. Missing fields take
/// their default when deserialised; unknown fields are an error (a typo must not be ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Adapter rank `r`. Default 8 (PEFT).
    pub r: usize,
    /// Scaling numerator `α`. Default 8 (PEFT).
    pub lora_alpha: f64,
    /// Dropout on the adapter's input in every trainer forward (PEFT in train mode; TRL keeps
    /// dropout on by default). Default 0.0 (PEFT). Masks are seeded from `seed`, so runs
    /// reproduce.
    pub lora_dropout: f64,
    /// Projections to adapt in every layer. Default: all seven (PEFT's `"all-linear"` for these
    /// architectures, which excludes `lm_head`; the usual GRPO/TRL recipe). PEFT's own per-model
    /// fallback for Llama/Qwen is `["q_proj", "v_proj"]`.
    pub target_modules: Vec<TargetModule>,
    /// rsLoRA scaling `α/√r` instead of `α/r`. Default false (PEFT).
    pub use_rslora: bool,
    /// Seed of the `A` initialisation (not in PEFT, which draws from torch's global RNG).
    /// Default 0.
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: TargetModule::ALL.to_vec(),
            use_rslora: false,
            seed: 0,
        }
    }
}

impl LoraConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| {
            Err(ModelError::InvalidLoraConfig { field, reason })
        };
        if self.r == 0 {
            return bad("r", "the rank must be at least 1".into());
        }
        if !self.lora_alpha.is_finite() {
            return bad("lora_alpha", format!("{} is not finite", self.lora_alpha));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(
                "lora_dropout",
                format!("{} is outside [0, 1)", self.lora_dropout),
            );
        }
        if self.target_modules.is_empty() {
            return bad("target_modules", "no module to adapt".into());
        }
        for (i, m) in self.target_modules.iter().enumerate() {
            if self.target_modules[..i].contains(m) {
                return bad("target_modules", format!("`{}` is listed twice", m.name()));
            }
        }
        Ok(())
    }

    /// The adapter's output scale `s`: `α/r`, or `α/√r` with `use_rslora`.
    pub fn scale(&self) -> f64 {
        let r = self.r as f64;
        if self.use_rslora {
            self.lora_alpha / r.sqrt()
        } else {
            self.lora_alpha / r
        }
    }
}

/// SplitMix64 (Steele et al. 2014): a tiny, seedable, platform- and thread-independent stream.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One adapter pair on a linear map `(out, in)`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// Down-projection `A` `(r, in)`, PEFT's `lora_A.weight`.
    pub a: Var,
    /// Up-projection `B` `(out, r)`, PEFT's `lora_B.weight`.
    pub b: Var,
    /// Output scale `s` ([`LoraConfig::scale`]).
    pub scale: f64,
    /// Input dropout probability `p` (PEFT's `lora_dropout`): each forward through the unmerged
    /// adapter multiplies `x` by a fresh mask of `0` (probability `p`) and `1/(1−p)`. Merged
    /// weights (rollouts, export) carry no dropout, as PEFT in eval mode.
    pub dropout: f64,
    /// Seed of this adapter's dropout masks, from `(cfg.seed, stream)`.
    dropout_seed: u64,
    /// Forwards run so far: mask `k` is drawn from `(dropout_seed, k)`, so a run replays the same
    /// masks in the same order whatever the thread count.
    dropout_calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl LoraAdapter {
    /// PEFT's initialisation: `A ~ U(−1/√in, 1/√in)` from a SplitMix64 stream seeded by
    /// `(cfg.seed, stream)`, `B = 0`; both variables in `dtype` on `device`. Distinct `stream`s
    /// (the decoder uses `layer · 8 + module`) give independent draws.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        cfg: &LoraConfig,
        stream: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = SplitMix64(cfg.seed);
        let mut rng = SplitMix64(rng.next_u64() ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let dropout_seed = rng.next_u64();
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a: Vec<f64> = (0..cfg.r * in_dim)
            .map(|_| (2.0 * rng.next_f64() - 1.0) * bound)
            .collect();
        let a = Tensor::from_vec(a, (cfg.r, in_dim), device)?.to_dtype(dtype)?; // (r, in)
        let b = Tensor::zeros((out_dim, cfg.r), dtype, device)?; // (out, r)
        Ok(Self {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scale: cfg.scale(),
            dropout: cfg.lora_dropout,
            dropout_seed,
            dropout_calls: Default::default(),
        })
    }

    /// The adapter's contribution `s · (drop(x) Aᵀ) Bᵀ` for `x` `(N, in)` → `(N, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dropped;
        let x = if self.dropout > 0.0 {
            dropped = (x * self.dropout_mask(x)?)?; // (N, in)
            &dropped
        } else {
            x
        };
        let h = x.matmul(&self.a.as_tensor().t()?)?; // (N, r)
        let y = h.matmul(&self.b.as_tensor().t()?)?; // (N, out)
        Ok((y * self.scale)?)
    }

    /// Inverted-dropout mask shaped like `x`: `0` with probability `p`, else `1/(1−p)`.
    fn dropout_mask(&self, x: &Tensor) -> Result<Tensor> {
        let call = self
            .dropout_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut rng = SplitMix64(self.dropout_seed ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let keep = 1.0 - self.dropout;
        let m: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.next_f64() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Tensor::from_vec(m, x.shape(), x.device())?.to_dtype(x.dtype())?)
    }

    /// `W + s·B·A` `(out, in)` as a new constant tensor in `w`'s dtype (computed in at least f32).
    pub fn merge_into(&self, w: &Tensor) -> Result<Tensor> {
        let dtype = w.dtype();
        let work = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let a = self.a.as_tensor().detach().to_dtype(work)?; // (r, in)
        let b = self.b.as_tensor().detach().to_dtype(work)?; // (out, r)
        let delta = (b.matmul(&a)? * self.scale)?; // (out, in)
        Ok((w.detach().to_dtype(work)? + delta)?.to_dtype(dtype)?)
    }
}

/// The seven projections of a layer with their module names.
fn targets(l: &DecoderLayer) -> [(TargetModule, &Linear); 7] {
    let (a, m) = (&l.self_attn, &l.mlp);
    [
        (TargetModule::QProj, &a.q_proj),
        (TargetModule::KProj, &a.k_proj),
        (TargetModule::VProj, &a.v_proj),
        (TargetModule::OProj, &a.o_proj),
        (TargetModule::GateProj, &m.gate_proj),
        (TargetModule::UpProj, &m.up_proj),
        (TargetModule::DownProj, &m.down_proj),
    ]
}

fn targets_mut(l: &mut DecoderLayer) -> [(TargetModule, &mut Linear); 7] {
    let (a, m) = (&mut l.self_attn, &mut l.mlp);
    [
        (TargetModule::QProj, &mut a.q_proj),
        (TargetModule::KProj, &mut a.k_proj),
        (TargetModule::VProj, &mut a.v_proj),
        (TargetModule::OProj, &mut a.o_proj),
        (TargetModule::GateProj, &mut m.gate_proj),
        (TargetModule::UpProj, &mut m.up_proj),
        (TargetModule::DownProj, &mut m.down_proj),
    ]
}

/// The LoRA side of [`Decoder`].
impl Decoder {
    /// Turns a [`WeightMode::Trainable`] decoder into a frozen one in place, sharing storage (no
    /// copy): the weights become constants, so `vars()` errors until adapters are attached.
    /// `Var`s taken from it earlier still alias the same buffers; drop them. No-op when frozen.
    pub fn freeze(&mut self) -> Result<()> {
        if self.mode == WeightMode::Trainable {
            *self = self.frozen_with(HashMap::new())?;
        }
        Ok(())
    }

    /// A frozen decoder over `self`'s weights (shared, not copied), with those in `replace`
    /// substituted by name.
    fn frozen_with(&self, mut replace: HashMap<String, Tensor>) -> Result<Decoder> {
        let tensors = self
            .params
            .iter()
            .map(|(n, t)| (n.clone(), replace.remove(n).unwrap_or_else(|| t.detach())))
            .collect();
        if let Some(name) = replace.into_keys().next() {
            let source_name = "LoRA merge".into();
            return Err(ModelError::MissingTensor {
                source_name,
                tensor: name,
            });
        }
        let (dtype, mode) = (self.dtype(), WeightMode::Frozen);
        let w = Weights::new("frozen view", tensors, dtype, self.device(), mode)?;
        Decoder::new(&self.cfg, &w, mode)
    }

    /// Attaches a fresh adapter (`B = 0`, so the outputs do not change) to each of
    /// `cfg.target_modules` in every layer. The base must be frozen (load it with
    /// [`WeightMode::Frozen`] or call [`Decoder::freeze`]) and carry no adapters yet; `cfg` must
    /// validate. Adapters take the decoder's dtype and device.
    pub fn add_lora(&mut self, cfg: &LoraConfig) -> Result<()> {
        cfg.validate()?;
        if self.mode != WeightMode::Frozen {
            return Err(ModelError::Lora(
                "the base weights are trainable; load with WeightMode::Frozen or call \
                 Decoder::freeze() before adding adapters"
                    .into(),
            ));
        }
        if self.has_adapters() {
            return Err(ModelError::Lora("this decoder already has adapters".into()));
        }
        let (dtype, device) = (self.dtype(), self.device().clone());
        // Build every adapter before attaching any, so an error leaves the decoder unchanged.
        let mut built = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (k, (m, lin)) in targets(layer).into_iter().enumerate() {
                if cfg.target_modules.contains(&m) {
                    let (out, inp) = lin.weight.dims2()?;
                    let stream = i as u64 * 8 + k as u64;
                    built.push(LoraAdapter::new(inp, out, cfg, stream, dtype, &device)?);
                }
            }
        }
        let mut built = built.into_iter();
        for layer in &mut self.layers {
            for (m, lin) in targets_mut(layer) {
                if cfg.target_modules.contains(&m) {
                    lin.lora = built.next();
                }
            }
        }
        self.lora_cfg = Some(cfg.clone());
        Ok(())
    }

    /// How many forwards each adapter's dropout stream has served, in [`Decoder::named_trainable`]
    /// order (one per adapter): with the seed, the position of every dropout mask stream. A
    /// checkpoint saves it so a resumed run draws the masks it would have drawn. Empty without
    /// adapters.
    pub fn lora_dropout_calls(&self) -> Vec<u64> {
        self.adapters()
            .map(|ad| ad.dropout_calls.load(std::sync::atomic::Ordering::SeqCst))
            .collect()
    }

    /// Restores [`Decoder::lora_dropout_calls`]; errors if the count of adapters differs.
    pub fn set_lora_dropout_calls(&self, calls: &[u64]) -> Result<()> {
        let adapters: Vec<&LoraAdapter> = self.adapters().collect();
        if adapters.len() != calls.len() {
            return Err(ModelError::Lora(format!(
                "{} dropout positions for {} adapters",
                calls.len(),
                adapters.len()
            )));
        }
        for (ad, c) in adapters.into_iter().zip(calls) {
            ad.dropout_calls
                .store(*c, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    fn adapters(&self) -> impl Iterator<Item = &LoraAdapter> + '_ {
        self.layers.iter().flat_map(|layer| {
            targets(layer)
                .into_iter()
                .filter_map(|(_, lin)| lin.lora.as_ref())
        })
    }

    /// The settings of the attached adapters ([`Decoder::add_lora`]'s `cfg`); `None` without.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora_cfg.as_ref().filter(|_| self.has_adapters())
    }

    /// Whether any linear map carries a LoRA adapter.
    pub fn has_adapters(&self) -> bool {
        self.layers
            .iter()
            .any(|l| targets(l).iter().any(|(_, lin)| lin.lora.is_some()))
    }

    /// What an optimizer should update, named. With adapters: exactly the adapter variables, in
    /// PEFT's `named_parameters()` naming (`base_model.model.model.layers.0.self_attn.q_proj.
    /// lora_A.weight`, then `lora_B`), layer by layer. Without: every weight of a
    /// [`WeightMode::Trainable`] decoder under its checkpoint name. Errors on a frozen decoder
    /// without adapters.
    pub fn named_trainable(&self) -> Result<Vec<(String, Var)>> {
        if self.has_adapters() {
            let mut out = Vec::new();
            for (i, layer) in self.layers.iter().enumerate() {
                for (m, lin) in targets(layer) {
                    if let Some(ad) = &lin.lora {
                        let p = format!(
                            "base_model.model.model.layers.{i}.{}.{}",
                            m.group(),
                            m.name()
                        );
                        out.push((format!("{p}.lora_A.weight"), ad.a.clone()));
                        out.push((format!("{p}.lora_B.weight"), ad.b.clone()));
                    }
                }
            }
            return Ok(out);
        }
        match self.mode {
            WeightMode::Trainable => self
                .params
                .iter()
                .map(|(n, t)| Ok((n.clone(), Var::from_tensor(t)?)))
                .collect(),
            WeightMode::Frozen => Err(ModelError::InvalidInput(
                "this decoder's weights are frozen; load it with WeightMode::Trainable, or add \
                 LoRA adapters (Decoder::add_lora), to train"
                    .into(),
            )),
        }
    }

    /// A frozen decoder computing what `self` computes, without adapters: each adapted weight is
    /// a new tensor `W + s·B·A`; every other weight shares storage with `self` (no copy). Use it
    /// for rollouts (re-merge after every optimizer step) and export. On a decoder without
    /// adapters it is a frozen view of the same weights.
    pub fn merged(&self) -> Result<Decoder> {
        let mut merged = HashMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (m, lin) in targets(layer) {
                if let Some(ad) = &lin.lora {
                    let name = format!("model.layers.{i}.{}.{}.weight", m.group(), m.name());
                    merged.insert(name, ad.merge_into(&lin.weight)?);
                }
            }
        }
        self.frozen_with(merged)
    }
}
