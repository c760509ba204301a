//! Measures this machine's streaming read bandwidth (1 thread and all threads): the floor under
//! any f32 decode step, which must read every weight once.
//!
//!     cargo run --release --example memory_bandwidth
//!
//! SmolLM2-135M's f32 weights are 540 MB, so a batch-8 decode step cannot take less than
//! `540 MB / bandwidth`.
use std::time::Instant;

use rayon::prelude::*;

fn main() {
    let v: Vec<f32> = (0..128 * 1024 * 1024).map(|i| (i % 7) as f32).collect(); // 512 MiB
    let all = rayon::current_num_threads();
    for threads in [1, all] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        let mut best = 0f64;
        let mut check = 0f32;
        for _ in 0..3 {
            let t = Instant::now();
            check = pool.install(|| {
                v.par_chunks(1 << 20)
                    .map(|c| {
                        let mut a = [0f32; 16];
                        for ch in c.chunks_exact(16) {
                            for i in 0..16 {
                                a[i] += ch[i];
                            }
                        }
                        a.iter().sum::<f32>()
                    })
                    .sum()
            });
            best = best.max((v.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        println!("{threads} thread(s): {best:.1} GB/s read (best of 3; checksum {check})");
        println!(
            "  -> f32 SmolLM2-135M decode floor: {:.1} ms/step",
            0.54 / best * 1000.0
        );
    }
}
