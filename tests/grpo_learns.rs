//! GRPO end to end on a tiny random model: a trivially learnable reward rises from chance to
//! over 0.9 within a bounded number of CPU steps, the same seed gives the same reward curve
//! bit for bit, LoRA learns too, an optimizer step is seen by the next rollout, and a
//! non-finite loss skips the step without touching weights or optimizer.

mod common;

use common::grpo_tiny::{config, low_words, prompts, tiny};
use rlzero::grpo::{GrpoConfig, Trainer};
use rlzero::model::lora::LoraConfig;
use rlzero::rewards::{reward_fn, RewardInput, RewardSet};

fn run(cfg: GrpoConfig, steps: usize) -> Vec<f64> {
    let mut t = Trainer::new(cfg, tiny(), low_words()).unwrap();
    let mut ps = prompts();
    (0..steps)
        .map(|_| {
            let r = t.step(&mut ps).unwrap();
            assert!(!r.metrics.skipped, "{:?}", r.metrics.skip_reason);
            r.metrics.reward
        })
        .collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

#[test]
fn reward_rises_from_chance_and_is_reproducible() {
    let curve = run(config(), 40);
    let start = mean(&curve[..3]);
    let end = mean(&curve[curve.len() - 5..]);
    eprintln!("reward curve: {curve:?}");
    assert!(start < 0.45, "starts near chance (0.2): {start}");
    assert!(end > 0.9, "learns: last-5 mean reward {end}");
    // Same seed → the same curve, bit for bit.
    let again = run(config(), 40);
    assert_eq!(curve.len(), again.len());
    for (a, b) in curve.iter().zip(&again) {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "curves differ: {curve:?} vs {again:?}"
        );
    }
}

#[test]
fn lora_with_dropout_learns_and_kl_is_reported() {
    let mut cfg = config();
    cfg.lora = Some(LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.05,
        ..LoraConfig::default()
    });
    cfg.optim.lr = 0.03;
    cfg.loss.beta = 0.01;
    let mut t = Trainer::new(cfg, tiny(), low_words()).unwrap();
    let mut ps = prompts();
    let mut curve = Vec::new();
    for _ in 0..40 {
        let r = t.step(&mut ps).unwrap();
        assert!(r.metrics.kl.is_some_and(|k| k.is_finite() && k >= 0.0));
        curve.push(r.metrics.reward);
    }
    eprintln!("LoRA reward curve: {curve:?}");
    assert!(
        mean(&curve[curve.len() - 5..]) > mean(&curve[..3]) + 0.3,
        "{curve:?}"
    );
}

#[test]
fn an_optimizer_step_is_seen_by_the_next_rollout() {
    use rlzero::rollout::{rollout, SamplingParams};
    let mut t = Trainer::new(config(), tiny(), low_words()).unwrap();
    let p = SamplingParams {
        max_new_tokens: 6,
        seed: 3,
        ..SamplingParams::default()
    };
    let ids = vec![vec![40u32, 41, 42]];
    let before = rollout(t.policy(), t.tokenizer(), &ids, 4, &p, 0).unwrap();
    let r = t.step(&mut prompts()).unwrap();
    assert!(r.metrics.grad_norm > 0.0);
    let after = rollout(t.policy(), t.tokenizer(), &ids, 4, &p, 0).unwrap();
    // Same seed and request: only the weights changed, so the log-probs must differ.
    let lp = |cs: &[rlzero::rollout::Completion]| {
        cs.iter().map(|c| c.logprobs.clone()).collect::<Vec<_>>()
    };
    assert_ne!(lp(&before), lp(&after));
}

