//! The training step's matrix products on this CPU: candle's matmul (the `gemm` crate) against
//! rlzero's [`sgemm`](rlzero::model::sgemm) (used for the weight gradient on AVX2 CPUs without
//! AVX-512), f32, all cores, best of 5 after a warm-up; first, the FMA peak this CPU reaches
//! with AVX2 registers alone (12 independent accumulators per thread, no memory), the ceiling
//! any f32 gemm here can approach.
//!
//!     cargo run --release --example matmul_bench
//!
//! Shapes are SmolLM2-135M's linear maps on 8 × 168 tokens (`train_step_bench`'s workload):
//! forward `X Wᵀ`, input gradient `G W` and weight gradient `Gᵀ X`.
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rlzero::model::sgemm::{sgemm, MatRef};
use rlzero::model::simd::SimdPath;

fn best_of<F: FnMut() -> Result<()>>(mut f: F) -> Result<f64> {
    f()?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// GFLOP/s of `threads` threads each running 12 independent AVX2 FMA chains (no loads).
#[cfg(target_arch = "x86_64")]
fn fma_peak(threads: usize) -> Option<f64> {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chains(n: usize) -> f32 {
        let mut a = [_mm256_set1_ps(1.0); 12];
        let (b, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..n {
            for v in a.iter_mut() {
                *v = _mm256_fmadd_ps(*v, b, c);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in a {
            s = _mm256_add_ps(s, v);
        }
        _mm256_cvtss_f32(s)
    }
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        return None;
    }
    let n = 100_000_000usize;
    let t = Instant::now();
    let sum: f32 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            // SAFETY: AVX2 and FMA were detected above.
            .map(|_| s.spawn(move || unsafe { chains(n) }))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    std::hint::black_box(sum);
    Some((threads * n * 12 * 16) as f64 / t.elapsed().as_secs_f64() / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak(_threads: usize) -> Option<f64> {
    None
}

fn main() -> Result<()> {
    if let Some(p) = fma_peak(rayon::current_num_threads()) {
        println!("AVX2 FMA peak in registers: {p:.1} GFLOP/s");
    }
    println!(
        "threads={} kernel={:?} used_in_training={}",
        rayon::current_num_threads(),
        SimdPath::detect(),
        rlzero::model::sgemm::preferred()
    );
    let dev = Device::Cpu;
    let n_tok = 8 * 168;
    // (name, m, k, n, A transposed, B transposed): C (m × n) = A (m × k) · B (k × n).
    let cases = [
        ("fwd  q/o   X·Wᵀ", n_tok, 576, 576, false, true),
        ("fwd  up    X·Wᵀ", n_tok, 576, 1536, false, true),
        ("fwd  down  X·Wᵀ", n_tok, 1536, 576, false, true),
        ("fwd  head  X·Wᵀ", n_tok, 576, 49152, false, true),
        ("dX   up    G·W ", n_tok, 1536, 576, false, false),
        ("dW   up    Gᵀ·X", 1536, n_tok, 576, true, false),
        ("dW   head  Gᵀ·X", 49152, n_tok, 576, true, false),
        ("square 2048³   ", 2048, 2048, 2048, false, false),
    ];
    for (name, m, k, n, at, bt) in cases {
        let a_rows = if at { (k, m) } else { (m, k) };
        let b_rows = if bt { (n, k) } else { (k, n) };
        let a = Tensor::randn(0f32, 1.0, a_rows, &dev)?;
        let b = Tensor::randn(0f32, 1.0, b_rows, &dev)?;
        let (ta, tb) = (
            if at { a.t()? } else { a.clone() },
            if bt { b.t()? } else { b.clone() },
        );
        let t_candle = best_of(|| {
            std::hint::black_box(ta.matmul(&tb)?);
            Ok(())
        })?;
        let (av, bv) = (
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?,
        );
        let mut c = vec![0f32; m * n];
        let t_ours = best_of(|| {
            let va = MatRef::row_major(&av, a_rows.0, a_rows.1)?;
            let vb = MatRef::row_major(&bv, b_rows.0, b_rows.1)?;
            let va = if at { va.t() } else { va };
            let vb = if bt { vb.t() } else { vb };
            sgemm(va, vb, &mut c, false)?;
            Ok(())
        })?;
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        println!(
            "{name} ({m:>5} × {k:>5} × {n:>5}): candle {:7.1} ms {:6.1} GFLOP/s | sgemm {:7.1} ms {:6.1} GFLOP/s | {:.2}x",
            t_candle * 1e3,
            gflop / t_candle,
            t_ours * 1e3,
            gflop / t_ours,
            t_candle / t_ours
        );
    }
    Ok(())
}
