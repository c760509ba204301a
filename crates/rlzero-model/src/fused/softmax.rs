//! The attention softmax with its scale and additive mask, as one op with a backward pass.
//!
//! For scores `s` `(B, M, Tq, Tk)` (M = heads, or k/v heads × grouped query heads), a scale
//! `c` and an additive bias `m` `(Bm, Tq, Tk)` (0 where allowed, −∞ where masked; Bm = 1 or
//! B, shared by all M heads): `y = softmax(c·s + m)` over the last dimension, with the row
//! maximum subtracted before `exp` (`−∞` entries give exactly 0).
//!
//! Backward: `∂L/∂s_j = c · y_j (g_j − Σ_k y_k g_k)`; the bias is a constant (no gradient).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rlzero_model::fused::masked_softmax;
//! let s = Tensor::new(&[[[[1.0f32, 2.0]]]], &Device::Cpu)?; // (1, 1, 1, 2)
//! let m = Tensor::new(&[[[0.0f32, f32::NEG_INFINITY]]], &Device::Cpu)?; // (1, 1, 2)
//! let y = masked_softmax(&s, &m, 0.5)?.flatten_all()?.to_vec1::<f32>()?;
//! assert_eq!(y, vec![1.0, 0.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{cpu_float, dispatch, Real, ROWS_PER_TASK};
use crate::error::{ModelError, Result};

/// `softmax(scale · scores + bias)` over the last dimension; `scores` `(B, M, Tq, Tk)`,
/// `bias` `(Bm, Tq, Tk)` with `Bm` 1 or B. One fused op for f32/f64 on the CPU,
/// [`masked_softmax_composed`] otherwise.
pub fn masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, _, tq, tk) = scores.dims4()?;
    let (bm, bq, bk) = bias.dims3().map_err(|_| {
        ModelError::InvalidInput(format!("bias must be (B, Tq, Tk), got {:?}", bias.dims()))
    })?;
    if (bm != 1 && bm != b) || bq != tq || bk != tk {
        return Err(ModelError::InvalidInput(format!(
            "bias {:?} does not fit scores {:?}",
            bias.dims(),
            scores.dims()
        )));
    }
    if cpu_float(scores) && scores.elem_count() > 0 && bias.dtype() == scores.dtype() {
        return Ok(scores
            .contiguous()?
            .apply_op2(&bias.contiguous()?, MaskedSoftmax { scale })?);
    }
    masked_softmax_composed(scores, bias, scale)
}

/// The same from candle's differentiable ops (`candle_nn::ops::softmax`; `softmax_last_dim`
/// has no backward). Half-precision scores are upcast to f32 first, as transformers' eager
/// attention does (`softmax(…, dtype=torch.float32)`): a bf16 exp-sum over thousands of keys
/// drifts.
pub fn masked_softmax_composed(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let z = (scores * scale)?.broadcast_add(&bias.unsqueeze(1)?)?; // (B, M, Tq, Tk)
    let dtype = z.dtype();
    Ok(match dtype {
        DType::BF16 | DType::F16 => {
            candle_nn::ops::softmax(&z.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dtype)?
        }
        _ => candle_nn::ops::softmax(&z, D::Minus1)?,
    })
}

struct MaskedSoftmax {
    scale: f64,
}

/// `(m, tq, tk, bias batches)` of the op's operands.
fn geometry(scores: &Layout, bias: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    let (_, m, tq, tk) = scores.shape().dims4()?;
    let (bm, _, _) = bias.shape().dims3()?;
    Ok((m, tq, tk, bm))
}

