//! rlzero's GRPO math against numbers TRL 1.16's own `GRPOTrainer` code produced
//! (`scripts/make_trl_grpo_fixtures.py` → `tests/fixtures/grpo/*.json`): the loss and its
//! gradient w.r.t. the per-token log-probs for every loss type, and the advantages.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use rlzero_grpo::advantages::{compute_advantages, Aggregation, ScaleRewards};
use rlzero_grpo::loss::{grpo_loss, Accumulation, IsLevel, LossConfig, LossInputs, LossType};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/grpo")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN) // JSON null = NaN
}

fn mat(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("matrix")
        .iter()
        .map(|r| r.as_array().expect("row").iter().map(f).collect())
        .collect()
}

fn vec1(v: &Value) -> Vec<f64> {
    v.as_array().expect("vector").iter().map(f).collect()
}

fn tensor(m: &[Vec<f64>], dtype: DType) -> Tensor {
    Tensor::new(m.to_vec(), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn parse_enum<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).expect("enum value")
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * (1.0 + b.abs())
}

fn run_loss_cases(dtype: DType, tol: f64) {
    let fx = fixture("trl_loss.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(
        cases.len() >= 16,
        "fixture holds only {} cases",
        cases.len()
    );
    let mut seen = std::collections::BTreeSet::new();
    for c in cases {
        let name = c["name"].as_str().unwrap_or("?");
        let cfg = LossConfig {
            loss_type: parse_enum::<LossType>(&c["loss_type"]),
            importance_sampling_level: parse_enum::<IsLevel>(&c["importance_sampling_level"]),
            beta: f(&c["beta"]),
            epsilon: f(&c["epsilon_low"]),
            epsilon_high: Some(f(&c["epsilon_high"])),
            delta: c["delta"].as_f64(),
            use_bias_correction_kl: c["use_bias_correction_kl"].as_bool().unwrap_or(true),
            sapo_temperature_pos: f(&c["sapo_temperature_pos"]),
            sapo_temperature_neg: f(&c["sapo_temperature_neg"]),
            vespo_k_pos: f(&c["vespo_k_pos"]),
            vespo_lambda_pos: f(&c["vespo_lambda_pos"]),
            vespo_k_neg: f(&c["vespo_k_neg"]),
            vespo_lambda_neg: f(&c["vespo_lambda_neg"]),
        };
        seen.insert(format!("{:?}", cfg.loss_type));
        let acc = Accumulation {
            gradient_accumulation_steps: c["gradient_accumulation_steps"].as_u64().unwrap_or(1)
                as usize,
            steps_per_generation: c["steps_per_generation"].as_u64().unwrap_or(1) as usize,
            max_completion_length: c["max_completion_length"].as_u64().unwrap_or(1) as usize,
        };
        let lp = Var::from_tensor(&tensor(&mat(&c["per_token_logps"]), dtype)).unwrap();
        let old = (!c["old_per_token_logps"].is_null())
            .then(|| tensor(&mat(&c["old_per_token_logps"]), dtype));
        let rf = (!c["ref_per_token_logps"].is_null())
            .then(|| tensor(&mat(&c["ref_per_token_logps"]), dtype));
        let adv = Tensor::new(vec1(&c["advantages"]), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let mask = tensor(&mat(&c["completion_mask"]), dtype);
        let inputs = LossInputs {
            logprobs: lp.as_tensor(),
            old_logprobs: old.as_ref(),
            ref_logprobs: rf.as_ref(),
            advantages: &adv,
            mask: &mask,
            num_items_in_batch: f(&c["num_items_in_batch"]),
            micro_batch: None,
            sampler_weights: None,
        };
        let out = grpo_loss(&cfg, &acc, &inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
        let loss = out
            .loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want = f(&c["loss"]);
        assert!(
            close(loss, want, tol),
            "{name} ({dtype:?}): loss {loss} vs TRL {want}"
        );

        check_rows(name, &out, &cfg, c, tol);

        let grads = out.loss.backward().unwrap();
        let g = grads
            .get(lp.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient reached the log-probs"))
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let want_g = mat(&c["grad_per_token_logps"]);
        assert_eq!(g.len(), want_g.len(), "{name}: gradient rows");
        for (i, (gr, wr)) in g.iter().zip(&want_g).enumerate() {
            assert_eq!(gr.len(), wr.len(), "{name}: gradient row {i} length");
            for (j, (a, b)) in gr.iter().zip(wr).enumerate() {
                assert!(
                    close(*a, *b, tol),
                    "{name} ({dtype:?}): dL/dlogp[{i}][{j}] = {a} vs TRL {b}"
                );
            }
        }

        let m = &c["metrics"];
        let checks = [
            ("kl", out.kl),
            ("clip_ratio/low_mean", out.clip_ratio_low),
            ("clip_ratio/high_mean", out.clip_ratio_high),
            ("clip_ratio/region_mean", out.clip_ratio_region),
            ("cispo_clip_ratio", out.cispo_clip_ratio),
            ("vespo/phi_seq_mean", out.vespo_phi_mean),
        ];
        for (key, ours) in checks {
            match (m.get(key), ours) {
                (Some(v), Some(o)) if !v.is_null() => {
                    assert!(
                        close(o, f(v), tol),
                        "{name}: metric {key} {o} vs TRL {}",
                        f(v)
                    )
                }
                (Some(v), None) if !v.is_null() => {
                    panic!("{name}: TRL logged {key}, rlzero did not")
                }
                _ => {}
            }
        }
    }
    assert_eq!(seen.len(), 8, "every loss type is covered: {seen:?}");
}

/// The per-row report `--explain` prints must add up to what TRL computed: the row terms sum
/// to the loss, the token-weighted row means give the logged KL and clip ratio, and
/// on-policy DAPO rows are `−A_i · n_i / D` (the hand check README walks through).
fn check_rows(
    name: &str,
    out: &rlzero_grpo::loss::LossOutput,
    cfg: &LossConfig,
    c: &Value,
    tol: f64,
) {
    let mask = mat(&c["completion_mask"]);
    let adv = vec1(&c["advantages"]);
    assert_eq!(
        out.rows.len(),
        mask.len(),
        "{name}: one row report per sequence"
    );
    let loss = f(&c["loss"]);
    let sum: f64 = out.rows.iter().map(|r| r.loss).sum();
    assert!(
        close(sum, loss, tol),
        "{name}: Σ row terms {sum} vs TRL loss {loss}"
    );
    let tokens: f64 = out.rows.iter().map(|r| r.tokens).sum();
    for (i, r) in out.rows.iter().enumerate() {
        let n: f64 = mask[i].iter().sum();
        assert_eq!(r.tokens, n, "{name}: row {i} tokens");
        assert!(r.denominator > 0.0, "{name}: row {i} denominator");
        assert_eq!(
            r.kl.is_some(),
            cfg.beta > 0.0,
            "{name}: row {i} KL presence"
        );
        if n == 0.0 {
            assert!(
                r.loss == 0.0 && r.kl_loss == 0.0,
                "{name}: empty row {i}: {r:?}"
            );
            continue;
        }
        if cfg.beta == 0.0 {
            assert_eq!(r.kl_loss, 0.0, "{name}: row {i} KL term");
        }
        let on_policy = c["old_per_token_logps"].is_null();
        if on_policy && n > 0.0 {
            assert!(
                close(r.mean_ratio, 1.0, tol),
                "{name}: row {i} ratio {}",
                r.mean_ratio
            );
        }
        if on_policy && cfg.beta == 0.0 && cfg.loss_type == LossType::Dapo {
            let hand = -adv[i] * n / r.denominator;
            assert!(
                close(r.loss, hand, tol),
                "{name}: row {i} term {} vs −A·n/D {hand}",
                r.loss
            );
        }
    }
    // Token-weighted means of the row figures are the batch metrics (token-level weights only:
    // sequence-level metrics average over sequences).
    if cfg.importance_sampling_level == IsLevel::Token && tokens > 0.0 {
        let weighted = |v: &dyn Fn(&rlzero_grpo::loss::RowStats) -> Option<f64>| -> Option<f64> {
            let mut s = 0.0;
            for r in out.rows.iter().filter(|r| r.tokens > 0.0) {
                s += v(r)? * r.tokens;
            }
            Some(s / tokens)
        };
        for (what, ours, batch) in [
            ("kl", weighted(&|r| r.kl), out.kl),
            (
                "clip region",
                weighted(&|r| r.clipped_fraction),
                out.clip_ratio_region.or(out.cispo_clip_ratio),
            ),
        ] {
            if let (Some(a), Some(b)) = (ours, batch) {
                assert!(
                    close(a, b, tol),
                    "{name}: token-weighted row {what} {a} vs batch {b}"
                );
            }
        }
    }
}

#[test]
fn loss_and_gradient_match_trl_in_f64() {
    run_loss_cases(DType::F64, 1e-6);
}

#[test]
fn loss_and_gradient_match_trl_in_f32() {
    run_loss_cases(DType::F32, 1e-5);
}

#[test]
fn advantages_match_trl() {
    let fx = fixture("trl_advantages.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 6);
    for c in cases {
        let name = c["name"].as_str().unwrap_or("?");
        let rewards = mat(&c["rewards_per_func"]);
        let weights = vec1(&c["reward_weights"]);
        let a = compute_advantages(
            &rewards,
            &weights,
            c["num_generations"].as_u64().unwrap_or(0) as usize,
            parse_enum::<ScaleRewards>(&c["scale_rewards"]),
            parse_enum::<Aggregation>(&c["multi_objective_aggregation"]),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = vec1(&c["advantages"]);
        assert_eq!(a.advantages.len(), want.len(), "{name}");
        for (i, (x, y)) in a.advantages.iter().zip(&want).enumerate() {
            assert!(close(*x, *y, 1e-9), "{name}: advantage {i} {x} vs TRL {y}");
        }
        let m = &c["metrics"];
        assert!(
            close(a.reward_mean, f(&m["reward"]), 1e-9),
            "{name}: reward"
        );
        assert!(
            close(a.reward_std, f(&m["reward_std"]), 1e-9),
            "{name}: reward_std"
        );
        // TRL takes this mean of booleans in float32 (1/3 → 0.3333333432674408).
        assert!(
            close(a.frac_zero_std, f(&m["frac_reward_zero_std"]), 1e-7),
            "{name}: frac_reward_zero_std"
        );
        let names: Vec<String> = c["reward_names"]
            .as_array()
            .expect("names")
            .iter()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect();
        for (k, n) in names.iter().enumerate() {
            let col: Vec<f64> = rewards.iter().map(|r| r[k]).collect();
            let mean = rlzero_grpo::advantages::nanmean(&col);
            let std = rlzero_grpo::advantages::nanstd(&col);
            assert!(
                close(mean, f(&m[&format!("rewards/{n}/mean")]), 1e-9),
                "{name}: rewards/{n}/mean"
            );
            assert!(
                close(std, f(&m[&format!("rewards/{n}/std")]), 1e-9),
                "{name}: rewards/{n}/std"
            );
        }
    }
}
