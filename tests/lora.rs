//! LoRA on the tiny checkpoints: adapters start as the identity, merge exactly, get gradients
//! (and the frozen base gets none of the expensive ones), agree with finite differences, validate
//! their config, and cannot be sampled from unmerged.

mod common;

use std::collections::HashSet;

use anyhow::{anyhow, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Shape, Tensor, Var, WithDType, D};
use common::{fixtures, max_abs_diff, reference, tiny_decoder, TINY};
use rlzero::model::frozen_linear::{frozen_matmul, linear_matmul};
use rlzero::model::{
    load, Decoder, LoadOptions, LogitsToKeep, LoraAdapter, LoraConfig, ModelError, ModelSource,
    TargetModule, WeightMode,
};
use rlzero::rollout::{rollout, rollout_on, RolloutBackend, RolloutError, SamplingParams};

/// `Σ_{b,t real} Σ_v log_softmax(logits)[b,t,v] · R[b,t,v]`: touches every logit (as in
/// tests/gradients.rs).
fn loss(m: &Decoder, name: &str, r: &Tensor) -> Result<Tensor> {
    let refs = reference(name);
    let mask = &refs["attention_mask"];
    let logits = m.forward(&refs["input_ids"], mask, LogitsToKeep::All)?; // (B, T, V)
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let w = mask.to_dtype(logits.dtype())?.unsqueeze(2)?; // (B, T, 1)
    Ok(logp.broadcast_mul(&w)?.mul(r)?.sum_all()?)
}

/// Deterministic values in `[-1, 1)` (tests/common).
fn noise(shape: impl Into<Shape>, dtype: DType, seed: u64) -> Result<Tensor> {
    Ok(common::noise(shape, dtype, seed))
}

/// The loss's fixed random weights `R` `(B, T, V)` for the reference batch.
fn loss_weights(dtype: DType) -> Result<Tensor> {
    noise((2, 12, 128), dtype, 3)
}

fn flat<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.flatten_all()?.to_vec1::<T>()?)
}

fn logits(m: &Decoder, name: &str) -> Result<Tensor> {
    let r = reference(name);
    Ok(m.forward(&r["input_ids"], &r["attention_mask"], LogitsToKeep::All)?)
}

fn lora_decoder(name: &str, dtype: DType, cfg: &LoraConfig) -> Result<Decoder> {
    let mut m = tiny_decoder(name, dtype, WeightMode::Frozen);
    m.add_lora(cfg)?;
    Ok(m)
}

/// Sets every `B` to `scale · U(-1, 1)` so that `A` gets gradients and the adapters matter.
fn perturb_b(m: &Decoder, scale: f64) -> Result<()> {
    for (i, (n, v)) in m.named_trainable()?.iter().enumerate() {
        if n.ends_with("lora_B.weight") {
            v.set(&(noise(v.shape(), v.dtype(), 100 + i as u64)? * scale)?)?;
        }
    }
    Ok(())
}

/// How many GradStore entries have the shape of one of `ws` or of its transpose: the mark of a
/// weight-gradient gemm (candle files a constant's gradient under the operand the matmul saw,
/// `Wᵀ`). The store has no public iterator, so this reads its `Debug` form, where a matrix prints
/// as `Tensor[dims a, b; f32]`.
fn matrix_gradients(grads: &GradStore, ws: &[&Tensor]) -> usize {
    let dbg = format!("{grads:?}");
    let mut shapes = HashSet::new();
    for w in ws {
        if let [a, b] = w.dims() {
            shapes.extend([(*a, *b), (*b, *a)]);
        }
    }
    shapes
        .iter()
        .map(|(a, b)| dbg.matches(&format!("Tensor[dims {a}, {b};")).count())
        .sum()
}

fn base_matrices(m: &Decoder) -> Vec<&Tensor> {
    let params = m.named_parameters().iter().map(|(_, t)| t);
    params.filter(|t| t.rank() == 2).collect()
}

fn same_storage(a: &Tensor, b: &Tensor) -> bool {
    std::ptr::eq(&*a.storage_and_layout().0, &*b.storage_and_layout().0)
}

fn grad<T: WithDType>(grads: &GradStore, n: &str, v: &Var) -> Result<Vec<T>> {
    flat(grads.get(v).ok_or_else(|| anyhow!("no gradient for {n}"))?)
}

