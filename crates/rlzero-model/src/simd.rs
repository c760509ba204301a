//! Which code path the hand-written CPU kernels take: AVX2 + FMA registers where an x86-64 CPU
//! has both, NEON registers on aarch64 (Apple Silicon, Graviton: every aarch64 CPU has NEON), or
//! plain Rust that performs the same fused multiply-adds in the same order. Shared by
//! [`crate::sgemm`], the fused training kernels and the rollout's decode kernels; the CPU is
//! asked once per call.
//!
//! ```
//! use rlzero_model::simd::SimdPath;
//! let path = SimdPath::detect();
//! assert!(path.available() && SimdPath::Portable.available());
//! assert!(SimdPath::available_paths().contains(&path));
//! ```

/// A kernel's code path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdPath {
    /// AVX2 + FMA registers (x86-64 CPUs that have both).
    Avx2,
    /// NEON registers (aarch64, where NEON is part of the base instruction set).
    Neon,
    /// Plain Rust with the same fused multiply-adds in the same order: every CPU.
    Portable,
}

impl SimdPath {
    /// Every path, fastest first.
    pub const ALL: [SimdPath; 3] = [SimdPath::Avx2, SimdPath::Neon, SimdPath::Portable];

    /// The fastest path this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return SimdPath::Avx2;
        }
        // NEON is in the aarch64 targets' baseline (`target_feature = "neon"`), so the compiler
        // already emits it everywhere: no run-time question to ask.
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        return SimdPath::Neon;
        #[allow(unreachable_code)]
        SimdPath::Portable
    }

    /// Whether this CPU runs `self`.
    pub fn available(self) -> bool {
        match self {
            SimdPath::Avx2 | SimdPath::Neon => SimdPath::detect() == self,
            SimdPath::Portable => true,
        }
    }

    /// The paths this CPU runs, fastest first (what the kernels' tests compare).
    pub fn available_paths() -> Vec<SimdPath> {
        Self::ALL.into_iter().filter(|p| p.available()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `detect` names the path of the CPU the tests run on (under qemu-aarch64 too, so the NEON
    /// kernels' tests do exercise NEON).
    #[test]
    fn detect_names_this_cpu() {
        let path = SimdPath::detect();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            path == SimdPath::Avx2,
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        );
        #[cfg(target_arch = "aarch64")]
        assert_eq!(path, SimdPath::Neon);
        assert_eq!(SimdPath::available_paths().first(), Some(&path));
        assert_eq!(
            SimdPath::available_paths().last(),
            Some(&SimdPath::Portable)
        );
    }
}
