//! The trainer's completion log-probs: the selective log-softmax op against candle's composed
//! ops (values and gradients), finite differences in f64, and the packed-batch scorer against
//! scoring each sequence alone.

mod common;

use candle_core::{DType, Device, Tensor, Var, D};
use rlzero::model::logprobs::{entropy, selective_log_softmax};
use rlzero::model::pack::{completion_logprobs, completion_nll, PackedBatch};
use rlzero::model::WeightMode;

fn logits(n: usize, v: usize, dtype: DType) -> Tensor {
    // Deterministic, spread over a wide range so the softmax is far from uniform.
    let data: Vec<f64> = (0..n * v)
        .map(|i| ((i as f64 * 0.7368).sin() * 6.0) + ((i % 7) as f64 - 3.0))
        .collect();
    Tensor::from_vec(data, (n, v), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn composed(z: &Tensor, y: &Tensor, t: f64) -> Tensor {
    let lp = candle_nn::ops::log_softmax(&(z / t).unwrap(), D::Minus1).unwrap();
    lp.gather(&y.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .squeeze(1)
        .unwrap()
}

#[test]
fn values_and_gradients_match_composed_ops() {
    for &t in &[1.0, 0.7] {
        let (n, v) = (13, 37);
        let z = Var::from_tensor(&logits(n, v, DType::F64)).unwrap();
        let y = Tensor::from_vec(
            (0..n as u32)
                .map(|i| (i * 5) % v as u32)
                .collect::<Vec<_>>(),
            n,
            &Device::Cpu,
        )
        .unwrap();
        // A weighted sum, with one zero weight (a masked token), as a loss.
        let w = Tensor::from_vec(
            (0..n)
                .map(|i| if i == 3 { 0.0 } else { (i as f64 - 6.0) * 0.3 })
                .collect::<Vec<_>>(),
            n,
            &Device::Cpu,
        )
        .unwrap();
        let ours = selective_log_softmax(z.as_tensor(), &y, t).unwrap();
        let theirs = composed(z.as_tensor(), &y, t);
        let diff = common::max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-12, "values differ by {diff} at T={t}");
        let g1 = ours.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = theirs
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (g1, g2) = (
            g1.get(z.as_tensor()).unwrap(),
            g2.get(z.as_tensor()).unwrap(),
        );
        let gd = (g1 - g2)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(gd < 1e-12, "gradients differ by {gd} at T={t}");
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let (n, v, t) = (3, 11, 0.8);
    let z0 = logits(n, v, DType::F64).to_vec2::<f64>().unwrap();
    let y = Tensor::new(&[4u32, 0, 10], &Device::Cpu).unwrap();
    let loss = |z: &Tensor| -> f64 {
        let lp = selective_log_softmax(z, &y, t).unwrap();
        let w = Tensor::new(&[1.0f64, -2.0, 0.5], &Device::Cpu).unwrap();
        lp.mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let z = Var::from_tensor(&Tensor::new(z0.clone(), &Device::Cpu).unwrap()).unwrap();
    let lp = selective_log_softmax(z.as_tensor(), &y, t).unwrap();
    let w = Tensor::new(&[1.0f64, -2.0, 0.5], &Device::Cpu).unwrap();
    let grads = lp.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(z.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
    let h = 1e-6;
    for i in 0..n {
        for j in 0..v {
            let mut zp = z0.clone();
            zp[i][j] += h;
            let mut zm = z0.clone();
            zm[i][j] -= h;
            let fd = (loss(&Tensor::new(zp, &Device::Cpu).unwrap())
                - loss(&Tensor::new(zm, &Device::Cpu).unwrap()))
                / (2.0 * h);
            // Central differences at h = 1e-6 carry ~1e-9 of round-off on an O(1) loss.
            let err = (fd - g[i][j]).abs();
            assert!(
                err < 1e-8 + 1e-6 * fd.abs(),
                "d/dz[{i}][{j}]: analytic {} vs fd {fd}",
                g[i][j]
            );
        }
    }
}

#[test]
fn entropy_matches_its_definition() {
    let (n, v, t) = (5, 23, 1.3);
    let z = logits(n, v, DType::F32);
    let ours = entropy(&z, t).unwrap().to_vec1::<f32>().unwrap();
    let p = candle_nn::ops::softmax(&(z.to_dtype(DType::F64).unwrap() / t).unwrap(), D::Minus1)
        .unwrap();
    let want = (p.clone() * p.log().unwrap())
        .unwrap()
        .sum(D::Minus1)
        .unwrap()
        .neg()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert_eq!(ours.len(), want.len());
    for (a, b) in ours.iter().zip(&want) {
        assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
    }
}

/// Half-precision logits (and every non-CPU device) take the path composed of candle ops, in
/// f32: it must give what the fused f32 kernel gives on the same (bf16-rounded) numbers.
#[test]
fn half_precision_logits_take_the_composed_path_in_f32() {
    let (n, v, t) = (9, 41, 0.8);
    let zh = Var::from_tensor(&logits(n, v, DType::BF16)).unwrap();
    let zf = Var::from_tensor(&zh.to_dtype(DType::F32).unwrap()).unwrap();
    let y = Tensor::from_vec(
        (0..n as u32)
            .map(|i| (i * 7) % v as u32)
            .collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )
    .unwrap();
    let ours = selective_log_softmax(zh.as_tensor(), &y, t).unwrap();
    assert_eq!(
        ours.dtype(),
        DType::F32,
        "log-probs of bf16 logits come back in f32"
    );
    let want = selective_log_softmax(zf.as_tensor(), &y, t).unwrap();
    let diff = common::max_abs_diff(&ours, &want);
    assert!(diff < 1e-5, "values differ by {diff}");
    let w = Tensor::from_vec(
        (0..n).map(|i| i as f32 - 4.0).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )
    .unwrap();
    let gh = ours.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let gf = want.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let gh = gh.get(&zh).expect("grad").to_dtype(DType::F32).unwrap();
    let gf = gf.get(&zf).expect("grad");
    // The bf16 gradient is rounded to 8 bits of mantissa: |g| ≤ 4/τ, so ~2e-2 absolute.
    let diff = common::max_abs_diff(&gh, gf);
    assert!(diff < 2.5e-2, "gradients differ by {diff}");
    let he = entropy(zh.as_tensor(), t).unwrap();
    let fe = entropy(zf.as_tensor(), t).unwrap();
    assert_eq!(he.dtype(), DType::F32);
    let diff = common::max_abs_diff(&he, &fe);
    assert!(diff < 1e-5, "entropies differ by {diff}");
}

#[test]
fn bad_inputs_are_typed_errors() {
    let z = logits(2, 5, DType::F32);
    let y = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap(); // 5 is outside the vocabulary
    assert!(selective_log_softmax(&z, &y, 1.0).is_err());
    let y = Tensor::new(&[1u32], &Device::Cpu).unwrap();
    assert!(selective_log_softmax(&z, &y, 1.0).is_err());
    let y = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    assert!(selective_log_softmax(&z, &y, 0.0).is_err());
    assert!(selective_log_softmax(&z, &y, f64::NAN).is_err());
    assert!(PackedBatch::new(&[&[1u32][..]], &[], 0, &Device::Cpu).is_err());
    assert!(PackedBatch::new(&[&[][..]], &[&[1u32][..]], 0, &Device::Cpu).is_err());
    assert!(PackedBatch::new(&[&[1u32][..]], &[&[][..]], 0, &Device::Cpu).is_err());
}

/// Scoring a ragged packed batch gives each row's log-probs as if it were scored alone.
#[test]
fn packed_batch_scores_equal_per_sequence_scores() {
    for name in common::TINY {
        let d = common::tiny_decoder(name, DType::F32, WeightMode::Frozen);
        let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 3], vec![9], vec![2, 4, 8, 16, 31]];
        let completions: Vec<Vec<u32>> = vec![vec![7, 7, 1, 30], vec![11, 12], vec![3]];
        let pr: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        let co: Vec<&[u32]> = completions.iter().map(|c| c.as_slice()).collect();
        // The pad id is a real token on purpose: the masks alone say what is padding.
        let batch = PackedBatch::new(&pr, &co, 7, &Device::Cpu).unwrap();
        let s = completion_logprobs(&d, &batch, 0.9, true).unwrap();
        let lp = s.logprobs.to_vec2::<f32>().unwrap();
        let ent = s.entropy.unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(prompts.len(), completions.len());
        for (i, (p, c)) in prompts.iter().zip(&completions).enumerate() {
            let want = common::trainer_logprobs(&d, p, c, 0.9);
            assert_eq!(want.len(), c.len());
            for (j, w) in want.iter().enumerate() {
                assert!(
                    (lp[i][j] - w).abs() < 1e-5,
                    "{name} row {i} token {j}: {} vs {w}",
                    lp[i][j]
                );
                assert!(ent[i][j].is_finite() && ent[i][j] >= 0.0);
            }
        }
    }
}

/// The SFT loss is the mean negative log-likelihood over the real completion tokens only.
#[test]
fn completion_nll_averages_the_real_tokens() {
    let d = common::tiny_decoder(common::TINY[0], DType::F32, WeightMode::Frozen);
    let pr: [&[u32]; 2] = [&[5, 17, 3], &[9]];
    let co: [&[u32]; 2] = [&[7, 7, 1], &[11]];
    let batch = PackedBatch::new(&pr, &co, 7, &Device::Cpu).unwrap();
    let lp = completion_logprobs(&d, &batch, 1.0, false)
        .unwrap()
        .logprobs
        .to_vec2::<f32>()
        .unwrap();
    let want = -(lp[0][0] + lp[0][1] + lp[0][2] + lp[1][0]) / 4.0;
    let got = completion_nll(&d, &batch)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}
