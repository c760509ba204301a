//! The AVX2 + FMA decode kernels: the dot-product blocks of [`super::dot_block`] with the
//! weights streamed 8 lanes at a time (f32, or bf16 widened to f32) and prefetched
//! [`super::PREFETCH_BYTES`] ahead, and the horizontal sum the attention kernel shares.
//! Only called after `SimdPath::Avx2` was detected.

use std::arch::x86_64::*;

use super::{Acc, Bf16, Weight, PREFETCH_BYTES};

#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    // ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), a fixed order.
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}

/// 8 f32 weights.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_f32(p: *const f32) -> __m256 {
    _mm256_loadu_ps(p)
}

/// 8 bf16 weights widened to f32: zero-extend to 32 bits, shift into the upper half.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_bf16(p: *const Bf16) -> __m256 {
    let v = _mm_loadu_si128(p.cast::<__m128i>());
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
}

macro_rules! block_fn {
    ($name:ident, $t:ty, $load:ident, $nw:expr, $nx:expr) => {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $name(w: &[&[$t]], x: &[f32], k: usize, acc: &mut Acc) {
            // Chunks of 8 weights per 64-byte cache line.
            const LINE: usize = 64 / (8 * std::mem::size_of::<$t>());
            let chunks = k / 8;
            let xp = x.as_ptr();
            let mut wp = [std::ptr::null::<$t>(); $nw];
            for j in 0..$nw {
                wp[j] = w[j].as_ptr();
            }
            let mut a = [[_mm256_setzero_ps(); $nx]; $nw];
            for c in 0..chunks {
                if c % LINE == 0 {
                    for j in 0..$nw {
                        // `wrapping_add`: the address may lie past the slice (a prefetch
                        // never faults, and the pointer is never read through).
                        let p = wp[j].add(c * 8).cast::<i8>();
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES));
                    }
                }
                let mut wv = [_mm256_setzero_ps(); $nw];
                for j in 0..$nw {
                    wv[j] = $load(wp[j].add(c * 8));
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
                        s = w[j][i].to_f32().mul_add(x[r * k + i], s);
                    }
                    acc[j][r] = s;
                }
            }
        }
    };
}

/// The dispatcher over block shapes for one weight type.
macro_rules! blocks {
    ($dispatch:ident, $t:ty, $load:ident) => {
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn $dispatch(w: &[&[$t]], x: &[f32], k: usize, nx: usize, acc: &mut Acc) {
            block_fn!(b11, $t, $load, 1, 1);
            block_fn!(b12, $t, $load, 1, 2);
            block_fn!(b13, $t, $load, 1, 3);
            block_fn!(b14, $t, $load, 1, 4);
            block_fn!(b21, $t, $load, 2, 1);
            block_fn!(b22, $t, $load, 2, 2);
            block_fn!(b23, $t, $load, 2, 3);
            block_fn!(b24, $t, $load, 2, 4);
            block_fn!(b31, $t, $load, 3, 1);
            block_fn!(b32, $t, $load, 3, 2);
            block_fn!(b33, $t, $load, 3, 3);
            block_fn!(b34, $t, $load, 3, 4);
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
                _ => unreachable!("block sizes are at most 3 × 4"),
            }
        }
    };
}

blocks!(block_f32, f32, load_f32);
blocks!(block_bf16, Bf16, load_bf16);
