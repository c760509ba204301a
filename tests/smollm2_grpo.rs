//! GRPO on the real SmolLM2-135M-Instruct (GGUF, tied embeddings): one LoRA step with a KL
//! reference and one full fine-tuning step run end to end with finite metrics, and the LoRA
//! step moves the adapters only. Needs `models/` from `scripts/fetch-models.sh`, hence
//! `#[ignore]`; CI runs them after the fetch.

mod common;

use common::models_dir;
use rlzero::grpo::{GrpoConfig, TrainPrompt, Trainer};
use rlzero::model::lora::LoraConfig;
use rlzero::model::{load, LoadOptions, LoadedModel, ModelSource};
use rlzero::rewards::{NumericAnswer, Reference, RewardSet};

fn model() -> LoadedModel {
    let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} missing: run scripts/fetch-models.sh",
        path.display()
    );
    load(&ModelSource::Gguf(path), &LoadOptions::default()).expect("load SmolLM2 GGUF")
}

fn config(lora: bool) -> GrpoConfig {
    let mut cfg = GrpoConfig::from_toml_str(
        r#"
        prompts_per_step = 1
        num_generations = 4
        gradient_accumulation_steps = 2
        [sampling]
        max_completion_length = 12
        [loss]
        beta = 0.04
        epsilon_high = 0.28
        [optim]
        lr = 1e-4
        "#,
    )
    .unwrap();
    if lora {
        cfg.lora = Some(LoraConfig::default());
    }
    cfg
}

fn step(cfg: GrpoConfig) -> Trainer {
    let m = model();
    let p = TrainPrompt::chat(
        &m.tokenizer,
        "What is 3 + 4?",
        Reference::Answer("7".into()),
    )
    .unwrap();
    let rewards = RewardSet::new().with(NumericAnswer::default(), 1.0);
    let mut t = Trainer::new(cfg, m, rewards).unwrap();
    let r = t.step(&mut std::iter::repeat(p)).unwrap();
    let m = &r.metrics;
    assert!(!m.skipped, "{:?}", m.skip_reason);
    assert_eq!(r.samples.len(), 4);
    for v in [
        m.loss,
        m.grad_norm,
        m.entropy,
        m.kl.unwrap_or(f64::NAN),
        m.mean_length,
    ] {
        assert!(v.is_finite(), "{:?}", m);
    }
    assert!(m.entropy > 0.0 && m.completion_tokens > 0);
    t
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn a_lora_step_with_kl_on_smollm2_moves_only_the_adapters() {
    let base: Vec<(String, Vec<f32>)> = model()
        .decoder
        .named_parameters()
        .iter()
        .map(|(n, w)| {
            (
                n.clone(),
                w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect();
    let t = step(config(true));
    assert_eq!(t.step_count(), 1);
    let after = t.policy().named_parameters();
    assert_eq!(after.len(), base.len());
    for ((n, w), (n0, w0)) in after.iter().zip(&base) {
        assert_eq!(n, n0);
        assert!(
            w.flatten_all().unwrap().to_vec1::<f32>().unwrap() == *w0,
            "base weight {n} moved"
        );
    }
    assert!(t.policy().has_adapters());
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn a_full_fine_tuning_step_on_smollm2_runs() {
    let t = step(config(false));
    assert_eq!(t.step_count(), 1);
}
