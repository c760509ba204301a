//! SwiGLU's gate (Shazeer 2020), `silu(a) ⊙ b` with `silu(a) = a·σ(a)`, as one op with a
//! backward pass.
//!
//! Backward, for `g = ∂L/∂y`: `∂L/∂b = g·silu(a)`, `∂L/∂a = g·b·σ(a)·(1 + a·(1 − σ(a)))`.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rlzero_model::fused::silu_mul;
//! let a = Tensor::new(&[0.0f32, 1.0], &Device::Cpu)?;
//! let b = Tensor::new(&[5.0f32, 2.0], &Device::Cpu)?;
//! let y = silu_mul(&a, &b)?.to_vec1::<f32>()?;
//! assert!(y[0] == 0.0 && (y[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_float, dispatch, lanes, zeros_par, Real};
use crate::error::{ModelError, Result};
use crate::simd::SimdPath;

/// Elements handed to one rayon task.
const PER_TASK: usize = 16 * 1024;

/// `silu(gate) ⊙ up`, both of one shape. One fused op for f32/f64 on the CPU,
/// [`silu_mul_composed`] otherwise.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        return Err(ModelError::InvalidInput(format!(
            "silu_mul: gate {:?} and up {:?} differ in shape",
            gate.dims(),
            up.dims()
        )));
    }
    if cpu_float(gate) && gate.elem_count() > 0 && up.dtype() == gate.dtype() {
        return Ok(gate.contiguous()?.apply_op2(
            &up.contiguous()?,
            SiluMul {
                path: SimdPath::detect(),
            },
        )?);
    }
    silu_mul_composed(gate, up)
}

/// The same from candle's differentiable ops.
pub fn silu_mul_composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((gate.silu()? * up)?)
}

/// `path`: the CPU path of the kernels (a field so that tests can force each).
struct SiluMul {
    path: SimdPath,
}

#[inline(always)]
fn sigmoid<T: Real>(a: T) -> T {
    T::ONE / (T::ONE + (T::ZERO - a).exp())
}

fn forward<T: Real>(a: &[T], b: &[T], path: SimdPath) -> Vec<T> {
    let mut y = zeros_par(a.len());
    y.par_chunks_mut(PER_TASK)
        .zip(a.par_chunks(PER_TASK).zip(b.par_chunks(PER_TASK)))
        .for_each(|(y, (a, b))| lanes::on_path(path, Forward { y, a, b }));
    y
}

/// One rayon task's share of the forward.
struct Forward<'a, T> {
    y: &'a mut [T],
    a: &'a [T],
    b: &'a [T],
}

impl<T: Real> lanes::Kernel for Forward<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for ((o, &av), &bv) in self.y.iter_mut().zip(self.a).zip(self.b) {
            *o = av / (T::ONE + (T::ZERO - av).exp()) * bv; // torch's silu: x / (1 + e^−x)
        }
    }
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = dispatch!(
            "silu-mul",
            [(a, s1, l1), (b, s2, l2)],
            forward(a, b, self.path)
        );
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // (2, n): ∂L/∂gate, then ∂L/∂up.
        let packed = gate.contiguous()?.apply_op3_no_bwd(
            &up.contiguous()?,
            &grad.contiguous()?,
            &SiluMulGrad { path: self.path },
        )?;
        let dgate = packed.get(0)?.reshape(gate.shape())?;
        let dup = packed.get(1)?.reshape(up.shape())?;
        Ok((Some(dgate), Some(dup)))
    }
}

struct SiluMulGrad {
    path: SimdPath,
}

fn backward<T: Real>(a: &[T], b: &[T], g: &[T], path: SimdPath) -> Vec<T> {
    let n = a.len();
    let mut out = zeros_par(2 * n);
    let (da, db) = out.split_at_mut(n);
    da.par_chunks_mut(PER_TASK)
        .zip(db.par_chunks_mut(PER_TASK))
        .zip(a.par_chunks(PER_TASK))
        .zip(b.par_chunks(PER_TASK).zip(g.par_chunks(PER_TASK)))
        .for_each(|(((da, db), a), (b, g))| lanes::on_path(path, Backward { da, db, a, b, g }));
    out
}

/// One rayon task's share of the backward.
struct Backward<'a, T> {
    da: &'a mut [T],
    db: &'a mut [T],
    a: &'a [T],
    b: &'a [T],
    g: &'a [T],
}

impl<T: Real> lanes::Kernel for Backward<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let n = self.a.len();
        let (da, db, a, b, g) = (
            &mut self.da[..n],
            &mut self.db[..n],
            self.a,
            &self.b[..n],
            &self.g[..n],
        );
        for i in 0..n {
            let (av, bv, gv) = (a[i], b[i], g[i]);
            let s = sigmoid(av);
            db[i] = gv * av * s;
            da[i] = gv * bv * s * (T::ONE + av * (T::ONE - s));
        }
    }
}

impl CustomOp3 for SiluMulGrad {
    fn name(&self) -> &'static str {
        "silu-mul-grad"
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
        let n = l1.shape().elem_count();
        let out = dispatch!(
            "silu-mul-grad",
            [(a, s1, l1), (b, s2, l2), (g, s3, l3)],
            backward(a, b, g, self.path)
        );
        Ok((out, Shape::from((2, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{check_fd, f32_bits, grads, max_diff, randn};
    use candle_core::DType;

    #[test]
    fn every_cpu_path_gives_the_same_bits() {
        let f = |seed| randn(&[5, 37], seed).to_dtype(DType::F32).unwrap();
        let (a, b, g) = (f(1), f(2), f(3));
        let run = |path: SimdPath| {
            let y = a.apply_op2_no_bwd(&b, &SiluMul { path }).unwrap();
            let d = a.apply_op3_no_bwd(&b, &g, &SiluMulGrad { path }).unwrap();
            (f32_bits(&y), f32_bits(&d))
        };
        assert_eq!(run(SimdPath::detect()), run(SimdPath::Portable));
    }

    #[test]
    fn matches_the_composed_ops_values_and_gradients() {
        let ins = [randn(&[3, 7, 11], 4), randn(&[3, 7, 11], 5)];
        let fused = |t: &[Tensor]| silu_mul(&t[0], &t[1]).unwrap();
        let composed = |t: &[Tensor]| silu_mul_composed(&t[0], &t[1]).unwrap();
        assert!(max_diff(&fused(&ins), &composed(&ins)) < 1e-14);
        let gf = grads(&fused, &ins, 6);
        let gc = grads(&composed, &ins, 6);
        for (a, b) in gf.iter().zip(&gc) {
            assert!(max_diff(a, b) < 1e-13);
        }
        check_fd(&fused, &ins, 0, &gf[0], 6);
        check_fd(&fused, &ins, 1, &gf[1], 6);
        let ins32: Vec<Tensor> = ins
            .iter()
            .map(|t| t.to_dtype(DType::F32).unwrap())
            .collect();
        assert!(max_diff(&fused(&ins32), &composed(&ins)) < 1e-5);
        assert!(silu_mul(&ins[0], &randn(&[3, 7, 10], 1)).is_err());
    }
}
