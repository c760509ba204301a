//! The trainable decoder-only transformer shared by Llama, Qwen2 and Qwen3.
//!
//! `logits = lm_head(norm(L_n(… L_1(embed(ids)))))`, each layer pre-norm residual:
//! `h = x + attn(norm₁(x))`, `y = h + mlp(norm₂(h))`.
//!
//! [`Decoder::forward`] takes an explicit `(B, T)` attention mask and a [`LogitsToKeep`] so a
//! trainer scoring completions never builds `B × T × V` logits for prompt tokens.

use candle_core::{DType, Device, Tensor, Var};

use crate::attention::Attention;
use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use crate::layers::{Linear, Mlp, RmsNorm};
use crate::mask::{self, MaskInfo};
use crate::pack::PackedBatch;
use crate::rope::Rotary;
use crate::weights::{Vb, WeightMode, Weights};

/// Which positions the forward returns logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsToKeep {
    /// Every position `(B, T, V)`.
    All,
    /// The last `k` positions `(B, k, V)`: the completion window when scoring rollouts.
    Last(usize),
}

/// One pre-norm transformer block (`model.layers.N`):
/// `h = x + attn(norm₁(x))`, `y = h + mlp(norm₂(h))`.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Causal self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// SwiGLU feed-forward.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// Reads the block's weights under `vb` (`model.layers.N`).
    pub fn new(cfg: &DecoderConfig, vb: Vb<'_>) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.mlp_bias,
                vb.pp("mlp"),
            )?,
        })
    }

    /// `x (B, T, hidden)`, rotary `cos`/`sin` and additive attention `bias` as
    /// [`Decoder::forward_hidden`] builds them → `(B, T, hidden)`.
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let h = (x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, cos, sin, bias)?)?;
        self.mlp_residual(&h)
    }

    /// `h + mlp(norm₂(h))`.
    fn mlp_residual(&self, h: &Tensor) -> Result<Tensor> {
        Ok((h + self
            .mlp
            .forward(&self.post_attention_layernorm.forward(h)?)?)?)
    }

    /// The layer on a batch in either layout ([`crate::pack::PackedBatch`]); with shared
    /// prompts the completion rows attend to their prompt's keys and values
    /// ([`crate::prefix`]).
    pub(crate) fn forward_batch(&self, x: &Hidden, inputs: &BatchInputs) -> Result<Hidden> {
        let r = &inputs.rows;
        match (&x.prompts, &inputs.prompts) {
            (None, None) => Ok(Hidden {
                rows: self.forward(&x.rows, &r.cos, &r.sin, &r.bias)?,
                prompts: None,
            }),
            (Some(xp), Some((p, group))) => {
                let (ap, ar) = self.self_attn.forward_shared(
                    &self.input_layernorm.forward(xp)?,
                    &self.input_layernorm.forward(&x.rows)?,
                    (&p.cos, &p.sin, &p.bias),
                    (&r.cos, &r.sin, &r.bias),
                    group,
                )?;
                Ok(Hidden {
                    rows: self.mlp_residual(&(&x.rows + ar)?)?,
                    prompts: Some(self.mlp_residual(&(xp + ap)?)?),
                })
            }
            _ => Err(ModelError::InvalidInput(
                "hidden states and layer inputs are in different layouts".into(),
            )),
        }
    }
}

/// Hidden states `(…, hidden)` of a [`crate::pack::PackedBatch`] in its layout: the rows
/// `(B, T, hidden)` (`T = P + C`, or `C` with shared prompts) and the shared prompts'
/// `(n, P, hidden)`.
#[derive(Debug, Clone)]
pub(crate) struct Hidden {
    pub rows: Tensor,
    pub prompts: Option<Tensor>,
}

impl Hidden {
    /// The tensors, rows first.
    pub fn parts(&self) -> Vec<&Tensor> {
        std::iter::once(&self.rows).chain(&self.prompts).collect()
    }

