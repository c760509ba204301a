//! Row reductions in 8 independent lanes, for the fused kernels' inner loops.
//!
//! A plain `iter().fold(0, +)` is a chain of dependent scalar additions: the compiler may not
//! reorder floating-point sums, so it cannot vectorise them, and each addition waits for the
//! last (≈ 3 cycles per element). Here element `i` goes to lane `i mod 8`, the lanes are
//! combined by a fixed tree, and the tail is added last: one fixed order, so the bits do not
//! depend on the CPU path (SSE, AVX2) or on the thread count, and the loop compiles to vector
//! instructions. [`on_path`] runs a kernel compiled for AVX2 where the CPU has it.

use super::Real;
use crate::simd::SimdPath;

/// Lanes per reduction: one AVX2 register of f32.
pub(crate) const LANES: usize = 8;

#[inline(always)]
fn tree<T: Real>(a: [T; LANES]) -> T {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `Σ x`.
#[inline(always)]
pub(crate) fn sum<T: Real>(x: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        acc[l] += v;
    }
    tree(acc)
}

/// `Σ x·y` over the shorter of the two.
#[inline(always)]
pub(crate) fn dot<T: Real>(x: &[T], y: &[T]) -> T {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [T::ZERO; LANES];
    let mut xc = x.chunks_exact(LANES);
    let mut yc = y.chunks_exact(LANES);
    for (a, b) in (&mut xc).zip(&mut yc) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    for (l, (&a, &b)) in xc.remainder().iter().zip(yc.remainder()).enumerate() {
        acc[l] += a * b;
    }
    tree(acc)
}

/// `Σ x·y·z` over the shortest of the three.
#[inline(always)]
pub(crate) fn dot3<T: Real>(x: &[T], y: &[T], z: &[T]) -> T {
    let n = x.len().min(y.len()).min(z.len());
    let mut acc = [T::ZERO; LANES];
    let full = n - n % LANES;
    for i in (0..full).step_by(LANES) {
        for l in 0..LANES {
            acc[l] += x[i + l] * y[i + l] * z[i + l];
        }
    }
    for i in full..n {
        acc[i - full] += x[i] * y[i] * z[i];
    }
    tree(acc)
}

/// `max x`, ignoring NaN (as `if v > m { m = v }` does); `−∞` for an empty row.
#[inline(always)]
pub(crate) fn max<T: Real>(x: &[T]) -> T {
    let neg_inf = T::from_f64(f64::NEG_INFINITY);
    let mut acc = [neg_inf; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        acc[l] = if v > acc[l] { v } else { acc[l] };
    }
    acc.iter().fold(neg_inf, |m, &v| if v > m { v } else { m })
}

/// A kernel over some rows, to run with [`on_path`]. Its `run` must be `#[inline(always)]`,
/// like everything it calls in the hot loop, so that it is compiled into `on_path`'s AVX2 copy.
/// (A trait rather than a closure: attributes on closures are not stable Rust, and a closure
/// that is not inlined keeps the baseline CPU's code.)
pub(crate) trait Kernel {
    /// What the kernel returns.
    type Output;
    /// The work.
    fn run(self) -> Self::Output;
}

/// Runs `k` compiled for AVX2 + FMA when `path` is [`SimdPath::Avx2`] and the CPU has them
/// (256-bit registers), else as compiled for the baseline CPU (which on aarch64 is NEON's 128-bit
/// registers, so [`SimdPath::Neon`] needs no copy of its own). The kernels here never ask for
/// fused multiply-adds (Rust does not contract `a·b + c`), so both give the same bits; the
/// tests check that.
#[inline(always)]
pub(crate) fn on_path<K: Kernel>(path: SimdPath, k: K) -> K::Output {
    match path {
        #[cfg(target_arch = "x86_64")]
        SimdPath::Avx2 if path.available() => {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<K: Kernel>(k: K) -> K::Output {
                k.run()
            }
            // SAFETY: the CPU has AVX2 and FMA (`available` asked it).
            unsafe { avx2(k) }
        }
        _ => k.run(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_the_plain_ones() {
        for n in [0usize, 1, 7, 8, 9, 16, 29, 168, 1000] {
            let x: Vec<f64> = (0..n).map(|i| ((i * 37) % 11) as f64 - 5.0).collect();
            let y: Vec<f64> = (0..n).map(|i| ((i * 13) % 7) as f64 * 0.5).collect();
            // Small integers and halves: every order of summation is exact.
            assert_eq!(sum(&x), x.iter().sum::<f64>());
            assert_eq!(
                dot(&x, &y),
                x.iter().zip(&y).map(|(a, b)| a * b).sum::<f64>()
            );
            let want = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(max(&x), want);
        }
        assert_eq!(max(&[f32::NAN, 1.0, f32::NAN]), 1.0);
    }
}
