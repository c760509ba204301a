//! Per-token log-probabilities of chosen tokens, with a real backward pass, and entropies.
//!
//! For logits `z` `(N, V)`, targets `y` `(N,)` and a sampling temperature `τ`:
//!
//! `logp_i = z_{i,y_i}/τ − log Σ_j exp(z_{i,j}/τ)`  (gather − logsumexp, TRL's
//! `selective_log_softmax` over `logits / temperature`),
//!
//! `∂logp_i/∂z_{i,j} = (1[j = y_i] − softmax(z_i/τ)_j) / τ`.
//!
//! [`selective_log_softmax`] is one candle `CustomOp2`: the `(N, V)` log-softmax is never
//! materialised (only `N` values leave the op), and its backward recomputes the softmax row by
//! row from the logits the graph holds anyway. Composing candle's `log_softmax` + `gather`
//! instead would keep several `(N, V)` temporaries alive for the backward pass — with Qwen's
//! 151,936-token vocabulary that is 600 MB per temporary for 1,000 completion tokens.
//!
//! [`entropy`] is the policy entropy `H_i = −Σ_j p_ij log p_ij` at the same temperature, a
//! metric (TRL logs its masked mean), computed without a graph.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rlzero_model::logprobs::selective_log_softmax;
//! let z = Tensor::new(&[[1.0f32, 2.0, 3.0]], &Device::Cpu)?; // (1, 3)
//! let y = Tensor::new(&[2u32], &Device::Cpu)?; // (1,)
//! let lp = selective_log_softmax(&z, &y, 1.0)?.to_vec1::<f32>()?;
//! let want = 3.0 - (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
//! assert!((lp[0] - want).abs() < 1e-6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::fused::{contiguous, cpu_float, dispatch, lanes, zeros_par, Real};
use crate::simd::SimdPath;

/// Rows handed to one rayon task: enough work per task to amortise scheduling.
const ROWS_PER_TASK: usize = 8;

/// `(max_j z_j/τ, log Σ_j exp(z_j/τ − max))` of one row. Exponents are taken in the logits'
/// precision (vectorised, [`Real::exp`]) of arguments formed in f64, and summed in f64, so
/// the result does not depend on the vocabulary size's rounding.
#[inline(always)]
fn row_max_lse<T: Real>(row: &[T], inv_t: f64) -> (f64, f64) {
    // max(z/τ) = max(z)/τ: τ > 0, and rounding z·(1/τ) in f64 keeps the order.
    let max = lanes::max(row).to_f64() * inv_t;
    let mut sum = 0.0f64;
    let mut buf = [T::ZERO; 64];
    for chunk in row.chunks(buf.len()) {
        for (b, &z) in buf.iter_mut().zip(chunk) {
            *b = T::from_f64(z.to_f64() * inv_t - max).exp();
        }
        sum += buf[..chunk.len()].iter().map(|b| b.to_f64()).sum::<f64>();
    }
    (max, sum.ln())
}

fn targets_vec(s: &CpuStorage, l: &Layout) -> candle_core::Result<Vec<usize>> {
    match s {
        CpuStorage::U32(d) => Ok(contiguous(d, l, "targets")?
            .iter()
            .map(|&x| x as usize)
            .collect()),
        _ => candle_core::bail!("targets must be u32"),
    }
}

/// The forward op: `(N, V)` logits and `(N,)` targets → `(N,)` log-probs.
struct SelectiveLogSoftmax {
    temperature: f64,
}

fn selective_fwd<T: Real>(z: &[T], v: usize, y: &[usize], inv_t: f64, path: SimdPath) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); y.len()];
    out.par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(c, out)| {
            let first = c * ROWS_PER_TASK;
            let rows = ForwardRows {
                out,
                first,
                z,
                v,
                y,
                inv_t,
            };
            lanes::on_path(path, rows)
        });
    out
}

/// One rayon task's rows of the forward: `out[k]` for row `first + k`.
struct ForwardRows<'a, T> {
    out: &'a mut [T],
    first: usize,
    z: &'a [T],
    v: usize,
    y: &'a [usize],
    inv_t: f64,
}

impl<T: Real> lanes::Kernel for ForwardRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (v, inv_t) = (self.v, self.inv_t);
        for (k, o) in self.out.iter_mut().enumerate() {
            let i = self.first + k;
            let row = &self.z[i * v..(i + 1) * v];
            let (max, lse) = row_max_lse(row, inv_t);
            *o = T::from_f64(row[self.y[i]].to_f64() * inv_t - max - lse);
        }
    }
}

