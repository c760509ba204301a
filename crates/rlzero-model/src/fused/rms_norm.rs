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

use super::{cpu_float, dispatch, lanes, zeros_par, Real, ROWS_PER_TASK};
use crate::error::Result;
use crate::simd::SimdPath;

/// `y = x / √(mean(x²) + ε) ⊙ w` over the last dimension of `x` `(…, D)`, `w` `(D,)`.
/// One fused op for f32/f64 on the CPU, [`rms_norm_composed`] otherwise.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if cpu_float(x) && x.elem_count() > 0 && w.dtype() == x.dtype() && w.dims() == [d] {
        return Ok(x.contiguous()?.apply_op2(
            &w.contiguous()?,
            RmsNorm {
                eps,
                path: SimdPath::detect(),
            },
        )?);
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
    /// The CPU path of the kernels (a field so that tests can force each).
    path: SimdPath,
}

/// `1/√(Σ x²/D + ε)` of one row.
#[inline(always)]
fn inv_rms<T: Real>(row: &[T], eps: f64) -> T {
    let ss = lanes::dot(row, row);
    let ms = ss / T::from_f64(row.len() as f64) + T::from_f64(eps);
    T::ONE / ms.sqrt()
}

fn forward<T: Real>(x: &[T], w: &[T], eps: f64, path: SimdPath) -> Vec<T> {
    let d = w.len();
    let mut y = zeros_par(x.len());
    y.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .for_each(|(y, x)| lanes::on_path(path, Forward { y, x, w, eps }));
    y
}

/// One rayon task's rows of the forward.
struct Forward<'a, T> {
    y: &'a mut [T],
    x: &'a [T],
    w: &'a [T],
    eps: f64,
}

impl<T: Real> lanes::Kernel for Forward<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let d = self.w.len();
        for (yr, xr) in self.y.chunks_mut(d).zip(self.x.chunks(d)) {
            let r = inv_rms(xr, self.eps);
            for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(self.w) {
                *o = v * r * g;
            }
        }
    }
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
            forward(x, w, self.eps, self.path)
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
            &RmsNormGrad {
                eps: self.eps,
                path: self.path,
            },
        )?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.get(n)?;
        Ok((Some(dx), Some(dw)))
    }
}

struct RmsNormGrad {
    eps: f64,
    path: SimdPath,
}

fn backward<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64, path: SimdPath) -> Vec<T> {
    let d = w.len();
    let mut out = zeros_par(x.len() + d);
    let (dx, dw) = out.split_at_mut(x.len());
    // Each task also sums its rows' share of ∂L/∂w; the partials are added in task order.
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(d * ROWS_PER_TASK)
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .zip(g.par_chunks(d * ROWS_PER_TASK))
        .map(|((dx, x), g)| lanes::on_path(path, Backward { dx, x, g, w, eps }))
        .collect();
    for part in partials {
        for (o, p) in dw.iter_mut().zip(part) {
            *o += p;
        }
    }
    out
}

/// One rayon task's rows of the backward: writes their `∂L/∂x`, returns their share of `∂L/∂w`.
struct Backward<'a, T> {
    dx: &'a mut [T],
    x: &'a [T],
    g: &'a [T],
    w: &'a [T],
    eps: f64,
}

impl<T: Real> lanes::Kernel for Backward<'_, T> {
    type Output = Vec<T>;
    #[inline(always)]
    fn run(self) -> Vec<T> {
        let (w, d) = (self.w, self.w.len());
        let mut part = vec![T::ZERO; d];
        for ((dxr, xr), gr) in self
            .dx
            .chunks_mut(d)
            .zip(self.x.chunks(d))
            .zip(self.g.chunks(d))
        {
            let (xr, gr) = (&xr[..d], &gr[..d]);
            let r = inv_rms(xr, self.eps);
            let c = r * r * r * lanes::dot3(gr, w, xr) / T::from_f64(d as f64);
            for j in 0..d {
                dxr[j] = r * gr[j] * w[j] - xr[j] * c;
                part[j] += gr[j] * xr[j] * r;
            }
        }
        part
    }
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
            backward(x, w, g, self.eps, self.path)
        );
        Ok((out, Shape::from((n + 1, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{check_fd, f32_bits, grads, max_diff, randn};

    #[test]
    fn every_cpu_path_gives_the_same_bits() {
        let f = |dims: &[usize], seed| randn(dims, seed).to_dtype(DType::F32).unwrap();
        let (x, w, g) = (f(&[37, 21], 1), f(&[21], 2), f(&[37, 21], 3));
        let run = |path: SimdPath| {
            let y = x
                .apply_op2_no_bwd(&w, &RmsNorm { eps: 1e-5, path })
                .unwrap();
            let op = RmsNormGrad { eps: 1e-5, path };
            let d = x.apply_op3_no_bwd(&w, &g, &op).unwrap();
            (f32_bits(&y), f32_bits(&d))
        };
        assert_eq!(run(SimdPath::detect()), run(SimdPath::Portable));
    }

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