#[test]
fn frozen_matmul_equals_matmul_without_a_weight_gradient() -> Result<()> {
    let x = Var::from_tensor(&noise((5, 7), DType::F32, 1)?)?; // (N, in)
    let w = noise((4, 7), DType::F32, 2)?; // (out, in)
    let r = noise((5, 4), DType::F32, 3)?; // (N, out)
    let wt = w.t()?; // (in, out)
    let plain = x.matmul(&wt)?;
    let frozen = frozen_matmul(&x, &w)?;
    assert_eq!(max_abs_diff(&plain, &frozen), 0.0, "bitwise equal values");
    let gp = (&plain * &r)?.sum_all()?.backward()?;
    let gf = (&frozen * &r)?.sum_all()?.backward()?;
    let (dxp, dxf) = (grad::<f32>(&gp, "x", &x)?, grad::<f32>(&gf, "x", &x)?);
    assert_eq!(dxp.len(), dxf.len());
    assert!(dxp.iter().zip(&dxf).all(|(a, b)| (a - b).abs() <= 1e-6));
    // candle's matmul computes the constant's gradient too; the frozen op does not, anywhere.
    assert!(gp.get(&wt).is_some() && gp.get(&w).is_none());
    assert_eq!(matrix_gradients(&gp, &[&w]), 1);
    assert_eq!(matrix_gradients(&gf, &[&w]), 0);
    // A weight that tracks gradients is refused rather than silently dropped.
    assert!(frozen_matmul(&x, Var::from_tensor(&w)?.as_tensor()).is_err());
    Ok(())
}

/// The trainable single-node product equals the plain one, values and both gradients, for an
/// `x` of rank 3 (folded into rows) and in f64 (where the gemms agree to rounding).
#[test]
fn linear_matmul_equals_matmul_with_both_gradients() -> Result<()> {
    let x = Var::from_tensor(&noise((2, 3, 7), DType::F64, 4)?)?; // (B, T, in)
    let w = Var::from_tensor(&noise((4, 7), DType::F64, 5)?)?; // (out, in)
    let r = noise((2, 3, 4), DType::F64, 6)?; // (B, T, out)
    let plain = x.reshape((6, 7))?.matmul(&w.t()?)?.reshape((2, 3, 4))?;
    let one = linear_matmul(&x, &w)?;
    assert_eq!(one.dims(), &[2, 3, 4]);
    assert!(max_abs_diff(&plain, &one) <= 1e-6); // (compared in f32)
    let gp = (&plain * &r)?.sum_all()?.backward()?;
    let go = (&one * &r)?.sum_all()?.backward()?;
    for (n, v) in [("x", &x), ("w", &w)] {
        let (a, b) = (grad::<f64>(&gp, n, v)?, grad::<f64>(&go, n, v)?);
        assert_eq!(a.len(), b.len(), "{n}");
        assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() <= 1e-14), "{n}");
    }
    assert_eq!(go.get(&w).map(|g| g.dims().to_vec()), Some(vec![4, 7]));
    // A non-contiguous x (a transposed view) is made contiguous, not misread.
    let xt = noise((7, 6), DType::F64, 7)?.t()?; // (6, 7), strided
    let d = max_abs_diff(&linear_matmul(&xt, &w)?, &xt.contiguous()?.matmul(&w.t()?)?);
    assert!(d <= 1e-6);
    Ok(())
}

/// In f32 on the CPU the weight gradient may come from rlzero's own gemm (`sgemm`, on AVX2 CPUs
/// without AVX-512): it must equal candle's product to f32 rounding, for sizes off every tile and
/// block edge.
#[test]
fn linear_matmul_f32_gradients_match_candles_matmul() -> Result<()> {
    let x = Var::from_tensor(&noise((3, 101, 70), DType::F32, 8)?)?; // (B, T, in)
    let w = Var::from_tensor(&noise((37, 70), DType::F32, 9)?)?; // (out, in)
    let r = noise((3, 101, 37), DType::F32, 10)?; // (B, T, out)
    let plain = x
        .reshape((303, 70))?
        .matmul(&w.t()?)?
        .reshape((3, 101, 37))?;
    let one = linear_matmul(&x, &w)?;
    let gp = (&plain * &r)?.sum_all()?.backward()?;
    let go = (&one * &r)?.sum_all()?.backward()?;
    for (n, v) in [("x", &x), ("w", &w)] {
        let (a, b) = (grad::<f32>(&gp, n, v)?, grad::<f32>(&go, n, v)?);
        assert_eq!(a.len(), b.len(), "{n}");
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-5 * scale,
            "{n}: {worst} against a scale of {scale}"
        );
    }
    Ok(())
}

