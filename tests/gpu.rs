//! The CUDA path against the CPU: the decoder's logits, rollouts, GRPO steps and bf16 mixed
//! precision on the tiny fixtures. Each test needs a `--features cuda` build and a GPU; without
//! one it prints why and returns (`scripts/gpu-check.sh` runs these on a GPU machine).

mod common;

use candle_core::{DType, Device};
use common::grpo_tiny::{config, low_words, prompts, tiny_on};
use rlzero::grpo::{Precision, Trainer};
use rlzero::model::device::parse_device;
use rlzero::model::{load, LoadOptions, LoadedModel, LogitsToKeep, ModelSource, WeightMode};
use rlzero::rollout::{rollout_on, RolloutBackend, SamplingParams};

/// CUDA device 0 (or `RLZERO_TEST_DEVICE`, e.g. `cpu` to exercise these tests' own logic
/// without a GPU), or `None` with the reason printed (no `cuda` feature, no GPU, no driver).
fn cuda() -> Option<Device> {
    let spec = std::env::var("RLZERO_TEST_DEVICE").unwrap_or_else(|_| "cuda:0".into());
    match parse_device(&spec) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn load_on(name: &str, device: &Device, dtype: DType) -> LoadedModel {
    let opts = LoadOptions {
        mode: WeightMode::Frozen,
        device: device.clone(),
        dtype,
        ..LoadOptions::default()
    };
    load(&ModelSource::Dir(common::fixtures().join(name)), &opts).unwrap()
}

#[test]
fn cuda_logits_match_the_cpu() {
    let Some(gpu) = cuda() else { return };
    for name in common::TINY {
        let r = common::reference(name);
        let logits = |m: &LoadedModel, dev: &Device| {
            let ids = r["input_ids"].to_device(dev).unwrap();
            let mask = r["attention_mask"].to_device(dev).unwrap();
            m.decoder
                .forward(&ids, &mask, LogitsToKeep::All)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap()
        };
        let cpu = logits(&load_on(name, &Device::Cpu, DType::F32), &Device::Cpu);
        let f32_gpu = logits(&load_on(name, &gpu, DType::F32), &gpu);
        let diff = common::max_abs_diff(&cpu, &f32_gpu);
        eprintln!("{name}: |cuda f32 − cpu f32| logits {diff:e}");
        assert!(diff < 1e-4, "{name}: {diff}");
        let bf16_gpu = logits(&load_on(name, &gpu, DType::BF16), &gpu);
        let diff = common::max_abs_diff(&cpu, &bf16_gpu);
        eprintln!("{name}: |cuda bf16 − cpu f32| logits {diff:e}");
        assert!(diff.is_finite());
    }
}

#[test]
fn cuda_rollouts_match_the_cpu_fast_path() {
    let Some(gpu) = cuda() else { return };
    let prompts = vec![vec![5u32, 17, 99, 3, 64, 127, 8, 42], vec![9, 100, 23]];
    for name in common::TINY {
        let p = SamplingParams {
            greedy: true,
            max_new_tokens: 40,
            ..Default::default()
        };
        let on = |dev: &Device, backend| {
            let m = load_on(name, dev, DType::F32);
            rollout_on(backend, &m.decoder, &m.tokenizer, &prompts, 2, &p, 0)
                .unwrap()
                .0
        };
        let cpu = on(&Device::Cpu, RolloutBackend::FastCpu);
        // On a GPU `Auto` is the tensor path; name it so a CPU stand-in runs the same path.
        let gpu_out = on(&gpu, RolloutBackend::Tensor);
        let mut worst = 0f32;
        for (a, b) in cpu.iter().zip(&gpu_out) {
            assert_eq!(a.token_ids, b.token_ids, "{name}");
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                worst = worst.max((x - y).abs());
            }
        }
        eprintln!("{name}: |cuda − cpu| rollout log-prob {worst:e}");
        assert!(worst < 1e-4, "{name}: {worst}");
    }
}

#[test]
fn cuda_grpo_steps_match_the_cpu() {
    let Some(gpu) = cuda() else { return };
    let run = |dev: &Device| {
        let mut t = Trainer::new(config(), tiny_on(dev), low_words()).unwrap();
        let mut ps = prompts();
        (0..3)
            .map(|_| t.step(&mut ps).unwrap().metrics)
            .collect::<Vec<_>>()
    };
    let (cpu, gpu_m) = (run(&Device::Cpu), run(&gpu));
    // Step 1 samples from identical weights: the same rewards, and the same loss and gradient
    // norm up to float summation order. Later steps may sample differently.
    assert_eq!(cpu[0].reward, gpu_m[0].reward);
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-12);
    eprintln!(
        "step 1: loss {} vs {}, grad_norm {} vs {}",
        cpu[0].loss, gpu_m[0].loss, cpu[0].grad_norm, gpu_m[0].grad_norm
    );
    assert!((cpu[0].loss - gpu_m[0].loss).abs() < 1e-5);
    assert!(rel(cpu[0].grad_norm, gpu_m[0].grad_norm) < 1e-3);
    for m in &gpu_m {
        assert!(!m.skipped, "{:?}", m.skip_reason);
    }
}

#[test]
fn cuda_bf16_mixed_precision_learns() {
    let Some(gpu) = cuda() else { return };
    let mut cfg = config();
    cfg.precision = Precision::Bf16;
    let mut t = Trainer::new(cfg, tiny_on(&gpu), low_words()).unwrap();
    let mut ps = prompts();
    let curve: Vec<f64> = (0..40)
        .map(|_| t.step(&mut ps).unwrap().metrics.reward)
        .collect();
    eprintln!("cuda bf16 reward curve: {curve:?}");
    assert!(curve[35..].iter().sum::<f64>() / 5.0 > 0.8);
}
