//! Decode-time attention over per-sequence KV caches (no grad): each new row attends to its
//! own sequence's cache up to its position, `softmax(q·kᵀ/√d) v` per head.

use rayon::prelude::*;

use crate::kv_cache::KvCache;

/// Causal attention of each row over its sequence's cache up to (and including) its position,
/// parallel over (row, k/v head) pairs: the `H / KV` query heads that share a k/v head read each
/// key and value once. Each output's arithmetic is independent of the batch and the threads.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    caches: &[&mut KvCache],
    row_seq: &[usize],
    row_pos: &[usize],
    layer: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    scale: f32,
) -> Vec<f32> {
    let group = nh / nkv;
    let mut out = vec![0f32; q.len()];
    // Chunk i = (row r, k/v head g): the `group` query heads g·group .. (g+1)·group of row r.
    out.par_chunks_mut(group * hd)
        .enumerate()
        .for_each(|(i, og)| {
            let (r, g) = (i / nkv, i % nkv);
            let (s, len) = (row_seq[r], row_pos[r] + 1);
            let (keys, values) = (caches[s].keys(layer, g), caches[s].values(layer, g));
            let qg = &q[i * group * hd..(i + 1) * group * hd];
            let mut scores = vec![0f32; group * len];
            for (j, kj) in keys.chunks_exact(hd).take(len).enumerate() {
                for h in 0..group {
                    scores[h * len + j] = simd::dot(&qg[h * hd..(h + 1) * hd], kj) * scale;
                }
            }
            for h in 0..group {
                let sc = &mut scores[h * len..(h + 1) * len];
                let max = sc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut z = 0f32;
                for x in sc.iter_mut() {
                    *x = (*x - max).exp();
                    z += *x;
                }
                sc.iter_mut().for_each(|x| *x /= z);
            }
            for (j, vj) in values.chunks_exact(hd).take(len).enumerate() {
                for h in 0..group {
                    simd::axpy(scores[h * len + j], vj, &mut og[h * hd..(h + 1) * hd]);
                }
            }
        });
    out
}

/// Small vector helpers: AVX2 + FMA when the CPU has them (decided once per call site by a
/// cached CPUID check), plain Rust otherwise. The order of operations is fixed per machine.
mod simd {
    /// `Σ a_i b_i`.
    #[inline]
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: features detected; lengths checked inside.
                return unsafe { dot_avx2(a, b) };
            }
        }
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// `y += w · x`.
    #[inline]
    pub fn axpy(w: f32, x: &[f32], y: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: features detected; lengths checked inside.
                unsafe { axpy_avx2(w, x, y) };
                return;
            }
        }
        y.iter_mut().zip(x).for_each(|(y, x)| *y += w * x);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len().min(b.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            acc = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                acc,
            );
            i += 8;
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let mut t = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
        while i < n {
            t = a[i].mul_add(b[i], t);
            i += 1;
        }
        t
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy_avx2(w: f32, x: &[f32], y: &mut [f32]) {
        use std::arch::x86_64::*;
        let n = x.len().min(y.len());
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i + 8 <= n {
            let yp = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                yp,
                _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp)),
            );
            i += 8;
        }
        while i < n {
            y[i] = w.mul_add(x[i], y[i]);
            i += 1;
        }
    }
}