#[test]
fn zero_b_adapters_leave_logits_unchanged() -> Result<()> {
    for name in TINY {
        let base = tiny_decoder(name, DType::F32, WeightMode::Frozen);
        let m = lora_decoder(name, DType::F32, &LoraConfig::default())?;
        assert!(m.has_adapters() && !base.has_adapters());
        let d = max_abs_diff(&logits(&base, name)?, &logits(&m, name)?);
        assert_eq!(d, 0.0, "{name}");
        let named = m.named_trainable()?;
        assert_eq!(named.len(), m.config().num_hidden_layers * 7 * 2, "{name}");
        let p = "base_model.model.model.layers.0";
        assert_eq!(named[0].0, format!("{p}.self_attn.q_proj.lora_A.weight"));
        assert_eq!(named[1].0, format!("{p}.self_attn.q_proj.lora_B.weight"));
        assert_eq!(named[13].0, format!("{p}.mlp.down_proj.lora_B.weight"));
        assert_eq!(m.vars()?.len(), named.len());
    }
    Ok(())
}

#[test]
fn init_is_peft_like_and_seeded() -> Result<()> {
    let targets = vec![TargetModule::QProj, TargetModule::DownProj];
    let cfg = LoraConfig {
        target_modules: targets,
        ..LoraConfig::default()
    };
    let m = lora_decoder("tiny-llama", DType::F32, &cfg)?;
    assert_eq!(m.named_trainable()?.len(), 2 * 2 * 2);
    let q = |m: &Decoder| {
        m.layers()[0]
            .self_attn
            .q_proj
            .lora
            .clone()
            .ok_or(anyhow!("no q"))
    };
    let q0 = q(&m)?;
    assert_eq!((q0.a.dims(), q0.b.dims()), (&[8, 64][..], &[64, 8][..]));
    let a = flat::<f32>(&q0.a)?;
    let bound = 1.0 / (m.config().hidden_size as f32).sqrt(); // PEFT: kaiming_uniform(a=√5)
    assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| v.abs() > bound / 2.0));
    assert!(flat::<f32>(&q0.b)?.iter().all(|v| *v == 0.0));
    // The same seed gives the same A, whatever the other targets; another seed another A.
    let all = lora_decoder("tiny-llama", DType::F32, &LoraConfig::default())?;
    assert_eq!(max_abs_diff(&q0.a, &q(&all)?.a), 0.0);
    let other = lora_decoder("tiny-llama", DType::F32, &LoraConfig { seed: 1, ..cfg })?;
    assert!(max_abs_diff(&q0.a, &q(&other)?.a) > 0.0);
    Ok(())
}

#[test]
fn merged_matches_the_adapted_forward_and_shares_the_rest() -> Result<()> {
    for name in TINY {
        let m = lora_decoder(name, DType::F32, &LoraConfig::default())?;
        perturb_b(&m, 0.1)?;
        let merged = m.merged()?;
        assert!(!merged.has_adapters() && merged.mode() == WeightMode::Frozen);
        let (a, b) = (logits(&m, name)?, logits(&merged, name)?);
        let base = logits(&tiny_decoder(name, DType::F32, WeightMode::Frozen), name)?;
        assert!(
            max_abs_diff(&a, &base) > 1e-3,
            "{name}: adapters must matter"
        );
        let d = max_abs_diff(&a, &b);
        eprintln!("{name}: max |merged − adapted| logit {d:e}");
        assert!(d <= 1e-5, "{name}: {d}");
        assert_eq!(m.named_parameters().len(), merged.named_parameters().len());
        for ((n, t), (n2, t2)) in m.named_parameters().iter().zip(merged.named_parameters()) {
            assert_eq!(n, n2);
            let adapted = n.contains("_proj.weight") && n.starts_with("model.layers.");
            assert_eq!(same_storage(t, t2), !adapted, "{name}: {n}");
        }
        // The reference policy of an adapted decoder is its base, sharing its storage.
        let reference = m.frozen_copy()?;
        assert!(!reference.has_adapters());
        assert_eq!(max_abs_diff(&logits(&reference, name)?, &base), 0.0);
        assert!(same_storage(reference.embed_tokens(), m.embed_tokens()));
    }
    Ok(())
}

