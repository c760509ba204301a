//! One full GRPO step on SmolLM2-135M-Instruct with fixed work, the workload of
//! `FIXED_LEN=1 ../shared/anchors/trl-cpu/bench_trl_grpo.py` (TRL's GRPOTrainer): 1 prompt ×
//! 8 completions forced to 128 tokens (EOS suppressed), β = 0, DAPO loss, full fine-tuning,
//! f32, AdamW (lr 1e-6), grad clip 1.0. Prints the median step time over STEPS (default 6, the
//! first a warm-up, as the anchor) with its breakdown, and the process's peak RSS.
//!
//! `MICRO=k` splits the 8 sequences into k micro-batches (gradient accumulation); `PASS=n` runs
//! the forward/backward over n sequences at a time inside each micro-batch
//! (`sequences_per_pass`). `RECOMPUTE=1` turns on activation recomputation
//! (`gradient_checkpointing`: one layer's activations alive at a time, one more forward).
//! All three give the same update with less activation memory. `SHARE=0` scores the prompt
//! once per completion, as TRL does, instead of once per group (`share_prompts`).
//! `ROLLOUT_WEIGHTS=bf16` samples with bf16 weights (`sampling.rollout_weights`).
//!
//!     ./scripts/fetch-models.sh
//!     cargo run --release --example grpo_step_bench            # or MICRO=4 STEPS=6 …
use anyhow::Result;
use rlzero::grpo::{GrpoConfig, TrainPrompt, Trainer};
use rlzero::model::{load, LoadOptions, ModelSource};
use rlzero::rewards::{reward_fn, Reference, RewardInput, RewardSet};

fn main() -> Result<()> {
    rlzero::malloc::keep_freed_memory();
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    // MICRO=k splits the 8 sequences into k micro-batches with gradient accumulation: the same
    // update (up to float summation order), less activation memory.
    let micro: usize = std::env::var("MICRO")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let pass = std::env::var("PASS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let model = load(
        &ModelSource::parse("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &LoadOptions::default(),
    )?;
    let mut cfg = GrpoConfig::from_toml_str(&format!(
        r#"
        max_steps = 1000
        prompts_per_step = 1
        num_generations = 8
        gradient_accumulation_steps = {micro}
        [sampling]
        max_completion_length = 128
        min_completion_length = 128
        [loss]
        loss_type = "dapo"
        beta = 0.0
        [optim]
        lr = 1e-6
        "#
    ))?;
    cfg.sequences_per_pass = pass;
    cfg.gradient_checkpointing = std::env::var("RECOMPUTE").is_ok_and(|v| v == "1");
    // SHARE=0: score the prompt once per completion, as TRL does (default: once per group).
    cfg.share_prompts = std::env::var("SHARE").map_or(true, |v| v != "0");
    cfg.sampling.rollout_weights = match std::env::var("ROLLOUT_WEIGHTS").as_deref() {
        Ok("bf16") => rlzero::grpo::RolloutWeights::Bf16,
        Ok("f32") | Err(_) => rlzero::grpo::RolloutWeights::F32,
        Ok(other) => anyhow::bail!("ROLLOUT_WEIGHTS={other}: expected f32 or bf16"),
    };
    // The anchor's reward: 1 when the completion contains a + b.
    let rewards = RewardSet::new().with(
        reward_fn("contains_answer", |x: &RewardInput<'_>| {
            let Reference::Answer(a) = x.reference else {
                return None;
            };
            Some(if x.completion.contains(a.as_str()) {
                1.0
            } else {
                0.0
            })
        }),
        1.0,
    );
    // 64 prompts "What is a+b?" with a, b in 1..=49, as the anchor.
    let prompts: Vec<TrainPrompt> = (1..=64u64)
        .map(|i| {
            let (a, b) = (1 + (i * 17) % 49, 1 + (i * 31) % 49);
            let q = format!("What is {a}+{b}? Answer with just the number.");
            TrainPrompt::chat(&model.tokenizer, &q, Reference::Answer((a + b).to_string()))
        })
        .collect::<Result<_, _>>()?;
    let mut prompts = prompts.into_iter().cycle();
    let mut trainer = Trainer::new(cfg, model, rewards)?;
    println!(
        "threads={} micro-batches={micro} sequences-per-pass={pass:?}",
        rayon::current_num_threads()
    );
    let mut rows = Vec::new();
    for s in 0..steps {
        let r = trainer.step(&mut prompts)?;
        let m = r.metrics;
        let p = &m.phases;
        println!(
            "step {s}: {:.2} s = rollout {:.2} + rewards {:.3} + forward {:.2} + backward {:.2} + optimizer {:.2} (+ other {:.2}); reward {:.3}, {} completion tokens, peak RSS {:.0} MiB",
            m.step_time,
            p.rollout,
            p.rewards,
            p.forward,
            p.backward,
            p.optimizer,
            m.step_time - p.rollout - p.rewards - p.forward - p.backward - p.optimizer,
            m.reward,
            m.completion_tokens,
            m.peak_rss_mib
        );
        if s > 0 {
            rows.push((m.step_time, p.rollout, p.forward, p.backward, p.optimizer));
        }
    }
    let median = |f: fn(&(f64, f64, f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "SUMMARY bench=rlzero_grpo_fixed128 sec_per_step_median={:.3} rollout={:.3} forward={:.3} backward={:.3} optimizer={:.3} peak_rss_mib={:.0}",
        median(|r| r.0),
        median(|r| r.1),
        median(|r| r.2),
        median(|r| r.3),
        median(|r| r.4),
        rlzero::grpo::metrics::peak_rss_mib()
    );
    Ok(())
}
