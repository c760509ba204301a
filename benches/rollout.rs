//! Criterion benchmarks of the rollout path.
//!
//! * `linear/decode`: the small-batch linear kernel at SmolLM2's decode shapes (8 rows), always.
//! * `rollout/smollm2`: 1 prompt × 8 completions × 128 forced tokens and 4 × 8 × 128 on
//!   SmolLM2-135M-Instruct (f32), when `models/` holds it (`scripts/fetch-models.sh`).
//!
//!     cargo bench --bench rollout
//!
//! Throughput is reported in generated tokens (elements) per second. For the ratio against
//! PyTorch, run `../shared/anchors/trl-cpu/bench_generate.py` right before or after.
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rlzero::model::{load, LoadOptions, Message, ModelSource, WeightMode};
use rlzero::rollout::{rollout, unstable::linear, SamplingParams};

fn bench_linear(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear/decode");
    for (k, o) in [(576usize, 1536usize), (1536, 576), (576, 49152)] {
        let w: Vec<f32> = (0..k * o)
            .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
            .collect();
        let x: Vec<f32> = (0..8 * k).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
        g.throughput(Throughput::Bytes((k * o * 4) as u64));
        g.bench_function(format!("8x{k}->{o}"), |b| {
            b.iter(|| linear(&x, 8, k, &w, o, None).expect("shapes match"))
        });
    }
    g.finish();
}

fn bench_rollout(c: &mut Criterion) {
    let path = Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!(
            "rollout/smollm2: skipped, {} missing (scripts/fetch-models.sh)",
            path.display()
        );
        return;
    }
    let opts = LoadOptions {
        mode: WeightMode::Frozen,
        ..LoadOptions::default()
    };
    let m = load(&ModelSource::Gguf(path.into()), &opts).expect("load SmolLM2");
    let prompts: Vec<Vec<u32>> = ["23+19", "47+38", "12+7", "81+16"]
        .iter()
        .map(|q| {
            let text = m
                .tokenizer
                .apply_chat_template(
                    &[Message::user(format!(
                        "What is {q}? Answer with just the number."
                    ))],
                    true,
                )
                .expect("template");
            m.tokenizer.encode(&text, false).expect("encode")
        })
        .collect();
    let params = SamplingParams {
        max_new_tokens: 128,
        min_new_tokens: 128,
        eos_token_ids: m.generation.eos_token_ids.clone(),
        ..SamplingParams::default()
    };
    let mut g = c.benchmark_group("rollout/smollm2");
    g.sample_size(10);
    for n in [1usize, 4] {
        g.throughput(Throughput::Elements((n * 8 * 128) as u64));
        let mut step = 0u64;
        g.bench_function(format!("{n}x8x128"), |b| {
            b.iter(|| {
                step += 1;
                rollout(&m.decoder, &m.tokenizer, &prompts[..n], 8, &params, step).expect("rollout")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_linear, bench_rollout);
criterion_main!(benches);
