//! Fused CPU kernels with real backward passes for the training forward: RMSNorm, the masked
//! attention softmax, SwiGLU's `silu(gate) ⊙ up`, rotary embeddings, and splitting a projection
//! into rotated heads and merging them back.
//!
//! candle's own fused kernels for these (`ops::rms_norm`, `softmax_last_dim`, `rope`) have no
//! backward and drop gradients silently; the differentiable alternative composes 5–15
//! elementwise ops, each a full pass over memory and an allocation in the forward, and as many
//! again in the backward. Each op here is one `CustomOp` pass forward and one backward, which
//! recomputes what it needs from the op's inputs or output (the graph keeps those anyway).
//!
//! Every public function serves f32/f64 tensors on the CPU with the fused kernel and anything
//! else (a GPU, bf16/f16) with the composed candle ops, which are also public
//! (`*_composed`) as the reference the tests check the kernels against, values and gradients.
//! Rows are split across rayon tasks at fixed boundaries and every reduction runs in a fixed
//! order, so results do not depend on the thread count.

use candle_core::{DType, Layout, Tensor, WithDType};

pub mod heads;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;

pub(crate) mod lanes;

pub use heads::{merge_heads, merge_heads_composed, split_heads, split_heads_composed};
pub use rms_norm::{rms_norm, rms_norm_composed};
pub use rope::{rope, rope_composed};
pub use softmax::{masked_softmax, masked_softmax_composed};
pub use swiglu::{silu_mul, silu_mul_composed};

/// Rows handed to one rayon task: enough work per task to amortise scheduling.
pub(crate) const ROWS_PER_TASK: usize = 16;

/// The float types the kernels run in, with the two transcendental functions they need.
pub(crate) trait Real: WithDType {
    const ZERO: Self;
    const ONE: Self;
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// The largest value of `x`, NaNs ignored (`−∞` when empty), in 8 lanes so the loop vectorises:
/// the fused kernels' row maximum, for callers outside this crate (the rollout's sampler).
///
/// ```
/// assert_eq!(rlzero_model::fused::max_f32(&[1.0, f32::NAN, 3.0, -2.0]), 3.0);
/// ```
pub fn max_f32(x: &[f32]) -> f32 {
    lanes::max(x)
}

/// `eˣ` for f32 within 2 ulp of libm's on [−87, 88] (checked in a test), branch-free so that loops over
/// slices vectorise (libm's `expf` is a scalar call). The fused training kernels use it, and so
/// does the rollout's decode path, so the sampler computes the same SiLU and softmax as the
/// trainer. Cephes' `expf` scheme: `x = n·ln 2 + r`
/// with `|r| ≤ ln 2 / 2` (ln 2 split in two for an exact `n·ln 2`), a degree-6 polynomial
/// for `eʳ`, and `2ⁿ` put into the exponent bits. Below −87.3 (where f32 goes subnormal) the
/// result is 0, so `−∞` (a masked score) gives exactly 0; above 88.7 it is `+∞`; NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const LO: f32 = -87.3;
    const HI: f32 = 88.7;
    let xc = x.clamp(LO, HI);
    // n ≤ 127 keeps 2ⁿ a normal float; within 0.7 of overflow |r| then exceeds ln 2 / 2 and
    // the error grows to a few ulp.
    // Round to nearest by adding and subtracting 1.5·2²³ (|x·log₂e| ≤ 128): `f32::round` is a
    // libm call on baseline x86-64 and would keep the loops scalar.
    const ROUND: f32 = 12_582_912.0;
    // t = n + ROUND with n = round(x·log2 e) ≤ 127 an integer, held exactly: its bits are
    // ROUND's plus n, which gives 2ⁿ by integer arithmetic (no float → int cast, whose
    // saturation the compiler cannot vectorise).
    let t = (xc * LOG2E + ROUND).min(127.0 + ROUND);
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = (p * r * r) + r + 1.0;
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23); // 2ⁿ, n ∈ [−126, 127]
    let y = er * scale;
    let y = if x > HI { f32::INFINITY } else { y };
    let y = if x < LO { 0.0 } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// `len` zeros written by the rayon pool, chunk by chunk, instead of by the calling thread: a
