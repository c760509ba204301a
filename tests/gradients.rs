//! Gradients through the decoder: every trainable weight gets a finite, non-zero gradient
//! (candle's optimizers silently skip weights that get none), and autograd agrees with central
//! finite differences in f64 to 1e-6 relative, coordinate by coordinate (12 per tensor).

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
        let cfg = m.config();
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
        assert_eq!(
            m.named_parameters().len(),
            vars.len(),
            "{name}: names per variable"
        );
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
fn to_dtype_always_copies_even_to_the_same_dtype() {
    // candle's `Tensor::to_dtype` to the tensor's own dtype returns the same storage; the
    // decoder's `to_dtype` promises a copy, so training the copy must leave the source alone.
    let t = tiny_decoder("tiny-llama", DType::F32, WeightMode::Trainable);
    let before = t.named_parameters()[0].1.copy().unwrap();
    for mode in [WeightMode::Trainable, WeightMode::Frozen] {
        let c = t.to_dtype(DType::F32, mode).unwrap();
        assert_eq!(c.named_parameters().len(), t.named_parameters().len());
        for ((n, a), (n2, b)) in t.named_parameters().iter().zip(c.named_parameters()) {
            assert_eq!(n, n2);
            assert_eq!(common::max_abs_diff(a, b), 0.0, "{n}: same values");
            let (sa, _) = a.storage_and_layout();
            let (sb, _) = b.storage_and_layout();
            let (candle_core::Storage::Cpu(ca), candle_core::Storage::Cpu(cb)) = (&*sa, &*sb)
            else {
                panic!("CPU tensors expected");
            };
            let (pa, pb) = (
                ca.as_slice::<f32>().unwrap().as_ptr(),
                cb.as_slice::<f32>().unwrap().as_ptr(),
            );
            assert_ne!(pa, pb, "{n}: {mode:?} copy shares storage with its source");
        }
        if mode == WeightMode::Trainable {
            let v = &c.vars().unwrap()[0];
            v.set(&v.as_tensor().affine(1.0, 0.5).unwrap()).unwrap();
            assert_eq!(
                common::max_abs_diff(&t.named_parameters()[0].1, &before),
                0.0
            );
        }
    }
}

/// Coordinates per parameter tensor checked against finite differences.
const COORDS_PER_TENSOR: usize = 12;

/// `count` distinct coordinates of a tensor of `n` elements: the first, the last, and the rest
/// spread pseudo-randomly (seeded, so a failure names a reproducible index).
fn coordinates(n: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut picked = vec![0, n - 1];
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while picked.len() < count.min(n) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let k = (state % n as u64) as usize;
        if !picked.contains(&k) {
            picked.push(k);
        }
    }
    picked.dedup();
    picked
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
        let h = 1e-3;
        let mut worst = 0.0f64;
        let mut checked = 0usize;
        assert_eq!(
            m.named_parameters().len(),
            vars.len(),
            "{name}: names per variable"
        );
        for (ti, ((pname, _), v)) in m.named_parameters().iter().zip(&vars).enumerate() {
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
            for k in coordinates(n, COORDS_PER_TENSOR, ti as u64) {
                let eval = |delta: f64| {
                    let mut w = orig.clone();
                    w[k] += delta;
                    v.set(&Tensor::from_vec(w, v.as_tensor().dims(), v.device()).unwrap())
                        .unwrap();
                    loss(&m, ids, mask, &rw).to_scalar::<f64>().unwrap()
                };
                // Fourth-order central stencil: truncation O(h⁴), so the per-coordinate bound
                // below is not eaten by the third derivative the way (f(h) − f(−h)) / 2h is.
                let fd =
                    (8.0 * (eval(h) - eval(-h)) - (eval(2.0 * h) - eval(-2.0 * h))) / (12.0 * h);
                v.set(&Tensor::from_vec(orig.clone(), v.as_tensor().dims(), v.device()).unwrap())
                    .unwrap();
                // Per coordinate: relative to this coordinate's own gradient, with an absolute
                // floor far below any real gradient here (|g| ≳ 1e-4) but above the central
                // stencil's O(h⁴) truncation and O(ε/h) rounding (the loss is ≈ 60, so ε·60/h ≈ 1e-11 at h = 1e-3; measured noise ≈ 1e-10).
                let err = (fd - g[k]).abs();
                let rel = err / g[k].abs().max(1e-12);
                assert!(
                    err <= 1e-6 * g[k].abs() + 1e-9,
                    "{name}: {pname}[{k}] autograd {} vs finite difference {fd} (rel {rel:e})",
                    g[k]
                );
                if g[k].abs() > 1e-6 {
                    worst = worst.max(rel);
                }
                checked += 1;
            }
        }
        eprintln!("{name}: {checked} coordinates checked");
        eprintln!("{name}: worst relative FD error {worst:e}");
    }
}

