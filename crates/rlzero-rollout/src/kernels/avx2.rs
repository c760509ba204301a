//! [`Lanes`] in one AVX2 register, with FMA. Only run through [`super::lanes::on_path`], which
//! compiles the kernel with `avx2,fma` after asking the CPU.

use std::arch::x86_64::*;

use super::lanes::Lanes;
use super::Bf16;

/// Eight f32 lanes in a `__m256`.
#[derive(Clone, Copy)]
pub(crate) struct Avx2(__m256);

// SAFETY: the methods use AVX2 and FMA instructions, which `on_path` checked the CPU has; the
// pointer methods read or write exactly 8 elements.
unsafe impl Lanes for Avx2 {
    #[inline(always)]
    unsafe fn zero() -> Self {
        Avx2(_mm256_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Avx2(_mm256_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Avx2(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const Bf16) -> Self {
        // Zero-extend the 16-bit values to 32 bits, then shift them into the upper half.
        let v = _mm_loadu_si128(p.cast::<__m128i>());
        Avx2(_mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(v),
            16,
        )))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        Avx2(_mm256_fmadd_ps(a.0, b.0, self.0))
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        // Lanes (0+4, 1+5, 2+6, 3+7), then ((0+4) + (2+6)) and ((1+5) + (3+7)), then their sum.
        let v = self.0;
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>())
    }
}
