//! Eight f32 lanes in registers: the few operations the decode kernels ask of an instruction
//! set, so that each kernel is written once ([`super::block`], the attention's two passes) and
//! compiled for every path: AVX2 + FMA (one 256-bit register), NEON (two 128-bit registers) and
//! plain Rust (an array, [`f32::mul_add`] per lane).
//!
//! Every implementation does the same arithmetic: lane `l` accumulates with one fused
//! multiply-add per term ([`Lanes::fma`], rounded once), and [`Lanes::hsum`] adds the lanes in one
//! fixed tree, `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`. So the paths give the same
//! bits (the kernels' tests compare every path this CPU runs), and a result never depends on
//! which path computed it.
//!
//! [`on_path`] runs a [`LanesKernel`] with the lanes of a [`CheckedPath`], compiled with that
//! path's target features; its `run` and everything it calls must be `#[inline(always)]` to be compiled into
//! that copy (as [`rlzero_model`]'s fused kernels do with theirs).

use rlzero_model::simd::SimdPath;

use super::Bf16;

/// Lanes per vector: one AVX2 register of f32.
pub(crate) const LANES: usize = 8;

/// Eight f32 lanes.
///
/// # Safety
/// Every method may use the path's instructions: call them only inside a [`LanesKernel`] run by
/// [`on_path`], which checks the CPU. Pointers must be valid for the 8 elements read or written.
pub(crate) unsafe trait Lanes: Copy {
    /// All lanes zero.
    unsafe fn zero() -> Self;
    /// All lanes `v`.
    unsafe fn splat(v: f32) -> Self;
    /// 8 f32 from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self;
    /// 8 bf16 from `p`, widened exactly to f32 (the bits shifted into the upper half).
    unsafe fn load_bf16(p: *const Bf16) -> Self;
    /// The lanes to `p` (unaligned).
    unsafe fn store(self, p: *mut f32);
    /// `self + a·b` per lane, rounded once.
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    /// `((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`.
    unsafe fn hsum(self) -> f32;
    /// Asks for the cache line holding `p` (a hint: never faults, changes no result). A no-op
    /// where the path leaves streams to the hardware prefetchers.
    unsafe fn prefetch(p: *const u8);
}

/// Work to compile once per path's [`Lanes`].
pub(crate) trait LanesKernel {
    /// What the kernel returns.
    type Output;
    /// The work, with lanes `V`. Implementations must be `#[inline(always)]`.
    ///
    /// # Safety
    /// `V`'s instructions must be available (as [`on_path`] ensures).
    unsafe fn run<V: Lanes>(self) -> Self::Output;
}

/// A [`SimdPath`] this CPU runs, checked once when a kernel is entered (the check calls into
/// std's feature detection, too slow to repeat for each of a decode step's ~10⁵ register blocks).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CheckedPath(SimdPath);

impl CheckedPath {
    /// `path`, or the portable one if this CPU cannot run it.
    pub(crate) fn new(path: SimdPath) -> Self {
        CheckedPath(if path.available() {
            path
        } else {
            SimdPath::Portable
        })
    }

    /// The fastest path this CPU runs.
    pub(crate) fn detect() -> Self {
        CheckedPath(SimdPath::detect())
    }
}

/// Runs `k` with the lanes of `path`, compiled with its target features.
#[inline(always)]
pub(crate) fn on_path<K: LanesKernel>(path: CheckedPath, k: K) -> K::Output {
    match path.0 {
        #[cfg(target_arch = "x86_64")]
        SimdPath::Avx2 => {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<K: LanesKernel>(k: K) -> K::Output {
                k.run::<super::avx2::Avx2>()
            }
            // SAFETY: a `CheckedPath` holds AVX2 only if the CPU has AVX2 and FMA.
            unsafe { avx2(k) }
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: a `CheckedPath` holds NEON only if the target has it (the aarch64 baseline).
        SimdPath::Neon => unsafe { k.run::<super::neon::Neon>() },
        // SAFETY: the portable lanes are plain Rust. (On other architectures a `CheckedPath`
        // never holds AVX2 or NEON.)
        _ => unsafe { k.run::<Portable>() },
    }
}

/// The lanes as an array, one [`f32::mul_add`] per lane: every CPU. (`mul_add` is one
/// instruction where the CPU has FMA; on an x86-64 CPU without FMA it is a library call, slow
/// but exact.) Prefetching is left to the hardware.
#[derive(Clone, Copy)]
pub(crate) struct Portable([f32; LANES]);

// SAFETY: plain Rust; the pointer methods read or write exactly 8 elements.
unsafe impl Lanes for Portable {
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; LANES])
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Portable([v; LANES])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Portable(std::ptr::read_unaligned(p.cast::<[f32; LANES]>()))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const Bf16) -> Self {
        let w = std::ptr::read_unaligned(p.cast::<[Bf16; LANES]>());
        Portable(w.map(|v| v.to_f32()))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p.cast::<[f32; LANES]>(), self.0)
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        let mut r = self.0;
        for ((r, &a), &b) in r.iter_mut().zip(&a.0).zip(&b.0) {
            *r = a.mul_add(b, *r);
        }
        Portable(r)
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        let a = self.0;
        ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    }
    #[inline(always)]
    unsafe fn prefetch(_: *const u8) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each path's lanes, one operation at a time, against the portable ones.
    struct Ops<'a>(&'a [f32], &'a [Bf16]);

    impl LanesKernel for Ops<'_> {
        type Output = Vec<u32>;
        #[inline(always)]
        unsafe fn run<V: Lanes>(self) -> Vec<u32> {
            let (x, w) = (self.0, self.1);
            let (a, b, c) = (
                V::load(x.as_ptr()),
                V::load(x[8..].as_ptr()),
                V::splat(x[16]),
            );
            let wide = V::load_bf16(w.as_ptr());
            let mut out = vec![0f32; 24];
            a.fma(b, c).store(out.as_mut_ptr());
            wide.fma(a, wide).store(out[8..].as_mut_ptr());
            V::zero().store(out[16..].as_mut_ptr());
            out[16] = a.hsum();
            out[17] = wide.hsum();
            V::prefetch(x.as_ptr().cast());
            out.iter().map(|v| v.to_bits()).collect()
        }
    }

    #[test]
    fn every_path_gives_the_portable_bits() {
        // Values whose products and sums round, so a separate multiply and add, or another
        // summation order, would show.
        let x: Vec<f32> = (0..17).map(|i| 1.0 / (i as f32 + 3.0) - 0.2).collect();
        let w: Vec<Bf16> = (0..8)
            .map(|i| Bf16::from_f32(0.7 - i as f32 / 7.0))
            .collect();
        let reference = on_path(CheckedPath::new(SimdPath::Portable), Ops(&x, &w));
        for path in SimdPath::available_paths() {
            let got = on_path(CheckedPath::new(path), Ops(&x, &w));
            assert_eq!(got, reference, "{path:?}");
        }
        let bits = &reference;
        let lanes = |o: usize| (0..8).map(move |i| f32::from_bits(bits[o + i]));
        for (i, v) in lanes(0).enumerate() {
            assert_eq!(v, x[8 + i].mul_add(x[16], x[i]), "fma lane {i}");
        }
        for (i, v) in lanes(8).enumerate() {
            let wi = w[i].to_f32();
            assert_eq!(v, x[i].mul_add(wi, wi), "bf16 lane {i}");
        }
        let a = &x[..8];
        let tree = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
        assert_eq!(f32::from_bits(reference[16]), tree);
    }
}