#[test]
fn a_non_finite_loss_skips_the_step_and_touches_nothing() {
    // Unscaled advantages of ±1e300 overflow f32: the loss is infinite.
    let mut cfg = config();
    cfg.scale_rewards = rlzero::grpo::advantages::ScaleRewards::None;
    let huge = RewardSet::new().with(
        reward_fn("huge", |x: &RewardInput<'_>| {
            Some(if x.sample_index.is_multiple_of(2) {
                1e300
            } else {
                -1e300
            })
        }),
        1.0,
    );
    let mut t = Trainer::new(cfg, tiny(), huge).unwrap();
    let before: Vec<Vec<f32>> = t
        .policy()
        .named_parameters()
        .iter()
        .map(|(_, w)| w.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    let r = t.step(&mut prompts()).unwrap();
    assert!(r.metrics.skipped, "the step must be skipped");
    assert!(r
        .metrics
        .skip_reason
        .as_deref()
        .is_some_and(|s| s.contains("non-finite")));
    assert_eq!(t.step_count(), 0);
    assert_eq!(t.optimizer().step_count(), 0);
    let after: Vec<Vec<f32>> = t
        .policy()
        .named_parameters()
        .iter()
        .map(|(_, w)| w.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    assert_eq!(before.len(), after.len());
    assert!(before == after, "weights moved on a skipped step");
}

/// μ = 2: two optimizer steps per generation batch. The old log-probs may come from the rollout
/// (default) or from a recomputing forward pass (TRL's way): the two give the same update to
/// within the 3e-5 gap between sampler and trainer log-probs.
#[test]
fn two_iterations_with_rollout_or_recomputed_old_logprobs_agree() {
    use rlzero::grpo::OldLogprobs;
    let run = |old: OldLogprobs| {
        let mut cfg = config();
        cfg.num_iterations = 2;
        cfg.old_logprobs = old;
        let mut t = Trainer::new(cfg, tiny(), low_words()).unwrap();
        let m = t.step(&mut prompts()).unwrap().metrics;
        assert_eq!(t.step_count(), 2, "μ = 2 takes two optimizer steps");
        m
    };
    let a = run(OldLogprobs::Rollout);
    let b = run(OldLogprobs::Recompute);
    assert_eq!(a.reward.to_bits(), b.reward.to_bits(), "same samples");
    assert!(
        (a.loss - b.loss).abs() <= 1e-4 * (1.0 + b.loss.abs()),
        "{} vs {}",
        a.loss,
        b.loss
    );
    assert!(
        (a.grad_norm - b.grad_norm).abs() <= 1e-3 * b.grad_norm,
        "{} vs {}",
        a.grad_norm,
        b.grad_norm
    );
    let (ca, cb) = (a.clip_ratio_region.unwrap(), b.clip_ratio_region.unwrap());
    assert!((ca - cb).abs() <= 1e-3, "clip ratios {ca} vs {cb}");
    assert_eq!((a.iterations, b.iterations), (2, 2));
}

#[test]
fn truncated_completions_can_be_masked_out() {
    let mut cfg = config();
    cfg.sampling.max_completion_length = 2;
    cfg.sampling.min_completion_length = 2; // no EOS: every completion is truncated
    cfg.mask_truncated_completions = true;
    let mut t = Trainer::new(cfg, tiny(), low_words()).unwrap();
    let m = t.step(&mut prompts()).unwrap().metrics;
    assert_eq!(m.clipped_ratio, 1.0);
    assert_eq!(m.completion_tokens, 0, "every token is masked");
    assert_eq!(m.grad_norm, 0.0);
}

/// DAPO's dynamic sampling drops groups whose rewards are all equal and samples more prompts.
#[test]
fn dynamic_sampling_keeps_only_groups_with_signal() {
    let mut cfg = config();
    cfg.dynamic_sampling = true;
    cfg.dynamic_sampling_max_rounds = 3;
    // Prompt texts starting with "[40" always score 1: their groups carry no signal.
    let rewards = RewardSet::new().with(
        reward_fn("mixed", |x: &RewardInput<'_>| {
            if x.prompt.starts_with("[40") {
                Some(1.0)
            } else {
                Some((x.sample_index % 2) as f64)
            }
        }),
        1.0,
    );
    let mut t = Trainer::new(cfg, tiny(), rewards).unwrap();
    let m = t.step(&mut prompts()).unwrap().metrics;
    assert_eq!(
        m.frac_reward_zero_std, 0.0,
        "no zero-variance group is trained on"
    );
    assert_eq!(
        m.trained_completions, 16,
        "the batch was refilled to 2 groups"
    );
    assert!(
        m.sampled_completions > m.trained_completions,
        "a dropped group was resampled"
    );
}

