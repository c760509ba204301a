//! The Rust counterpart of `../shared/anchors/trl-cpu/bench_train_step.py`: one GRPO-style
//! policy-gradient step on SmolLM2-135M-Instruct, as TRL runs it with β = 0, μ = 1 and DAPO's
//! token mean. 8 sequences × (40 prompt + 128 completion) tokens, f32, full fine-tuning:
//! forward (logits for the completion positions only, fused selective log-softmax), the clipped
//! surrogate loss, backward, global grad-norm clipping at 1.0, AdamW (lr 1e-6). Prints each
//! step's breakdown (fwd, bwd, opt) as the Python script does, the median over STEPS (default 5)
//! after one warm-up, 6·N·T GFLOP/s and the peak RSS.
//!
//!     ./scripts/fetch-models.sh
//!     cargo run --release --example train_step_bench
//!     (cd ../shared/anchors/trl-cpu && python bench_train_step.py)   # PyTorch, same session
//!
//! The completion tokens are pseudo-random ids (the script draws them with torch's generator;
//! the values do not change the work), the prompt a real chat prompt left-padded to 40 tokens.
//!
//! The 8 rows are one GRPO group: the same prompt, 8 completions. By default the prompt is
//! scored once for the group, as rlzero's trainer does (`share_prompts`, [`rlzero::model::prefix`]);
//! `SHARE=0` scores it once per row, as the script does.
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rlzero::grpo::loss::{grpo_loss, Accumulation, LossInputs};
use rlzero::grpo::{clip_grad_norm, AdamW, AdamWParams, LossConfig, LossType};
use rlzero::model::pack::{completion_logprobs, PackedBatch};
use rlzero::model::{load, LoadOptions, Message, ModelSource};

const BATCH: usize = 8;
const PROMPT: usize = 40;
const COMP: usize = 128;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() -> Result<()> {
    rlzero::malloc::keep_freed_memory();
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let m = load(&ModelSource::parse(&path), &LoadOptions::default())?;
    let dec = &m.decoder;
    let dev = Device::Cpu;

    // The script's prompt: a real chat prompt, left-padded / truncated to exactly PROMPT tokens.
    let chat = m.tokenizer.apply_chat_template(
        &[Message::user("What is 23+19? Answer with just the number.")],
        true,
    )?;
    let mut p_ids = m.tokenizer.encode(&chat, false)?;
    let pad = m.tokenizer.pad_token_id.unwrap_or(0);
    while p_ids.len() < PROMPT {
        p_ids.insert(0, pad);
    }
    let p_ids = p_ids[p_ids.len() - PROMPT..].to_vec();
    let mut comps: Vec<Vec<u32>> = Vec::with_capacity(BATCH);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..BATCH {
        let mut comp = Vec::with_capacity(COMP);
        for _ in 0..COMP {
            // splitmix64: a fixed stream of ids across the vocabulary
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            comp.push(((z ^ (z >> 31)) % m.config.vocab_size as u64) as u32);
        }
        comps.push(comp);
    }
    let t_all = PROMPT + COMP;
    let share = std::env::var("SHARE").map_or(true, |v| v != "0");
    let prompts = vec![p_ids.as_slice(); BATCH];
    let comps: Vec<&[u32]> = comps.iter().map(|c| c.as_slice()).collect();
    // Every prompt token is real (the script's attention mask is all ones, padding included).
    let batch = if share {
        PackedBatch::with_shared_prompts(&prompts, &comps, pad, &dev)?
    } else {
        PackedBatch::new(&prompts, &comps, pad, &dev)?
    };
    let comp_mask = Tensor::ones((BATCH, COMP), candle_core::DType::F32, &dev)?; // (B, C)
                                                                                 // The script's advantages: rewards [1,0,0,1,0,0,0,1], group-normalised (Bessel, + 1e-4).
    let rewards = [1.0f32, 0., 0., 1., 0., 0., 0., 1.];
    let mean = rewards.iter().sum::<f32>() / BATCH as f32;
    let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / (BATCH - 1) as f32;
    let adv: Vec<f32> = rewards
        .iter()
        .map(|r| (r - mean) / (var.sqrt() + 1e-4))
        .collect();
    let advantages = Tensor::from_vec(adv, BATCH, &dev)?; // (B,)

    let vars = dec.vars()?;
    let n_params: usize = vars.iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWParams {
            lr: 1e-6,
            weight_decay: 0.0,
            ..AdamWParams::default()
        },
    )?;
    let loss_cfg = LossConfig {
        loss_type: LossType::Dapo,
        ..LossConfig::default() // ε = 0.2 both sides: the script clamps at [0.8, 1.2]
    };
    let acc = Accumulation {
        max_completion_length: COMP,
        ..Accumulation::default()
    };
    let tokens = (BATCH * t_all) as f64;
    let flops = 6.0 * n_params as f64 * tokens;

    let mut times = vec![];
    let (mut fwds, mut bwds, mut opts) = (vec![], vec![], vec![]);
    for i in 0..=steps {
        let t0 = Instant::now();
        let logps = completion_logprobs(dec, &batch, 1.0, false)?.logprobs; // (B, C)
        let out = grpo_loss(
            &loss_cfg,
            &acc,
            &LossInputs {
                logprobs: &logps,
                old_logprobs: None,
                ref_logprobs: None,
                advantages: &advantages,
                mask: &comp_mask,
                num_items_in_batch: (BATCH * COMP) as f64,
                micro_batch: None,
                sampler_weights: None,
            },
        )?;
        let loss = out.loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let mut grads = out.loss.backward()?;
        let t2 = Instant::now();
        clip_grad_norm(&mut grads, &vars, 1.0)?;
        opt.step_default_lr(&grads)?;
        drop(grads);
        let t3 = Instant::now();
        let (fwd, bwd, op) = (
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
        );
        let dt = (t3 - t0).as_secs_f64();
        let tag = if i == 0 { "warmup" } else { "step" };
        println!(
            "{tag} {i}: {dt:.2}s (fwd {fwd:.2} bwd {bwd:.2} opt {op:.2}) {:.0} tok/s loss={loss:.4}",
            tokens / dt
        );
        if i > 0 {
            times.push(dt);
            fwds.push(fwd);
            bwds.push(bwd);
            opts.push(op);
        }
    }
    let med = median(times);
    println!(
        "layout: {} ({} tokens through the decoder; tok/s and GFLOP/s below count the script's {})",
        if share {
            "shared prompt"
        } else {
            "plain, SHARE=0"
        },
        if share {
            PROMPT + BATCH * COMP
        } else {
            BATCH * t_all
        },
        BATCH * t_all
    );
    println!(
        "train_step median {med:.2} s (fwd {:.2} bwd {:.2} opt {:.2}) over {steps} steps, \
         {:.0} tok/s, {:.1} GFLOP/s (6NT, N = {n_params}), peak RSS {:.0} MiB",
        median(fwds),
        median(bwds),
        median(opts),
        tokens / med,
        flops / med / 1e9,
        rlzero::grpo::metrics::peak_rss_mib()
    );
    Ok(())
}
