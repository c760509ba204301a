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
        let want = m
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
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
    assert!(
        moved >= 10,
        "gradients reach the master: {moved} steps moved"
    );
    assert_copy_follows_master(&t);
    eprintln!("bf16 reward curve: {curve:?}");
    let start = curve[..3].iter().sum::<f64>() / 3.0;
    let end = curve[35..].iter().sum::<f64>() / 5.0;
    // The f32 run of the same config (tests/grpo_learns.rs) goes from chance (0.2) to > 0.9.
    assert!(start < 0.45, "starts near chance: {start}");
    assert!(end > 0.8, "learns in bf16: last-5 mean reward {end}");
}

/// One step at a small learning rate: AdamW moves every trained weight by about `lr` (its
/// first update is `lr · sign(g)`), far below bf16's spacing (2⁻⁸ of the weight). The f32
/// master takes those updates; most of them do not show in the bf16 copy yet. An optimizer
/// run on bf16 weights would have lost them; one run on the copy would leave the master still.
#[test]
fn small_updates_accumulate_in_the_master() {
    let mut cfg = bf16_config();
    cfg.optim.lr = 1e-5;
    cfg.max_grad_norm = None;
    let mut t = Trainer::new(cfg, tiny(), low_words()).unwrap();
    let snapshot = |t: &Trainer| -> (Vec<f32>, Vec<f32>) {
        let flat = |d: &rlzero::model::Decoder| -> Vec<f32> {
            d.named_trainable()
                .unwrap()
                .iter()
                .flat_map(|(_, v)| {
                    v.to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect()
        };
        (flat(t.policy()), flat(t.working_policy()))
    };
    let (m0, c0) = snapshot(&t);
    let mut ps = prompts();
    // Steps until one has a gradient (a step whose groups all tie has none).
    for _ in 0..10 {
        if t.step(&mut ps).unwrap().metrics.grad_norm > 0.0 {
            break;
        }
    }
    assert_copy_follows_master(&t);
    let (m1, c1) = snapshot(&t);
    let moved = |a: &[f32], b: &[f32]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    let (master_moved, copy_moved) = (moved(&m0, &m1), moved(&c0, &c1));
    eprintln!(
        "of {} weights: {master_moved} moved in the master, {copy_moved} in the copy",
        m0.len()
    );
    assert!(master_moved > m0.len() / 2, "the master takes the updates");
    assert!(
        copy_moved * 4 < master_moved,
        "most are below bf16's resolution"
    );
}

/// The step really runs in bf16: its gradient differs from the f32 run's on the same batch.
#[test]
fn the_step_runs_on_the_bf16_copy() {
    let first = |cfg| {
        let mut t = Trainer::new(cfg, tiny(), low_words()).unwrap();
        let mut ps = prompts();
        t.step(&mut ps).unwrap().metrics
    };
    let (f, h) = (first(config()), first(bf16_config()));
    eprintln!("grad_norm f32 {} bf16 {}", f.grad_norm, h.grad_norm);
    assert!(f.grad_norm > 0.0 && h.grad_norm > 0.0);
    let rel = (f.grad_norm - h.grad_norm).abs() / f.grad_norm;
    assert!(
        rel > 1e-6 && rel < 0.2,
        "bf16 rounding shows, within reason: {rel}"
    );
}

#[test]
fn unsupported_bf16_settings_are_refused_by_name() {
    let mut cfg = bf16_config();
    cfg.lora = Some(LoraConfig::default());
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("precision"), "{e}");
    let mut cfg = bf16_config();
    cfg.num_iterations = 2;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("old_logprobs"), "{e}");
    cfg.old_logprobs = rlzero::grpo::OldLogprobs::Recompute;
    cfg.validate().unwrap();
}
