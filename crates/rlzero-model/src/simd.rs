//! Which code path the hand-written CPU kernels take: AVX2 + FMA registers where the CPU has
//! both, or plain Rust that performs the same fused multiply-adds in the same order. Shared by
//! [`crate::sgemm`] and the rollout's decode kernel; the CPU is asked once per call.
//!
//! ```
//! use rlzero_model::simd::SimdPath;
//! let path = SimdPath::detect();
//! assert!(path.available() && SimdPath::Portable.available());
//! ```

/// A kernel's code path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdPath {
    /// AVX2 + FMA registers (x86-64 CPUs that have both).
    Avx2,
    /// Plain Rust with the same fused multiply-adds in the same order: every CPU.
    Portable,
}

impl SimdPath {
    /// The fastest path this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return SimdPath::Avx2;
        }
        SimdPath::Portable
    }

    /// Whether this CPU runs `self`.
    pub fn available(self) -> bool {
        match self {
            SimdPath::Avx2 => SimdPath::detect() == SimdPath::Avx2,
            SimdPath::Portable => true,
        }
    }
}
