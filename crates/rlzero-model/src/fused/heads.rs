//! Splitting a projection into attention heads (rotating each by its position) and merging the
//! heads back, each as one op with a backward pass.
//!
//! * [`split_heads`]: `y` `(B, T, n·d)` → `(B, n, T, d)`, each row rotated by the rotary tables
//!   at its position: `rope(y.reshape(B, T, n, d).transpose(1, 2))`. With `groups = g` the
//!   same values are shaped `(B, n/g, g·T, d)`, the grouped-query layout
//!   ([`crate::attention`]), so no reshape node follows.
//! * [`merge_heads`]: `(B, n, T, d)` (or any shape with that memory layout) → `(B, T, n·d)`.
//!
//! Both move whole rows of `d` values between the `T` and `n` axes. The backward of a split is
//! a merge with the opposite rotation (`Rᵀ`: the rotation is orthogonal), and the backward of a
//! merge is a split without rotation.
//!
//! Why fused: from candle's ops the split is four autograd nodes (reshape, transpose,
//! contiguous, rope) and the merge three (reshape, transpose, reshape); candle's backward adds
//! each node's gradient into a fresh zero-filled buffer on one thread, so every node cost an
//! activation-sized fill, add and page faults.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rlzero_model::fused::{merge_heads, split_heads};
//! let y = Tensor::arange(0f32, 8., &Device::Cpu)?.reshape((1, 2, 4))?; // B 1, T 2, n·d = 2·2
//! let h = split_heads(&y, 2, None, 1)?; // (1, 2, 2, 2): head 0 = rows [0 1], [4 5]
//! assert_eq!(h.get(0)?.get(0)?.to_vec2::<f32>()?, vec![vec![0., 1.], vec![4., 5.]]);
//! assert_eq!(merge_heads(&h, 2)?.to_vec3::<f32>()?, y.to_vec3::<f32>()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::rope::rotate_row;
use super::{cpu_float, dispatch, lanes, zeros_par, Real, ROWS_PER_TASK};
use crate::error::{ModelError, Result};
use crate::simd::SimdPath;

/// `y` `(B, T, n·d)` → `(B, n/groups, groups·T, d)`, rotated by `tables` (`cos`, `sin`, each
/// `(Bt, 1, T, d)` with `Bt` 1 or B, as [`crate::rope::Rotary::cos_sin`] gives) when given.
pub fn split_heads(
    y: &Tensor,
    n: usize,
    tables: Option<(&Tensor, &Tensor)>,
    groups: usize,
) -> Result<Tensor> {
    let (b, t, nd) = y.dims3()?;
    if n == 0 || !nd.is_multiple_of(n) || groups == 0 || !n.is_multiple_of(groups) {
        return Err(ModelError::InvalidInput(format!(
            "split_heads: {nd} columns into {n} heads of {groups} groups"
        )));
    }
    let d = nd / n;
    let fits = |tab: &Tensor| {
        matches!(tab.dims4(), Ok((bt, 1, tt, dt)) if (bt == 1 || bt == b) && tt == t && dt == d)
            && tab.dtype() == y.dtype()
            && d.is_multiple_of(2)
    };
    let rot = match tables {
        Some((c, s)) if c.dims() == s.dims() && fits(c) && fits(s) => {
            Some((c.contiguous()?, s.contiguous()?))
        }
        Some((c, s)) => return split_heads_composed(y, n, Some((c, s)), groups),
        None => None,
    };
    if !cpu_float(y) || y.elem_count() == 0 {
        return split_heads_composed(y, n, tables, groups);
    }
    let op = Heads {
        split: true,
        n,
        groups,
        rot: rot.map(|(cos, sin)| Rot {
            cos,
            sin,
            inverse: false,
        }),
        path: SimdPath::detect(),
    };
    Ok(y.contiguous()?.apply_op1(op)?)
}

/// The same from candle's differentiable ops (and for other devices and dtypes).
pub fn split_heads_composed(
    y: &Tensor,
    n: usize,
    tables: Option<(&Tensor, &Tensor)>,
    groups: usize,
) -> Result<Tensor> {
    let (b, t, nd) = y.dims3()?;
    let h = y
        .reshape((b, t, n, nd / n))?
        .transpose(1, 2)?
        .contiguous()?; // (B, n, T, d)
    let h = match tables {
        Some((c, s)) => crate::fused::rope(&h, c, s)?,
        None => h,
    };
    Ok(h.reshape((b, n / groups, groups * t, nd / n))?)
}