#[test]
fn full_fine_tuning_gives_every_weight_a_gradient() -> Result<()> {
    for name in TINY {
        let m = tiny_decoder(name, DType::F32, WeightMode::Trainable);
        let grads = loss(&m, name, &loss_weights(DType::F32)?)?.backward()?;
        let named = m.named_trainable()?;
        assert_eq!(named.len(), m.named_parameters().len());
        for (n, v) in &named {
            let g = grad::<f32>(&grads, n, v)?;
            let ok = g.iter().all(|x| x.is_finite()) && g.iter().any(|x| *x != 0.0);
            assert!(ok, "{name}: {n}");
        }
        // The detector used for LoRA below does see weight gradients.
        let mats = base_matrices(&m);
        let found = matrix_gradients(&grads, &mats);
        assert!(found >= mats.len(), "{name}: {found} of {}", mats.len());
    }
    Ok(())
}

#[test]
fn lora_gradients_reach_every_adapter_and_no_base_matrix() -> Result<()> {
    for name in TINY {
        let rw = loss_weights(DType::F32)?;
        let m = lora_decoder(name, DType::F32, &LoraConfig::default())?;
        // At init B = 0: B's gradient is non-zero, A's exists but is zero.
        let grads = loss(&m, name, &rw)?.backward()?;
        for (n, v) in m.named_trainable()? {
            let nonzero = grad::<f32>(&grads, &n, &v)?.iter().any(|x| *x != 0.0);
            assert_eq!(nonzero, n.ends_with("lora_B.weight"), "{name}: {n}");
        }
        perturb_b(&m, 0.1)?;
        let grads = loss(&m, name, &rw)?.backward()?;
        for (n, v) in m.named_trainable()? {
            let g = grad::<f32>(&grads, &n, &v)?;
            assert!(g.iter().all(|x| x.is_finite()), "{name}: non-finite in {n}");
            assert!(g.iter().any(|x| *x != 0.0), "{name}: all-zero for {n}");
        }
        // No gradient the shape of a base matrix (projections, embeddings, lm_head), under the
        // weight or its transpose: no weight-gradient gemm ran. 1-D weights (norms, biases) do
        // get entries from candle's cheap elementwise backward; no optimizer sees them.
        assert_eq!(matrix_gradients(&grads, &base_matrices(&m)), 0, "{name}");
        let params = m.named_parameters().iter();
        let vectors = params.filter(|(_, t)| t.rank() == 1 && grads.get(t).is_some());
        eprintln!("{name}: 1-D base weights with entries: {}", vectors.count());
    }
    Ok(())
}

#[test]
fn updating_an_adapter_changes_the_next_forward() -> Result<()> {
    let name = "tiny-qwen2";
    let m = lora_decoder(name, DType::F32, &LoraConfig::default())?;
    let before = logits(&m, name)?;
    let b = &m.vars()?[1]; // layer 0 q_proj lora_B
    b.set(&(noise(b.shape(), b.dtype(), 9)? * 0.1)?)?;
    let after = logits(&m, name)?;
    assert!(max_abs_diff(&before, &after) > 1e-4);
    assert!(max_abs_diff(&after, &logits(&m.merged()?, name)?) <= 1e-5);
    Ok(())
}