/// Activation chunking (`sequences_per_pass`) and activation recomputation
/// (`gradient_checkpointing`) change memory, not the update: for every loss type the chunks'
/// losses sum to the micro-batch's and the gradient is the same.
#[test]
fn passes_over_chunks_give_the_same_update_for_every_loss_type() {
    use rlzero::grpo::LossType::*;
    for lt in [Grpo, Bnpo, DrGrpo, Dapo, Cispo, Sapo, Luspo, Vespo] {
        let run = |pass: Option<usize>, recompute: bool| {
            let mut cfg = config();
            cfg.loss.loss_type = lt;
            cfg.loss.beta = 0.04;
            cfg.loss.epsilon_high = Some(if lt == Cispo { 2.0 } else { 0.28 });
            cfg.sequences_per_pass = pass; // micro-batches of 8: chunks of 3, 3, 2
            cfg.gradient_checkpointing = recompute;
            let mut t = Trainer::new(cfg, tiny(), low_words()).unwrap();
            let m = t.step(&mut prompts()).unwrap().metrics;
            let w = t.policy().named_parameters()[0]
                .1
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (m, w)
        };
        let (a, wa) = run(None, false);
        for (what, (b, wb)) in [
            ("chunked", run(Some(3), false)),
            ("recomputed", run(None, true)),
        ] {
            // On-policy the loss itself is ~0 (advantages are centred): compare it absolutely.
            let close = |x: f64, y: f64, tol: f64| (x - y).abs() <= 1e-6 + tol * y.abs();
            assert!(
                close(a.loss, b.loss, 1e-5),
                "{lt:?}: loss {} vs {what} {}",
                a.loss,
                b.loss
            );
            assert!(
                close(a.grad_norm, b.grad_norm, 1e-4),
                "{lt:?}: grad norm {} vs {what} {}",
                a.grad_norm,
                b.grad_norm
            );
            assert_eq!(wa.len(), wb.len());
            let dw = wa
                .iter()
                .zip(&wb)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                dw < 1e-5,
                "{lt:?}: weights differ by {dw} after the {what} step"
            );
        }
    }
}

/// `--explain`'s numbers are the trainer's: every completion's row terms add up to the step's
/// loss (micro-batches, chunked passes and KL included), the advantages follow from the printed
/// group mean and std, and an on-policy DAPO row is exactly `−A·n/D`.
#[test]
fn explain_rows_add_up_to_the_step_loss() {
    use rlzero::run::explain::{explain_group, pick_group, ExplainInput};
    use rlzero::run::ledger::REFLECTION_PHRASES;
    for (beta, iterations, pass) in [(0.0, 1, None), (0.04, 2, Some(3))] {
        let mut cfg = config();
        cfg.loss.beta = beta;
        cfg.num_iterations = iterations;
        cfg.sequences_per_pass = pass;
        let mut t = Trainer::new(cfg.clone(), tiny(), low_words()).unwrap();
        let mut ps = prompts();
        // With β > 0 the second step's policy differs from the reference: KL ≠ 0.
        let steps = if beta > 0.0 { 2 } else { 1 };
        let r = (0..steps).map(|_| t.step(&mut ps).unwrap()).last().unwrap();
        let case = format!("β {beta}, μ {iterations}, pass {pass:?}");
        assert!(!r.metrics.skipped, "{case}: {:?}", r.metrics.skip_reason);
        assert!(
            r.samples.iter().all(|s| s.loss.len() == iterations),
            "{case}"
        );
        let sum: f64 = r.samples.iter().map(|s| s.loss[iterations - 1].loss).sum();
        assert!(
            (sum - r.metrics.loss).abs() <= 1e-5,
            "{case}: Σ L_i {sum} vs step loss {}",
            r.metrics.loss
        );
        for s in &r.samples {
            let row = s.loss[iterations - 1];
            assert_eq!(row.tokens, s.tokens as f64, "{case}");
            if beta == 0.0 {
                let hand = -s.advantage * row.tokens / row.denominator;
                assert!(
                    (row.loss - hand).abs() <= 1e-6,
                    "{case}: {} vs −A·n/D {hand}",
                    row.loss
                );
                assert_eq!(row.mean_ratio, 1.0, "{case}: on-policy ratio");
            }
        }
        if beta > 0.0 {
            assert!(
                r.samples.iter().any(|s| s.loss[1].kl_loss != 0.0),
                "{case}: KL term"
            );
        }

        let rewards = low_words();
        let group = pick_group(&r).unwrap();
        let x = ExplainInput {
            report: &r,
            config: &cfg,
            reward_names: &rewards.names(),
            reward_weights: &rewards.weights(),
            phrases: &REFLECTION_PHRASES,
        };
        let text = explain_group(&x, group).unwrap();
        let rows: Vec<_> = r
            .samples
            .iter()
            .filter(|s| s.prompt_index == group)
            .collect();
        assert!(
            rows.iter().any(|s| s.advantage != 0.0),
            "{case}: a group with signal"
        );
        let rs: Vec<f64> = rows.iter().map(|s| s.reward).collect();
        let mean = rs.iter().sum::<f64>() / rs.len() as f64;
        let std =
            (rs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (rs.len() - 1) as f64).sqrt();
        assert!(
            text.contains(&format!("= {mean:.4}; sample std s = {std:.4}")),
            "{case}:\n{text}"
        );
        for s in &rows {
            assert!(
                (s.advantage - (s.reward - mean) / (std + 1e-4)).abs() < 1e-9,
                "{case}"
            );
            assert!(
                text.contains(&format!("{:+.6}", s.loss[iterations - 1].loss)),
                "{case}:\n{text}"
            );
        }
        assert!(text.contains("R1-Zero's curves here"), "{case}:\n{text}");
        assert!(explain_group(&x, 99).is_none());
    }
}

