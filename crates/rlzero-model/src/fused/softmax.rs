//! The attention softmax with its scale and additive mask, as one op with a backward pass.
//!
//! For scores `s` `(B, M, Tq, Tk)` (M = heads, or k/v heads × grouped query heads), a scale
//! `c` and an additive bias `m` `(Bm, Tq, Tk)` (0 where allowed, −∞ where masked; Bm = 1 or
//! B, shared by all M heads): `y = softmax(c·s + m)` over the last dimension, with the row
//! maximum subtracted before `exp` (`−∞` entries give exactly 0). Keys past a row's last
//! finite bias entry (a causal row's future: half of all entries) are set to 0 without being
//! computed, forward and backward; the row reductions run in 8 vector lanes (`fused::lanes`).
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

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{cpu_float, dispatch, lanes, zeros_par, Real, ROWS_PER_TASK};
use crate::error::{ModelError, Result};
use crate::simd::SimdPath;

/// `softmax(scale · scores + bias)` over the last dimension; `scores` `(B, M, Tq, Tk)`,
/// `bias` `(Bm, Tq, Tk)` with `Bm` 1 or B. Scores may also be `(B, KV, G·Tq, Tk)`, `G` query
/// heads folded into the rows (grouped-query attention): row `r` is query position
/// `r mod Tq`. One fused op for f32/f64 on the CPU, [`masked_softmax_composed`] otherwise.
pub fn masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, _, rows, tk) = scores.dims4()?;
    let (bm, bq, bk) = bias.dims3().map_err(|_| {
        ModelError::InvalidInput(format!("bias must be (B, Tq, Tk), got {:?}", bias.dims()))
    })?;
    if (bm != 1 && bm != b) || bq == 0 || rows % bq != 0 || bk != tk {
        return Err(ModelError::InvalidInput(format!(
            "bias {:?} does not fit scores {:?}",
            bias.dims(),
            scores.dims()
        )));
    }
    if cpu_float(scores) && scores.elem_count() > 0 && bias.dtype() == scores.dtype() {
        return Ok(scores.contiguous()?.apply_op2(
            &bias.contiguous()?,
            MaskedSoftmax {
                scale,
                path: SimdPath::detect(),
            },
        )?);
    }
    masked_softmax_composed(scores, bias, scale)
}

/// The same from candle's differentiable ops (`candle_nn::ops::softmax`; `softmax_last_dim`
/// has no backward). Half-precision scores are upcast to f32 first, as transformers' eager
/// attention does (`softmax(…, dtype=torch.float32)`): a bf16 exp-sum over thousands of keys
/// drifts.
pub fn masked_softmax_composed(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, m, rows, tk) = scores.dims4()?;
    let tq = bias.dim(1)?;
    let grouped = scores.reshape((b, m * rows / tq, tq, tk))?; // rows = G·Tq: (B, M·G, Tq, Tk)
    let z = (grouped * scale)?.broadcast_add(&bias.unsqueeze(1)?)?;
    let dtype = z.dtype();
    let y = match dtype {
        DType::BF16 | DType::F16 => {
            candle_nn::ops::softmax(&z.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dtype)?
        }
        _ => candle_nn::ops::softmax(&z, D::Minus1)?,
    };
    Ok(y.reshape((b, m, rows, tk))?)
}

struct MaskedSoftmax {
    scale: f64,
    /// The CPU path of the kernels (a field so that tests can force each).
    path: SimdPath,
}

/// `(m, tq, tk, bias batches)` of the op's operands: scores `(B, M, R, Tk)` are `B` batches of
/// `m·tq` rows, `m = M·R/tq`, whose query position is the row index modulo `tq` (`R = G·Tq`
/// in the grouped layout; the bias is `(Bm, Tq, Tk)`).
fn geometry(scores: &Layout, bias: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    let (_, m, rows, tk) = scores.shape().dims4()?;
    let (bm, tq, _) = bias.shape().dims3()?;
    Ok((m * rows / tq.max(1), tq, tk, bm))
}

/// The bias row of score row `row`: its batch's (or the shared) bias, at its query position.
#[inline(always)]
fn bias_row(row: usize, (m, tq, _, bm): (usize, usize, usize, usize)) -> usize {
    ((row / (m * tq)) % bm) * tq + row % tq
}

/// Per bias row, how many leading keys can take part: one past the last key whose bias is not
/// `−∞`. Past it every weight is 0 (a causal row's future), so the kernels skip those keys.
/// A row masked everywhere keeps all `tk` keys, so it gives what the unskipped formula gives
/// (NaN), not a silent zero. The one difference from the composed ops, by design: a NaN or
/// `+∞` score at a skipped key no longer turns its row into NaN (`s + (−∞)`). The non-finite
/// value still shows: the key's own position attends to it (its query row keeps it live).
fn live_keys<T: Real>(bias: &[T], tk: usize) -> Vec<usize> {
    let neg_inf = T::from_f64(f64::NEG_INFINITY);
    bias.chunks(tk)
        .map(|row| match row.iter().rposition(|&v| v != neg_inf) {
            Some(last) => last + 1,
            None => tk,
        })
        .collect()
}

