//! The CPU `f32` fast path of [`AdamW`](super::AdamW): one fused, in-place pass per parameter.
//!
//! [`FusedAdamW`] is a candle [`InplaceOp2`] applied with `param.inplace_op2(&grad, &op)`:
//! candle takes the parameter's storage write lock and the gradient's read lock (in a
//! deadlock-free order, refusing a gradient that aliases the parameter) and hands us both
//! storages; we slice them at their layouts' offsets into `&mut [f32]` / `&[f32]`. The moments live in host `Vec<f32>`s borrowed by the op. Each
//! element sees exactly the arithmetic of torch's `_single_tensor_adam` (see
//! [`update_slice`]); work is split into fixed [`CHUNK`]-element pieces run by rayon, and
//! since the update is elementwise the result is independent of the thread count.

use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp2, Layout};
use rayon::prelude::*;

/// Elements per rayon task (256 KiB of `f32` per stream); parameters up to this size are
/// updated on the calling thread.
pub(super) const CHUNK: usize = 1 << 16;

/// Per-step scalars, already rounded to `f32` the way torch's CPU kernels round Python
/// floats passed as `Scalar`s to a float32 op.
#[derive(Debug, Clone, Copy)]
pub(super) struct Coeffs {
    /// `1 - lr·weight_decay` (`param.mul_(...)`), `None` when `weight_decay == 0` (torch
    /// skips the multiply then).
    pub decay: Option<f32>,
    /// The lerp weight `1 - β1` (`exp_avg.lerp_(grad, 1 - beta1)`).
    pub lerp_weight: f32,
    /// `β2` (`exp_avg_sq.mul_(beta2)`).
    pub beta2: f32,
    /// `1 - β2` (`addcmul_(grad, grad, value=1 - beta2)`).
    pub one_minus_beta2: f32,
    /// `bias_correction2 ** 0.5`.
    pub bc2_sqrt: f32,
    /// `eps` (`.add_(eps)`).
    pub eps: f32,
    /// `-lr / bias_correction1` (`addcdiv_(..., value=-step_size)`).
    pub neg_step_size: f32,
}

/// `fma(a, b, c) = a·b + c` with one rounding (up to a double rounding that needs the exact
/// result to sit on an `f32` rounding midpoint after rounding to `f64`, probability ~2⁻²⁸).
///
/// torch's CPU kernels compute `lerp` and `addcmul` with fused multiply-adds (ATen's
/// vectorised `lerp_vec` calls `vec::fmadd`; the scalar tails and `addcmul` are contracted by
/// the compiler in the AVX2/AVX512 builds), which a plain `a * b + c` would miss by an ulp in
/// ~10% of elements. The `f64` product of two `f32`s is exact (48 significant bits), so this
/// stays vectorisable without requiring the `fma` target feature (`f32::mul_add` would be a
/// libm call per element on baseline x86-64).
#[inline(always)]
pub(super) fn fma_f32(a: f32, b: f32, c: f32) -> f32 {
    (f64::from(a) * f64::from(b) + f64::from(c)) as f32
}

/// `at::lerp` for a scalar weight as ATen's `lerp_vec` computes it:
/// `fma(w, end − start, start)` when `|w| < 0.5`, else `fma(w − 1, end − start, end)`.
#[inline(always)]
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        fma_f32(weight, end - start, start)
    } else {
        fma_f32(weight - 1.0, end - start, end)
    }
}

/// Applies one AdamW step to `p` with gradient `g`, updating the moments `m`, `v`.
///
/// Per element, in torch's order (all `f32`, products in `fma` exact):
/// `p *= decay`; `m = lerp(m, g, 1−β1)`; `v = fma((1−β2)·g, g, v·β2)`;
/// `denom = √v / √bc2 + ε`; `p = p + (−step_size·m) / denom`.
pub(super) fn update_slice(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coeffs) {
    let w = c.lerp_weight;
    let body = |p: &mut f32, g: f32, m: &mut f32, v: &mut f32| {
        let mut pi = *p;
        if let Some(d) = c.decay {
            // param.mul_(1 - lr * weight_decay)
            pi *= d;
        }
        // exp_avg.lerp_(grad, 1 - beta1)
        let mi = lerp(*m, g, w);
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2);
        // addcmul is `self + value * t1 * t2`, contracted to fma(value * t1, t2, self).
        let vi = fma_f32(c.one_minus_beta2 * g, g, *v * c.beta2);
        let denom = vi.sqrt() / c.bc2_sqrt + c.eps;
        // addcdiv: `self + value * t1 / t2`, left to right (the division blocks an FMA).
        *p = pi + c.neg_step_size * mi / denom;
        *m = mi;
        *v = vi;
    };
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        body(p, g, m, v);
    }
}

/// The fused in-place AdamW op for one CPU `f32` parameter; see the module docs.
pub(super) struct FusedAdamW<'a> {
    /// First moment (`exp_avg`), one entry per parameter element.
    pub m: RefCell<&'a mut [f32]>,
    /// Second moment (`exp_avg_sq`).
    pub v: RefCell<&'a mut [f32]>,
    /// This step's scalars.
    pub coeffs: Coeffs,
}

fn op_err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(format!("rlzero-adamw: {msg}"))
}

impl InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "rlzero-adamw"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (dst, src) else {
            return Err(op_err("parameter and gradient must both be f32".into()));
        };
        // Honour both layouts' start offsets; candle hands us the whole storage buffer.
        let (Some((p0, p1)), Some((g0, g1))) =
            (dst_l.contiguous_offsets(), src_l.contiguous_offsets())
        else {
            return Err(op_err("parameter and gradient must be contiguous".into()));
        };
        let (Some(p), Some(g)) = (p.get_mut(p0..p1), g.get(g0..g1)) else {
            return Err(op_err("layout out of the storage's bounds".into()));
        };
        let mut m = self
            .m
            .try_borrow_mut()
            .map_err(|_| op_err("first moment already borrowed".into()))?;
        let mut v = self
            .v
            .try_borrow_mut()
            .map_err(|_| op_err("second moment already borrowed".into()))?;
        let (m, v): (&mut [f32], &mut [f32]) = (&mut m, &mut v);
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            return Err(op_err(format!(
                "length mismatch: param {}, grad {}, exp_avg {}, exp_avg_sq {}",
                p.len(),
                g.len(),
                m.len(),
                v.len()
            )));
        }
        let c = self.coeffs;
        if p.len() <= CHUNK {
            update_slice(p, g, m, v, c);
        } else {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| update_slice(p, g, m, v, c));
        }
        Ok(())
    }
}
