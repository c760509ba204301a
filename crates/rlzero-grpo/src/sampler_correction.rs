//! Truncated importance sampling (TIS) for a sampler that is not exactly the trained policy.
//!
//! A rollout with bf16 weights ([`crate::config::RolloutWeights::Bf16`]) samples from `μ`, a
//! slightly different policy than the f32 policy `π_old` the loss's ratio is taken against. Yao
//! et al. 2025 ("Your Efficient RL Framework Secretly Brings You Off-Policy RL Training") weight
//! each token's loss by the ratio of the two, capped so that rare tokens cannot blow it up:
//!
//! `ρ_it = exp(ℓ°_it − ℓ^μ_it)` per token, or `ρ_i = exp(Σ_t m_it (ℓ°_it − ℓ^μ_it))` per sequence;
//! truncated `ρ ← min(ρ, C)` or masked `ρ ← 0 where ρ > C`.
//!
//! The loss multiplies each token's policy term by `ρ` (detached) before the KL term is added,
//! as TRL's `vllm_importance_sampling_correction` does (`_compute_loss`; modes and cap as its
//! `vllm_importance_sampling_mode` / `_cap`). `ℓ°` is the trainer's own log-prob of the token:
//! the recomputed old log-probs when `num_iterations > 1`, else the current ones, detached (the
//! same numbers, since the first update starts from the policy that was rolled out).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rlzero_grpo::sampler_correction::{sampler_weights, IsMode, SamplerCorrection};
//! let dev = Device::Cpu;
//! let trainer = Tensor::new(&[[-1.0f64, -2.0]], &dev)?; // (B=1, T=2)
//! let sampler = Tensor::new(&[[-1.5f64, -1.0]], &dev)?;
//! let mask = Tensor::new(&[[1.0f64, 1.0]], &dev)?;
//! let c = SamplerCorrection { mode: IsMode::TokenTruncate, cap: 1.5 };
//! let (w, stats) = sampler_weights(&c, &trainer, &sampler, &mask)?;
//! let w = w.to_vec2::<f64>()?;
//! assert!((w[0][0] - 1.5).abs() < 1e-12); // exp(0.5) = 1.65, capped at 1.5
//! assert!((w[0][1] - (-1f64).exp()).abs() < 1e-12);
//! assert!((stats.logp_diff_max - 1.0).abs() < 1e-12);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{GrpoError, Result};

/// How the sampler/trainer ratio is formed and bounded (TRL's `vllm_importance_sampling_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsMode {
    /// One ratio per token, clipped from above at the cap (the TIS paper's method). Default.
    #[default]
    TokenTruncate,
    /// One ratio per token; tokens above the cap get weight 0.
    TokenMask,
    /// One ratio per sequence (product over its tokens), clipped at the cap.
    SequenceTruncate,
    /// One ratio per sequence; sequences above the cap get weight 0.
    SequenceMask,
}

/// The correction's settings ([`crate::GrpoConfig::sampler_correction`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerCorrection {
    /// Per token or per sequence, truncated or masked. Default `token_truncate`.
    pub mode: IsMode,
    /// The cap `C`. Default 2.0, the TIS paper's and TRL's first default (newer TRL releases use
    /// 3.0 with `sequence_mask`).
    pub cap: f64,
}

impl Default for SamplerCorrection {
    fn default() -> Self {
        Self {
            mode: IsMode::TokenTruncate,
            cap: 2.0,
        }
    }
}

impl SamplerCorrection {
    /// Errors unless the cap is finite and > 0.
    pub fn validate(&self) -> Result<()> {
        if !(self.cap.is_finite() && self.cap > 0.0) {
            return Err(GrpoError::config(
                "sampler_correction.cap",
                format!("must be finite and > 0, got {}", self.cap),
            ));
        }
        Ok(())
    }
}

/// What TRL logs about the mismatch (`sampling/sampling_logp_difference/*`,
/// `sampling/importance_sampling_ratio/*`), over the unmasked tokens (sequences in the
/// sequence modes).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SamplerStats {
    /// Mean `|ℓ° − ℓ^μ|` over tokens.
    pub logp_diff_mean: f64,
    /// Largest `|ℓ° − ℓ^μ|`.
    pub logp_diff_max: f64,
    /// Smallest weight `ρ` after the cap.
    pub ratio_min: f64,
    /// Mean weight.
    pub ratio_mean: f64,
    /// Largest weight.
    pub ratio_max: f64,
    /// Tokens the log-prob differences are taken over.
    pub tokens: usize,
    /// Weights the ratio statistics are taken over (tokens, or sequences with a token).
    pub weights: usize,
}

