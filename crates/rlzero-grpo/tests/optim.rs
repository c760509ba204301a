//! AdamW, gradient clipping and LR schedules against torch / transformers reference values
//! (tests/fixtures/grpo/adamw.json, written by scripts/make_optim_fixture.py).

use anyhow::{anyhow, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rlzero_grpo::optim::{clip_grad_norm, grad_norm, AdamW, AdamWKernel, AdamWParams};
use rlzero_grpo::schedule::{warmup_steps_from_ratio, LrSchedule};
use rlzero_grpo::GrpoError;
use serde_json::Value;

fn fixture() -> Result<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/grpo/adamw.json"
    );
    let text = std::fs::read_to_string(path).with_context(|| path.to_string())?;
    Ok(serde_json::from_str(&text)?)
}

fn f64s(v: &Value) -> Result<Vec<f64>> {
    v.as_array()
        .ok_or_else(|| anyhow!("not an array: {v}"))?
        .iter()
        .map(|x| x.as_f64().ok_or_else(|| anyhow!("not a number: {x}")))
        .collect()
}

fn nested(v: &Value) -> Result<Vec<Vec<f64>>> {
    v.as_array()
        .ok_or_else(|| anyhow!("not an array"))?
        .iter()
        .map(f64s)
        .collect()
}

fn shapes(case: &Value) -> Result<Vec<Vec<usize>>> {
    Ok(nested(&case["shapes"])?
        .into_iter()
        .map(|s| s.into_iter().map(|d| d as usize).collect())
        .collect())
}

fn num(v: &Value) -> Result<f64> {
    v.as_f64().ok_or_else(|| anyhow!("not a number: {v}"))
}

fn dtype_of(case: &Value) -> Result<DType> {
    match case["dtype"].as_str() {
        Some("float32") => Ok(DType::F32),
        Some("float64") => Ok(DType::F64),
        other => Err(anyhow!("bad dtype {other:?}")),
    }
}

fn tensor(data: &[f64], shape: &[usize], dtype: DType) -> Result<Tensor> {
    Ok(Tensor::from_slice(data, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Largest `|a − b| / max(|b|, floor)` over both slices.
fn max_rel(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(floor))
        .fold(0.0, f64::max)
}

/// Distance in units in the last place between two f32 values.
fn ulps(a: f32, b: f32) -> u32 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i32::MIN.wrapping_sub(i)
        } else {
            i
        }
    };
    key(a).abs_diff(key(b))
}

fn adamw_params(case: &Value) -> Result<AdamWParams> {
    Ok(AdamWParams {
        lr: num(&case["base_lr"])?,
        beta1: num(&case["beta1"])?,
        beta2: num(&case["beta2"])?,
        eps: num(&case["eps"])?,
        weight_decay: num(&case["weight_decay"])?,
    })
}

fn grad_store(vars: &[Var], grads: &[Vec<f64>], dtype: DType) -> Result<GradStore> {
    let mut store = GradStore::default();
    assert_eq!(vars.len(), grads.len(), "one gradient per variable");
    for (v, g) in vars.iter().zip(grads) {
        store.insert(v.as_tensor(), tensor(g, v.dims(), dtype)?);
    }
    Ok(store)
}

/// Replays one fixture AdamW case; returns the vars and the optimizer after all steps, and
/// the worst relative error / ulp distance against torch's params after each step.
fn replay(case: &Value, kernel: AdamWKernel) -> Result<(Vec<Var>, AdamW, f64, u32)> {
    let dtype = dtype_of(case)?;
    let shapes = shapes(case)?;
    let init = nested(&case["init"])?;
    assert_eq!(init.len(), shapes.len(), "one shape per initial tensor");
    let vars = init
        .iter()
        .zip(&shapes)
        .map(|(d, s)| Ok(Var::from_tensor(&tensor(d, s, dtype)?)?))
        .collect::<Result<Vec<_>>>()?;
    let mut opt = AdamW::with_kernel(vars.clone(), adamw_params(case)?, kernel)?;
    let sched = &case["schedule"];
    let schedule = LrSchedule::Linear {
        warmup_steps: num(&sched["warmup_steps"])? as u64,
    };
    let total = num(&sched["total_steps"])? as u64;
    let (mut worst_rel, mut worst_ulps) = (0.0_f64, 0_u32);
    let steps = case["steps"]
        .as_array()
        .ok_or_else(|| anyhow!("no steps"))?;
    for (k, step) in steps.iter().enumerate() {
        let lr = schedule.lr_at(opt.params().lr, k as u64, total);
        assert_eq!(lr, num(&step["lr"])?, "{}: lr of step {k}", case["name"]);
        let grads = grad_store(&vars, &nested(&step["grads"])?, dtype)?;
        opt.step(&grads, lr)?;
        let want_params = nested(&step["params"])?;
        assert_eq!(vars.len(), want_params.len(), "parameters of step {k}");
        for (var, want) in vars.iter().zip(want_params) {
            let got = values(var.as_tensor())?;
            worst_rel = worst_rel.max(max_rel(&got, &want, 1e-30));
            if dtype == DType::F32 {
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    worst_ulps = worst_ulps.max(ulps(*g as f32, *w as f32));
                }
            }
        }
    }
    Ok((vars, opt, worst_rel, worst_ulps))
}

