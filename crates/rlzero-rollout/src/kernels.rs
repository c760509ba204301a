//! The no-grad linear map for small batches: `y = x Wᵀ + b` with `x` of a few rows.
//!
//! At decode time `x` has one row per live sequence (≈ 8), so the product is bound by streaming
//! `W` from memory, where candle's `gemm` reaches only 6–9 GB/s. This kernel streams each weight
//! row once (prefetched a few rows ahead, since one core alone keeps too few DRAM requests in
//! flight), and computes a 3 × 4 block of dot products per pass (3 weight rows × 4 input rows,
//! 12 AVX2 accumulators), so each load feeds almost two FMAs. Work is split over output rows;
//! several matrices that read the same input (q/k/v, gate/up) run as one parallel pass.
//!
//! **Determinism.** Each output `y[m, o]` is one dot product accumulated in the same order
//! whatever the block it falls in, the number of rows or the number of threads (8-lane partial
//! sums over `k` in order, a fixed horizontal reduction, then the scalar tail). So a sequence's
//! logits do not depend on which other sequences share its batch.

use rayon::prelude::*;

/// Output rows per parallel task: large enough to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 64;
/// How many weight rows ahead to prefetch.
const PREFETCH_ROWS: usize = 10;
/// Weight rows and input rows per register block.
const BW: usize = 3;
const BX: usize = 4;

/// One weight matrix `(out, in)` with an optional bias `(out,)`.
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    pub w: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub out: usize,
}

/// `y (m × o) = x (m × k) · wᵀ (w: o × k, row-major) + bias`.
pub fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    o: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    linear_many(x, m, k, &[Matrix { w, bias, out: o }])
        .pop()
        .expect("one matrix")
}

/// Several products sharing the input `x (m × k)`, in one parallel pass over all output rows.
pub fn linear_many(x: &[f32], m: usize, k: usize, mats: &[Matrix<'_>]) -> Vec<Vec<f32>> {
    assert_eq!(x.len(), m * k, "x is not m × k");
    let mut starts = Vec::with_capacity(mats.len() + 1);
    let mut total = 0;
    for mat in mats {
        assert_eq!(mat.w.len(), mat.out * k, "a weight is not out × k");
        starts.push(total);
        total += mat.out;
    }
    starts.push(total);
    // Transposed result (rows of all matrices × m): each task owns a contiguous block.
    let mut yt = vec![0f32; total * m];
    yt.par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, block)| {
            let mut row = task * ROWS_PER_TASK;
            let end = row + block.len() / m;
            // Warm the start of this task's block; the loop below prefetches ahead from there.
            for r in row..(row + PREFETCH_ROWS).min(end) {
                let mi = starts.partition_point(|&s| s <= r) - 1;
                let local = r - starts[mi];
                prefetch(&mats[mi].w[local * k..(local + 1) * k]);
            }
            while row < end {
                // Stay inside one matrix per register block.
                let mi = starts.partition_point(|&s| s <= row) - 1;
                let mat = &mats[mi];
                let local = row - starts[mi];
                let nw = BW.min(end - row).min(starts[mi + 1] - row);
                // Fixed-size, on the stack: this runs once per 3 output rows of every step.
                let mut rows: [&[f32]; BW] = [&[]; BW];
                for (j, r) in rows.iter_mut().enumerate().take(nw) {
                    *r = &mat.w[(local + j) * k..(local + j + 1) * k];
                }
                let rows = &rows[..nw];
                if local + nw + PREFETCH_ROWS <= mat.out {
                    for j in 0..nw {
                        let r = local + j + PREFETCH_ROWS;
                        prefetch(&mat.w[r * k..(r + 1) * k]);
                    }
                }
                let out = &mut block
                    [(row - task * ROWS_PER_TASK) * m..(row - task * ROWS_PER_TASK + nw) * m];
                for x0 in (0..m).step_by(BX) {
                    let nx = BX.min(m - x0);
                    let mut acc = [[0f32; BX]; BW];
                    dot_block(rows, &x[x0 * k..(x0 + nx) * k], k, nx, &mut acc);
                    for (j, a) in acc.iter().enumerate().take(nw) {
                        out[j * m + x0..j * m + x0 + nx].copy_from_slice(&a[..nx]);
                    }
                }
                if let Some(b) = mat.bias {
                    for j in 0..nw {
                        out[j * m..(j + 1) * m]
                            .iter_mut()
                            .for_each(|v| *v += b[local + j]);
                    }
                }
                row += nw;
            }
        });
    mats.iter()
        .enumerate()
        .map(|(mi, mat)| {
            let mut y = vec![0f32; m * mat.out];
            for oi in 0..mat.out {
                let col = &yt[(starts[mi] + oi) * m..(starts[mi] + oi + 1) * m];
                for (mr, v) in col.iter().enumerate() {
                    y[mr * mat.out + oi] = *v;
                }
            }
            y
        })
        .collect()
}

