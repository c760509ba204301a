//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Shape, Tensor};
use rlzero::model::{Decoder, DecoderConfig, LogitsToKeep, WeightMode, Weights};

/// `tests/fixtures` of the checkout this was built in, or `RLZERO_FIXTURES` (a test binary copied
/// to another machine, as `scripts/gpu-check.sh run` does).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("RLZERO_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("fixtures"),
    }
}

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

pub const TINY: [&str; 3] = ["tiny-llama", "tiny-qwen2", "tiny-qwen3"];

/// The tensors of a fixture's `reference.safetensors`.
pub fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join(name).join("reference.safetensors"),
        &Device::Cpu,
    )
    .expect("reference fixture")
}

/// A tiny fixture through the loader (decoder, tokenizer, generation config), trainable f32 on
/// the CPU.
pub fn tiny_model(name: &str) -> rlzero::model::LoadedModel {
    let opts = rlzero::model::LoadOptions {
        mode: WeightMode::Trainable,
        ..Default::default()
    };
    rlzero::model::load(
        &rlzero::model::ModelSource::Dir(fixtures().join(name)),
        &opts,
    )
    .unwrap()
}

/// A tiny fixture's decoder in `dtype` and `mode`, from config.json + model.safetensors only.
pub fn tiny_decoder(name: &str, dtype: DType, mode: WeightMode) -> Decoder {
    let dir = fixtures().join(name);
    let cfg = DecoderConfig::from_file(&dir.join("config.json")).expect("config");
    let tensors = rlzero::model::safetensors_io::read_safetensors(&dir.join("model.safetensors"))
        .expect("weights");
    let w = Weights::new(name, tensors, dtype, &Device::Cpu, mode).expect("weights");
    Decoder::new(&cfg, &w, mode).expect("decoder")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
/// Deterministic values in `[-1, 1)` from an LCG, so tests never depend on an RNG crate's stream.
pub fn noise(shape: impl Into<Shape>, dtype: DType, seed: u64) -> Tensor {
    let shape = shape.into();
    let mut s = seed;
    let v: Vec<f64> = (0..shape.elem_count())
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("noise tensor")
}

pub mod grpo_tiny;
pub mod hub_server;
pub mod mutate;
pub mod tmpdir;

/// Log-probs of `completion` after `prompt` under the trainable forward at temperature `t`:
/// what a GRPO trainer computes for the importance ratio.
pub fn trainer_logprobs(d: &Decoder, prompt: &[u32], completion: &[u32], t: f64) -> Vec<f32> {
    let mut ids = prompt.to_vec();
    ids.extend(completion);
    let n = completion.len();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = d
        .forward(&x, &x.ones_like().unwrap(), LogitsToKeep::Last(n + 1))
        .unwrap();
    let logits = (logits.narrow(1, 0, n).unwrap() / t).unwrap(); // the positions predicting each token
    let lp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let idx = Tensor::new(completion, &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    lp.gather(&idx, 1)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}