/// `x` holding `(B, n, T, d)` values (any 4-D shape of that contiguous layout, such as the
/// grouped `(B, KV, G·T, d)`) → `(B, T, n·d)`.
pub fn merge_heads(x: &Tensor, n: usize) -> Result<Tensor> {
    let (b, _, _, d) = x.dims4()?;
    let per_batch = x.elem_count() / b.max(1);
    if n == 0 || d == 0 || !per_batch.is_multiple_of(n * d) {
        return Err(ModelError::InvalidInput(format!(
            "merge_heads: {:?} is not {n} heads of {d}",
            x.dims()
        )));
    }
    if !cpu_float(x) || x.elem_count() == 0 {
        return merge_heads_composed(x, n);
    }
    let op = Heads {
        split: false,
        n,
        groups: 1,
        rot: None,
        path: SimdPath::detect(),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// The same from candle's differentiable ops.
pub fn merge_heads_composed(x: &Tensor, n: usize) -> Result<Tensor> {
    let (b, _, _, d) = x.dims4()?;
    let t = x.elem_count().checked_div(b * n * d).unwrap_or(0); // an empty batch has no rows
    let x = x.reshape((b, n, t, d))?.transpose(1, 2)?; // (B, T, n, d)
    Ok(x.reshape((b, t, n * d))?)
}

/// Rotary tables `(Bt, 1, T, d)`, and whether to apply the inverse (transposed) rotation.
#[derive(Clone)]
struct Rot {
    cos: Tensor,
    sin: Tensor,
    inverse: bool,
}

/// A split (`(B, T, n, d)` rows → `(B, n, T, d)`) or a merge (the reverse), with an optional
/// rotation of every row by the tables at its position.
struct Heads {
    split: bool,
    n: usize,
    /// Query groups folded into the split's output shape (1 for a merge).
    groups: usize,
    rot: Option<Rot>,
    /// The CPU path of the kernel (a field so that tests can force each).
    path: SimdPath,
}

/// One rayon task's output rows of [`swap`]: row `(bi, ci, ai)` of the output is row
/// `(bi, ai, ci)` of the source, rotated by the tables at position `ai` (`t_is_a`) or `ci`.
struct SwapRows<'a, T> {
    out: &'a mut [T],
    first: usize,
    src: &'a [T],
    dims: (usize, usize, usize),                  // (A, C, d)
    rot: Option<(&'a [T], &'a [T], usize, bool)>, // (cos, sin, Bt, inverse)
    t_is_a: bool,
}

impl<T: Real> lanes::Kernel for SwapRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (a, c, d) = self.dims;
        for (k, yr) in self.out.chunks_mut(d).enumerate() {
            let row = self.first + k;
            let (bi, ci, ai) = (row / (c * a), (row / a) % c, row % a);
            let xr = &self.src[((bi * a + ai) * c + ci) * d..][..d];
            let Some((cos, sin, bt, inverse)) = self.rot else {
                yr.copy_from_slice(xr);
                continue;
            };
            let (t, p) = if self.t_is_a { (a, ai) } else { (c, ci) };
            let tab = ((bi % bt) * t + p) * d;
            rotate_row(yr, xr, &cos[tab..tab + d], &sin[tab..tab + d], inverse);
        }
    }
}

/// The values of a contiguous CPU table as `T`.
fn table<T: Real>(t: &Tensor) -> candle_core::Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

impl Heads {
    /// `(B, A, C, d)` of the source: a split reads `(B, T, n, d)`, a merge `(B, n, T, d)`.
    fn source_dims(&self, shape: &Shape) -> candle_core::Result<(usize, usize, usize, usize)> {
        let dims = shape.dims();
        let b = dims.first().copied().unwrap_or(0);
        let d_total = shape.elem_count() / b.max(1);
        if self.split {
            let (b, t, nd) = shape.dims3()?;
            Ok((b, t, self.n, nd / self.n))
        } else {
            let d = dims.last().copied().unwrap_or(0);
            Ok((b, self.n, d_total / (self.n * d.max(1)), d))
        }
    }

    fn run<T: Real>(
        &self,
        src: &[T],
        dims: (usize, usize, usize, usize),
    ) -> candle_core::Result<Vec<T>> {
        let (_, a, c, d) = dims;
        let tables = match &self.rot {
            Some(r) => Some((
                table::<T>(&r.cos)?,
                table::<T>(&r.sin)?,
                r.cos.dim(0)?,
                r.inverse,
            )),
            None => None,
        };
        let rot = tables
            .as_ref()
            .map(|(c, s, bt, inv)| (&c[..], &s[..], *bt, *inv));
        let mut out = zeros_par(src.len());
        let path = self.path;
        out.par_chunks_mut(d * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * ROWS_PER_TASK;
                let dims = (a, c, d);
                let rows = SwapRows {
                    out,
                    first,
                    src,
                    dims,
                    rot,
                    t_is_a: self.split,
                };
                lanes::on_path(path, rows)
            });
        Ok(out)
    }
}