/// bf16 rollout weights with the truncated importance-sampling correction: the sampler's
/// log-probs are a measurably different policy, the weights stay under the cap, and the run
/// still learns the task. With f32 rollouts the same correction is a no-op to rounding.
#[test]
fn bf16_rollouts_with_the_sampler_correction_learn() {
    use rlzero::grpo::sampler_correction::SamplerCorrection;
    use rlzero::grpo::RolloutWeights;
    // f32 rollouts: the trainer and the sampler agree, every weight is 1.
    let mut cfg = config();
    cfg.sampler_correction = Some(SamplerCorrection::default());
    let mut t = Trainer::new(cfg, tiny(), low_words()).unwrap();
    let m = t.step(&mut prompts()).unwrap().metrics;
    let s = m.sampler.expect("sampler statistics");
    assert!(s.logp_diff_max <= 1e-4, "{s:?}");
    assert!((s.ratio_min - 1.0).abs() <= 1e-4 && (s.ratio_max - 1.0).abs() <= 1e-4);

    let mut cfg = config();
    cfg.sampling.rollout_weights = RolloutWeights::Bf16;
    cfg.sampler_correction = Some(SamplerCorrection::default());
    let mut t = Trainer::new(cfg.clone(), tiny(), low_words()).unwrap();
    let mut ps = prompts();
    let mut curve = vec![];
    let mut gaps = vec![];
    for _ in 0..40 {
        let m = t.step(&mut ps).unwrap().metrics;
        assert!(!m.skipped, "{:?}", m.skip_reason);
        let s = m.sampler.expect("sampler statistics");
        assert!(s.ratio_max <= 2.0 && s.ratio_min > 0.0, "{s:?}");
        gaps.push(s.logp_diff_mean);
        curve.push(m.reward);
    }
    let gap = mean(&gaps);
    eprintln!("bf16 rollouts: reward curve {curve:?}, mean |logp gap| {gap:e}");
    assert!(gap > 1e-4, "bf16 weights sample a different policy: {gap}");
    assert!(mean(&curve[curve.len() - 5..]) > 0.9, "learns: {curve:?}");
    // The metrics carry TRL's names.
    let json = t.step(&mut ps).unwrap().metrics.to_json();
    assert!(json.contains_key("sampling/importance_sampling_ratio/mean"));
    assert!(json.contains_key("sampling/sampling_logp_difference/max"));
}
