//! A single-precision matrix product `C = A B` (or `C += A B`) for the training step's linear
//! maps on CPUs with AVX2 and FMA but without AVX-512.
//!
//! candle's CPU matmul is the `gemm` crate. Its AVX-512 kernels (the workspace turns on its
//! `x86-v4` feature) run at PyTorch's speed, but on AVX2-only CPUs its kernels reach about half
//! of the machine's FMA peak (100–130 of 204 GFLOP/s on the 2-core AVX2 host this was measured
//! on, `examples/matmul_bench.rs`), and the linear maps are two thirds of a training step.
//!
//! The method is BLIS's (Van Zee & van de Geijn 2015, "BLIS: A Framework for Rapidly
//! Instantiating BLAS Functionality"): `B` is packed in blocks of `KC × NC` into panels of
//! [`NR`] columns, `A` in blocks of `MC × KC` into panels of [`MR`] rows, and a micro-kernel keeps
//! an `MR × NR = 6 × 16` tile of `C` in twelve AVX registers while it streams one `A` panel and one
//! `B` panel: per `k`, two loads of `B`, six broadcasts of `A`, twelve FMAs. Packing turns any
//! strides (a transposed operand, the weight gradient's `Gᵀ`) into unit-stride panels, and
//! zero-pads the edges so the kernel always runs a full tile.
//!
//! **Determinism.** `C[i, j]` is accumulated over `k` in order, one FMA per term, `KC` terms at a
//! time, whatever the tile it falls in, the matrix sizes or the number of threads (work is split
//! over rows and columns of `C`, never over `k`). The portable kernel performs the same fused
//! multiply-adds in the same order ([`f32::mul_add`]), so every path gives the same bits
//! (tested).
//!
//! ```
//! use rlzero_model::sgemm::{sgemm, MatRef};
//! let a = [1f32, 2., 3., 4.]; // (2, 2) row-major
//! let b = [5f32, 6., 7., 8.];
//! let mut c = [0f32; 4];
//! sgemm(MatRef::row_major(&a, 2, 2)?, MatRef::row_major(&b, 2, 2)?, &mut c, false)?;
//! assert_eq!(c, [19., 22., 43., 50.]);
//! // Aᵀ B, by strides alone.
//! sgemm(MatRef::row_major(&a, 2, 2)?.t(), MatRef::row_major(&b, 2, 2)?, &mut c, false)?;
//! assert_eq!(c, [26., 30., 38., 44.]);
//! # Ok::<(), rlzero_model::ModelError>(())
//! ```

use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::simd::SimdPath;

/// Rows of `C` per micro-tile.
pub const MR: usize = 6;
/// Columns of `C` per micro-tile (two 8-lane registers).
pub const NR: usize = 16;
/// Depth of a packed block: one `B` panel (`KC × NR`, 16 KiB) stays in L1.
const KC: usize = 256;
/// Rows of a packed `A` block (`MC × KC`, 72 KiB) that stays in L2.
const MC: usize = 72;
/// Columns of a packed `B` block (`KC × NC`, 3 MiB), shared by the threads from L3.
const NC: usize = 3072;

/// A read-only view of an `rows × cols` matrix whose element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// A strided view; errors if an element would fall outside `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Result<Self> {
        let last = if rows == 0 || cols == 0 {
            Some(0)
        } else {
            (rows - 1)
                .checked_mul(rs)
                .zip((cols - 1).checked_mul(cs))
                .and_then(|(r, c)| r.checked_add(c))
        };
        match last {
            Some(l) if rows == 0 || cols == 0 || l < data.len() => Ok(Self {
                data,
                rows,
                cols,
                rs,
                cs,
            }),
            _ => Err(ModelError::InvalidInput(format!(
                "sgemm: a {rows} × {cols} view with strides ({rs}, {cs}) does not fit in {} values",
                data.len()
            ))),
        }
    }

    /// A contiguous row-major `rows × cols` view.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose (no copy: the strides swap).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// Whether the training step's linear maps should use [`sgemm`] rather than candle's matmul on