#[test]
fn adamw_matches_torch() -> Result<()> {
    let fx = fixture()?;
    for case in fx["adamw"].as_array().ok_or_else(|| anyhow!("no adamw"))? {
        let dtype = dtype_of(case)?;
        let (_, opt, rel, ulp) = replay(case, AdamWKernel::Auto)?;
        println!("{}: max rel err {rel:.3e}, max ulps {ulp}", case["name"]);
        if dtype == DType::F32 {
            assert!(rel <= 1e-6, "{}: rel err {rel}", case["name"]);
            assert!(ulp <= 1, "{}: {ulp} ulps", case["name"]);
        } else {
            assert!(rel <= 1e-12, "{}: rel err {rel}", case["name"]);
        }
        // Moments and step counts; `state()` exposes f32 (f64 moments round to f32).
        let state = opt.state()?;
        assert_eq!(state.step, 5);
        let want = case["final_state"]
            .as_array()
            .ok_or_else(|| anyhow!("no state"))?;
        assert_eq!(state.params.len(), want.len(), "optimizer states");
        for (got, want) in state.params.iter().zip(want) {
            assert_eq!(got.step, num(&want["step"])? as u64);
            let m: Vec<f64> = got.exp_avg.iter().map(|&x| f64::from(x)).collect();
            let v: Vec<f64> = got.exp_avg_sq.iter().map(|&x| f64::from(x)).collect();
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-7 };
            assert!(max_rel(&m, &f64s(&want["exp_avg"])?, 1e-30) <= tol);
            assert!(max_rel(&v, &f64s(&want["exp_avg_sq"])?, 1e-30) <= tol);
        }
    }
    Ok(())
}

#[test]
fn tensor_path_matches_fused_path_bitwise_on_fixture() -> Result<()> {
    let fx = fixture()?;
    for case in fx["adamw"].as_array().ok_or_else(|| anyhow!("no adamw"))? {
        let (fused_vars, fused_opt, ..) = replay(case, AdamWKernel::Auto)?;
        let (tensor_vars, tensor_opt, ..) = replay(case, AdamWKernel::TensorOps)?;
        assert_eq!(fused_vars.len(), tensor_vars.len());
        for (a, b) in fused_vars.iter().zip(&tensor_vars) {
            assert_eq!(
                values(a.as_tensor())?,
                values(b.as_tensor())?,
                "{}",
                case["name"]
            );
        }
        assert_eq!(fused_opt.state()?, tensor_opt.state()?, "{}", case["name"]);
    }
    Ok(())
}

