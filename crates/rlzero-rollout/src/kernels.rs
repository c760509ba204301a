//! The no-grad linear map for small batches: `y = x Wᵀ + b` with `x` of a few rows.
//!
//! At decode time `x` has one row per live sequence (≈ 8), so the product is bound by streaming
//! `W` from memory, where candle's `gemm` reaches only 6–9 GB/s of the ~21 GB/s available. This
//! kernel reads each weight row once, keeps it in L1 and dots it with every row of `x` (AVX2 +
//! FMA, chosen at run time, with a portable fallback), parallel over output rows.
//!
//! **Determinism.** Each output `y[m, o]` is one dot product accumulated in the same order
//! whatever the number of rows or threads (8-lane partial sums over `k` in order, a fixed
//! horizontal reduction, then the scalar tail). So a sequence's logits do not depend on which
//! other sequences share its batch.

use rayon::prelude::*;

/// Output rows per parallel task: large enough to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 64;
/// Input rows dotted against one weight row at a time (accumulators kept in registers).
const GROUP: usize = 8;

/// `y (m × o) = x (m × k) · wᵀ (w: o × k, row-major) + bias`.
pub fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    o: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "x is not m × k");
    assert_eq!(w.len(), o * k, "w is not o × k");
    // Transposed result (o × m): each task owns a contiguous block of output rows.
    let mut yt = vec![0f32; o * m];
    yt.par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, block)| {
            let o0 = task * ROWS_PER_TASK;
            for (j, out) in block.chunks_mut(m).enumerate() {
                let oi = o0 + j;
                let wr = &w[oi * k..(oi + 1) * k];
                for g0 in (0..m).step_by(GROUP) {
                    let rows = (m - g0).min(GROUP);
                    dots(wr, &x[g0 * k..(g0 + rows) * k], k, &mut out[g0..g0 + rows]);
                }
                if let Some(b) = bias {
                    out.iter_mut().for_each(|v| *v += b[oi]);
                }
            }
        });
    let mut y = vec![0f32; m * o];
    for (oi, col) in yt.chunks(m).enumerate() {
        for (mi, v) in col.iter().enumerate() {
            y[mi * o + oi] = *v;
        }
    }
    y
}

/// `out[r] = w · x[r]` for `r < out.len()` (≤ 8 rows of length `k`, row-major in `x`).
fn dots(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were just detected; slices are bounds-checked by the asserts
            // in `dots_avx2`.
            unsafe { avx2::dots_avx2(w, x, k, out) };
            return;
        }
    }
    dots_portable(w, x, k, out)
}

/// Same arithmetic shape as the AVX2 path, in plain Rust.
fn dots_portable(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
    let chunks = k / 8;
    for (r, o) in out.iter_mut().enumerate() {
        let xr = &x[r * k..(r + 1) * k];
        let mut acc = [0f32; 8];
        for c in 0..chunks {
            for l in 0..8 {
                acc[l] += w[c * 8 + l] * xr[c * 8 + l];
            }
        }
        let mut s =
            ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
        for i in chunks * 8..k {
            s += w[i] * xr[i];
        }
        *o = s;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), a fixed order.
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi); // [a0+a4, a1+a5, a2+a6, a3+a7]
        let sh = _mm_movehl_ps(s, s); // [a2+a6, a3+a7, ..]
        let s2 = _mm_add_ps(s, sh); // [(a0+a4)+(a2+a6), (a1+a5)+(a3+a7), ..]
        let s3 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        _mm_cvtss_f32(s3)
    }

    macro_rules! dots_n {
        ($name:ident, $n:expr) => {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn $name(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
                let chunks = k / 8;
                let wp = w.as_ptr();
                let xp = x.as_ptr();
                let mut acc = [_mm256_setzero_ps(); $n];
                for c in 0..chunks {
                    let wv = _mm256_loadu_ps(wp.add(c * 8));
                    for r in 0..$n {
                        acc[r] =
                            _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(r * k + c * 8)), acc[r]);
                    }
                }
                for r in 0..$n {
                    let mut s = hsum(acc[r]);
                    for i in chunks * 8..k {
                        s = w[i].mul_add(x[r * k + i], s);
                    }
                    out[r] = s;
                }
            }
        };
    }
    dots_n!(d1, 1);
    dots_n!(d2, 2);
    dots_n!(d3, 3);
    dots_n!(d4, 4);
    dots_n!(d5, 5);
    dots_n!(d6, 6);
    dots_n!(d7, 7);
    dots_n!(d8, 8);

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots_avx2(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
        assert!(w.len() >= k && x.len() >= out.len() * k && out.len() <= 8);
        match out.len() {
            1 => d1(w, x, k, out),
            2 => d2(w, x, k, out),
            3 => d3(w, x, k, out),
            4 => d4(w, x, k, out),
            5 => d5(w, x, k, out),
            6 => d6(w, x, k, out),
            7 => d7(w, x, k, out),
            8 => d8(w, x, k, out),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], o: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * o];
        for i in 0..m {
            for j in 0..o {
                y[i * o + j] = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_a_naive_product_for_ragged_shapes() {
        for (m, k, o) in [
            (1, 8, 3),
            (3, 13, 70),
            (8, 64, 130),
            (11, 576, 65),
            (17, 100, 1),
        ] {
            let (x, w) = (data(m * k, 1), data(o * k, 2));
            let b = data(o, 3);
            let y = linear(&x, m, k, &w, o, Some(&b));
            let want = naive(&x, m, k, &w, o);
            for i in 0..m * o {
                assert!(
                    (y[i] - want[i] - b[i % o]).abs() < 1e-4 * k as f32,
                    "({m},{k},{o}) at {i}"
                );
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_whatever_its_batch() {
        let (k, o) = (576, 200);
        let x = data(11 * k, 5);
        let w = data(o * k, 6);
        let all = linear(&x, 11, k, &w, o, None);
        for r in 0..11 {
            let alone = linear(&x[r * k..(r + 1) * k], 1, k, &w, o, None);
            assert_eq!(&all[r * o..(r + 1) * o], alone.as_slice(), "row {r}");
        }
        let x3 = &x[2 * k..5 * k];
        let three = linear(x3, 3, k, &w, o, None);
        assert_eq!(&all[2 * o..5 * o], three.as_slice());
    }
}
