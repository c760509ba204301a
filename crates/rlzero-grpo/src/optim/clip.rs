//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_(params, max_norm)`
//! (`norm_type=2`, `foreach=False`, `error_if_nonfinite=False`).

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Storage, Tensor, Var};
use rayon::prelude::*;

use super::fused::CHUNK;
use crate::error::{GrpoError, Result};

/// Runs `f` on a CPU `f32` contiguous tensor's elements in place (no copy); `None` for any
/// other device, dtype or layout, where callers fall back to candle ops.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<Option<R>> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => {
            let data = data.get(start..end).ok_or_else(|| {
                GrpoError::InvalidInput("gradient layout outside its storage".to_string())
            })?;
            f(data).map(Some)
        }
        _ => Ok(None),
    }
}

/// `Σ g²` of one gradient, accumulated in `f64`.
///
/// CPU `f32` contiguous gradients are read in place, in fixed [`CHUNK`]-element partial sums
/// combined in chunk order, so the value does not depend on the number of rayon threads.
fn sum_sq(grad: &Tensor) -> Result<f64> {
    let fast = with_cpu_f32(grad, |data| {
        let chunk_sum = |c: &[f32]| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let partials: Vec<f64> = data.par_chunks(CHUNK).map(chunk_sum).collect();
        Ok(partials.iter().sum())
    })?;
    match fast {
        Some(v) => Ok(v),
        None => Ok(grad
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?),
    }
}

/// `g · coef` as a new tensor. CPU `f32` contiguous gradients are scaled in one parallel
/// pass over the storage; others go through candle (`broadcast_mul` by a 0-dim tensor, a
/// true multiply in g's dtype like torch's `g.mul_(clip_coef_clamped)`).
fn scale(grad: &Tensor, coef: f64) -> Result<Tensor> {
    let c = coef as f32;
    let fast = with_cpu_f32(grad, |data| {
        let out: Vec<f32> = data
            .par_iter()
            .with_min_len(CHUNK)
            .map(|&x| x * c)
            .collect();
        Ok(Tensor::from_vec(out, grad.shape(), grad.device())?)
    })?;
    match fast {
        Some(t) => Ok(t),
        None => {
            let c = Tensor::new(coef, grad.device())?.to_dtype(grad.dtype())?;
            Ok(grad.broadcast_mul(&c)?)
        }
    }
}

/// The global L2 norm `sqrt(Σᵢ ‖gᵢ‖²)` of the gradients of `vars` found in `grads`, without
/// modifying anything (the value `clip_grad_norm_` returns, and TRL logs as `grad_norm`).
///
/// Vars without a gradient are skipped, as torch skips parameters whose `.grad` is `None`.
/// Sums of squares are accumulated in `f64` (torch reduces each `f32` gradient in `f32`
/// and then takes the norm of the per-tensor norms; the two agree to `f32` rounding).
/// Returns 0 when no var has a gradient (torch returns `tensor(0.)`).
///
/// # Errors
/// A candle error if reading a gradient fails.
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut total = 0.0_f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += sum_sq(g)?;
        }
    }
    Ok(total.sqrt())
}

/// Clips the gradients of `vars` in `grads` to a global L2 norm of at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does, and returns the norm *before* clipping.
///
/// `coef = max_norm / (total + 1e-6)`, clamped to at most 1, and every gradient is replaced
/// by `g · coef`. Like torch, `coef` is computed in the gradients' precision: `f64` when the
/// first gradient is `f64`, `f32` otherwise, with torch's operation order
/// (`max_norm / t` on a tensor is `t.reciprocal() * max_norm`). When `coef` clamps to 1 the
/// gradients are left as they are (torch multiplies by 1.0, a no-op).
///
/// **Divergence from torch:** when the total norm is NaN or infinite, torch still multiplies
/// (turning every gradient into NaN); here the gradients are left untouched and the
/// non-finite norm is returned, so the trainer can skip the step.
///
/// New gradient tensors are inserted into `grads` rather than scaling in place: candle may
/// share one gradient tensor between several entries.
///
/// # Errors
/// [`GrpoError::Config`] (field `max_grad_norm`) if `max_norm` is NaN or negative; a candle
/// error if scaling fails.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(GrpoError::config(
            "max_grad_norm",
            format!("must be a non-negative number, got {max_norm}"),
        ));
    }
    let total = grad_norm(grads, vars)?;
    if !total.is_finite() {
        return Ok(total);
    }
    let first_dtype = vars
        .iter()
        .find_map(|v| grads.get(v.as_tensor()))
        .map(Tensor::dtype);
    let coef = match first_dtype {
        None => return Ok(total),
        // clip_coef = max_norm / (total_norm + 1e-6); clamp(max=1.0)
        Some(DType::F64) => ((1.0 / (total + 1e-6)) * max_norm).min(1.0),
        Some(_) => {
            let t = total as f32 + 1e-6_f32;
            f64::from(((1.0_f32 / t) * max_norm as f32).min(1.0))
        }
    };
    if coef >= 1.0 {
        return Ok(total);
    }
    for var in vars {
        let Some(g) = grads.get(var.as_tensor()) else {
            continue;
        };
        // `g.mul_(clip_coef_clamped)`: a true multiply by the coefficient in g's dtype.
        let scaled = scale(g, coef)?;
        grads.insert(var.as_tensor(), scaled);
    }
    Ok(total)
}