impl SamplerStats {
    /// The statistics of `self`'s tokens and `other`'s together (means weighted by their counts;
    /// a side with no tokens changes nothing).
    pub fn merge(self, other: Self) -> Self {
        let mean = |a: f64, na: usize, b: f64, nb: usize| {
            if na + nb == 0 {
                0.0
            } else {
                (a * na as f64 + b * nb as f64) / (na + nb) as f64
            }
        };
        Self {
            logp_diff_mean: mean(
                self.logp_diff_mean,
                self.tokens,
                other.logp_diff_mean,
                other.tokens,
            ),
            logp_diff_max: self.logp_diff_max.max(other.logp_diff_max),
            ratio_min: self.ratio_min.min(other.ratio_min),
            ratio_mean: mean(
                self.ratio_mean,
                self.weights,
                other.ratio_mean,
                other.weights,
            ),
            ratio_max: self.ratio_max.max(other.ratio_max),
            tokens: self.tokens + other.tokens,
            weights: self.weights + other.weights,
        }
    }
}

/// The detached weights `ρ` — `(B, T)` in the token modes, `(B, 1)` in the sequence modes — for
/// trainer log-probs `trainer` and sampler log-probs `sampler` `(B, T)` under `mask`.
pub fn sampler_weights(
    c: &SamplerCorrection,
    trainer: &Tensor,
    sampler: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, SamplerStats)> {
    let dims = trainer.dims();
    if sampler.dims() != dims || mask.dims() != dims || dims.len() != 2 {
        return Err(GrpoError::InvalidInput(format!(
            "sampler correction: trainer {:?}, sampler {:?}, mask {:?} log-probs must be one (B, T)",
            dims,
            sampler.dims(),
            mask.dims()
        )));
    }
    let dtype = trainer.dtype();
    let mask = mask.to_dtype(dtype)?;
    let diff = ((trainer.detach() - sampler.to_dtype(dtype)?)? * &mask)?; // (B, T)
    let sequence = matches!(c.mode, IsMode::SequenceTruncate | IsMode::SequenceMask);
    let log_ratio = if sequence {
        diff.sum_keepdim(D::Minus1)? // (B, 1)
    } else {
        diff.clone()
    };
    let ratio = log_ratio.exp()?;
    let weights = match c.mode {
        IsMode::TokenTruncate | IsMode::SequenceTruncate => {
            ratio.clamp(f64::NEG_INFINITY, c.cap)?
        }
        // `where`, not a product: an overflowed ratio (inf) must become 0, not 0 · inf = NaN.
        IsMode::TokenMask | IsMode::SequenceMask => {
            ratio.le(c.cap)?.where_cond(&ratio, &ratio.zeros_like()?)?
        }
    };

    let host = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
    };
    let m = host(&mask)?;
    let d = host(&diff)?;
    let counted: Vec<f64> = d
        .iter()
        .zip(&m)
        .filter(|(_, &m)| m > 0.0)
        .map(|(d, _)| d.abs())
        .collect();
    let w = host(&weights)?;
    // Sequence weights count for every sequence with a token; token weights for every token.
    let rows_with_tokens: Vec<bool> = m
        .chunks(dims[1].max(1))
        .map(|r| r.iter().any(|&v| v > 0.0))
        .collect();
    let kept: Vec<f64> = if sequence {
        w.iter()
            .zip(&rows_with_tokens)
            .filter(|(_, &k)| k)
            .map(|(w, _)| *w)
            .collect()
    } else {
        w.iter()
            .zip(&m)
            .filter(|(_, &m)| m > 0.0)
            .map(|(w, _)| *w)
            .collect()
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let stats = SamplerStats {
        logp_diff_mean: mean(&counted),
        logp_diff_max: counted.iter().fold(0.0, |a, &b| a.max(b)),
        ratio_min: kept.iter().copied().fold(f64::INFINITY, f64::min),
        ratio_mean: mean(&kept),
        ratio_max: kept.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        tokens: counted.len(),
        weights: kept.len(),
    };
    Ok((weights.detach(), stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[[f64; 3]]) -> Tensor {
        let flat: Vec<f64> = v.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (v.len(), 3), &Device::Cpu).unwrap()
    }

    #[test]
    fn every_mode_by_hand() {
        let trainer = t(&[[-1.0, -2.0, -0.5], [-3.0, -1.0, -9.0]]);
        let sampler = t(&[[-2.0, -1.5, -0.5], [-2.0, -1.0, 0.0]]);
        let mask = t(&[[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]); // row 1's last token is padding
        let w = |mode, cap| {
            let c = SamplerCorrection { mode, cap };
            let (w, s) = sampler_weights(&c, &trainer, &sampler, &mask).unwrap();
            (w.flatten_all().unwrap().to_vec1::<f64>().unwrap(), s)
        };
        let e = f64::exp;
        // Token diffs: row 0 [1, −0.5, 0], row 1 [−1, 0, (masked)].
        let (tt, s) = w(IsMode::TokenTruncate, 2.0);
        let want = [2.0, e(-0.5), 1.0, e(-1.0), 1.0, 1.0];
        for (a, b) in tt.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{tt:?}");
        }
        assert!((s.logp_diff_mean - 2.5 / 5.0).abs() < 1e-12);
        assert_eq!(s.logp_diff_max, 1.0);
        assert_eq!((s.ratio_min, s.ratio_max), (e(-1.0), 2.0));
        let (tm, _) = w(IsMode::TokenMask, 2.0);
        assert_eq!(tm[0], 0.0); // e¹ > 2
        assert!((tm[1] - e(-0.5)).abs() < 1e-12);
        // Sequence sums: row 0 0.5, row 1 −1.
        let (st, s) = w(IsMode::SequenceTruncate, 1.5);
        assert!((st[0] - 1.5).abs() < 1e-12 && (st[1] - e(-1.0)).abs() < 1e-12);
        assert!((s.ratio_mean - (1.5 + e(-1.0)) / 2.0).abs() < 1e-12);
        let (sm, _) = w(IsMode::SequenceMask, 1.5);
        assert_eq!(sm[0], 0.0);
        assert!((sm[1] - e(-1.0)).abs() < 1e-12);
    }

    #[test]
    fn shapes_and_caps_are_checked() {
        let a = t(&[[0.0, 0.0, 0.0]]);
        let b = Tensor::zeros((1, 2), DType::F64, &Device::Cpu).unwrap();
        let c = SamplerCorrection::default();
        assert!(sampler_weights(&c, &a, &b, &a).is_err());
        assert!(SamplerCorrection { cap: 0.0, ..c }.validate().is_err());
        assert!(SamplerCorrection { cap: f64::NAN, ..c }.validate().is_err());
        c.validate().unwrap();
    }

    /// The loss weights each token's policy term, and adds the KL term unweighted (TRL's order).
    #[test]
    fn the_loss_weights_policy_terms_not_the_kl() {
        use crate::loss::{grpo_loss, Accumulation, LossConfig, LossInputs};
        let dev = Device::Cpu;
        let lp = Tensor::new(&[[-1.0f64, -2.0]], &dev).unwrap();
        let reference = Tensor::new(&[[-1.5f64, -1.0]], &dev).unwrap();
        let adv = Tensor::new(&[0.5f64], &dev).unwrap();
        let mask = Tensor::new(&[[1.0f64, 1.0]], &dev).unwrap();
        let w = Tensor::new(&[[2.0f64, 0.25]], &dev).unwrap();
        let cfg = LossConfig {
            beta: 0.1,
            ..LossConfig::default()
        };
        let loss = |w: Option<&Tensor>| {
            let x = LossInputs {
                logprobs: &lp,
                old_logprobs: None,
                ref_logprobs: Some(&reference),
                advantages: &adv,
                mask: &mask,
                num_items_in_batch: 2.0,
                micro_batch: None,
                sampler_weights: w,
            };
            let out = grpo_loss(&cfg, &Accumulation::default(), &x).unwrap();
            out.loss.to_scalar::<f64>().unwrap()
        };
        // On-policy (ratio 1), DAPO over 2 tokens: (Σ_t −w_t A + β k3_t) / 2.
        let k3 = |d: f64| d.exp() - d - 1.0; // d = ℓʳ − ℓ
        let kl = 0.1 * (k3(-0.5) + k3(1.0));
        assert!((loss(None) - (-(0.5 + 0.5) + kl) / 2.0).abs() < 1e-12);
        assert!((loss(Some(&w)) - (-(2.0 * 0.5 + 0.25 * 0.5) + kl) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn an_overflowing_ratio_is_masked_to_zero_not_nan() {
        let trainer = t(&[[50.0, 50.0, 0.0]]);
        let sampler = t(&[[0.0, 0.0, 0.0]]);
        let mask = t(&[[1.0, 1.0, 1.0]]);
        for mode in [IsMode::SequenceMask, IsMode::TokenMask] {
            let c = SamplerCorrection { mode, cap: 2.0 };
            let trainer = trainer.to_dtype(DType::F32).unwrap();
            let (w, _) = sampler_weights(&c, &trainer, &sampler, &mask).unwrap();
            let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(w.iter().all(|v| v.is_finite()), "{mode:?}: {w:?}");
            assert_eq!(w[0], 0.0);
        }
    }

    #[test]
    fn statistics_merge_by_token_counts() {
        let s = |mean: f64, n: usize| SamplerStats {
            logp_diff_mean: mean,
            logp_diff_max: mean,
            ratio_min: 1.0,
            ratio_mean: mean,
            ratio_max: 1.0,
            tokens: n,
            weights: n,
        };
        let m = s(1.0, 1).merge(s(4.0, 3));
        assert_eq!((m.logp_diff_mean, m.ratio_mean, m.tokens), (3.25, 3.25, 4));
        let empty = SamplerStats {
            ratio_min: f64::INFINITY,
            ratio_max: f64::NEG_INFINITY,
            ..s(0.0, 0)
        };
        assert_eq!(s(2.0, 5).merge(empty), s(2.0, 5));
    }
}
