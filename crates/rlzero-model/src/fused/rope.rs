//! Rotary position embeddings ("rotate half" layout, see [`crate::rope`]) as one op with a
//! backward pass.
//!
//! With `x = [x₁, x₂]`, `cos = [c₁, c₂]`, `sin = [s₁, s₂]` split at `d/2`:
//! `y₁ = x₁c₁ − x₂s₁`, `y₂ = x₂c₂ + x₁s₂`. The map is linear in `x`; its transpose (the
//! backward) is `x₁ ← g₁c₁ + g₂s₂`, `x₂ ← g₂c₂ − g₁s₁`, the rotation by the opposite angle.
//! The tables are constants (no gradient).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rlzero_model::fused::rope;
//! let x = Tensor::new(&[[[[1.0f32, 0.0]]]], &Device::Cpu)?; // (1, 1, 1, 2)
//! let (c, s) = (0.6f32, 0.8f32); // a rotation
//! let cos = Tensor::new(&[[[[c, c]]]], &Device::Cpu)?;
//! let sin = Tensor::new(&[[[[s, s]]]], &Device::Cpu)?;
//! let y = rope(&x, &cos, &sin)?.flatten_all()?.to_vec1::<f32>()?;
//! assert_eq!(y, vec![0.6, 0.8]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{cpu_float, dispatch, zeros_par, Real, ROWS_PER_TASK};
use crate::error::Result;

/// Rotates `x` `(B, H, T, d)` by tables `(Bc, 1, T, d)` (Bc 1 or B), as
/// [`crate::rope::apply`]. One fused op for f32/f64 on the CPU with contiguous tables of that
/// shape, [`rope_composed`] otherwise.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let fits = |t: &Tensor| -> Result<bool> {
        let Ok((b, h, tt, d)) = x.dims4() else {
            return Ok(false);
        };
        let Ok((bc, one, tc, dc)) = t.dims4() else {
            return Ok(false);
        };
        Ok((bc == 1 || bc == b)
            && one == 1
            && tc == tt
            && dc == d
            && d % 2 == 0
            && d > 0
            && h > 0
            && t.dtype() == x.dtype())
    };
    // The kernel indexes both tables with one batch size.
    if cpu_float(x) && x.elem_count() > 0 && cos.dims() == sin.dims() && fits(cos)? {
        return Ok(x.contiguous()?.apply_op3(
            &cos.contiguous()?,
            &sin.contiguous()?,
            Rope { transpose: false },
        )?);
    }
    rope_composed(x, cos, sin)
}

/// The same from candle's differentiable ops: `x ⊙ cos + rotate_half(x) ⊙ sin`.
pub fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d - d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?; // [−x₂, x₁]
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// The rotation (`transpose = false`) or its transpose, the backward.
struct Rope {
    transpose: bool,
}

fn apply<T: Real>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    geo: (usize, usize, usize, usize),
    transpose: bool,
) -> Vec<T> {
    let (h, t, d, bc) = geo;
    let mut y = zeros_par(x.len());
    y.par_chunks_mut(d * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, yc)| {
            for (k, yr) in yc.chunks_mut(d).enumerate() {
                let row = task * ROWS_PER_TASK + k; // over (B, H, T)
                let (bi, p) = (row / (h * t), row % t);
                let tab = ((bi % bc) * t + p) * d;
                let (c, s) = (&cos[tab..tab + d], &sin[tab..tab + d]);
                rotate_row(yr, &x[row * d..(row + 1) * d], c, s, transpose);
            }
        });
    y
}

/// `y = R x` for one row of `d` values and its tables (`transpose`: `y = Rᵀ x`, the inverse
/// rotation), as the module doc writes it.
#[inline(always)]
pub(crate) fn rotate_row<T: Real>(y: &mut [T], x: &[T], cos: &[T], sin: &[T], transpose: bool) {
    let half = x.len() / 2;
    let (y1, y2) = y.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (x[i], x[half + i]);
        if transpose {
            y1[i] = a * cos[i] + b * sin[half + i];
            y2[i] = b * cos[half + i] - a * sin[i];
        } else {
            y1[i] = a * cos[i] - b * sin[i];
            y2[i] = b * cos[half + i] + a * sin[half + i];
        }
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
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
        let (_, h, t, d) = l1.shape().dims4()?;
        let (bc, _, _, _) = l2.shape().dims4()?;
        let out = dispatch!(
            "rope",
            [(x, s1, l1), (c, s2, l2), (s, s3, l3)],
            apply(x, c, s, (h, t, d, bc), self.transpose)
        );
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3(
            cos,
            sin,
            Rope {
                transpose: !self.transpose,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{check_fd, grads, max_diff, randn};
    use candle_core::DType;

    #[test]
    fn matches_the_composed_ops_values_and_gradients() {
        // Tables with distinct halves, so a swapped index cannot cancel out.
        for bc in [1usize, 2] {
            let cos = randn(&[bc, 1, 5, 8], 9);
            let sin = randn(&[bc, 1, 5, 8], 10);
            let fused = |t: &[Tensor]| rope(&t[0], &cos, &sin).unwrap();
            let composed = |t: &[Tensor]| rope_composed(&t[0], &cos, &sin).unwrap();
            let ins = [randn(&[2, 3, 5, 8], 11)];
            assert!(max_diff(&fused(&ins), &composed(&ins)) < 1e-14);
            let gf = grads(&fused, &ins, 12);
            let gc = grads(&composed, &ins, 12);
            assert!(max_diff(&gf[0], &gc[0]) < 1e-13);
            check_fd(&fused, &ins, 0, &gf[0], 12);
            let x32 = ins[0].to_dtype(DType::F32).unwrap();
            let y32 = rope(
                &x32,
                &cos.to_dtype(DType::F32).unwrap(),
                &sin.to_dtype(DType::F32).unwrap(),
            )
            .unwrap();
            assert!(max_diff(&y32, &composed(&ins)) < 1e-5);
        }
    }

    #[test]
    fn mismatched_tables_and_empty_inputs_take_the_composed_ops() {
        let x = randn(&[2, 3, 5, 8], 1);
        let (cos, sin) = (randn(&[2, 1, 5, 8], 2), randn(&[1, 1, 5, 8], 3));
        let y = rope(&x, &cos, &sin).unwrap();
        assert!(max_diff(&y, &rope_composed(&x, &cos, &sin).unwrap()) < 1e-14);
        let empty = randn(&[2, 3, 0, 8], 4);
        let tab = randn(&[2, 1, 0, 8], 5);
        assert_eq!(rope(&empty, &tab, &tab).unwrap().dims(), &[2, 3, 0, 8]);
    }
}
