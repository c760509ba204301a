//! The small differentiable building blocks of a decoder: linear maps, RMSNorm, the SwiGLU MLP.
//!
//! Each has a backward pass: RMSNorm and SwiGLU's gate are [`crate::fused`] ops (candle's own
//! `candle_nn::ops::rms_norm` and `RmsNorm::forward` drop gradients silently). A [`Linear`] with a
//! frozen weight under a graph that tracks gradients goes through
//! [`crate::frozen_linear::frozen_matmul`], which skips candle's weight-gradient gemm, and a
//! trainable one through [`crate::frozen_linear::linear_matmul`], one autograd node.

use candle_core::Tensor;

use crate::error::Result;
use crate::frozen_linear::{frozen_matmul, linear_matmul};
use crate::fused;
use crate::lora::LoraAdapter;
use crate::weights::Vb;

/// `y = x Wᵀ + b` with `W` of shape `(out, in)` as stored in HF checkpoints, plus
/// `s · (x Aᵀ) Bᵀ` when a LoRA adapter is attached.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `W`, shape `(out, in)`.
    pub weight: Tensor,
    /// `b`, shape `(out,)`, when the checkpoint has one.
    pub bias: Option<Tensor>,
    /// A LoRA adapter added to the output ([`crate::lora`]); `None` (the default) for none.
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    /// Reads `{prefix}.weight` `(out, in)` and, if `bias`, `{prefix}.bias` `(out,)`.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: Vb<'_>) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            lora: None,
        })
    }

    /// `x` `(..., in)` → `(..., out)`, as one gemm over the leading dims folded into rows
    /// (the fastest gemm shape, and no weight broadcast per batch row). A constant weight with
    /// an `x` that tracks gradients uses [`frozen_matmul`] (no weight gradient); otherwise
    /// [`linear_matmul`] (one autograd node with both gradients).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = if x.track_op() && !self.weight.track_op() {
            frozen_matmul(x, &self.weight)? // (…, out)
        } else {
            linear_matmul(x, &self.weight)? // (…, out)
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(lora) = &self.lora {
            let in_dim = self.weight.dim(1)?;
            let x2 = x.reshape(((), in_dim))?; // (N, in)
            y = (&y + lora.forward(&x2)?.reshape(y.shape())?)?; // (…, out)
        }
        Ok(y)
    }
}

/// RMSNorm (Zhang & Sennrich 2019): `y = w ⊙ x / sqrt(mean(x²) + ε)`, computed in at least f32
/// as transformers' `LlamaRMSNorm` does.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// The gain `w`, shape `(dim,)`.
    pub weight: Tensor,
    /// `ε` (`rms_norm_eps`).
    pub eps: f64,
}

impl RmsNorm {
    /// Reads `weight` of shape `(dim,)` under `vb`.
    pub fn new(dim: usize, eps: f64, vb: Vb<'_>) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    /// Normalises over the last dimension ([`crate::fused::rms_norm()`]: one op with a backward
    /// pass on the CPU, candle's differentiable ops elsewhere).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fused::rms_norm(x, &self.weight, self.eps)
    }
}

/// SwiGLU feed-forward (Shazeer 2020): `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `(intermediate, hidden)`, through SiLU.
    pub gate_proj: Linear,
    /// `(intermediate, hidden)`, multiplied with the gate.
    pub up_proj: Linear,
    /// `(hidden, intermediate)`.
    pub down_proj: Linear,
}

impl Mlp {
    /// Reads `gate_proj`, `up_proj` and `down_proj` under `vb`.
    pub fn new(hidden: usize, intermediate: usize, bias: bool, vb: Vb<'_>) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::new(hidden, intermediate, bias, vb.pp("gate_proj"))?,
            up_proj: Linear::new(hidden, intermediate, bias, vb.pp("up_proj"))?,
            down_proj: Linear::new(intermediate, hidden, bias, vb.pp("down_proj"))?,
        })
    }

    /// `(…, hidden) → (…, hidden)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?; // (B, T, I)
        let up = self.up_proj.forward(x)?; // (B, T, I)
        self.down_proj.forward(&fused::silu_mul(&gate, &up)?)
    }
}
