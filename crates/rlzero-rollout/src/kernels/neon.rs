//! [`Lanes`] in two NEON registers (lanes 0–3 and 4–7). NEON is in every aarch64 target's
//! baseline, so no run-time check is needed. Prefetching is left to the hardware prefetchers:
//! the AVX2 path's software prefetch distance was tuned on an x86 host, and no aarch64 host was
//! at hand to tune one (these lanes were tested for their bits under `qemu-aarch64`, see
//! `scripts/test-aarch64.sh`, not timed).

use std::arch::aarch64::*;

use super::lanes::Lanes;
use super::Bf16;

/// Eight f32 lanes in two `float32x4_t`.
#[derive(Clone, Copy)]
pub(crate) struct Neon(float32x4_t, float32x4_t);

// SAFETY: NEON is in the aarch64 baseline; the pointer methods read or write exactly 8 elements.
unsafe impl Lanes for Neon {
    #[inline(always)]
    unsafe fn zero() -> Self {
        Neon(vdupq_n_f32(0.0), vdupq_n_f32(0.0))
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Neon(vdupq_n_f32(v), vdupq_n_f32(v))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Neon(vld1q_f32(p), vld1q_f32(p.add(4)))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const Bf16) -> Self {
        // Widen each 16-bit value to 32 bits shifted left by 16: the bf16's f32.
        let v = vld1q_u16(p.cast::<u16>());
        Neon(
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(v))),
            vreinterpretq_f32_u32(vshll_high_n_u16::<16>(v)),
        )
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        vst1q_f32(p, self.0);
        vst1q_f32(p.add(4), self.1);
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        Neon(vfmaq_f32(self.0, a.0, b.0), vfmaq_f32(self.1, a.1, b.1))
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        // s = (0+4, 1+5, 2+6, 3+7); t = ((0+4) + (2+6), (1+5) + (3+7)); then t0 + t1.
        let s = vaddq_f32(self.0, self.1);
        let t = vadd_f32(vget_low_f32(s), vget_high_f32(s));
        vget_lane_f32::<0>(t) + vget_lane_f32::<1>(t)
    }
    #[inline(always)]
    unsafe fn prefetch(_: *const u8) {}
}