/// fresh activation-sized output's zero fill and first-touch page faults then run on every
/// core (serial, they held the other cores idle; perf of a train step put a fifth of the main
/// thread's samples there).
pub(crate) fn zeros_par<T: Real>(len: usize) -> Vec<T> {
    use rayon::prelude::*;
    let mut v: Vec<T> = Vec::with_capacity(len);
    v.spare_capacity_mut()
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.iter_mut().for_each(|x| _ = x.write(T::ZERO)));
    // SAFETY: the loop above wrote each of the `len` elements of the spare capacity.
    unsafe { v.set_len(len) };
    v
}

/// Whether the fused kernels serve `t`: f32/f64 on the CPU.
pub(crate) fn cpu_float(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The elements of a contiguous `l` in `s`, or an error naming `what`.
pub(crate) fn contiguous<'a, T: WithDType>(
    s: &'a [T],
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => s
            .get(a..b)
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: layout outside its storage"))),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// Runs `$body` (a generic kernel returning `Vec<T>`) with each `$v` bound to the contiguous
/// f32 or f64 slice of storage `$s` (all of one dtype), and wraps the result as storage.
macro_rules! dispatch {
    ($name:expr, [$(($v:ident, $s:expr, $l:expr)),+], $body:expr) => {
        match ($($s,)+) {
            ($(candle_core::CpuStorage::F32($v),)+) => {
                $(let $v = $crate::fused::contiguous($v, $l, $name)?;)+
                candle_core::CpuStorage::F32($body)
            }
            ($(candle_core::CpuStorage::F64($v),)+) => {
                $(let $v = $crate::fused::contiguous($v, $l, $name)?;)+
                candle_core::CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: f32 or f64 inputs of one dtype only", $name),
        }
    };
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::exp_f32;

    #[test]
    fn exp_f32_is_within_two_ulp_of_libm() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_f32(x), x.exp());
            let ulp = (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32;
            worst = worst.max(ulp);
            x += 0.000_37;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::{DType, Device, Tensor, Var};

    /// A reproducible `(dims)` f64 tensor with entries in about [−2, 2].
    pub fn randn(dims: &[usize], seed: u64) -> Tensor {
        let n: usize = dims.iter().product();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// The bits of an f32 tensor's values, for same-bits comparisons across CPU paths.
    pub fn f32_bits(t: &Tensor) -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Gradients of `Σ f(inputs) ⊙ w` (w a fixed random weight) with respect to each input.
    pub fn grads(f: &dyn Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], seed: u64) -> Vec<Tensor> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let w = randn(y.dims(), seed).to_dtype(y.dtype()).unwrap();
        let g = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter()
            .map(|v| g.get(v.as_tensor()).unwrap().clone())
            .collect()
    }

    /// Central finite differences of `Σ f(inputs) ⊙ w` with respect to input `which`, at a
    /// few coordinates, compared with `analytic` (f64 inputs).
    pub fn check_fd(
        f: &dyn Fn(&[Tensor]) -> Tensor,
        inputs: &[Tensor],
        which: usize,
        analytic: &Tensor,
        seed: u64,
    ) {
        let y0 = f(inputs);
        let w = randn(y0.dims(), seed);
        let loss = |ins: &[Tensor]| -> f64 {
            (f(ins) * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let base: Vec<f64> = inputs[which].flatten_all().unwrap().to_vec1().unwrap();
        let an: Vec<f64> = analytic.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-5;
        for k in (0..base.len()).step_by((base.len() / 7).max(1)) {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[k] += delta;
                let mut ins = inputs.to_vec();
                ins[which] = Tensor::from_vec(v, inputs[which].dims(), &Device::Cpu).unwrap();
                loss(&ins)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (fd - an[k]).abs() <= 1e-6 * (1.0 + an[k].abs()),
                "input {which} coordinate {k}: finite difference {fd}, backward {}",
                an[k]
            );
        }
    }
}
