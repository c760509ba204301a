//! Loads SmolLM2-135M-Instruct from the GGUF and times one forward over 8 × 168 tokens (the
//! anchor train step's batch), without and with autograd tracking, plus load time and peak RSS.
//!
//!     ./scripts/fetch-models.sh
//!     cargo run --release --example forward_bench [-- path/to/model.gguf]
//!     python scripts/bench_forward_torch.py        # the same forward in PyTorch, for the ratio
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rlzero::model::{load, LoadOptions, LogitsToKeep, ModelSource};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() -> Result<()> {
    rlzero::malloc::keep_freed_memory();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let t0 = Instant::now();
    let m = load(&ModelSource::Gguf(path.into()), &LoadOptions::default())?;
    let load_s = t0.elapsed().as_secs_f64();
    println!(
        "load: {load_s:.2} s, peak RSS after load {:.0} MiB",
        rlzero::grpo::metrics::peak_rss_mib()
    );

    let (b, t) = (8usize, 168usize);
    let ids: Vec<u32> = (0..b * t)
        .map(|i| ((i * 7919 + 13) % m.config.vocab_size) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
    let mask = ids.ones_like()?;
    let frozen = m.decoder.frozen_copy()?;
    for (label, dec) in [("no-grad", &frozen), ("grad-tracked", &m.decoder)] {
        let _ = dec.forward(&ids, &mask, LogitsToKeep::All)?; // warm-up
        let mut times = vec![];
        for _ in 0..runs {
            let t0 = Instant::now();
            let logits = dec.forward(&ids, &mask, LogitsToKeep::All)?;
            let _ = logits.sum_all()?.to_scalar::<f32>()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let med = median(times);
        println!(
            "forward {b}x{t} ({label}): median {med:.3} s over {runs} runs = {:.0} tok/s",
            (b * t) as f64 / med
        );
    }
    println!("peak RSS {:.0} MiB", rlzero::grpo::metrics::peak_rss_mib());
    Ok(())
}
