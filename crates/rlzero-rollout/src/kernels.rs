//! The no-grad linear map for small batches: `y = x Wᵀ + b` with `x` of a few rows.
//!
//! At decode time `x` has one row per live sequence (≈ 8), so the product is bound by streaming
//! `W` from memory, where candle's `gemm` reaches only 6–9 GB/s. This kernel streams each weight
//! row once and computes a 3 × 4 block of dot products per pass (3 weight rows × 4 input rows,
//! 12 accumulators of 8 lanes), so each load feeds almost two FMAs. Work is split over output rows;
//! several matrices that read the same input (q/k/v, gate/up) run as one parallel pass.
//!
//! **Overlapping the arithmetic with the stream.** At 8 rows the FMAs alone take about as long as
//! the memory stream, so the two must overlap. Inside the inner loop each weight row asks for the
//! cache line [`PREFETCH_BYTES`] ahead of the one it reads, one line per 64 bytes consumed: a
//! steady number of DRAM requests in flight. (Asking for whole rows a few rows ahead, in bursts,
//! filled the core's miss buffers and stalled it: 12–14 GB/s on a 2-core AVX2 host whose
//! `memory_bandwidth` reads 25.8; this way, 17–21 GB/s.) At 8 rows a block of weight rows is
//! read twice, once per 4 input rows, the second time from L1; both passes prefetch. (When only
//! the first did, no requests went out during the second, and on that host a SmolLM2-sized
//! pass took ~10 % longer in 8 of 10 alternating pairs: one core alone streams 11 GB/s of the
//! 19 both reach, so a core that pauses its requests loses bandwidth it cannot make up.) Each
//! thread gets about two large contiguous tasks per matrix, so the streams run long and the
//! threads finish together.
//!
//! **Determinism.** Each output `y[m, o]` is one dot product accumulated in the same order
//! whatever the block it falls in, the number of rows or the number of threads (8-lane partial
//! sums over `k` in order, a fixed horizontal reduction, then the scalar tail). So a sequence's
//! logits do not depend on which other sequences share its batch.
//!
//! **Weights in f32 or bf16.** The same kernel reads `W` as f32, or as bf16 ([`Bf16`], the upper
//! half of an f32's bits) widened to f32 in registers: half the bytes to stream, the same f32
//! arithmetic after the load. With 8 rows the f32 product is about half memory stall; bf16
//! weights took a 120-matrix SmolLM2-sized pass from 28.5–30 ms to 20.6–23 ms on the 2-core AVX2
//! host. A rollout with bf16 weights samples from a slightly different policy than the f32
//! trainer's (see `RolloutBackend::FastCpuBf16`).
//!
//! **Paths.** The register block is written once over 8 f32 lanes ([`lanes`]) and compiled for
//! AVX2 + FMA, for NEON (aarch64), and as plain Rust with the same fused multiply-adds in the
//! same order ([`f32::mul_add`]) for other CPUs; the CPU is asked once per call (each register
//! block then enters its path's copy with no further check), and a test forces each path this
//! CPU has and checks they give the same bits. (Entering the path once per task instead, with
//! the task's loop compiled into the copy, measured 10–20 % slower in 4 of 4 alternating
//! `rollout_bench` pairs on the 2-core AVX2 host, with the same inner loops.) Only the AVX2
//! path prefetches (its distance was tuned on x86 hosts; the others leave streams to the
//! hardware).

use rayon::prelude::*;
use rlzero_model::simd::SimdPath;

use block::Block;
use lanes::{on_path, CheckedPath, Lanes};

/// Parallel tasks per thread and pass: few, so each task streams a long contiguous run of `W`,
/// and more than one, so a thread that starts late is balanced by the others.
const TASKS_PER_THREAD: usize = 2;
/// At most this many weight bytes per task (the LM head's 113 MB pass is still split finely).
const MAX_TASK_BYTES: usize = 1 << 20;
/// How far ahead of each weight row's read position the AVX2 kernel prefetches (about 5 rows of
/// SmolLM2's 576 inputs). 8–16 KiB measured best on the 2-core AVX2 host; 1–2 KiB arrives late,
/// 32 KiB evicts what the loop is still reading.
pub const PREFETCH_BYTES: usize = 12 << 10;
/// Weight rows and input rows per register block.
const BW: usize = 3;
const BX: usize = 4;

/// A bf16 value (`half`'s: the upper 16 bits of an f32, rounded to nearest even from f32).
pub type Bf16 = half::bf16;

