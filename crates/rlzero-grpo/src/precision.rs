//! Mixed precision (Micikevicius et al. 2018, "Mixed Precision Training"): a bf16 copy of the
//! policy runs rollouts, the scoring forward and the backward pass; the f32 master weights and
//! AdamW's moments stay in f32.
//!
//! Per optimizer step: `g₁₆ = ∂L/∂W₁₆` (bf16) → `g = f32(g₁₆)`, accumulated over micro-batches
//! in f32 → clip → AdamW on the f32 master `W` → `W₁₆ = bf16(W)`. An update smaller than bf16's
//! resolution (2⁻⁸ of the weight) would vanish if applied to bf16 weights; applied to the f32
//! master it accumulates until it shows in the copy.
//!
//! Worth it on GPUs (bf16 matmuls, half the weight traffic). On the CPU candle converts bf16 to
//! f32 per op, so it only costs there; [`Precision::F32`] is the default.

use candle_core::backprop::GradStore;
use candle_core::{DType, Var};
use rlzero_model::{Decoder, WeightMode};
use serde::{Deserialize, Serialize};

use crate::error::{GrpoError, Result};

/// The dtype the policy computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32 (default): exact with respect to the f32 reference numbers, and the
    /// fastest on the CPU.
    #[default]
    F32,
    /// bf16 compute weights, f32 master weights and optimizer state (module docs). The model
    /// must be loaded in f32 (it becomes the master); full fine-tuning only (LoRA adapters
    /// would need f32 adapters on a bf16 base, not implemented).
    Bf16,
}

/// The bf16 working copy of an f32 master decoder.
pub(crate) struct ComputeCopy {
    decoder: Decoder,
    /// The copy's variables, in the master's `named_trainable` order.
    vars: Vec<Var>,
}

impl ComputeCopy {
    /// A bf16 copy of `master` (its own storage, trainable).
    pub(crate) fn new(master: &Decoder) -> Result<Self> {
        let decoder = master.to_dtype(DType::BF16, WeightMode::Trainable)?;
        let vars = Self::matched(master, &decoder)?;
        Ok(Self { decoder, vars })
    }

    /// The copy's variables in the master's order, checked name by name.
    fn matched(master: &Decoder, copy: &Decoder) -> Result<Vec<Var>> {
        let (m, c) = (master.named_trainable()?, copy.named_trainable()?);
        if m.len() != c.len() || m.iter().zip(&c).any(|((a, _), (b, _))| a != b) {
            return Err(GrpoError::InvalidInput(
                "the bf16 copy's variables do not match the master's".into(),
            ));
        }
        Ok(c.into_iter().map(|(_, v)| v).collect())
    }

    /// The bf16 decoder the step runs.
    pub(crate) fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The copy's gradients in `grads`, upcast to f32 and filed under the `master` variables
    /// (same order as [`ComputeCopy::vars`]), so they accumulate and clip in f32.
    pub(crate) fn to_master(&self, mut grads: GradStore, master: &[Var]) -> Result<GradStore> {
        let mut out = GradStore::default();
        for (c, m) in self.vars.iter().zip(master) {
            if let Some(g) = grads.remove(c.as_tensor()) {
                out.insert(m.as_tensor(), g.to_dtype(DType::F32)?);
            }
        }
        Ok(out)
    }

    /// `W₁₆ ← bf16(W)` for every master variable.
    pub(crate) fn sync(&self, master: &[Var]) -> Result<()> {
        for (c, m) in self.vars.iter().zip(master) {
            c.set(&m.as_tensor().to_dtype(DType::BF16)?)?;
        }
        Ok(())
    }
}
