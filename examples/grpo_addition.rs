//! GRPO on SmolLM2-135M-Instruct for single-digit addition: the task and settings of
//! `../shared/anchors/trl-cpu/bench_trl_learning.py` (TRL's GRPOTrainer), so the two can be run
//! side by side: 60 training pairs, 40 held-out pairs never trained on, 4 prompts × 8 samples
//! per step, 24 new tokens, T = 1, β = 0, DAPO loss, lr 1e-5 constant, f32, AdamW, full
//! fine-tuning.
//! Reward 1 when the last integer of the completion is a + b.
//!
//! Prints the reward per step and greedy accuracy on the held-out pairs before and after, both
//! by the last integer and strict (the reply is only the number, the anchor's `strict`).
//!
//! `DIGITS=2` draws two-digit operands (40 held-out pairs, the other 9,960 for training).
//! `RECIPE=strict` is rlzero's own recipe for the strict format, which the base model almost
//! never writes: besides the correctness reward, a reward for a strict reply and a brevity
//! reward for correct replies (1 − characters / 32, at least 0), so that correct answers are
//! first pushed shorter until the bare number is what remains.
//!
//!     ./scripts/fetch-models.sh
//!     cargo run --release --example grpo_addition -- [STEPS] [BUDGET_SECONDS]
//!     DIGITS=2 RECIPE=strict cargo run --release --example grpo_addition -- 60 900
//!
//! `PROMPT="What is {a} + {b}? …"` replaces the anchor's wording (for experiments).
//!
//! `SFT_STEPS=n` first runs a cold start, as DeepSeek-R1 did before its RL stage: `n` steps of
//! supervised fine-tuning (batches of 16, lr 1e-5, AdamW) on the first 64 training pairs with the
//! bare sum as the reply, then GRPO. Held-out accuracy is printed after each stage.
//!
//! `ROLLOUT_WEIGHTS=bf16` samples with bf16 weights (`sampling.rollout_weights`) and weights the
//! loss by the truncated importance ratio of the f32 policy to that sampler
//! (`sampler_correction`, token-truncate, cap 2); `TIS=0` leaves the correction off.
use std::time::Instant;

use anyhow::Result;
use rlzero::grpo::{clip_grad_norm, AdamW, AdamWParams, GrpoConfig, TrainPrompt, Trainer};
use rlzero::model::pack::{completion_nll, PackedBatch};
use rlzero::model::{load, Decoder, LoadOptions, ModelSource, TextTokenizer};
use rlzero::rewards::{reward_fn, Reference, RewardInput, RewardSet};
use rlzero::rollout::{rollout, SamplingParams};

const PROMPT: &str = "What is {a} + {b}? Reply with only the answer.";

/// The last integer in `t` (the anchor's `last_int`: `-?\d+`).
fn last_int(t: &str) -> Option<i64> {
    let bytes = t.as_bytes();
    let mut end = bytes.len();
    while end > 0 {
        if bytes[end - 1].is_ascii_digit() {
            let mut start = end;
            while start > 0 && bytes[start - 1].is_ascii_digit() {
                start -= 1;
            }
            let neg = start > 0 && bytes[start - 1] == b'-';
            let v: i64 = t[start..end].parse().ok()?;
            return Some(if neg { -v } else { v });
        }
        end -= 1;
    }
    None
}

/// The anchor's `strict`: the trimmed reply is an integer (optionally followed by a period).
fn strict_int(t: &str) -> Option<i64> {
    let t = t.trim();
    let t = t.strip_suffix('.').unwrap_or(t);
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// A seeded Fisher–Yates shuffle (the anchor uses Python's `random.Random`; any fixed split of
/// the 100 pairs into 40 held-out and 60 training pairs serves the comparison).
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut s = seed;
    for i in (1..v.len()).rev() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, ((s >> 33) % (i as u64 + 1)) as usize);
    }
}

fn prompt(tok: &TextTokenizer, (a, b): (i64, i64)) -> Result<TrainPrompt> {
    // PROMPT="…{a}…{b}…" replaces the anchor's wording (an experiment knob; default the anchor's).
    let template = std::env::var("PROMPT").unwrap_or_else(|_| PROMPT.to_string());
    let q = template
        .replace("{a}", &a.to_string())
        .replace("{b}", &b.to_string());
    Ok(TrainPrompt::chat(
        tok,
        &q,
        Reference::Answer((a + b).to_string()),
    )?)
}

