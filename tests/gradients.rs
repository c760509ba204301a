//! Gradients through the decoder: every trainable weight gets a finite, non-zero gradient
//! (candle's optimizers silently skip weights that get none), and autograd agrees with central
//! finite differences in f64 to 1e-6 relative.

mod common;

use candle_core::{DType, Tensor, D};
use common::{reference, tiny_decoder, TINY};
use rlzero::model::{Decoder, LogitsToKeep, WeightMode};

/// `Σ_{b,t real} Σ_v log_softmax(logits)[b,t,v] · R[b,t,v]` for a fixed pseudo-random `R`: a
/// loss that touches every logit, so every weight influences it.
fn loss(m: &Decoder, ids: &Tensor, mask: &Tensor, r: &Tensor) -> Tensor {
    let logits = m.forward(ids, mask, LogitsToKeep::All).unwrap(); // (B, T, V)
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let w = mask.to_dtype(logits.dtype()).unwrap().unsqueeze(2).unwrap(); // (B, T, 1)
    logp.broadcast_mul(&w)
        .unwrap()
        .mul(r)
        .unwrap()
        .sum_all()
        .unwrap()
}

fn weights_like(t: &Tensor, seed: u64) -> Tensor {
    common::noise(t.shape(), t.dtype(), seed)
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    for name in TINY {
        let r = reference(name);
        let m = tiny_decoder(name, DType::F32, WeightMode::Trainable);
        let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
        let shape = Tensor::zeros((2, 12, 128), DType::F32, &candle_core::Device::Cpu).unwrap();
        let l = loss(&m, ids, mask, &weights_like(&shape, 3));
        let grads = l.backward().unwrap();
        let vars = m.vars().unwrap();
        let cfg = &m.cfg;
        let per_layer = 9
            + if cfg.attention_bias { 3 } else { 0 }
            + if cfg.architecture == rlzero::model::Architecture::Qwen3 {
                2
            } else {
                0
            };
        let expected =
            1 + cfg.num_hidden_layers * per_layer + 1 + usize::from(!cfg.tie_word_embeddings);
        assert_eq!(vars.len(), expected, "{name}: parameter count");
        for ((pname, _), v) in m.named_parameters().iter().zip(&vars) {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
            let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{name}: non-finite gradient in {pname}"
            );
            assert!(
                g.iter().any(|x| *x != 0.0),
                "{name}: all-zero gradient for {pname}"
            );
        }
    }
}

#[test]
fn frozen_decoder_has_no_variables() {
    let m = tiny_decoder("tiny-llama", DType::F32, WeightMode::Frozen);
    assert!(m.vars().is_err());
    let t = tiny_decoder("tiny-llama", DType::F32, WeightMode::Trainable);
    let frozen = t.frozen_copy().unwrap();
    assert!(frozen
        .named_parameters()
        .iter()
        .all(|(_, p)| !p.is_variable()));
    // An update of the trainable weights must not move the frozen copy.
    let v = &t.vars().unwrap()[0];
    v.set(&v.as_tensor().affine(1.0, 0.5).unwrap()).unwrap();
    let (a, b) = (&t.named_parameters()[0].1, &frozen.named_parameters()[0].1);
    assert!(common::max_abs_diff(a, b) > 0.4);
}

#[test]
fn autograd_matches_finite_differences_in_f64() {
    for name in TINY {
        let r = reference(name);
        let m = tiny_decoder(name, DType::F64, WeightMode::Trainable);
        let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
        let rw = weights_like(
            &Tensor::zeros((2, 12, 128), DType::F64, &candle_core::Device::Cpu).unwrap(),
            11,
        );
        let grads = loss(&m, ids, mask, &rw).backward().unwrap();
        let vars = m.vars().unwrap();
        let h = 1e-5;
        let mut worst = 0.0f64;
        // Three coordinates of every parameter tensor.
        for ((pname, _), v) in m.named_parameters().iter().zip(&vars) {
            let g = grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let orig = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let n = orig.len();
            for k in [0, n / 2 + 1, n - 1] {
                let eval = |delta: f64| {
                    let mut w = orig.clone();
                    w[k] += delta;
                    v.set(&Tensor::from_vec(w, v.as_tensor().dims(), v.device()).unwrap())
                        .unwrap();
                    loss(&m, ids, mask, &rw).to_scalar::<f64>().unwrap()
                };
                let fd = (eval(h) - eval(-h)) / (2.0 * h);
                v.set(&Tensor::from_vec(orig.clone(), v.as_tensor().dims(), v.device()).unwrap())
                    .unwrap();
                // Relative to the gradient's scale, so a ~0 coordinate doesn't divide by ~0.
                let scale = g.iter().fold(0.0f64, |a, x| a.max(x.abs())).max(1e-3);
                let rel = (fd - g[k]).abs() / scale;
                worst = worst.max(rel);
                assert!(
                    rel <= 1e-6,
                    "{name}: {pname}[{k}] autograd {} vs finite difference {fd} (rel {rel:e})",
                    g[k]
                );
            }
        }
        eprintln!("{name}: worst relative FD error {worst:e}");
    }
}