/// Deterministic pseudo-random values in [-scale, scale) (no RNG dependency needed).
fn lcg(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A parameter larger than one rayon chunk, β1 < 0.5 (ATen's other lerp branch), weight
/// decay, an offset (narrowed) gradient and a zero gradient: both paths bit for bit.
#[test]
fn tensor_path_matches_fused_path_bitwise_large() -> Result<()> {
    let n = 200_003;
    let params = AdamWParams {
        lr: 1e-3,
        beta1: 0.3,
        beta2: 0.99,
        eps: 1e-6,
        weight_decay: 0.1,
    };
    let init = lcg(n, 1, 1.0);
    let mk = || -> Result<Vec<Var>> {
        Ok(vec![
            Var::from_slice(&init, (n,), &Device::Cpu)?,
            Var::from_slice(&init[..12], (3, 4), &Device::Cpu)?,
        ])
    };
    let (fa, fb) = (mk()?, mk()?);
    let mut opt_a = AdamW::with_kernel(fa.clone(), params, AdamWKernel::Auto)?;
    let mut opt_b = AdamW::with_kernel(fb.clone(), params, AdamWKernel::TensorOps)?;
    for step in 0..4u64 {
        let big = Tensor::from_slice(&lcg(n + 7, 10 + step, 0.1), (n + 7,), &Device::Cpu)?;
        let g0 = big.narrow(0, 7, n)?; // non-zero start offset in its storage
        let g1 = if step == 2 {
            Tensor::zeros((3, 4), DType::F32, &Device::Cpu)?
        } else {
            Tensor::from_slice(&lcg(12, 20 + step, 5.0), (3, 4), &Device::Cpu)?
        };
        let lr = 1e-3 * (step + 1) as f64;
        for (vars, opt) in [(&fa, &mut opt_a), (&fb, &mut opt_b)] {
            let mut store = GradStore::default();
            store.insert(vars[0].as_tensor(), g0.clone());
            store.insert(vars[1].as_tensor(), g1.clone());
            opt.step(&store, lr)?;
        }
    }
    assert_eq!(fa.len(), fb.len());
    for (a, b) in fa.iter().zip(&fb) {
        let (a, b) = (
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(a.len(), b.len());
        let differ = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "{differ} elements differ between the fused and tensor paths"
        );
    }
    assert_eq!(opt_a.state()?, opt_b.state()?);
    Ok(())
}

#[test]
fn missing_gradient_is_an_error_unless_frozen() -> Result<()> {
    let dev = Device::Cpu;
    let a = Var::from_slice(&[1.0f32, 2.0], (2,), &dev)?;
    let b = Var::from_slice(&[3.0f32; 6], (2, 3), &dev)?;
    let mut opt = AdamW::new(vec![a.clone(), b.clone()], AdamWParams::default())?;
    let mut grads = GradStore::default();
    grads.insert(a.as_tensor(), Tensor::new(&[0.5f32, -0.5], &dev)?);
    match opt.step(&grads, 0.1) {
        Err(GrpoError::MissingGradient { index, shape }) => {
            assert_eq!((index, shape), (1, vec![2, 3]));
        }
        other => panic!("expected MissingGradient, got {other:?}"),
    }
    // Nothing moved.
    assert_eq!(a.to_vec1::<f32>()?, vec![1.0, 2.0]);
    assert_eq!(opt.step_count(), 0);
    assert_eq!(opt.state()?.params[0].step, 0);

    // Frozen: skipped even when a gradient is present, like torch's `grad is None`.
    opt.set_frozen(1, true)?;
    assert!(opt.is_frozen(1));
    opt.step(&grads, 0.1)?;
    grads.insert(b.as_tensor(), Tensor::ones((2, 3), DType::F32, &dev)?);
    opt.step(&grads, 0.1)?;
    assert_eq!(b.flatten_all()?.to_vec1::<f32>()?, vec![3.0; 6]);
    let state = opt.state()?;
    assert_eq!(
        (state.step, state.params[0].step, state.params[1].step),
        (2, 2, 0)
    );
    assert!(state.params[1].exp_avg.iter().all(|&x| x == 0.0));
    assert!(opt.set_frozen(2, true).is_err());

    // Wrong-shape gradient.
    opt.set_frozen(1, false)?;
    grads.insert(b.as_tensor(), Tensor::ones((3, 2), DType::F32, &dev)?);
    assert!(matches!(
        opt.step(&grads, 0.1),
        Err(GrpoError::InvalidInput(_))
    ));
    assert!(matches!(
        opt.step(&grads, f64::NAN),
        Err(GrpoError::Config { .. })
    ));
    Ok(())
}

#[test]
fn state_round_trip_is_exact() -> Result<()> {
    for kernel in [AdamWKernel::Auto, AdamWKernel::TensorOps] {
        let dev = Device::Cpu;
        let init = lcg(1000, 3, 1.0);
        let params = AdamWParams {
            weight_decay: 0.01,
            ..AdamWParams::default()
        };
        let a = Var::from_slice(&init, (10, 100), &dev)?;
        let mut opt_a = AdamW::with_kernel(vec![a.clone()], params, kernel)?;
        let grads_at = |k: u64, v: &Var| -> Result<GradStore> {
            let mut s = GradStore::default();
            s.insert(
                v.as_tensor(),
                Tensor::from_slice(&lcg(1000, 50 + k, 1.0), (10, 100), &dev)?,
            );
            Ok(s)
        };
        for k in 0..3 {
            opt_a.step(&grads_at(k, &a)?, 1e-3)?;
        }
        // A second optimizer restored from a snapshot (through JSON, as a checkpoint would).
        let snapshot = serde_json::to_string(&opt_a.state()?)?;
        let b = Var::from_tensor(&a.as_tensor().copy()?)?;
        let mut opt_b = AdamW::with_kernel(vec![b.clone()], params, kernel)?;
        opt_b.load_state(&serde_json::from_str(&snapshot)?)?;
        assert_eq!(opt_b.state()?, opt_a.state()?);
        for k in 3..5 {
            opt_a.step(&grads_at(k, &a)?, 1e-3)?;
            opt_b.step(&grads_at(k, &b)?, 1e-3)?;
        }
        assert_eq!(
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(opt_a.state()?, opt_b.state()?);

        // Mismatched state is refused before anything changes.
        let mut bad = opt_a.state()?;
        bad.params[0].exp_avg.pop();
        assert!(matches!(
            opt_b.load_state(&bad),
            Err(GrpoError::InvalidInput(_))
        ));
        bad.params.clear();
        assert!(matches!(
            opt_b.load_state(&bad),
            Err(GrpoError::InvalidInput(_))
        ));
        assert_eq!(opt_a.state()?, opt_b.state()?);
    }
    Ok(())
}

#[test]
fn clip_grad_norm_matches_torch() -> Result<()> {
    let fx = fixture()?;
    for case in fx["clip"].as_array().ok_or_else(|| anyhow!("no clip"))? {
        let dtype = dtype_of(case)?;
        let shapes = shapes(case)?;
        let vars = shapes
            .iter()
            .map(|s| Ok(Var::zeros(s.as_slice(), dtype, &Device::Cpu)?))
            .collect::<Result<Vec<_>>>()?;
        let mut grads = grad_store(&vars, &nested(&case["grads"])?, dtype)?;
        let max_norm = num(&case["max_norm"])?;
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
        let want_total = num(&case["total_norm"])?;
        let norm = grad_norm(&grads, &vars)?;
        let total = clip_grad_norm(&mut grads, &vars, max_norm)?;
        assert_eq!(norm, total);
        let rel = (total - want_total).abs() / want_total;
        let mut worst = 0.0_f64;
        let grads_after = nested(&case["grads_after"])?;
        assert_eq!(vars.len(), grads_after.len(), "gradients after clipping");
        for (v, want) in vars.iter().zip(grads_after) {
            let got = values(
                grads
                    .get(v.as_tensor())
                    .ok_or_else(|| anyhow!("grad gone"))?,
            )?;
            worst = worst.max(max_rel(&got, &want, 1e-30));
        }
        println!("clip {dtype:?} max_norm {max_norm}: norm rel err {rel:.3e}, grads {worst:.3e}");
        assert!(rel <= tol, "total norm {total} vs torch {want_total}");
        assert!(worst <= tol, "clipped grads rel err {worst}");
    }
    Ok(())
}

#[test]
fn clip_leaves_non_finite_gradients_alone() -> Result<()> {
    let dev = Device::Cpu;
    let a = Var::zeros(3, DType::F32, &dev)?;
    let b = Var::zeros(2, DType::F32, &dev)?; // no gradient: skipped, as in torch
    let mut grads = GradStore::default();
    grads.insert(a.as_tensor(), Tensor::new(&[3.0f32, f32::NAN, 4.0], &dev)?);
    let total = clip_grad_norm(&mut grads, &[a.clone(), b.clone()], 1.0)?;
    assert!(total.is_nan());
    let g = grads
        .get(a.as_tensor())
        .ok_or_else(|| anyhow!("grad gone"))?
        .to_vec1::<f32>()?;
    assert_eq!((g[0], g[2]), (3.0, 4.0));

    grads.insert(a.as_tensor(), Tensor::new(&[3.0f32, 0.0, 4.0], &dev)?);
    assert_eq!(grad_norm(&grads, &[a.clone(), b.clone()])?, 5.0);
    assert_eq!(clip_grad_norm(&mut grads, &[a.clone(), b], 10.0)?, 5.0);
    let g = grads
        .get(a.as_tensor())
        .ok_or_else(|| anyhow!("grad gone"))?
        .to_vec1::<f32>()?;
    assert_eq!(g, vec![3.0, 0.0, 4.0]);
    assert!(clip_grad_norm(&mut grads, &[a], -1.0).is_err());
    Ok(())
}

#[test]
fn schedules_match_transformers() -> Result<()> {
    let fx = fixture()?;
    let s = &fx["schedules"];
    let base = num(&s["base_lr"])?;
    let warmup = num(&s["warmup_steps"])? as u64;
    let total = num(&s["total_steps"])? as u64;
    for name in ["constant", "constant_with_warmup", "linear", "cosine"] {
        let schedule = LrSchedule::from_name(name, warmup)?;
        let want = f64s(&s["lrs"][name])?;
        let got: Vec<f64> = (0..want.len() as u64)
            .map(|k| schedule.lr_at(base, k, total))
            .collect();
        let rel = max_rel(&got, &want, base);
        println!("{name}: max err {rel:.3e} (relative to base lr)");
        assert!(rel <= 1e-12, "{name}: {got:?} vs {want:?}");
    }
    for case in fx["warmup_ratio"]
        .as_array()
        .ok_or_else(|| anyhow!("no warmup"))?
    {
        let got = warmup_steps_from_ratio(num(&case["ratio"])?, num(&case["total_steps"])? as u64)?;
        assert_eq!(got, num(&case["warmup_steps"])? as u64, "{case}");
    }
    assert!(warmup_steps_from_ratio(1.5, 10).is_err());
    assert!(LrSchedule::from_name("polynomial", 0).is_err());
    Ok(())
}

#[test]
fn schedule_serde_is_snake_case() -> Result<()> {
    let s: LrSchedule =
        serde_json::from_str(r#"{"type": "constant_with_warmup", "warmup_steps": 4}"#)?;
    assert_eq!(s, LrSchedule::ConstantWithWarmup { warmup_steps: 4 });
    let s: LrSchedule = serde_json::from_str(r#"{"type": "cosine"}"#)?;
    assert_eq!(s, LrSchedule::Cosine { warmup_steps: 0 });
    assert_eq!(
        serde_json::to_string(&LrSchedule::Constant)?,
        r#"{"type":"constant"}"#
    );
    assert_eq!(
        LrSchedule::default(),
        LrSchedule::Linear { warmup_steps: 0 }
    );
    Ok(())
}

#[test]
fn params_are_validated() {
    let bad = [
        AdamWParams {
            beta1: 1.0,
            ..AdamWParams::default()
        },
        AdamWParams {
            beta2: -0.1,
            ..AdamWParams::default()
        },
        AdamWParams {
            eps: -1.0,
            ..AdamWParams::default()
        },
        AdamWParams {
            lr: f64::NAN,
            ..AdamWParams::default()
        },
        AdamWParams {
            weight_decay: -0.1,
            ..AdamWParams::default()
        },
    ];
    for p in bad {
        assert!(
            matches!(AdamW::new(vec![], p), Err(GrpoError::Config { .. })),
            "{p:?}"
        );
    }
    let d = AdamWParams::default();
    assert_eq!(
        (d.lr, d.beta1, d.beta2, d.eps, d.weight_decay),
        (1e-6, 0.9, 0.999, 1e-8, 0.0)
    );
}

/// One AdamW step over ~135M f32 parameters (SmolLM2-135M's size), fused path.
/// `cargo test -p rlzero-grpo --test optim -- --ignored --nocapture adamw_step_135m`
/// (the test profile already builds this crate and its dependencies at opt-level 3).
#[test]
#[ignore = "timing; allocates ~2.2 GB"]
fn adamw_step_135m_timing() -> Result<()> {
    let dev = Device::Cpu;
    let (n_vars, per_var) = (30, 4_500_000);
    let vars = (0..n_vars)
        .map(|_| Ok(Var::ones(per_var, DType::F32, &dev)?))
        .collect::<Result<Vec<_>>>()?;
    let mut grads = GradStore::default();
    for v in &vars {
        grads.insert(v.as_tensor(), Tensor::full(0.01f32, per_var, &dev)?);
    }
    let mut opt = AdamW::new(vars.clone(), AdamWParams::default())?;
    opt.step(&grads, 1e-6)?; // first touch of the moment pages
    let t = std::time::Instant::now();
    let steps = 3;
    for _ in 0..steps {
        opt.step(&grads, 1e-6)?;
    }
    let per_step = t.elapsed().as_secs_f64() / steps as f64;
    let t = std::time::Instant::now();
    let norm = grad_norm(&grads, &vars)?;
    let norm_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    clip_grad_norm(&mut grads, &vars, 1.0)?;
    let clip_s = t.elapsed().as_secs_f64();
    println!(
        "{} f32 params, {} rayon threads: AdamW step {per_step:.3} s; grad_norm {norm_s:.3} s \
         (norm {norm:.3}); clip_grad_norm (norm + scale) {clip_s:.3} s",
        n_vars * per_var,
        rayon::current_num_threads()
    );
    Ok(())
}
