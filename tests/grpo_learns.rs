//! GRPO end to end on a tiny random model: a trivially learnable reward rises from chance to
//! over 0.9 within a bounded number of CPU steps, the same seed gives the same reward curve
//! bit for bit, LoRA learns too, an optimizer step is seen by the next rollout, and a
//! non-finite loss skips the step without touching weights or optimizer.

mod common;

use common::fixtures;
use rlzero::grpo::{GrpoConfig, LossType, TrainPrompt, Trainer};
use rlzero::model::lora::LoraConfig;
use rlzero::model::{load, LoadOptions, LoadedModel, ModelSource, WeightMode};
use rlzero::rewards::{reward_fn, Reference, RewardInput, RewardSet};

fn tiny() -> LoadedModel {
    let opts = LoadOptions {
        mode: WeightMode::Trainable,
        ..LoadOptions::default()
    };
    load(&ModelSource::Dir(fixtures().join("tiny-llama")), &opts).unwrap()
}

/// The tiny vocabulary is `w5 … w127`; the reward is the fraction of completion words among
/// `w5 … w29` (about 20 % of the vocabulary: chance ≈ 0.2). Learnable by a 2-layer model in a
/// few dozen steps, and checked on text only, as real verifiers are.
fn low_words() -> RewardSet {
    RewardSet::new().with(
        reward_fn("low_words", |x: &RewardInput<'_>| {
            let words: Vec<&str> = x.completion.split_whitespace().collect();
            if words.is_empty() {
                return Some(0.0);
            }
            let low = words
                .iter()
                .filter(|w| {
                    w.strip_prefix('w')
                        .and_then(|n| n.parse::<u32>().ok())
                        .is_some_and(|n| n < 30)
                })
                .count();
            Some(low as f64 / words.len() as f64)
        }),
        1.0,
    )
}

fn prompts() -> impl Iterator<Item = TrainPrompt> {
    let ps: Vec<TrainPrompt> = [vec![40u32, 41, 42], vec![77, 78], vec![100, 5, 64, 9]]
        .into_iter()
        .map(|ids| TrainPrompt {
            text: format!("{ids:?}"),
            ids,
            reference: Reference::None,
        })
        .collect();
    ps.into_iter().cycle()
}

fn config() -> GrpoConfig {
    let mut cfg = GrpoConfig::from_toml_str(
        r#"
        seed = 7
        max_steps = 60
        prompts_per_step = 2
        num_generations = 8
        gradient_accumulation_steps = 2
        [sampling]
        max_completion_length = 6
        [optim]
        lr = 0.01
        [schedule]
        type = "constant"
        "#,
    )
    .unwrap();
    cfg.loss.loss_type = LossType::Dapo;
    cfg
}

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
fn lora_learns_and_kl_is_reported() {
    let mut cfg = config();
    cfg.lora = Some(LoraConfig {
        r: 4,
        lora_alpha: 8.0,
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
            Some(if x.sample_index % 2 == 0 {
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
