//! RMSNorm (Zhang & Sennrich 2019) as one op with a backward pass.
//!
//! Per row `x` of length `D`, with gain `w`: `r = 1/√(Σ x²/D + ε)`, `y = (x·r) ⊙ w`
//! (transformers' `LlamaRMSNorm`, computed in the input's precision, at least f32).
//!
//! Backward, for `g = ∂L/∂y` and `a = Σ_j g_j w_j x_j`:
//! `∂L/∂x_j = r·g_j·w_j − x_j·r³·a/D`, `∂L/∂w_j = Σ_rows g_j·x_j·r`.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rlzero_model::fused::rms_norm;
//! let x = Tensor::new(&[[3.0f32, 4.0]], &Device::Cpu)?; // mean square 12.5
//! let w = Tensor::new(&[1.0f32, 2.0], &Device::Cpu)?;
//! let y = rms_norm(&x, &w, 0.0)?.to_vec2::<f32>()?;
//! let r = 1.0 / 12.5f32.sqrt();
//! assert!((y[0][0] - 3.0 * r).abs() < 1e-6 && (y[0][1] - 8.0 * r).abs() < 1e-6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{cpu_float, dispatch, Real, ROWS_PER_TASK};
use crate::error::Result;

/// `y = x / √(mean(x²) + ε) ⊙ w` over the last dimension of `x` `(…, D)`, `w` `(D,)`.
/// One fused op for f32/f64 on the CPU, [`rms_norm_composed`] otherwise.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if cpu_float(x) && x.elem_count() > 0 && w.dtype() == x.dtype() && w.dims() == [d] {
        return Ok(x
            .contiguous()?
            .apply_op2(&w.contiguous()?, RmsNorm { eps })?);
    }
    rms_norm_composed(x, w, eps)
}

/// The same from candle's differentiable ops; half precision is normalised in f32.
pub fn rms_norm_composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let internal = match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    };
    let xf = x.to_dtype(internal)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?; // (..., 1)
    let normed = xf.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(w)?)
}

struct RmsNorm {
    eps: f64,
}

/// `1/√(Σ x²/D + ε)` of one row.
fn inv_rms<T: Real>(row: &[T], eps: f64) -> T {
    let ss = row.iter().fold(T::ZERO, |acc, &v| acc + v * v);
    let ms = ss / T::from_f64(row.len() as f64) + T::from_f64(eps);
    T::ONE / ms.sqrt()
}

fn forward<T: Real>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                let r = inv_rms(xr, eps);
                for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                    *o = v * r * g;
                }
            }
        });
    y
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = dispatch!(
            "rms-norm",
            [(x, s1, l1), (w, s2, l2)],
            forward(x, w, self.eps)
        );
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let n = x.elem_count() / d.max(1);
        // (n + 1, D): n rows of ∂L/∂x, then ∂L/∂w.
        let packed = x.contiguous()?.apply_op3_no_bwd(
            &w.contiguous()?,
            &grad.contiguous()?,
            &RmsNormGrad { eps: self.eps },
        )?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.get(n)?;
        Ok((Some(dx), Some(dw)))
    }
}

struct RmsNormGrad {
    eps: f64,
}

fn backward<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut out = vec![T::ZERO; x.len() + d];
    let (dx, dw) = out.split_at_mut(x.len());
    // Each task also sums its rows' share of ∂L/∂w; the partials are added in task order.
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(d * ROWS_PER_TASK)
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .zip(g.par_chunks(d * ROWS_PER_TASK))
        .map(|((dxc, xc), gc)| {
            let mut part = vec![T::ZERO; d];
            for ((dxr, xr), gr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                let r = inv_rms(xr, eps);
                let a = xr
                    .iter()
                    .zip(gr)
                    .zip(w)
                    .fold(T::ZERO, |acc, ((&xv, &gv), &wv)| acc + gv * wv * xv);
                let c = r * r * r * a / T::from_f64(d as f64);
                for j in 0..d {
                    dxr[j] = r * gr[j] * w[j] - xr[j] * c;
                    part[j] += gr[j] * xr[j] * r;
                }
            }
            part
        })
        .collect();
    for part in partials {
        for (o, p) in dw.iter_mut().zip(part) {
            *o += p;
        }
    }
    out
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = l2.shape().elem_count();
        let n = l1.shape().elem_count() / d.max(1);
        let out = dispatch!(
            "rms-norm-grad",
            [(x, s1, l1), (w, s2, l2), (g, s3, l3)],
            backward(x, w, g, self.eps)
        );
        Ok((out, Shape::from((n + 1, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{check_fd, grads, max_diff, randn};

    #[test]
    fn matches_the_composed_ops_values_and_gradients() {
        for (dims, eps) in [(vec![3usize, 5, 8], 1e-6), (vec![37, 16], 1e-5)] {
            let x = randn(&dims, 1);
            let w = randn(&[dims[dims.len() - 1]], 2);
            let fused = |t: &[Tensor]| rms_norm(&t[0], &t[1], eps).unwrap();
            let composed = |t: &[Tensor]| rms_norm_composed(&t[0], &t[1], eps).unwrap();
            let ins = [x.clone(), w.clone()];
            assert!(max_diff(&fused(&ins), &composed(&ins)) < 1e-12);
            let gf = grads(&fused, &ins, 3);
            let gc = grads(&composed, &ins, 3);
            for (a, b) in gf.iter().zip(&gc) {
                assert!(max_diff(a, b) < 1e-11, "{}", max_diff(a, b));
            }
            check_fd(&fused, &ins, 0, &gf[0], 3);
            check_fd(&fused, &ins, 1, &gf[1], 3);
            // f32 within rounding of the f64 result.
            let ins32: Vec<Tensor> = ins
                .iter()
                .map(|t| t.to_dtype(DType::F32).unwrap())
                .collect();
            assert!(max_diff(&fused(&ins32), &composed(&ins)) < 1e-5);
        }
    }

    #[test]
    fn empty_rows_do_not_reach_the_kernel() {
        let y = rms_norm(&randn(&[0, 4], 1), &randn(&[4], 2), 1e-6).unwrap();
        assert_eq!(y.dims(), &[0, 4]);
    }
}