impl CustomOp2 for SelectiveLogSoftmax {
    fn name(&self) -> &'static str {
        "selective-log-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let y = targets_vec(s2, l2)?;
        if y.len() != n || y.iter().any(|&t| t >= v) {
            candle_core::bail!(
                "selective-log-softmax: {} targets for {n} rows, or a target outside the vocabulary of {v}",
                y.len()
            );
        }
        let inv_t = 1.0 / self.temperature;
        let out = dispatch!(
            "selective-log-softmax",
            [(z, s1, l1)],
            selective_fwd(z, v, &y, inv_t, SimdPath::detect())
        );
        Ok((out, Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let op = SelectiveLogSoftmaxGrad {
            temperature: self.temperature,
        };
        // (N, V): ∂L/∂z_ij = g_i (1[j = y_i] − p_ij) / τ. The forward's log-probs ride along
        // (2, N): with them p_ij = exp(z_ij/τ − (z_{i,y_i}/τ − logp_i)) needs no second
        // max / log-sum-exp pass over the row.
        let g_and_logp = Tensor::stack(&[grad_res.to_dtype(res.dtype())?, res.clone()], 0)?;
        let grad = logits.contiguous()?.apply_op3_no_bwd(
            &g_and_logp.contiguous()?,
            &targets.contiguous()?,
            &op,
        )?;
        Ok((Some(grad), None))
    }
}

/// The backward op: `(N, V)` logits, `(2, N)` incoming gradient and forward log-probs, `(N,)`
/// targets → `(N, V)`.
struct SelectiveLogSoftmaxGrad {
    temperature: f64,
}

fn selective_bwd<T: Real>(
    z: &[T],
    v: usize,
    gl: &[T],
    y: &[usize],
    inv_t: f64,
    path: SimdPath,
) -> Vec<T> {
    let (g, logp) = gl.split_at(gl.len() / 2);
    let mut out = zeros_par(z.len());
    out.par_chunks_mut(v * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(c, out)| {
            let first = c * ROWS_PER_TASK;
            let rows = BackwardRows {
                out,
                first,
                z,
                v,
                g,
                logp,
                y,
                inv_t,
            };
            lanes::on_path(path, rows)
        });
    out
}

/// One rayon task's rows of the backward, from row `first` on.
struct BackwardRows<'a, T> {
    out: &'a mut [T],
    first: usize,
    z: &'a [T],
    v: usize,
    g: &'a [T],
    logp: &'a [T],
    y: &'a [usize],
    inv_t: f64,
}

impl<T: Real> lanes::Kernel for BackwardRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (v, inv_t, y) = (self.v, self.inv_t, self.y);
        for (k, orow) in self.out.chunks_mut(v).enumerate() {
            let i = self.first + k;
            let gi = self.g[i].to_f64();
            if gi == 0.0 {
                continue; // a masked token: its gradient row is exactly zero
            }
            let row = &self.z[i * v..(i + 1) * v];
            // max + log Σ exp(z/τ − max), recovered from the forward's result (recomputed
            // when that is not finite: a −∞ target logit).
            let lp = self.logp[i].to_f64();
            let shift = if lp.is_finite() {
                row[y[i]].to_f64() * inv_t - lp
            } else {
                let (max, lse) = row_max_lse(row, inv_t);
                max + lse
            };
            let scale = T::from_f64(-gi * inv_t);
            for (o, &zj) in orow.iter_mut().zip(row) {
                *o = scale * T::from_f64(zj.to_f64() * inv_t - shift).exp();
            }
            orow[y[i]] = T::from_f64(orow[y[i]].to_f64() + gi * inv_t);
        }
    }
}

impl CustomOp3 for SelectiveLogSoftmaxGrad {
    fn name(&self) -> &'static str {
        "selective-log-softmax-grad"
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
        let (n, v) = l1.shape().dims2()?;
        let y = targets_vec(s3, l3)?;
        let inv_t = 1.0 / self.temperature;
        let out = dispatch!(
            "selective-log-softmax-grad",
            [(z, s1, l1), (g, s2, l2)],
            selective_bwd(z, v, g, &y, inv_t, SimdPath::detect())
        );
        Ok((out, Shape::from((n, v))))
    }
}

fn check_inputs(logits: &Tensor, n_targets: Option<&[usize]>, temperature: f64) -> Result<()> {
    let (n, _) = logits.dims2().map_err(|_| {
        ModelError::InvalidInput(format!("logits must be (N, V), got {:?}", logits.dims()))
    })?;
    if let Some(dims) = n_targets {
        if dims != [n] {
            return Err(ModelError::InvalidInput(format!(
                "targets must be ({n},) for {n} rows of logits, got {dims:?}"
            )));
        }
    }
    // 1/τ must be finite too: the row maximum is taken as max(z)·(1/τ).
    if !(temperature.is_finite() && temperature > 0.0 && (1.0 / temperature).is_finite()) {
        return Err(ModelError::InvalidInput(format!(
            "temperature must be finite and > 0, got {temperature}"
        )));
    }
    Ok(())
}