/// this CPU: AVX2 + FMA without AVX-512 (where `gemm`'s own AVX-512 kernels are as fast as this
/// one could be). Detected once.
pub fn preferred() -> bool {
    static PREFERRED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PREFERRED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            SimdPath::detect() == SimdPath::Avx2 && !std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `C = A B` (`accumulate = false`) or `C += A B`, `A` `(m, k)`, `B` `(k, n)`, `C` `(m, n)`
/// row-major, with the fastest kernel this CPU has, on rayon's threads.
pub fn sgemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], accumulate: bool) -> Result<()> {
    sgemm_with(SimdPath::detect(), a, b, c, accumulate)
}

/// [`sgemm`] with a chosen kernel (errors if this CPU cannot run it).
pub fn sgemm_with(
    kernel: SimdPath,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || m.checked_mul(n) != Some(c.len()) {
        return Err(ModelError::InvalidInput(format!(
            "sgemm: A is {m} × {k}, B {} × {n}, C has {} values",
            b.rows,
            c.len()
        )));
    }
    if !kernel.available() {
        return Err(ModelError::InvalidInput(format!(
            "sgemm: this CPU cannot run the {kernel:?} kernel"
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return Ok(());
    }
    let c = CPtr(c.as_mut_ptr());
    let mut bpack = Aligned::zeros(KC * NC.min(n.next_multiple_of(NR)));
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let panels = nc.div_ceil(NR);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let add = accumulate || pc > 0;
            // B block (kc × nc) → `panels` panels of kc × NR.
            bpack.as_mut()[..panels * kc * NR]
                .par_chunks_mut(kc * NR)
                .enumerate()
                .for_each(|(q, panel)| {
                    pack_b(&b, pc, kc, jc + q * NR, (n - jc - q * NR).min(NR), panel)
                });
            let bpack = bpack.as_ref();
            // Jobs: row blocks × column ranges, enough of them to keep every thread busy.
            let row_blocks = m.div_ceil(MC);
            let col_parts = (2 * rayon::current_num_threads())
                .div_ceil(row_blocks)
                .clamp(1, panels);
            let per_part = panels.div_ceil(col_parts);
            (0..row_blocks * col_parts).into_par_iter().for_each(|job| {
                let (ib, part) = (job / col_parts, job % col_parts);
                let (ic, mc) = (ib * MC, MC.min(m - ib * MC));
                let q_range = part * per_part..((part + 1) * per_part).min(panels);
                if q_range.is_empty() {
                    return;
                }
                let mut apack = Aligned::zeros(mc.next_multiple_of(MR) * kc);
                for (r, panel) in apack.as_mut().chunks_mut(kc * MR).enumerate() {
                    pack_a(&a, ic + r * MR, (mc - r * MR).min(MR), pc, kc, panel);
                }
                for q in q_range {
                    let (j0, nr) = (jc + q * NR, (n - jc - q * NR).min(NR));
                    let bp = &bpack[q * kc * NR..(q + 1) * kc * NR];
                    for (r, ap) in apack.as_ref().chunks(kc * MR).enumerate() {
                        let (i0, mr) = (ic + r * MR, (mc - r * MR).min(MR));
                        // SAFETY: jobs own disjoint (row block × column range) regions of C, so
                        // this tile is written by this job alone; (i0 + mr) ≤ m, (j0 + nr) ≤ n.
                        unsafe { tile(kernel, kc, ap, bp, c.at(i0 * n + j0), n, mr, nr, add) };
                    }
                }
            });
        }
    }
    Ok(())
}

/// `A[i0 .. i0+mr, p0 .. p0+kc]` → `dst[p·MR + i]`, rows past `mr` zero.
fn pack_a(a: &MatRef<'_>, i0: usize, mr: usize, p0: usize, kc: usize, dst: &mut [f32]) {
    for p in 0..kc {
        let d = &mut dst[p * MR..(p + 1) * MR];
        for (i, v) in d.iter_mut().enumerate() {
            *v = if i < mr { a.at(i0 + i, p0 + p) } else { 0.0 };
        }
    }
}

/// `B[p0 .. p0+kc, j0 .. j0+nr]` → `dst[p·NR + j]`, columns past `nr` zero.
fn pack_b(b: &MatRef<'_>, p0: usize, kc: usize, j0: usize, nr: usize, dst: &mut [f32]) {
    if b.cs == 1 && nr == NR {
        for p in 0..kc {
            let start = (p0 + p) * b.rs + j0;
            dst[p * NR..(p + 1) * NR].copy_from_slice(&b.data[start..start + NR]);
        }
        return;
    }
    // Column by column: for a transposed operand (`Wᵀ`) each column is a contiguous row.
    for j in 0..NR {
        for p in 0..kc {
            dst[p * NR + j] = if j < nr { b.at(p0 + p, j0 + j) } else { 0.0 };
        }
    }
}

/// One `mr × nr` tile of `C` at `c` (row stride `ldc`): `C (+)= Â B̂` over `kc` packed terms.
///
/// # Safety
/// `c` must point at `mr` rows of `nr` writable values `ldc` apart that no other thread touches,
/// and `kernel` must be available.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kernel: SimdPath,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    add: bool,
) {
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    let full = mr == MR && nr == NR;
    let mut buf = [0f32; MR * NR];
    let (dst, ld, add_here) = if full {
        (c, ldc, add)
    } else {
        (buf.as_mut_ptr(), NR, false)
    };
    match kernel {
        #[cfg(target_arch = "x86_64")]
        SimdPath::Avx2 => avx2::kernel(kc, a.as_ptr(), b.as_ptr(), dst, ld, add_here),
        #[cfg(not(target_arch = "x86_64"))]
        SimdPath::Avx2 => unreachable!("SimdPath::available() rejects AVX2 off x86-64"),
        // On aarch64 `preferred()` sends the training step to gemm's NEON kernels; a direct call
        // runs the portable kernel, which the compiler vectorises with NEON (its baseline).
        SimdPath::Neon | SimdPath::Portable => portable_kernel(kc, a, b, dst, ld, add_here),
    }
    if !full {
        for i in 0..mr {
            for j in 0..nr {
                let d = c.add(i * ldc + j);
                *d = if add {
                    *d + buf[i * NR + j]
                } else {
                    buf[i * NR + j]
                };
            }
        }
    }
}