#[test]
fn lora_autograd_matches_finite_differences_in_f64() -> Result<()> {
    for name in TINY {
        let cfg = LoraConfig {
            r: 2,
            lora_alpha: 4.0,
            ..LoraConfig::default()
        };
        let m = lora_decoder(name, DType::F64, &cfg)?;
        perturb_b(&m, 0.1)?;
        let rw = noise((2, 12, 128), DType::F64, 11)?;
        let grads = loss(&m, name, &rw)?.backward()?;
        let h = 1e-5;
        let mut worst = 0.0f64;
        // Three coordinates of every A and B.
        for (n, v) in m.named_trainable()? {
            let g = grad::<f64>(&grads, &n, &v)?;
            let orig = flat::<f64>(&v)?;
            let set = |w: Vec<f64>| v.set(&Tensor::from_vec(w, v.dims(), v.device())?);
            // Relative to the gradient's scale, so a ~0 coordinate doesn't divide by ~0.
            let scale = g.iter().fold(0.0f64, |a, x| a.max(x.abs())).max(1e-3);
            for k in [0, orig.len() / 2 + 1, orig.len() - 1] {
                let eval = |delta: f64| -> Result<f64> {
                    let mut w = orig.clone();
                    w[k] += delta;
                    set(w)?;
                    Ok(loss(&m, name, &rw)?.to_scalar::<f64>()?)
                };
                let fd = (eval(h)? - eval(-h)?) / (2.0 * h);
                set(orig.clone())?;
                let rel = (fd - g[k]).abs() / scale;
                worst = worst.max(rel);
                assert!(rel <= 1e-6, "{name}: {n}[{k}] autograd {} vs FD {fd}", g[k]);
            }
        }
        eprintln!("{name}: worst relative FD error over adapters {worst:e}");
    }
    Ok(())
}

fn field_of(r: Result<(), ModelError>) -> &'static str {
    match r {
        Err(ModelError::InvalidLoraConfig { field, .. }) => field,
        other => panic!("expected InvalidLoraConfig, got {other:?}"),
    }
}