fn forward<T: Real>(
    s: &[T],
    bias: &[T],
    geo: (usize, usize, usize, usize),
    scale: f64,
    path: SimdPath,
) -> Vec<T> {
    let tk = geo.2;
    let c = T::from_f64(scale);
    let live = live_keys(bias, tk);
    let mut y = zeros_par(s.len());
    y.par_chunks_mut(tk * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, yc)| {
            let (s, bias, live) = (s, bias, &live[..]);
            let rows = ForwardRows {
                yc,
                task,
                s,
                bias,
                live,
                geo,
                c,
            };
            lanes::on_path(path, rows)
        });
    y
}

/// One rayon task's rows of the forward.
struct ForwardRows<'a, T> {
    yc: &'a mut [T],
    task: usize,
    s: &'a [T],
    bias: &'a [T],
    live: &'a [usize],
    geo: (usize, usize, usize, usize),
    c: T,
}

impl<T: Real> lanes::Kernel for ForwardRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let tk = self.geo.2;
        for (k, yr) in self.yc.chunks_mut(tk).enumerate() {
            let row = self.task * ROWS_PER_TASK + k;
            let b = bias_row(row, self.geo);
            let n = self.live[b];
            let (yr, dead) = yr.split_at_mut(n);
            dead.fill(T::ZERO);
            let (s, bias) = (&self.s[row * tk..][..n], &self.bias[b * tk..][..n]);
            forward_row(yr, s, bias, self.c);
        }
    }
}

/// `y = softmax(c·s + m)` over one row's live keys.
#[inline(always)]
fn forward_row<T: Real>(y: &mut [T], s: &[T], m: &[T], c: T) {
    for ((o, &v), &mb) in y.iter_mut().zip(s).zip(m) {
        *o = v * c + mb;
    }
    let max = lanes::max(y);
    for o in y.iter_mut() {
        *o = (*o - max).exp();
    }
    let sum = lanes::sum(y);
    for o in y.iter_mut() {
        *o /= sum;
    }
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
            forward(s, m, geo, self.scale, self.path)
        );
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let ds = res.contiguous()?.apply_op3_no_bwd(
            &grad.contiguous()?,
            &bias.contiguous()?,
            &SoftmaxGrad {
                scale: self.scale,
                path: self.path,
            },
        )?;
        Ok((Some(ds), None))
    }
}

/// `(y, g, bias) → c · y ⊙ (g − Σ y g)` row by row (0 past each row's live keys, where `y` is 0).
struct SoftmaxGrad {
    scale: f64,
    path: SimdPath,
}

fn backward<T: Real>(
    y: &[T],
    g: &[T],
    bias: &[T],
    geo: (usize, usize, usize, usize),
    scale: f64,
    path: SimdPath,
) -> Vec<T> {
    let tk = geo.2;
    let c = T::from_f64(scale);
    let live = live_keys(bias, tk);
    let mut out = zeros_par(y.len());
    out.par_chunks_mut(tk * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, oc)| {
            let rows = BackwardRows {
                oc,
                task,
                y,
                g,
                live: &live[..],
                geo,
                c,
            };
            lanes::on_path(path, rows)
        });
    out
}

/// One rayon task's rows of the backward.
struct BackwardRows<'a, T> {
    oc: &'a mut [T],
    task: usize,
    y: &'a [T],
    g: &'a [T],
    live: &'a [usize],
    geo: (usize, usize, usize, usize),
    c: T,
}

impl<T: Real> lanes::Kernel for BackwardRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let tk = self.geo.2;
        for (k, or) in self.oc.chunks_mut(tk).enumerate() {
            let row = self.task * ROWS_PER_TASK + k;
            let n = self.live[bias_row(row, self.geo)];
            let (yr, gr) = (&self.y[row * tk..][..n], &self.g[row * tk..][..n]);
            let dot = lanes::dot(yr, gr);
            for ((o, &yv), &gv) in or[..n].iter_mut().zip(yr).zip(gr) {
                *o = self.c * yv * (gv - dot);
            }
        }
    }
}