/// A weight element the kernels can stream: f32, or bf16 widened exactly to f32.
pub trait Weight: Copy + Send + Sync + 'static {
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
    /// 8 consecutive weights from `p`, as f32 lanes.
    ///
    /// # Safety
    /// As [`Lanes`]' loads: `V`'s instructions available, 8 elements readable at `p`.
    unsafe fn load<V: Lanes>(p: *const Self) -> V;
}

impl Weight for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    unsafe fn load<V: Lanes>(p: *const f32) -> V {
        V::load(p)
    }
}

impl Weight for Bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self) // exact: the bits shifted into the upper half
    }
    #[inline(always)]
    unsafe fn load<V: Lanes>(p: *const Bf16) -> V {
        V::load_bf16(p)
    }
}

/// A register block's results: `acc[j][r]` for weight row `j` and input row `r`.
pub type Acc = [[f32; BX]; BW];

/// One weight matrix `(out, in)` with an optional bias `(out,)`.
#[derive(Clone, Copy)]
pub struct Matrix<'a, W> {
    pub w: &'a [W],
    pub bias: Option<&'a [f32]>,
    pub out: usize,
}

/// `y (m × o) = x (m × k) · wᵀ (w: o × k, row-major) + bias`.
pub fn linear<W: Weight>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    o: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    linear_many(x, m, k, &[Matrix { w, bias, out: o }])
        .pop()
        .expect("one matrix")
}