/// The micro-kernel in plain Rust: the AVX2 kernel's arithmetic, element by element.
///
/// # Safety
/// `c` must point at `MR` rows of `NR` writable values `ldc` apart.
unsafe fn portable_kernel(kc: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize, add: bool) {
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc {
        for (i, row) in acc.iter_mut().enumerate() {
            let av = a[p * MR + i];
            for (j, v) in row.iter_mut().enumerate() {
                *v = av.mul_add(b[p * NR + j], *v);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let d = c.add(i * ldc + j);
            *d = if add { *d + v } else { *v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// # Safety
    /// AVX2 and FMA must be available; `a` holds `kc·MR`, `b` `kc·NR` values; `c` points at `MR`
    /// rows of `NR` writable values `ldc` apart.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        add: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(p * MR + i));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let d = c.add(i * ldc);
            let (mut r0, mut r1) = (row[0], row[1]);
            if add {
                r0 = _mm256_add_ps(_mm256_loadu_ps(d), r0);
                r1 = _mm256_add_ps(_mm256_loadu_ps(d.add(8)), r1);
            }
            _mm256_storeu_ps(d, r0);
            _mm256_storeu_ps(d.add(8), r1);
        }
    }
}

/// A zeroed `f32` buffer that starts on a cache line (full panels then never straddle one).
struct Aligned {
    lines: Vec<Line>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

impl Aligned {
    fn zeros(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    fn as_ref(&self) -> &[f32] {
        // SAFETY: `Line` is 16 f32 with no padding (repr(C), 64 bytes), so the lines are
        // `16 · lines.len() ≥ len` contiguous, initialised f32.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }

    fn as_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_ref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

/// `C`'s base pointer, shared by the jobs that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: every job writes a region of C no other job touches (see `sgemm_with`).
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

impl CPtr {
    /// # Safety
    /// `offset` must lie within C.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

#[cfg(test)]
mod tests;