impl CustomOp3 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "masked-softmax-grad"
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
        let geo = geometry(l1, l3)?;
        let out = dispatch!(
            "masked-softmax-grad",
            [(y, s1, l1), (g, s2, l2), (m, s3, l3)],
            backward(y, g, m, geo, self.scale, self.path)
        );
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::{check_fd, f32_bits, grads, max_diff, randn};
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
    fn every_cpu_path_gives_the_same_bits() {
        let info = MaskInfo::from_rows(&[vec![0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]]).unwrap();
        let bias = info
            .bias(DType::F32, &candle_core::Device::Cpu)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .squeeze(1)
            .unwrap(); // (1, 11, 11)
        let s = randn(&[2, 3, 11, 11], 3).to_dtype(DType::F32).unwrap();
        let g = randn(&[2, 3, 11, 11], 4).to_dtype(DType::F32).unwrap();
        let run = |path: SimdPath| {
            let y = s
                .apply_op2_no_bwd(&bias, &MaskedSoftmax { scale: 0.3, path })
                .unwrap();
            let dy = y
                .apply_op3_no_bwd(&g, &bias, &SoftmaxGrad { scale: 0.3, path })
                .unwrap();
            (f32_bits(&y), f32_bits(&dy))
        };
        let portable = run(SimdPath::Portable);
        assert_eq!(run(SimdPath::detect()), portable);
        // The skipped future keys are exact zeros, forward and backward.
        let y = &portable.0;
        assert_eq!(y[3 * 11 + 4..3 * 11 + 11], [0u32; 7]);
        assert_eq!(portable.1[3 * 11 + 4..3 * 11 + 11], [0u32; 7]);
    }

    #[test]
    fn future_keys_are_skipped_not_computed() {
        // A NaN key: its scores are NaN in every row. In row 0 it is the future; computed, it
        // would make the row NaN (NaN + (−∞) = NaN).
        let dev = candle_core::Device::Cpu;
        let inf = f32::NEG_INFINITY;
        let bias = Tensor::new(&[[[0f32, inf], [0., 0.]]], &dev).unwrap(); // (1, 2, 2)
        let s = Tensor::new(&[[[[1f32, f32::NAN], [1., f32::NAN]]]], &dev).unwrap(); // (1, 1, 2, 2)
        let y = masked_softmax(&s, &bias, 1.0)
            .unwrap()
            .flatten_all()
            .unwrap();
        let y = y.to_vec1::<f32>().unwrap();
        assert_eq!(y[..2], [1.0, 0.0]);
        assert!(y[2..].iter().all(|v| v.is_nan())); // row 1 attends to the NaN: it shows there
    }

    #[test]
    fn the_grouped_layout_matches_the_composed_ops() {
        // B 2 with its own bias rows (left padding: different live keys per row), KV 2, G 3.
        let info = MaskInfo::from_rows(&[vec![0, 0, 1, 1, 1], vec![1, 1, 1, 1, 1]]).unwrap();
        let bias = info
            .bias(DType::F64, &candle_core::Device::Cpu)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .squeeze(1)
            .unwrap(); // (2, 5, 5)
        let s = randn(&[2, 2, 3 * 5, 5], 21); // (B, KV, G·Tq, Tk)
        let fused = |t: &[Tensor]| masked_softmax(&t[0], &bias, 0.4).unwrap();
        let composed = |t: &[Tensor]| masked_softmax_composed(&t[0], &bias, 0.4).unwrap();
        let ins = [s.clone()];
        assert!(max_diff(&fused(&ins), &composed(&ins)) < 1e-14);
        // The same rows in the ungrouped layout (B, KV·G, Tq, Tk) give the same values.
        let flat = masked_softmax(&s.reshape((2, 6, 5, 5)).unwrap(), &bias, 0.4).unwrap();
        let flat = flat.reshape((2, 2, 15, 5)).unwrap();
        assert!(max_diff(&fused(&ins), &flat) == 0.0);
        let gf = grads(&fused, &ins, 22);
        assert!(max_diff(&gf[0], &grads(&composed, &ins, 22)[0]) < 1e-13);
        check_fd(&fused, &ins, 0, &gf[0], 22);
    }

    #[test]
    fn a_row_masked_everywhere_is_not_silently_zero() {
        let bias = Tensor::new(
            &[[[f32::NEG_INFINITY, f32::NEG_INFINITY]]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let s = Tensor::new(&[[[[1.0f32, 2.0]]]], &candle_core::Device::Cpu).unwrap();
        let y = masked_softmax(&s, &bias, 1.0)
            .unwrap()
            .flatten_all()
            .unwrap();
        let y = y.to_vec1::<f32>().unwrap();
        assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
    }

    #[test]
    fn rejects_a_bias_that_does_not_fit() {
        let s = randn(&[2, 3, 4, 4], 1);
        let bias = randn(&[2, 4, 3], 2);
        assert!(masked_softmax(&s, &bias, 1.0).is_err());
    }
}
