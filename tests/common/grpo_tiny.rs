//! A tiny GRPO setup shared by the trainer tests: the tiny-llama fixture, a text reward that a
//! 2-layer model learns in a few dozen steps, a cycle of three prompts and a small config.

use rlzero::grpo::{GrpoConfig, LossType, StepMetrics, TrainPrompt};
use rlzero::model::{load, LoadOptions, LoadedModel, ModelSource, WeightMode};
use rlzero::rewards::{reward_fn, Reference, RewardInput, RewardSet};

use super::fixtures;

pub fn tiny() -> LoadedModel {
    tiny_on(&candle_core::Device::Cpu)
}

/// The tiny-llama fixture, trainable, on `device`.
pub fn tiny_on(device: &candle_core::Device) -> LoadedModel {
    let opts = LoadOptions {
        mode: WeightMode::Trainable,
        device: device.clone(),
        ..LoadOptions::default()
    };
    load(&ModelSource::Dir(fixtures().join("tiny-llama")), &opts).unwrap()
}

/// The tiny vocabulary is `w5 … w127`; the reward is the fraction of completion words among
/// `w5 … w29` (about 20 % of the vocabulary: chance ≈ 0.2). Learnable by a 2-layer model in a
/// few dozen steps, and checked on text only, as real verifiers are.
pub fn low_words() -> RewardSet {
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

/// Three prompts, cycled.
pub fn prompts() -> impl Iterator<Item = TrainPrompt> {
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

pub fn config() -> GrpoConfig {
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

/// A step's metrics without the wall-clock and memory figures, which differ between runs.
pub fn deterministic_metrics(m: &StepMetrics) -> String {
    let mut j = m.to_json();
    j.retain(|k, _| !(k.starts_with("time/") || k == "step_time" || k == "peak_rss_mib"));
    serde_json::Value::Object(j).to_string()
}
