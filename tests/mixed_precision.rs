//! `precision = bf16`: a bf16 working copy runs rollouts, forward and backward; the f32 master
//! weights and AdamW's state take the updates. The copy always equals bf16(master) after a step,
//! the master stays f32, checkpoints hold the master, and the tiny task still learns.

mod common;

use candle_core::DType;
use common::grpo_tiny::{config, low_words, prompts, tiny};
use rlzero::grpo::{GrpoConfig, Precision, Trainer};
use rlzero::model::lora::LoraConfig;

fn bf16_config() -> GrpoConfig {
    let mut cfg = config();
    cfg.precision = Precision::Bf16;
    cfg
}

/// Every working weight equals the master weight rounded to bf16.
fn assert_copy_follows_master(t: &Trainer) {
    let master = t.policy().named_trainable().unwrap();
    let copy = t.working_policy().named_trainable().unwrap();
    assert_eq!(master.len(), copy.len());
    for ((n, m), (n2, c)) in master.iter().zip(&copy) {
        assert_eq!(n, n2);
        assert_eq!(m.dtype(), DType::F32, "{n}: the master stays f32");
        assert_eq!(c.dtype(), DType::BF16, "{n}: the working copy is bf16");
        let want = m.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let got = c.to_dtype(DType::F32).unwrap();
        assert_eq!(common::max_abs_diff(&want, &got), 0.0, "{n}");
    }
}

#[test]
fn bf16_working_copy_with_f32_master_learns() {
    let mut t = Trainer::new(bf16_config(), tiny(), low_words()).unwrap();
    assert_copy_follows_master(&t);
    let mut ps = prompts();
    let (mut curve, mut moved) = (vec![], 0);
    for _ in 0..40 {
        let r = t.step(&mut ps).unwrap();
        assert!(!r.metrics.skipped, "{:?}", r.metrics.skip_reason);
        assert!(r.metrics.grad_norm.is_finite());
        moved += usize::from(r.metrics.grad_norm > 0.0); // 0 when every group's rewards tie
        curve.push(r.metrics.reward);
    }
    eprintln!("{moved} of 40 steps had a non-zero gradient");
    assert!(moved >= 10, "gradients reach the master: {moved} steps moved");
    assert_copy_follows_master(&t);
    eprintln!("bf16 reward curve: {curve:?}");
    let start = curve[..3].iter().sum::<f64>() / 3.0;
    let end = curve[35..].iter().sum::<f64>() / 5.0;
    // The f32 run of the same config (tests/grpo_learns.rs) goes from chance (0.2) to > 0.9.
    assert!(start < 0.45, "starts near chance: {start}");
    assert!(end > 0.8, "learns in bf16: last-5 mean reward {end}");
}

/// Updates below bf16's resolution vanish when applied to bf16 weights, and accumulate in the
/// f32 master until they show in the copy: the reason the master exists.
#[test]
fn small_updates_accumulate_in_the_master() {
    let t = Trainer::new(bf16_config(), tiny(), low_words()).unwrap();
    let (_, m) = &t.policy().named_trainable().unwrap()[0];
    let one = m.ones_like().unwrap();
    let step = (one.clone() * 1e-4).unwrap(); // 1e-4 < 2⁻⁸ = 0.0039, bf16's spacing at 1
    let mut bf16 = one.to_dtype(DType::BF16).unwrap();
    let mut master = one.clone();
    for _ in 0..100 {
        bf16 = (bf16 + step.to_dtype(DType::BF16).unwrap()).unwrap();
        master = (master + &step).unwrap();
    }
    let at = |x: &candle_core::Tensor| -> f32 {
        x.to_dtype(DType::F32).unwrap().flatten_all().unwrap().get(0).unwrap().to_scalar().unwrap()
    };
    assert_eq!(at(&bf16), 1.0, "each bf16 update rounds away");
    assert!(at(&master.to_dtype(DType::BF16).unwrap()) > 1.0, "the master's sum shows");
}

#[test]
fn bf16_with_lora_is_refused_by_name() {
    let mut cfg = bf16_config();
    cfg.lora = Some(LoraConfig::default());
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("precision"), "{e}");
}