/// Greedy accuracy on `pairs`: (last integer == a + b, strict reply == a + b).
fn evaluate(
    dec: &Decoder,
    tok: &TextTokenizer,
    pairs: &[(i64, i64)],
    eos: &[u32],
) -> Result<(f64, f64)> {
    let ps: Vec<TrainPrompt> = pairs
        .iter()
        .map(|&p| prompt(tok, p))
        .collect::<Result<_>>()?;
    let ids: Vec<Vec<u32>> = ps.iter().map(|p| p.ids.clone()).collect();
    let params = SamplingParams {
        greedy: true,
        max_new_tokens: 24,
        eos_token_ids: eos.to_vec(),
        ..SamplingParams::default()
    };
    let out = rollout(dec, tok, &ids, 1, &params, 0)?;
    let count = |f: fn(&str) -> Option<i64>| {
        let n = out
            .iter()
            .zip(pairs)
            .filter(|(c, (a, b))| f(&c.text) == Some(a + b))
            .count();
        n as f64 / pairs.len() as f64
    };
    Ok((count(last_int), count(strict_int)))
}

/// Cold-start SFT: `steps` AdamW steps on `pairs` (cycled, 16 per batch) with the reply
/// `"{a + b}"` followed by the end-of-turn token, loss = mean negative log-likelihood of the
/// reply tokens.
fn cold_start(
    dec: &Decoder,
    tok: &TextTokenizer,
    pairs: &[(i64, i64)],
    eos: u32,
    steps: usize,
) -> Result<()> {
    let vars = dec.vars()?;
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWParams {
            lr: 1e-5,
            ..AdamWParams::default()
        },
    )?;
    let rows: Vec<(Vec<u32>, Vec<u32>)> = pairs
        .iter()
        .map(|&(a, b)| {
            let p = prompt(tok, (a, b))?.ids;
            let mut c = tok.encode(&(a + b).to_string(), false)?;
            c.push(eos);
            Ok((p, c))
        })
        .collect::<Result<_>>()?;
    let mut next = rows.iter().cycle();
    for step in 1..=steps {
        let batch: Vec<&(Vec<u32>, Vec<u32>)> = next.by_ref().take(16).collect();
        let ps: Vec<&[u32]> = batch.iter().map(|r| r.0.as_slice()).collect();
        let cs: Vec<&[u32]> = batch.iter().map(|r| r.1.as_slice()).collect();
        let packed = PackedBatch::new(&ps, &cs, eos, dec.device())?;
        let loss = completion_nll(dec, &packed)?;
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &vars, 1.0)?;
        opt.step_default_lr(&grads)?;
        println!("sft step {step:3}  nll {:.3}", loss.to_scalar::<f32>()?);
    }
    Ok(())
}