fn forward<T: Real>(s: &[T], bias: &[T], geo: (usize, usize, usize, usize), scale: f64) -> Vec<T> {
    let (m, tq, tk, bm) = geo;
    let c = T::from_f64(scale);
    let mut y = vec![T::ZERO; s.len()];
    y.par_chunks_mut(tk * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, yc)| {
            for (k, yr) in yc.chunks_mut(tk).enumerate() {
                let row = task * ROWS_PER_TASK + k;
                let (bi, q) = (row / (m * tq), row % tq);
                let brow = &bias[((bi % bm) * tq + q) * tk..][..tk];
                let sr = &s[row * tk..][..tk];
                let mut max = T::from_f64(f64::NEG_INFINITY);
                for ((o, &v), &mb) in yr.iter_mut().zip(sr).zip(brow) {
                    *o = v * c + mb;
                    if *o > max {
                        max = *o;
                    }
                }
                for o in yr.iter_mut() {
                    *o = (*o - max).exp(); // a loop of its own, so that it vectorises
                }
                let sum = yr.iter().fold(T::ZERO, |acc, &v| acc + v);
                for o in yr.iter_mut() {
                    *o /= sum;
                }
            }
        });
    y
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let geo = geometry(l1, l2)?;
        let out = dispatch!(
            "masked-softmax",
            [(s, s1, l1), (m, s2, l2)],
            forward(s, m, geo, self.scale)
        );
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let ds = res
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { scale: self.scale })?;
        Ok((Some(ds), None))
    }
}

/// `(y, g) → c · y ⊙ (g − Σ y g)` row by row.
struct SoftmaxGrad {
    scale: f64,
}

fn backward<T: Real>(y: &[T], g: &[T], tk: usize, scale: f64) -> Vec<T> {
    let c = T::from_f64(scale);
    let mut out = vec![T::ZERO; y.len()];
    out.par_chunks_mut(tk * ROWS_PER_TASK)
        .zip(y.par_chunks(tk * ROWS_PER_TASK))
        .zip(g.par_chunks(tk * ROWS_PER_TASK))
        .for_each(|((oc, yc), gc)| {
            for ((or, yr), gr) in oc.chunks_mut(tk).zip(yc.chunks(tk)).zip(gc.chunks(tk)) {
                let dot = yr
                    .iter()
                    .zip(gr)
                    .fold(T::ZERO, |acc, (&yv, &gv)| acc + yv * gv);
                for ((o, &yv), &gv) in or.iter_mut().zip(yr).zip(gr) {
                    *o = c * yv * (gv - dot);
                }
            }
        });
    out
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "masked-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let tk = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let out = dispatch!(
            "masked-softmax-grad",
            [(y, s1, l1), (g, s2, l2)],
            backward(y, g, tk, self.scale)
        );
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{check_fd, grads, max_diff, randn};
    use crate::mask::MaskInfo;

    #[test]
    fn matches_the_composed_ops_values_and_gradients() {
        // A left-padded batch of 2: causal and padding entries are −∞.
        let info = MaskInfo::from_rows(&[vec![0, 1, 1, 1, 1], vec![1, 1, 1, 1, 1]]).unwrap();
        let bias = info
            .bias(DType::F64, &candle_core::Device::Cpu)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .squeeze(1)
            .unwrap(); // (2, 5, 5)
        for bias in [bias.clone(), bias.narrow(0, 1, 1).unwrap()] {
            let s = randn(&[2, 6, 5, 5], 7);
            let fused = |t: &[Tensor]| masked_softmax(&t[0], &bias, 0.125).unwrap();
            let composed = |t: &[Tensor]| masked_softmax_composed(&t[0], &bias, 0.125).unwrap();
            let ins = [s.clone()];
            assert!(max_diff(&fused(&ins), &composed(&ins)) < 1e-14);
            let gf = grads(&fused, &ins, 8);
            let gc = grads(&composed, &ins, 8);
            assert!(max_diff(&gf[0], &gc[0]) < 1e-13);
            check_fd(&fused, &ins, 0, &gf[0], 8);
            let s32 = [s.to_dtype(DType::F32).unwrap()];
            let bias32 = bias.to_dtype(DType::F32).unwrap();
            let y32 = masked_softmax(&s32[0], &bias32, 0.125).unwrap();
            assert!(max_diff(&y32, &composed(&ins)) < 1e-6);
        }
    }

    #[test]
    fn rejects_a_bias_that_does_not_fit() {
        let s = randn(&[2, 3, 4, 4], 1);
        let bias = randn(&[2, 4, 3], 2);
        assert!(masked_softmax(&s, &bias, 1.0).is_err());
    }
}