    /// From tensors in [`Hidden::parts`] order.
    pub fn from_parts(mut parts: Vec<Tensor>) -> Result<Self> {
        let prompts = if parts.len() == 2 { parts.pop() } else { None };
        match parts.pop() {
            Some(rows) if parts.is_empty() => Ok(Self { rows, prompts }),
            _ => Err(ModelError::InvalidInput(
                "hidden states have one or two parts".into(),
            )),
        }
    }
}

/// What every layer of a batch's forward reads: the rows' inputs, and with shared prompts the
/// prompts' inputs and the `(B,)` u32 prompt row of each completion row.
pub(crate) struct BatchInputs {
    pub rows: LayerInputs,
    pub prompts: Option<(LayerInputs, Tensor)>,
}

/// What every layer of one forward reads besides the hidden states.
pub(crate) struct LayerInputs {
    /// `(B, T)` u32 token ids.
    pub ids: Tensor,
    /// Rotary tables `(B, 1, T, d)`.
    pub cos: Tensor,
    /// Rotary tables `(B, 1, T, d)`.
    pub sin: Tensor,
    /// Additive attention bias (causal and padding).
    pub bias: Tensor,
}

/// A causal LM with weights in HF naming (`model.layers.N.self_attn.q_proj.weight`, …).
///
/// Its fields are private so that the module tree and [`Decoder::named_parameters`] cannot drift
/// apart; read them through the accessors.
pub struct Decoder {
    pub(crate) cfg: DecoderConfig,
    pub(crate) embed_tokens: Tensor,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: RmsNorm,
    pub(crate) lm_head: Linear,
    rotary: Rotary,
    /// Every weight the forward uses, by checkpoint name, each once (tied embeddings once).
    pub(crate) params: Vec<(String, Tensor)>,
    pub(crate) mode: WeightMode,
    /// The settings the attached LoRA adapters were made with (for PEFT's adapter_config.json).
    pub(crate) lora_cfg: Option<crate::lora::LoraConfig>,
}