impl CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        if self.split {
            "split-heads"
        } else {
            "merge-heads"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = self.source_dims(l.shape())?;
        let (b, a, c, d) = dims;
        let out = dispatch!(self.name(), [(x, s, l)], self.run(x, dims)?);
        let shape = if self.split {
            // (B, n, T, d), grouped as (B, n/g, g·T, d).
            Shape::from((b, c / self.groups, self.groups * a, d))
        } else {
            Shape::from((b, c, a * d)) // (B, T, n·d)
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // The opposite move; a split's gradient rotates back by the transposed rotation.
        let back = Heads {
            split: !self.split,
            n: self.n,
            groups: 1,
            rot: self.rot.clone().map(|r| Rot {
                inverse: !r.inverse,
                ..r
            }),
            path: self.path,
        };
        let g = if self.split {
            // The gradient holds (B, n, T, d) values in the grouped shape.
            let (b, t, nd) = arg.dims3()?;
            grad.contiguous()?.reshape((b, self.n, t, nd / self.n))?
        } else {
            let (b, t, nd) = grad.dims3()?;
            grad.contiguous()?.reshape((b, t, nd))?
        };
        Ok(Some(g.apply_op1_no_bwd(&back)?.reshape(arg.shape())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{check_fd, f32_bits, grads, max_diff, randn};
    use candle_core::DType;

    #[test]
    fn matches_the_composed_ops_values_and_gradients() {
        for (bt, groups) in [(1usize, 1usize), (2, 3)] {
            let cos = randn(&[bt, 1, 5, 4], 9);
            let sin = randn(&[bt, 1, 5, 4], 10);
            let ins = [randn(&[2, 5, 6 * 4], 11)]; // B 2, T 5, 6 heads of 4
            for tabs in [Some((&cos, &sin)), None] {
                let fused = |t: &[Tensor]| split_heads(&t[0], 6, tabs, groups).unwrap();
                let composed = |t: &[Tensor]| split_heads_composed(&t[0], 6, tabs, groups).unwrap();
                assert_eq!(fused(&ins).dims(), &[2, 6 / groups, groups * 5, 4]);
                assert!(max_diff(&fused(&ins), &composed(&ins)) < 1e-14);
                let gf = grads(&fused, &ins, 12);
                assert!(max_diff(&gf[0], &grads(&composed, &ins, 12)[0]) < 1e-13);
                check_fd(&fused, &ins, 0, &gf[0], 12);
            }
            let x = [randn(&[2, 6 / groups, groups * 5, 4], 13)];
            let fused = |t: &[Tensor]| merge_heads(&t[0], 6).unwrap();
            let composed = |t: &[Tensor]| merge_heads_composed(&t[0], 6).unwrap();
            assert_eq!(fused(&x).dims(), &[2, 5, 24]);
            assert!(max_diff(&fused(&x), &composed(&x)) < 1e-14);
            let gf = grads(&fused, &x, 14);
            assert!(max_diff(&gf[0], &grads(&composed, &x, 14)[0]) < 1e-13);
            check_fd(&fused, &x, 0, &gf[0], 14);
        }
    }

    #[test]
    fn every_cpu_path_gives_the_same_bits() {
        let f = |dims: &[usize], seed| randn(dims, seed).to_dtype(DType::F32).unwrap();
        let (y, cos, sin) = (
            f(&[2, 7, 3 * 8], 1),
            f(&[2, 1, 7, 8], 2),
            f(&[2, 1, 7, 8], 3),
        );
        let run = |path| {
            let rot = Some(Rot {
                cos: cos.clone(),
                sin: sin.clone(),
                inverse: false,
            });
            let op = Heads {
                split: true,
                n: 3,
                groups: 1,
                rot,
                path,
            };
            f32_bits(&y.apply_op1_no_bwd(&op).unwrap())
        };
        assert_eq!(run(SimdPath::detect()), run(SimdPath::Portable));
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let y = randn(&[2, 5, 10], 1);
        assert!(split_heads(&y, 3, None, 1).is_err()); // 10 columns into 3 heads
        assert!(split_heads(&y, 2, None, 3).is_err()); // 2 heads into 3 groups
        assert!(merge_heads(&randn(&[2, 3, 5, 4], 2), 7).is_err());
    }
}