#[test]
fn config_defaults_and_validation() -> Result<()> {
    let d = LoraConfig::default();
    let fields = (d.r, d.lora_alpha, d.lora_dropout, d.use_rslora, d.scale());
    assert_eq!(fields, (8, 8.0, 0.0, false, 1.0));
    assert_eq!(d.target_modules, TargetModule::ALL.to_vec());
    let rs = LoraConfig {
        r: 16,
        use_rslora: true,
        ..d.clone()
    };
    assert_eq!(rs.scale(), 2.0);
    let parsed: LoraConfig = serde_json::from_str(r#"{"target_modules": ["gate_proj"]}"#)?;
    assert_eq!(
        (parsed.r, parsed.target_modules),
        (8, vec![TargetModule::GateProj])
    );
    assert!(serde_json::from_str::<LoraConfig>(r#"{"rank": 4}"#).is_err());
    assert!(serde_json::from_str::<LoraConfig>(r#"{"target_modules": ["lm_head"]}"#).is_err());

    let bad = |c: LoraConfig| field_of(c.validate());
    assert_eq!(bad(LoraConfig { r: 0, ..d.clone() }), "r");
    assert_eq!(
        bad(LoraConfig {
            lora_alpha: f64::NAN,
            ..d.clone()
        }),
        "lora_alpha"
    );
    for p in [1.0, -0.1, f64::NAN] {
        assert_eq!(
            bad(LoraConfig {
                lora_dropout: p,
                ..d.clone()
            }),
            "lora_dropout"
        );
    }
    let twice = vec![TargetModule::QProj, TargetModule::QProj];
    for targets in [vec![], twice] {
        let c = LoraConfig {
            target_modules: targets,
            ..d.clone()
        };
        assert_eq!(bad(c), "target_modules");
    }

    let mut m = tiny_decoder("tiny-llama", DType::F32, WeightMode::Frozen);
    assert!(!m.has_adapters() && m.vars().is_err());
    m.add_lora(&d)?;
    assert!(
        matches!(m.add_lora(&d), Err(ModelError::Lora(_))),
        "adapters twice"
    );

    // A trainable base is refused until frozen (in place, sharing storage).
    let mut t = tiny_decoder("tiny-llama", DType::F32, WeightMode::Trainable);
    assert!(matches!(t.add_lora(&d), Err(ModelError::Lora(_))));
    let embed = t.embed_tokens().clone();
    t.freeze()?;
    assert!(t.mode() == WeightMode::Frozen && same_storage(&embed, t.embed_tokens()));
    t.add_lora(&d)?;
    assert_eq!(t.vars()?.len(), 2 * 7 * 2);
    Ok(())
}

/// The fast CPU path refuses unmerged adapters (it reads `Linear::weight` only); `Auto` then
/// takes the tensor path, which runs them: both it and the merged fast path sample from the
/// adapted policy.
#[test]
fn rollouts_run_adapters_merged_or_on_the_tensor_path() -> Result<()> {
    let opts = LoadOptions {
        mode: WeightMode::Frozen,
        ..LoadOptions::default()
    };
    let mut lm = load(&ModelSource::Dir(fixtures().join("tiny-llama")), &opts)?;
    let p = SamplingParams {
        max_new_tokens: 12,
        seed: 5,
        ..Default::default()
    };
    let prompts = vec![vec![5u32, 17, 99, 3], vec![9, 100, 23]];
    let sample = |d: &Decoder| rollout(d, &lm.tokenizer, &prompts, 2, &p, 0);
    let base = sample(&lm.decoder)?;
    lm.decoder.add_lora(&LoraConfig::default())?;
    let err = rollout_on(
        RolloutBackend::FastCpu,
        &lm.decoder,
        &lm.tokenizer,
        &prompts,
        2,
        &p,
        0,
    )
    .unwrap_err();
    assert!(matches!(err, RolloutError::AdaptersNotMerged), "{err}");
    assert!(err.to_string().contains("Decoder::merged()"));
    // B = 0: the merged model samples what the base samples.
    assert_eq!(sample(&lm.decoder.merged()?)?, base);
    // Trained adapters: the merged rollout's log-probs are the adapted trainer's, and the tensor
    // path on the unmerged adapters gives the same tokens.
    perturb_b(&lm.decoder, 0.2)?;
    let out = sample(&lm.decoder.merged()?)?;
    assert_ne!(out, base);
    let unmerged = sample(&lm.decoder)?;
    for (c, u) in out.iter().zip(&unmerged) {
        assert_eq!(c.token_ids, u.token_ids);
        let prompt = &prompts[c.prompt_index];
        let want = common::trainer_logprobs(&lm.decoder, prompt, &c.token_ids, 1.0);
        assert_eq!(c.logprobs.len(), want.len());
        for ((a, u), b) in c.logprobs.iter().zip(&u.logprobs).zip(&want) {
            assert!((a - b).abs() <= 1e-4, "rollout {a} vs adapted trainer {b}");
            assert!(
                (u - b).abs() <= 1e-4,
                "tensor path {u} vs adapted trainer {b}"
            );
        }
    }
    Ok(())
}

/// Input dropout: each forward draws a fresh inverted-dropout mask (outputs differ call to call),
/// the sequence of masks is the same for the same seed (runs reproduce), the mean is preserved,
/// and merged weights carry no dropout.
#[test]
fn lora_dropout_is_fresh_per_forward_reproducible_and_unbiased() -> Result<()> {
    let cfg = LoraConfig {
        r: 4,
        lora_dropout: 0.5,
        ..LoraConfig::default()
    };
    let x = noise((64, 32), DType::F64, 5)?; // (N, in)
    let make = || -> Result<LoraAdapter> {
        let a = LoraAdapter::new(32, 16, &cfg, 3, DType::F64, &Device::Cpu)?;
        a.b.set(&noise((16, 4), DType::F64, 6)?)?;
        Ok(a)
    };
    let (a1, a2) = (make()?, make()?);
    let (y1, y2) = (a1.forward(&x)?, a1.forward(&x)?);
    assert!(max_abs_diff(&y1, &y2) > 1e-3, "a fresh mask per forward");
    let (z1, z2) = (a2.forward(&x)?, a2.forward(&x)?);
    assert_eq!(max_abs_diff(&y1, &z1), 0.0, "same seed, same first mask");
    assert_eq!(max_abs_diff(&y2, &z2), 0.0, "same seed, same second mask");
    // E[drop(x)] = x: the mean over many masks approaches the undropped output.
    let mut plain = make()?;
    plain.dropout = 0.0;
    let want = plain.forward(&x)?;
    let mut sum = want.zeros_like()?;
    let n = 400;
    for _ in 0..n {
        sum = (sum + a1.forward(&x)?)?;
    }
    let mean = (sum / n as f64)?;
    let rel = max_abs_diff(&mean, &want) / max_abs_diff(&want, &want.zeros_like()?);
    assert!(
        rel < 0.15,
        "dropout must be unbiased: relative deviation {rel}"
    );
    Ok(())
}
