//! The tensor-op path of [`AdamW`](super::AdamW): the same arithmetic as the fused kernel
//! with candle tensor operations, for any device and dtype (moments are tensors of the
//! parameter's dtype, as torch's `zeros_like(param)`). On CPU `f32` it agrees with the
//! fused path bit for bit (tested).

use candle_core::{DType, Device, Tensor, Var};

use crate::error::Result;

/// A 0-dim tensor holding `x` rounded to `dtype` (the rounding torch applies to a Python
/// float `Scalar` operand).
fn scalar(x: f64, dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(Tensor::new(x, device)?.to_dtype(dtype)?)
}

/// `a·b + c` rounded once to the operands' dtype, emulating the fused multiply-adds of
/// torch's CPU `lerp`/`addcmul` kernels: computed in a wider dtype (`f64` for `f32`, `f32`
/// for `f16`/`bf16`, torch's "opmath" type there) where the product is exact; `f64` has no
/// wider type and uses plain `a·b + c`. `a` may be a 0-dim tensor.
fn fma(a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
    let dtype = b.dtype();
    let wide = match dtype {
        DType::F32 => DType::F64,
        DType::F16 | DType::BF16 => DType::F32,
        _ => return Ok(a.broadcast_mul(b)?.add(c)?),
    };
    let prod = a.to_dtype(wide)?.broadcast_mul(&b.to_dtype(wide)?)?;
    Ok(prod.add(&c.to_dtype(wide)?)?.to_dtype(dtype)?)
}

/// The per-step scalars of the tensor-op path, in `f64` (rounded to the var's dtype by
/// [`scalar`], as torch rounds `Scalar` operands).
pub(super) struct TensorStep {
    /// `1 - lr·weight_decay`, `None` when `weight_decay == 0`.
    pub decay: Option<f64>,
    /// `1 - β1`.
    pub lerp_weight: f64,
    /// `β2`.
    pub beta2: f64,
    /// `1 - β2`.
    pub one_minus_beta2: f64,
    /// `bias_correction2 ** 0.5`.
    pub bc2_sqrt: f64,
    /// `ε`.
    pub eps: f64,
    /// `-lr / bias_correction1`.
    pub neg_step_size: f64,
}

/// The tensor-op AdamW update of one var; returns the new `(m, v)`.
///
/// Each candle op mirrors one torch op. Scalars enter as 0-dim tensors of the var's dtype
/// through `broadcast_*`: candle's `affine(c, 0)` would turn `−0` into `+0`, and its
/// `tensor / f64` multiplies by the reciprocal instead of dividing.
pub(super) fn tensor_step(
    var: &Var,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    a: &TensorStep,
) -> Result<(Tensor, Tensor)> {
    let (dtype, device) = (var.dtype(), var.device());
    let mut p = var.as_tensor().detach();
    if let Some(d) = a.decay {
        p = p.broadcast_mul(&scalar(d, dtype, device)?)?; // param.mul_(1 - lr * weight_decay)
    }
    // exp_avg.lerp_(grad, 1 - beta1): ATen's two-branch lerp, with an FMA (see `fma`).
    let w = scalar(a.lerp_weight, dtype, device)?;
    let diff = g.sub(m)?;
    let new_m = if a.lerp_weight.abs() < 0.5 {
        fma(&w, &diff, m)?
    } else {
        let w_minus_one = w.broadcast_sub(&scalar(1.0, dtype, device)?)?;
        fma(&w_minus_one, &diff, g)?
    };
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    let v_scaled = v.broadcast_mul(&scalar(a.beta2, dtype, device)?)?;
    let g_scaled = g.broadcast_mul(&scalar(a.one_minus_beta2, dtype, device)?)?;
    let new_v = fma(&g_scaled, g, &v_scaled)?;
    // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    let denom = new_v
        .sqrt()?
        .broadcast_div(&scalar(a.bc2_sqrt, dtype, device)?)?
        .broadcast_add(&scalar(a.eps, dtype, device)?)?;
    // param.addcdiv_(exp_avg, denom, value=-step_size)
    let step = new_m.broadcast_mul(&scalar(a.neg_step_size, dtype, device)?)?;
    let p = p.add(&step.div(&denom)?)?;
    var.set(&p)?;
    Ok((new_m, new_v))
}