/// Several products sharing the input `x (m × k)`, in one parallel pass over all output rows.
pub fn linear_many<W: Weight>(
    x: &[f32],
    m: usize,
    k: usize,
    mats: &[Matrix<'_, W>],
) -> Vec<Vec<f32>> {
    linear_many_on(SimdPath::detect(), x, m, k, mats)
}

/// [`linear_many`] on a chosen path; a path this CPU cannot run falls back to the portable one.
pub fn linear_many_on<W: Weight>(
    path: SimdPath,
    x: &[f32],
    m: usize,
    k: usize,
    mats: &[Matrix<'_, W>],
) -> Vec<Vec<f32>> {
    let path = CheckedPath::new(path);
    assert_eq!(x.len(), m * k, "x is not m × k");
    let mut starts = Vec::with_capacity(mats.len() + 1);
    let mut total = 0;
    for mat in mats {
        assert_eq!(mat.w.len(), mat.out * k, "a weight is not out × k");
        starts.push(total);
        total += mat.out;
    }
    starts.push(total);
    let mut ys: Vec<Vec<f32>> = mats.iter().map(|mat| vec![0f32; m * mat.out]).collect();
    let outs = Outputs::new(&mut ys, m);
    let rows_per_task = rows_per_task(total, k * std::mem::size_of::<W>());
    (0..total.div_ceil(rows_per_task))
        .into_par_iter()
        .for_each(|task| {
            let mut row = task * rows_per_task;
            let end = (row + rows_per_task).min(total);
            while row < end {
                // Stay inside one matrix per register block.
                let mi = starts.partition_point(|&s| s <= row) - 1;
                let mat = &mats[mi];
                let local = row - starts[mi];
                let nw = BW.min(end - row).min(starts[mi + 1] - row);
                // Fixed-size, on the stack: this runs once per 3 output rows of every step.
                let mut rows: [&[W]; BW] = [&[]; BW];
                for (j, r) in rows.iter_mut().enumerate().take(nw) {
                    *r = &mat.w[(local + j) * k..(local + j + 1) * k];
                }
                let rows = &rows[..nw];
                for x0 in (0..m).step_by(BX) {
                    let nx = BX.min(m - x0);
                    let mut acc = [[0f32; BX]; BW];
                    // The first input block streams `W`; the others re-read these rows from L1.
                    // Every block prefetches ahead (see the module docs).
                    let x = &x[x0 * k..(x0 + nx) * k];
                    dot_block(path, rows, x, k, nx, &mut acc);
                    for (j, a) in acc.iter().enumerate().take(nw) {
                        for (r, &v) in a[..nx].iter().enumerate() {
                            let v = match mat.bias {
                                Some(b) => v + b[local + j],
                                None => v,
                            };
                            // SAFETY: output row `local + j` of matrix `mi` lies in this task's
                            // rows `row..end`, which no other task touches.
                            unsafe { outs.set(mi, x0 + r, local + j, v) };
                        }
                    }
                }
                row += nw;
            }
        });
    ys
}

/// The results `y_i (m × out_i)`, written in place by the parallel tasks. Each task computes a
/// disjoint range of output rows (columns of `y_i`), so every element has exactly one writer;
/// writing them in place avoids a transposed buffer and a serial transposition afterwards.
struct Outputs {
    ys: Vec<(*mut f32, usize)>,
    m: usize,
}

// SAFETY: the pointers are only written through `set`, whose callers write disjoint elements.
unsafe impl Sync for Outputs {}

impl Outputs {
    fn new(ys: &mut [Vec<f32>], m: usize) -> Self {
        let ys = ys
            .iter_mut()
            .map(|y| (y.as_mut_ptr(), y.len() / m.max(1)))
            .collect();
        Self { ys, m }
    }

    /// `y_mi[r, o] = v`.
    ///
    /// # Safety
    /// No other thread reads or writes `y_mi[r, o]` while the tasks run.
    #[inline(always)]
    unsafe fn set(&self, mi: usize, r: usize, o: usize, v: f32) {
        let (p, out) = self.ys[mi];
        assert!(r < self.m && o < out, "output index out of range");
        *p.add(r * out + o) = v;
    }
}

/// Output rows per task for a pass over `total` rows of `row_bytes` each: about
/// [`TASKS_PER_THREAD`] tasks per thread, at most [`MAX_TASK_BYTES`] each, a multiple of the
/// register block's [`BW`] rows (so no task ends in a partial block).
fn rows_per_task(total: usize, row_bytes: usize) -> usize {
    let tasks = TASKS_PER_THREAD * rayon::current_num_threads().max(1);
    let balanced = total.div_ceil(tasks);
    let capped = balanced.min(MAX_TASK_BYTES / row_bytes.max(1));
    capped.div_ceil(BW).max(1) * BW
}

/// `acc[j][r] = w[j] · x[r]` for `j < w.len() (≤ 3)`, `r < nx (≤ 4)`; `x` holds `nx` rows of `k`.
/// The AVX2 path also asks for the weights [`PREFETCH_BYTES`] ahead (a hint: the results do not
/// change).
#[inline(always)]
fn dot_block<W: Weight>(
    path: CheckedPath,
    w: &[&[W]],
    x: &[f32],
    k: usize,
    nx: usize,
    acc: &mut Acc,
) {
    on_path(path, Block { w, x, k, nx, acc })
}

#[cfg(target_arch = "x86_64")]
mod avx2;
mod block;
pub(crate) mod lanes;
#[cfg(target_arch = "aarch64")]
mod neon;

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

    /// Every path this CPU runs gives the same bits, for f32 and bf16 weights, and streaming bf16
    /// weights equals streaming their exact f32 widening.
    #[test]
    fn every_path_and_weight_format_agree_bit_for_bit() {
        let paths = SimdPath::available_paths();
        for (m, k, o) in [(1, 8, 3), (8, 576, 70), (5, 13, 11), (11, 100, 9)] {
            let x = data(m * k, 7);
            let w = data(o * k, 8);
            let b = data(o, 9);
            let wb: Vec<Bf16> = w.iter().map(|&v| Bf16::from_f32(v)).collect();
            let widened: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let run = |path: SimdPath, w16: bool| {
                if w16 {
                    let mats = [Matrix {
                        w: &wb[..],
                        bias: Some(&b[..]),
                        out: o,
                    }];
                    linear_many_on(path, &x, m, k, &mats).remove(0)
                } else {
                    let mats = [Matrix {
                        w: &widened[..],
                        bias: Some(&b[..]),
                        out: o,
                    }];
                    linear_many_on(path, &x, m, k, &mats).remove(0)
                }
            };
            let reference = run(SimdPath::Portable, false);
            for &path in &paths {
                assert_eq!(run(path, false), reference, "{path:?} f32 ({m},{k},{o})");
                assert_eq!(run(path, true), reference, "{path:?} bf16 ({m},{k},{o})");
            }
            // And the f32 weights themselves, on every path.
            let f = |path| {
                linear_many_on(
                    path,
                    &x,
                    m,
                    k,
                    &[Matrix {
                        w: &w[..],
                        bias: None,
                        out: o,
                    }],
                )
            };
            for &path in &paths {
                assert_eq!(f(path), f(SimdPath::Portable), "{path:?} f32 weights");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let r = |v: f32| Bf16::from_f32(v).to_f32();
        assert_eq!(r(1.0), 1.0);
        assert_eq!(r(-2.5), -2.5);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(r(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6 (even).
        assert_eq!(r(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(r(1.0 + 1.5 / 256.0), 1.0 + 1.0 / 128.0);
        assert!(r(f32::NAN).is_nan());
        assert_eq!(r(f32::INFINITY), f32::INFINITY);
        assert_eq!(r(f32::MAX), f32::INFINITY); // rounds up past the largest bf16
        let x = 0.123_456_79f32;
        assert!((r(x) - x).abs() <= x * 2f32.powi(-9));
    }
}
