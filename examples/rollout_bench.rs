//! Rollout throughput on SmolLM2-135M-Instruct (f32, all cores): one GRPO group (1 chat prompt ×
//! 8 completions × 128 forced tokens, as `../shared/anchors/trl-cpu/bench_generate.py`), then
//! 4 prompts × 8. Prints generated tokens/s (median of RUNS after one warm-up) and where a decode
//! step's time goes.
//!
//!     ./scripts/fetch-models.sh
//!     cargo run --release --example rollout_bench [-- path/to/model.gguf]
//!
//! `DEVICE=cuda:0` (a `--features cuda` build), `DTYPE=bf16` and
//! `BACKEND=tensor|fast|fast-bf16|auto` (default auto) choose where and how the rollout runs.
//! After the one-group run it scores that group's completions with the f32 trainer's forward and
//! prints the largest and mean |sampler − trainer| log-prob gap: rounding-level for the f32
//! backends, the bf16 weights' policy shift for `fast-bf16`.
use std::time::Instant;

use anyhow::Result;
use candle_core::DType;
use rlzero::model::device::parse_device;
use rlzero::model::{load, LoadOptions, Message, ModelSource, WeightMode};
use rlzero::rollout::{rollout_on, RolloutBackend, SamplingParams};

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(3)
        .max(1); // one timed run at least, after the warm-up
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    let dtype = match env("DTYPE", "f32").as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => anyhow::bail!("DTYPE={other}: expected f32, bf16 or f16"),
    };
    let backend = match env("BACKEND", "auto").as_str() {
        "auto" => RolloutBackend::Auto,
        "fast" => RolloutBackend::FastCpu,
        "fast-bf16" => RolloutBackend::FastCpuBf16,
        "tensor" => RolloutBackend::Tensor,
        other => anyhow::bail!("BACKEND={other}: expected auto, fast, fast-bf16 or tensor"),
    };
    let opts = LoadOptions {
        mode: WeightMode::Frozen,
        device: parse_device(&env("DEVICE", "cpu"))?,
        dtype,
        ..LoadOptions::default()
    };
    let m = load(&ModelSource::parse(&path), &opts)?;
    let questions = [
        "What is 23+19? Answer with just the number.",
        "What is 47+38? Answer with just the number.",
        "What is 12+7? Answer with just the number.",
        "What is 81+16? Answer with just the number.",
    ];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| {
            let text = m
                .tokenizer
                .apply_chat_template(&[Message::user(*q)], true)?;
            Ok(m.tokenizer.encode(&text, false)?)
        })
        .collect::<Result<_>>()?;
    println!(
        "threads={} prompt_tokens={} device={:?} dtype={:?} backend={backend:?}",
        rayon::current_num_threads(),
        prompts[0].len(),
        m.decoder.device(),
        m.decoder.dtype()
    );
    let params = SamplingParams {
        max_new_tokens: 128,
        min_new_tokens: 128, // EOS suppressed: fixed work, as the anchor's min_new_tokens=128
        eos_token_ids: m.generation.eos_token_ids.clone(),
        ..SamplingParams::default()
    };
    for n_prompts in [1usize, 4] {
        let batch = &prompts[..n_prompts];
        let mut tps = vec![];
        let mut last = None;
        for run in 0..=runs {
            let t0 = Instant::now();
            let (out, stats) = rollout_on(
                backend,
                &m.decoder,
                &m.tokenizer,
                batch,
                8,
                &params,
                run as u64,
            )?;
            let dt = t0.elapsed().as_secs_f64();
            let generated: usize = out.iter().map(|c| c.token_ids.len()).sum();
            if run > 0 {
                tps.push(generated as f64 / dt);
            } else {
                println!(
                    "sample: {:?}",
                    &out[0].text.chars().take(80).collect::<String>()
                );
            }
            last = Some((stats, dt, generated, out));
        }
        tps.sort_by(|a, b| a.total_cmp(b));
        let (s, dt, generated, out) = last.expect("ran");
        println!(
            "{n_prompts} prompt(s) x 8 x 128: median {:.1} gen tok/s (min {:.1}, max {:.1}); last run {dt:.2} s for {generated} tokens",
            tps[tps.len() / 2],
            tps[0],
            tps[tps.len() - 1]
        );
        let per = |x: f64| 1000.0 * x / s.decode_steps as f64;
        println!(
            "  prefill {:.3} s; {} decode steps, {:.1} ms/step = linear {:.1} + lm_head {:.1} + attention {:.1} + other {:.1} + sampling {:.1}",
            s.prefill_s,
            s.decode_steps,
            per(s.decode_s),
            per(s.profile.linear_s),
            per(s.profile.lm_head_s),
            per(s.profile.attention_s),
            per(s.profile.other_s),
            per(s.sampling_s),
        );
        if n_prompts == 1 {
            let (worst, mean) = logprob_gap(&m.decoder, &batch[0], &out)?;
            println!(
                "  sampler vs f32 trainer log-probs over {generated} tokens: max |gap| {worst:.2e}, mean {mean:.2e}"
            );
        }
    }
    Ok(())
}

/// Largest and mean |sampler − trainer| log-prob over one group's completions, the trainer being
/// the decoder's own differentiable forward (shared-prompt layout, temperature 1).
fn logprob_gap(
    decoder: &rlzero::model::Decoder,
    prompt: &[u32],
    out: &[rlzero::rollout::Completion],
) -> Result<(f32, f32)> {
    use rlzero::model::pack::{completion_logprobs, PackedBatch};
    let prompts = vec![prompt; out.len()];
    let comps: Vec<&[u32]> = out.iter().map(|c| c.token_ids.as_slice()).collect();
    let batch = PackedBatch::with_shared_prompts(&prompts, &comps, 0, decoder.device())?;
    let lp = completion_logprobs(decoder, &batch, 1.0, false)?
        .logprobs
        .to_vec2::<f32>()?;
    let (mut worst, mut sum, mut n) = (0f32, 0f64, 0usize);
    for (c, row) in out.iter().zip(&lp) {
        for (a, b) in c.logprobs.iter().zip(row) {
            worst = worst.max((a - b).abs());
            sum += (a - b).abs() as f64;
            n += 1;
        }
    }
    Ok((worst, (sum / n.max(1) as f64) as f32))
}