fn main() -> Result<()> {
    rlzero::malloc::keep_freed_memory();
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let budget_s: f64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1800.0);
    let model = load(
        &ModelSource::parse("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &LoadOptions::default(),
    )?;
    let eos = model.generation.eos_token_ids.clone();
    let env = |k: &str| std::env::var(k).ok();
    let digits: u32 = env("DIGITS").map(|v| v.parse()).transpose()?.unwrap_or(1);
    anyhow::ensure!((1..=3).contains(&digits), "DIGITS must be 1, 2 or 3");
    let strict_recipe = env("RECIPE").is_some_and(|v| v == "strict");
    let n = 10i64.pow(digits);
    let mut pairs: Vec<(i64, i64)> = (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).collect();
    shuffle(&mut pairs, 1234);
    let (held_out, train) = pairs.split_at(40);

    // MICRO=k micro-batches (default 1): the same update as one batch of 32 (TRL's
    // per_device_train_batch_size=32). RECOMPUTE=0 turns activation recomputation off: faster
    // on these short sequences, at about twice the peak memory (README, "Watching it learn").
    let micro: usize = env("MICRO").map(|v| v.parse()).transpose()?.unwrap_or(1);
    let recompute = env("RECOMPUTE").is_none_or(|v| v != "0");
    let mut cfg = GrpoConfig::from_toml_str(&format!(
        r#"
        max_steps = {steps}
        prompts_per_step = 4
        num_generations = 8
        gradient_accumulation_steps = {micro}
        [sampling]
        max_completion_length = 24
        temperature = 1.0
        [loss]
        loss_type = "dapo"
        beta = 0.0
        [optim]
        lr = 1e-5
        [schedule]
        type = "constant"
        "#
    ))?;
    cfg.gradient_checkpointing = recompute;
    // SHARE=0 scores each prompt once per completion, as TRL does (default: once per group).
    cfg.share_prompts = env("SHARE").is_none_or(|v| v != "0");
    match env("ROLLOUT_WEIGHTS").as_deref() {
        None | Some("f32") => {}
        Some("bf16") => {
            cfg.sampling.rollout_weights = rlzero::grpo::RolloutWeights::Bf16;
            if env("TIS").is_none_or(|v| v != "0") {
                cfg.sampler_correction = Some(Default::default());
            }
        }
        Some(other) => anyhow::bail!("ROLLOUT_WEIGHTS={other}: expected f32 or bf16"),
    }
    let answer = |x: &RewardInput<'_>| match x.reference {
        Reference::Answer(a) => a.parse::<i64>().ok(),
        _ => None,
    };
    let mut rewards = RewardSet::new().with(
        reward_fn("correct", move |x: &RewardInput<'_>| {
            let a = answer(x)?;
            Some(f64::from(u8::from(last_int(x.completion) == Some(a))))
        }),
        1.0,
    );
    if strict_recipe {
        rewards = rewards
            .with(
                reward_fn("strict", move |x: &RewardInput<'_>| {
                    let a = answer(x)?;
                    Some(f64::from(u8::from(strict_int(x.completion) == Some(a))))
                }),
                1.0,
            )
            .with(
                reward_fn("brevity", move |x: &RewardInput<'_>| {
                    let a = answer(x)?;
                    let short = 1.0 - x.completion.trim().chars().count() as f64 / 32.0;
                    Some(if last_int(x.completion) == Some(a) {
                        short.max(0.0)
                    } else {
                        0.0
                    })
                }),
                1.0,
            );
    }
    let sft_steps: usize = env("SFT_STEPS")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(0);
    if sft_steps > 0 {
        let base = evaluate(&model.decoder, &model.tokenizer, held_out, &eos)?;
        println!(
            "held-out greedy accuracy of the base model: {:.1} % (strict {:.1} %)",
            100.0 * base.0,
            100.0 * base.1
        );
        let t = Instant::now();
        let eos_id = *eos.first().ok_or_else(|| anyhow::anyhow!("no EOS id"))?;
        let sft_pairs = &train[..train.len().min(64)];
        cold_start(
            &model.decoder,
            &model.tokenizer,
            sft_pairs,
            eos_id,
            sft_steps,
        )?;
        println!(
            "cold start: {sft_steps} SFT steps in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let mut trainer = Trainer::new(cfg, model, rewards)?;
    let t = Instant::now();
    let before = evaluate(trainer.policy(), trainer.tokenizer(), held_out, &eos)?;
    println!(
        "held-out greedy accuracy before GRPO: {:.1} % (strict {:.1} %) ({:.1} s)",
        100.0 * before.0,
        100.0 * before.1,
        t.elapsed().as_secs_f64()
    );

    // The training stream: every training pair many times, in a seeded order.
    let repeats = (2400 / train.len()).max(1);
    let mut stream: Vec<(i64, i64)> = (0..repeats).flat_map(|_| train.iter().copied()).collect();
    shuffle(&mut stream, 5);
    let rows: Vec<TrainPrompt> = stream
        .iter()
        .map(|&p| prompt(trainer.tokenizer(), p))
        .collect::<Result<_>>()?;
    let mut rows = rows.into_iter().cycle();

    let start = Instant::now();
    let mut curve = Vec::new();
    for _ in 0..steps {
        let r = trainer.step(&mut rows)?;
        let m = &r.metrics;
        curve.push(m.reward);
        let last5 = &curve[curve.len().saturating_sub(5)..];
        println!(
            "step {:3}  t {:6.1} s  reward {:.3}  5-step mean {:.3}  len {:.1}  step {:.2} s (rollout {:.2}, fwd {:.2}, bwd {:.2}, opt {:.2})",
            m.step,
            start.elapsed().as_secs_f64(),
            m.reward,
            last5.iter().sum::<f64>() / last5.len() as f64,
            m.mean_length,
            m.step_time,
            m.phases.rollout,
            m.phases.forward,
            m.phases.backward,
            m.phases.optimizer
        );
        if let Some(s) = &m.sampler {
            println!(
                "          sampler vs f32 policy: |logp gap| mean {:.2e} max {:.2e}; IS weight min {:.3} mean {:.3} max {:.3}",
                s.logp_diff_mean, s.logp_diff_max, s.ratio_min, s.ratio_mean, s.ratio_max
            );
        }
        if strict_recipe {
            let per: Vec<String> = m
                .rewards
                .iter()
                .map(|r| format!("{} {:.3}", r.name, r.mean))
                .collect();
            println!("          {}", per.join(", "));
        }
        if start.elapsed().as_secs_f64() > budget_s {
            break;
        }
    }
    let train_s = start.elapsed().as_secs_f64();
    let after = evaluate(trainer.policy(), trainer.tokenizer(), held_out, &eos)?;
    println!(
        "RESULT held-out greedy accuracy {:.1} % -> {:.1} % (strict {:.1} % -> {:.1} %); {} steps in {:.0} s; peak RSS {:.0} MiB",
        100.0 * before.0,
        100.0 * after.0,
        100.0 * before.1,
        100.0 * after.1,
        curve.len(),
        train_s,
        rlzero::grpo::metrics::peak_rss_mib()
    );
    Ok(())
}