impl Decoder {
    /// Builds the decoder from a weight store; every tensor must exist with the right shape.
    pub fn new(cfg: &DecoderConfig, weights: &Weights, mode: WeightMode) -> Result<Self> {
        let vb = weights.root();
        let m = vb.pp("model");
        let embed_tokens = m
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, m.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear {
                weight: embed_tokens.clone(),
                bias: None,
                lora: None,
            }
        } else {
            Linear::new(cfg.hidden_size, cfg.vocab_size, false, vb.pp("lm_head"))?
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: Rotary::new(cfg.head_dim, cfg.rope_theta, &cfg.rope_scaling),
            params: weights.used(),
            mode,
            lora_cfg: None,
        })
    }

    /// The architecture and sizes this decoder was built from.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// The token embedding `(vocab, hidden)` (`model.embed_tokens.weight`).
    pub fn embed_tokens(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// The transformer blocks, in order (`model.layers.N`).
    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// The final norm (`model.norm`).
    pub fn norm(&self) -> &RmsNorm {
        &self.norm
    }

    /// The vocabulary projection (`lm_head`); with tied embeddings its weight is the embedding's
    /// storage, see [`Decoder::has_tied_embeddings`].
    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    /// Whether `lm_head` reuses the token embedding's weight (`tie_word_embeddings`).
    pub fn has_tied_embeddings(&self) -> bool {
        self.cfg.tie_word_embeddings
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// The rotary frequencies this decoder uses.
    pub fn rotary(&self) -> &Rotary {
        &self.rotary
    }

    /// Whether this decoder's weights are variables.
    pub fn mode(&self) -> WeightMode {
        self.mode
    }

    /// Named weights, in checkpoint naming, each once.
    pub fn named_parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// The optimizer variables (same storage: updating a `Var` updates the model): every weight
    /// of a [`WeightMode::Trainable`] decoder, or only the LoRA adapters' `A`/`B` when adapters
    /// are attached ([`Decoder::named_trainable`] has them with names). Errors on a frozen
    /// decoder without adapters, which has nothing to train.
    pub fn vars(&self) -> Result<Vec<Var>> {
        Ok(self
            .named_trainable()?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// A frozen copy of the current weights: later optimizer steps on `self` do not move it.
    /// This is the reference policy `π_ref` of a KL penalty. A trainable decoder's weights are
    /// deep-copied; a frozen decoder's never change, so the copy shares their storage. LoRA
    /// adapters are *not* copied: for an adapted decoder this is the base model (PEFT's
    /// `disable_adapter()`, TRL's reference for PEFT models), costing no memory.
    pub fn frozen_copy(&self) -> Result<Self> {
        let tensors = self
            .params
            .iter()
            .map(|(n, t)| match self.mode {
                WeightMode::Frozen => Ok((n.clone(), t.detach())),
                WeightMode::Trainable => Ok((n.clone(), t.detach().copy()?)),
            })
            .collect::<Result<_>>()?;
        let w = Weights::new(
            "frozen copy",
            tensors,
            self.dtype(),
            self.device(),
            WeightMode::Frozen,
        )?;
        Self::new(&self.cfg, &w, WeightMode::Frozen)
    }

    /// A copy with every weight converted to `dtype` (e.g. f64 for finite-difference checks).
    /// It never shares storage with `self`, even when `dtype` is already the weights' dtype
    /// (candle's `to_dtype` would return the same storage then), so training the copy leaves
    /// `self` untouched.
    pub fn to_dtype(&self, dtype: DType, mode: WeightMode) -> Result<Self> {
        let tensors = self
            .params
            .iter()
            .map(|(n, t)| {
                let t = t.detach();
                let converted = if t.dtype() == dtype {
                    t.copy()?
                } else {
                    t.to_dtype(dtype)?
                };
                Ok((n.clone(), converted))
            })
            .collect::<Result<_>>()?;
        let w = Weights::new("dtype copy", tensors, dtype, self.device(), mode)?;
        Self::new(&self.cfg, &w, mode)
    }

    /// Final hidden states `(B, T, hidden)` after the last norm.
    pub fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let inputs = self.layer_inputs(input_ids, attention_mask)?;
        let mut x = self.embed(&inputs)?;
        for layer in &self.layers {
            x = layer.forward(&x, &inputs.cos, &inputs.sin, &inputs.bias)?;
        }
        self.norm.forward(&x)
    }

    /// [`Decoder::layer_inputs`] for a packed batch in its layout.
    pub(crate) fn batch_inputs(&self, batch: &PackedBatch) -> Result<BatchInputs> {
        let Some(s) = &batch.shared else {
            return Ok(BatchInputs {
                rows: self.layer_inputs(&batch.input_ids, &batch.attention_mask)?,
                prompts: None,
            });
        };
        let prompts = self.layer_inputs(&s.ids, &s.mask)?;
        let dtype = self.dtype();
        let (positions, bias) = s.completion_positions_and_bias(
            &batch.completion_lens,
            batch.completion_len,
            dtype,
            self.device(),
        )?; // (B, C), (B, 1, 1, C, P + C)
        let (cos, sin) = self.rotary.cos_sin(&positions, dtype)?; // (B, 1, C, d)
        let ids = self.checked_ids(&batch.completion_ids)?;
        Ok(BatchInputs {
            rows: LayerInputs {
                ids,
                cos,
                sin,
                bias,
            },
            prompts: Some((prompts, s.group.to_device(self.device())?)),
        })
    }

    /// Token embeddings of a batch in its layout.
    pub(crate) fn embed_batch(&self, inputs: &BatchInputs) -> Result<Hidden> {
        Ok(Hidden {
            rows: self.embed(&inputs.rows)?,
            prompts: inputs
                .prompts
                .as_ref()
                .map(|(p, _)| self.embed(p))
                .transpose()?,
        })
    }

    /// The final-normed hidden states that predict a batch's completion tokens `(B, C, hidden)`:
    /// token `j` is predicted by the state before it, the prompt's last for `j = 0`.
    pub(crate) fn predicting(&self, x: &Hidden, batch: &PackedBatch) -> Result<Tensor> {
        let (p, c) = (batch.prompt_len, batch.completion_len);
        let h = match (&x.prompts, &batch.shared) {
            (None, None) => x.rows.narrow(1, p - 1, c)?, // (B, C, H)
            (Some(xp), Some(s)) => {
                let group = s.group.to_device(self.device())?;
                let last = xp
                    .narrow(1, p - 1, 1)?
                    .contiguous()?
                    .index_select(&group, 0)?; // (B, 1, H)
                if c > 1 {
                    Tensor::cat(&[&last, &x.rows.narrow(1, 0, c - 1)?], 1)? // (B, C, H)
                } else {
                    last
                }
            }
            _ => {
                return Err(ModelError::InvalidInput(
                    "hidden states and batch are in different layouts".into(),
                ))
            }
        };
        self.norm.forward(&h)
    }

    /// `(B, T)` ids as u32 on this device; on the CPU, checked against the vocabulary.
    fn checked_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let ids = input_ids.to_device(self.device())?.to_dtype(DType::U32)?;
        // On a GPU the check would cost a device-to-host copy and a sync per forward, so there
        // the caller's checks stand (the trainer's ids come from `rollout`, which checks prompts
        // against the vocabulary).
        if ids.device().is_cpu() {
            let max_id = ids.max_all()?.to_scalar::<u32>()?;
            if max_id as usize >= self.cfg.vocab_size {
                return Err(ModelError::InvalidInput(format!(
                    "token id {max_id} is outside the vocabulary (size {})",
                    self.cfg.vocab_size
                )));
            }
        }
        Ok(ids)
    }

    /// Checks ids and mask, and builds what every layer reads: rotary tables and the bias.
    pub(crate) fn layer_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<LayerInputs> {
        let (b, t) = input_ids.dims2()?;
        if attention_mask.dims() != [b, t] {
            return Err(ModelError::InvalidInput(format!(
                "attention_mask has shape {:?}, input_ids {:?}",
                attention_mask.dims(),
                input_ids.dims()
            )));
        }
        let ids = self.checked_ids(input_ids)?;
        // The mask likewise is checked only on the CPU (`PackedBatch` builds its masks from
        // lengths, so they are 0/1 with a real token per row).
        if ids.device().is_cpu() {
            MaskInfo::from_tensor(attention_mask)?;
        }
        let dtype = self.dtype();
        let mask = attention_mask.to_device(self.device())?;
        let (positions, bias) = mask::positions_and_bias(&mask, dtype)?; // (B, T), (B, 1, 1, T, T)
        let (cos, sin) = self.rotary.cos_sin(&positions, dtype)?; // (B, 1, T, d)
        Ok(LayerInputs {
            ids,
            cos,
            sin,
            bias,
        })
    }

    /// Token embeddings `(B, T, hidden)`.
    pub(crate) fn embed(&self, inputs: &LayerInputs) -> Result<Tensor> {
        let (b, t) = inputs.ids.dims2()?;
        Ok(self
            .embed_tokens
            .index_select(&inputs.ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.hidden_size))?) // (B, T, hidden)
    }

    /// Logits for the positions in `keep`: `(B, T, V)` or `(B, k, V)`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        keep: LogitsToKeep,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, attention_mask)?;
        let t = h.dim(1)?;
        let h = match keep {
            LogitsToKeep::All => h,
            LogitsToKeep::Last(k) if k >= 1 && k <= t => h.narrow(1, t - k, k)?,
            LogitsToKeep::Last(k) => {
                return Err(ModelError::InvalidInput(format!(
                    "asked for the last {k} positions' logits of a {t}-token sequence"
                )))
            }
        };
        self.lm_head.forward(&h)
    }
}
