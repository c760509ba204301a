//! Keeping freed memory for reuse: an opt-in allocator setting for training binaries.
//!
//! A candle training step allocates and frees thousands of multi-megabyte tensors. glibc's
//! malloc serves large requests with fresh `mmap`s and returns them to the OS on `free`, so
//! every step pays the kernel to fault in and zero the same pages again: measured on the 2-core
//! CI machine, `clear_page` and page-fault handling took over a third of a SmolLM2 GRPO step.
//! [`keep_freed_memory`] tells glibc to serve every request from its heap (no per-request
//! `mmap`, whatever the size: `M_MMAP_THRESHOLD` cannot exceed 32 MiB, and a SmolLM2 step's
//! logits are 200 MB) and never to trim the heap, so freed pages are reused. The process keeps
//! its peak heap; that is the point. (glibc still maps a block directly when a thread's own
//! arena cannot grow; the large tensors are allocated by the main thread.)
//!
//! The library never calls this: the allocator is the binary's choice. Examples call it first
//! thing in `main`. On other platforms and C libraries it does nothing and returns `false`.

/// Configures glibc malloc to reuse freed memory (see the module docs). Returns whether the
/// settings were applied.
pub fn keep_freed_memory() -> bool {
    imp::keep_freed_memory()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    /// Heap growth per `brk`: fewer system calls while the first step builds the heap up.
    const TOP_PAD: libc::c_int = 64 << 20;

    pub fn keep_freed_memory() -> bool {
        // SAFETY: mallopt only changes allocator tunables; it is safe to call at any time.
        unsafe {
            // M_MMAP_MAX = 0: no request is served by its own mmap (glibc caps M_MMAP_THRESHOLD
            // at 32 MiB, and a SmolLM2 step frees and re-maps ~20 logits-sized buffers).
            // M_TRIM_THRESHOLD = -1 disables trimming (mallopt(3)); INT_MAX would still trim
            // whenever 2 GiB at the top of the heap were free, which a step's backward does.
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
                && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn keep_freed_memory() -> bool {
        false
    }
}