/// `max |t|` of an f64 tensor.
fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Activation recomputation (`rlzero::model::recompute`) gives the gradients a plain backward
/// gives, for full fine-tuning (tied and untied embeddings) and for LoRA with dropout, whose
/// masks it must replay.
#[test]
fn recomputation_gives_the_same_gradients() {
    use rlzero::model::lora::LoraConfig;
    use rlzero::model::pack::{completion_logprobs, PackedBatch};
    use rlzero::model::recompute::Recomputed;
    let dev = candle_core::Device::Cpu;
    let prompts: [&[u32]; 3] = [&[5, 9, 40, 41], &[77, 78], &[100, 5, 64]];
    let completions: [&[u32]; 3] = [&[12, 13, 14], &[20, 21, 22, 23, 24], &[30]];
    let batch = PackedBatch::new(&prompts, &completions, 0, &dev).unwrap();
    for name in TINY {
        for lora in [false, true] {
            let mut m = tiny_decoder(name, DType::F64, WeightMode::Trainable);
            if lora {
                m.freeze().unwrap();
                m.add_lora(&LoraConfig {
                    lora_dropout: 0.2,
                    ..LoraConfig::default()
                })
                .unwrap();
                // B starts at 0; give it values so that A's gradients are not all zero.
                for (i, (n, v)) in m.named_trainable().unwrap().iter().enumerate() {
                    if n.ends_with("lora_B.weight") {
                        let b = (weights_like(v.as_tensor(), 50 + i as u64) * 0.1).unwrap();
                        v.set(&b).unwrap();
                    }
                }
            }
            let case = format!("{name}, lora {lora}");
            let w = weights_like(&batch.completion_mask.to_dtype(DType::F64).unwrap(), 11);
            let w = (w * batch.completion_mask.to_dtype(DType::F64).unwrap()).unwrap(); // (B, C)
            let calls = m.lora_dropout_calls();

            let plain = completion_logprobs(&m, &batch, 0.7, false)
                .unwrap()
                .logprobs;
            let want = (plain.clone() * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let after = m.lora_dropout_calls();

            m.set_lora_dropout_calls(&calls).unwrap();
            let r = Recomputed::forward(&m, &batch, 0.7, false).unwrap();
            assert_eq!(
                r.scores.logprobs.to_vec2::<f64>().unwrap(),
                plain.to_vec2::<f64>().unwrap(),
                "{case}: the recomputing forward scores exactly as the plain one"
            );
            let got = r.backward(&m, &w).unwrap();
            assert_eq!(
                m.lora_dropout_calls(),
                after,
                "{case}: dropout streams end where they would"
            );

            let vars = m.vars().unwrap();
            assert!(!vars.is_empty());
            for ((pname, _), v) in m.named_trainable().unwrap().iter().zip(&vars) {
                let a = want
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{case}: {pname}"));
                let b = got
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{case}: no recomputed gradient for {pname}"));
                let (scale, diff) = (max_abs(a), max_abs(&(a - b).unwrap()));
                assert!(
                    diff <= 1e-12 * (1.0 + scale),
                    "{case}: {pname} differs by {diff} (scale {scale})"
                );
            }
        }
    }
}

/// Shared prompts (`rlzero::model::prefix`) score a group's prompt once; the completions'
/// log-probs and every weight's gradient must equal the plain layout's, which runs the prompt
/// once per row: with a plain backward and with recomputation, for ragged prompts (left
/// padding) and completions (right padding), a group split by `rows`, and a one-token
/// completion window.
#[test]
fn shared_prompts_give_the_plain_layout_scores_and_gradients() {
    use rlzero::model::pack::{completion_logprobs, PackedBatch};
    use rlzero::model::recompute::Recomputed;
    let dev = candle_core::Device::Cpu;
    let (a, b, c): (&[u32], &[u32], &[u32]) = (&[5, 9, 40, 41], &[77, 78], &[100, 5, 64]);
    let prompts = [a, a, a, b, b, c];
    let completions: [&[u32]; 6] = [
        &[12, 13, 14],
        &[20, 21, 22, 23, 24],
        &[30],
        &[31, 32],
        &[33, 34, 35, 36],
        &[37, 38, 39],
    ];
    let plain = PackedBatch::new(&prompts, &completions, 0, &dev).unwrap();
    let shared = PackedBatch::with_shared_prompts(&prompts, &completions, 0, &dev).unwrap();
    assert_eq!(shared.shared.as_ref().unwrap().prompt_lens, vec![4, 2, 3]);
    let one: [&[u32]; 2] = [&[7], &[8]];
    let cases = [
        (plain.clone(), shared.clone()),
        // Rows 1..5 split the first and last groups, as `sequences_per_pass` does.
        (plain.rows(1, 4).unwrap(), shared.rows(1, 4).unwrap()),
        (
            PackedBatch::new(&[a, a], &one, 0, &dev).unwrap(),
            PackedBatch::with_shared_prompts(&[a, a], &one, 0, &dev).unwrap(),
        ),
    ];
    for name in TINY {
        let m = tiny_decoder(name, DType::F64, WeightMode::Trainable);
        let vars = m.vars().unwrap();
        for (ci, (p, s)) in cases.iter().enumerate() {
            let case = format!("{name}, case {ci}");
            let mask = p.completion_mask.to_dtype(DType::F64).unwrap();
            let w = (weights_like(&mask, 21) * &mask).unwrap(); // (B, C)
            let lp_p = completion_logprobs(&m, p, 0.7, false).unwrap().logprobs;
            let lp_s = completion_logprobs(&m, s, 0.7, false).unwrap().logprobs;
            let d = max_abs(&((&lp_p - &lp_s).unwrap() * &mask).unwrap());
            assert!(d <= 1e-12, "{case}: log-probs differ by {d}");
            let want = (lp_p * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let got = (lp_s * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let recomputed = Recomputed::forward(&m, s, 0.7, false)
                .unwrap()
                .backward(&m, &w)
                .unwrap();
            for ((pname, _), v) in m.named_trainable().unwrap().iter().zip(&vars) {
                let a = want.get(v.as_tensor()).unwrap();
                for (how, store) in [("plain", &got), ("recomputed", &recomputed)] {
                    let b = store
                        .get(v.as_tensor())
                        .unwrap_or_else(|| panic!("{case}, {how}: no gradient for {pname}"));
                    let (scale, diff) = (max_abs(a), max_abs(&(a - b).unwrap()));
                    assert!(
                        diff <= 1e-11 * (1.0 + scale),
                        "{case}, {how}: {pname} differs by {diff} (scale {scale})"
                    );
                }
            }
        }
    }
}