/// Asks the cache hierarchy for every line of `row` (a hint; no effect on results).
#[inline(always)]
fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = row.as_ptr() as *const i8;
        let bytes = std::mem::size_of_val(row);
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetch is only a hint, and the address lies within `row`.
            unsafe { _mm_prefetch(p.add(off), _MM_HINT_T0) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// `acc[j][r] = w[j] · x[r]` for `j < w.len() (≤ 3)`, `r < nx (≤ 4)`; `x` holds `nx` rows of `k`.
fn dot_block(w: &[&[f32]], x: &[f32], k: usize, nx: usize, acc: &mut [[f32; BX]; BW]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were just detected; `avx2::block` checks the slice bounds.
            unsafe { avx2::block(w, x, k, nx, acc) };
            return;
        }
    }
    for (j, wr) in w.iter().enumerate() {
        for r in 0..nx {
            acc[j][r] = dot_portable(wr, &x[r * k..(r + 1) * k]);
        }
    }
}

/// The same arithmetic shape as the AVX2 path (8 lanes, fixed reduction), in plain Rust.
fn dot_portable(w: &[f32], x: &[f32]) -> f32 {
    let chunks = w.len() / 8;
    let mut a = [0f32; 8];
    for c in 0..chunks {
        for l in 0..8 {
            a[l] += w[c * 8 + l] * x[c * 8 + l];
        }
    }
    let mut s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
    for i in chunks * 8..w.len() {
        s += w[i] * x[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BW, BX};

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), a fixed order.
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
    }

    macro_rules! block_fn {
        ($name:ident, $nw:expr, $nx:expr) => {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn $name(w: &[&[f32]], x: &[f32], k: usize, acc: &mut [[f32; BX]; BW]) {
                let chunks = k / 8;
                let xp = x.as_ptr();
                let mut wp = [std::ptr::null::<f32>(); $nw];
                for j in 0..$nw {
                    wp[j] = w[j].as_ptr();
                }
                let mut a = [[_mm256_setzero_ps(); $nx]; $nw];
                for c in 0..chunks {
                    let mut wv = [_mm256_setzero_ps(); $nw];
                    for j in 0..$nw {
                        wv[j] = _mm256_loadu_ps(wp[j].add(c * 8));
                    }
                    for r in 0..$nx {
                        let xv = _mm256_loadu_ps(xp.add(r * k + c * 8));
                        for j in 0..$nw {
                            a[j][r] = _mm256_fmadd_ps(wv[j], xv, a[j][r]);
                        }
                    }
                }
                for j in 0..$nw {
                    for r in 0..$nx {
                        let mut s = hsum(a[j][r]);
                        for i in chunks * 8..k {
                            s = w[j][i].mul_add(x[r * k + i], s);
                        }
                        acc[j][r] = s;
                    }
                }
            }
        };
    }
    block_fn!(b11, 1, 1);
    block_fn!(b12, 1, 2);
    block_fn!(b13, 1, 3);
    block_fn!(b14, 1, 4);
    block_fn!(b21, 2, 1);
    block_fn!(b22, 2, 2);
    block_fn!(b23, 2, 3);
    block_fn!(b24, 2, 4);
    block_fn!(b31, 3, 1);
    block_fn!(b32, 3, 2);
    block_fn!(b33, 3, 3);
    block_fn!(b34, 3, 4);

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block(w: &[&[f32]], x: &[f32], k: usize, nx: usize, acc: &mut [[f32; BX]; BW]) {
        assert!(w.iter().all(|r| r.len() >= k) && x.len() >= nx * k);
        match (w.len(), nx) {
            (1, 1) => b11(w, x, k, acc),
            (1, 2) => b12(w, x, k, acc),
            (1, 3) => b13(w, x, k, acc),
            (1, 4) => b14(w, x, k, acc),
            (2, 1) => b21(w, x, k, acc),
            (2, 2) => b22(w, x, k, acc),
            (2, 3) => b23(w, x, k, acc),
            (2, 4) => b24(w, x, k, acc),
            (3, 1) => b31(w, x, k, acc),
            (3, 2) => b32(w, x, k, acc),
            (3, 3) => b33(w, x, k, acc),
            (3, 4) => b34(w, x, k, acc),
            _ => unreachable!("block sizes are at most {BW} × {BX}"),
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
            (5, 40, 97),
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
    fn several_matrices_in_one_pass_equal_separate_calls() {
        let (m, k) = (6, 72);
        let x = data(m * k, 9);
        let (w1, w2, w3) = (data(50 * k, 1), data(7 * k, 2), data(100 * k, 3));
        let b2 = data(7, 4);
        let many = linear_many(
            &x,
            m,
            k,
            &[
                Matrix {
                    w: &w1,
                    bias: None,
                    out: 50,
                },
                Matrix {
                    w: &w2,
                    bias: Some(&b2),
                    out: 7,
                },
                Matrix {
                    w: &w3,
                    bias: None,
                    out: 100,
                },
            ],
        );
        assert_eq!(many[0], linear(&x, m, k, &w1, 50, None));
        assert_eq!(many[1], linear(&x, m, k, &w2, 7, Some(&b2)));
        assert_eq!(many[2], linear(&x, m, k, &w3, 100, None));
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
        let three = linear(&x[2 * k..5 * k], 3, k, &w, o, None);
        assert_eq!(&all[2 * o..5 * o], three.as_slice());
    }
}