/// The same quantities from candle's own differentiable ops, in f32 (half-precision logits are
/// upcast first, as transformers upcasts before a softmax). Returns `(z/τ, lse)`, `(N, V)` and
/// `(N, 1)`. The max is a constant shift (`lse` does not depend on it), so it is detached.
fn composed(logits: &Tensor, temperature: f64) -> Result<(Tensor, Tensor)> {
    let internal = match logits.dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    let z = (logits.to_dtype(internal)? / temperature)?; // (N, V)
    let m = z.max_keepdim(1)?.detach(); // (N, 1)
    let lse = (z.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()? + &m)?; // (N, 1)
    Ok((z, lse))
}

/// The dtype results come back in: the logits' own, or f32 for f16/bf16 logits (log-probs are
/// differences of nearly equal numbers; bf16's 8 bits of mantissa would round them to ~1e-2).
fn out_dtype(logits: &Tensor) -> DType {
    match logits.dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// `log softmax(logits / τ)[i, targets[i]]` for each row, differentiable w.r.t. `logits`.
///
/// `logits` `(N, V)`, `targets` `(N,)` integer ids. Returns `(N,)`, in f64 for f64 logits and
/// f32 otherwise. On the CPU with f32/f64 logits this is one fused op (no `(N, V)` temporary);
/// elsewhere (a GPU, half-precision logits) it is composed from candle's differentiable ops, which
/// hold `(N, V)` temporaries for the backward pass: callers score in chunks either way. Errors on
/// a target outside the vocabulary (checked by the fused op; a GPU gather does not check) or a
/// non-positive temperature.
pub fn selective_log_softmax(
    logits: &Tensor,
    targets: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    check_inputs(logits, Some(targets.dims()), temperature)?;
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    if cpu_float(logits) {
        return Ok(logits
            .contiguous()?
            .apply_op2(&targets, SelectiveLogSoftmax { temperature })?);
    }
    let (z, lse) = composed(logits, temperature)?;
    let picked = z.gather(&targets.unsqueeze(1)?, 1)?; // (N, 1)
    Ok((picked - lse)?.squeeze(1)?.to_dtype(out_dtype(logits))?) // (N,)
}

/// Entropy `−Σ_j p_ij log p_ij` of `softmax(logits / τ)` per row `(N,)`, in the logits' dtype,
/// (f32 for half-precision logits) without a graph (a metric, not a loss term).
pub fn entropy(logits: &Tensor, temperature: f64) -> Result<Tensor> {
    check_inputs(logits, None, temperature)?;
    let logits = logits.detach();
    if cpu_float(&logits) {
        return Ok(logits
            .contiguous()?
            .apply_op1_no_bwd(&Entropy { temperature })?);
    }
    // H = lse − Σ_j p_j z_j/τ, p = exp(z/τ − lse).
    let (z, lse) = composed(&logits, temperature)?;
    let p = z.broadcast_sub(&lse)?.exp()?; // (N, V)
    let pz = (p * &z)?.sum_keepdim(1)?; // (N, 1)
    Ok((lse - pz)?.squeeze(1)?.to_dtype(out_dtype(&logits))?) // (N,)
}

struct Entropy {
    temperature: f64,
}

fn entropy_rows<T: Real>(z: &[T], v: usize, inv_t: f64) -> Vec<T> {
    let n = z.len().checked_div(v).unwrap_or(0);
    let mut out = vec![T::from_f64(0.0); n];
    out.par_iter_mut().enumerate().for_each(|(i, o)| {
        let row = &z[i * v..(i + 1) * v];
        let (max, lse) = row_max_lse(row, inv_t);
        // H = lse − Σ_j p_j s_j with s_j = z_j/τ − max and p_j = exp(s_j − lse).
        let ps: f64 = row
            .iter()
            .map(|&zj| {
                let s = zj.to_f64() * inv_t - max;
                (s - lse).exp() * s
            })
            .sum();
        *o = T::from_f64(lse - ps);
    });
    out
}

impl CustomOp1 for Entropy {
    fn name(&self) -> &'static str {
        "entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        let inv_t = 1.0 / self.temperature;
        let out = dispatch!("entropy", [(z, s, l)], entropy_rows(z, v, inv_t));
        Ok((out, Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cpu_path_gives_the_same_bits() {
        let (n, v) = (5, 301);
        let z: Vec<f32> = (0..n * v)
            .map(|i| ((i * 7919) % 1000) as f32 / 97.0 - 5.0)
            .collect();
        let y = [0usize, 17, 300, 150, 9];
        let gl = [0.5f32, -1.0, 0.0, 2.0, 0.25, -3.0, -4.0, -5.0, -6.0, -7.0];
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let run = |path| {
            let fwd = bits(selective_fwd(&z, v, &y, 1.0 / 0.7, path));
            let bwd = bits(selective_bwd(&z, v, &gl, &y, 1.0 / 0.7, path));
            (fwd, bwd)
        };
        assert_eq!(run(SimdPath::detect()), run(SimdPath::Portable));
    }
}
