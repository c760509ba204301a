//! The GRPO family of policy losses, number for number as TRL 1.16's
//! `GRPOTrainer._compute_loss` computes them (`trl/trainer/grpo_trainer.py`).
//!
//! Per completion token `t` of sequence `i` with advantage `A_i`, current log-prob `ℓ_it`
//! (with gradient), old log-prob `ℓ°_it` (the policy that sampled) and mask `m_it`:
//!
//! * importance weight `w_it = exp(ℓ_it − ℓ°_it)` ([`IsLevel::Token`]), or one weight per
//!   sequence `w_i = exp(Σ_t m_it (ℓ_it − ℓ°_it) / Σ_t m_it)` ([`IsLevel::Sequence`], GSPO);
//! * per-token loss, by [`LossType`] (each variant's doc gives its formula and paper);
//! * plus `β · k3` when `β > 0`: `k3 = exp(ℓʳ − ℓ) − (ℓʳ − ℓ) − 1` (Schulman's unbiased KL
//!   estimator against the frozen reference `ℓʳ`), multiplied by `w` when
//!   `use_bias_correction_kl` (TRL's default);
//! * aggregated over tokens by the loss type's normalisation, then divided for gradient
//!   accumulation.
//!
//! Only the log-probs carry a gradient; every other input is data.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rlzero_grpo::loss::{grpo_loss, Accumulation, LossConfig, LossInputs};
//! let lp = Tensor::new(&[[-1.0f64, -2.0]], &Device::Cpu)?; // (B=1, T=2)
//! let inputs = LossInputs {
//!     logprobs: &lp, old_logprobs: None, ref_logprobs: None,
//!     advantages: &Tensor::new(&[0.5f64], &Device::Cpu)?,
//!     mask: &Tensor::new(&[[1.0f64, 1.0]], &Device::Cpu)?,
//!     num_items_in_batch: 2.0,
//!     micro_batch: None,
//!     sampler_weights: None,
//! };
//! let out = grpo_loss(&LossConfig::default(), &Accumulation::default(), &inputs)?;
//! // On-policy (ratio 1), DAPO: −Σ A / num_items = −(0.5 + 0.5) / 2.
//! assert!((out.loss.to_scalar::<f64>()? + 0.5).abs() < 1e-12);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{GrpoError, Result};
pub use crate::loss_rows::RowStats;
use crate::loss_rows::{row_stats, RowInputs};

/// Which policy objective (TRL `loss_type`; default `dapo`, TRL 1.16's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// GRPO (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300, eq. 3): PPO's clipped surrogate
    /// `−min(w A, clip(w, 1−ε_low, 1+ε_high) A)`, averaged over each sequence's tokens, then
    /// over sequences. The per-sequence mean favours short correct and long wrong answers
    /// (Liu et al. 2025).
    Grpo,
    /// The clipped surrogate averaged over all tokens of the micro-batch (TRL's "batch
    /// normalised PPO").
    Bnpo,
    /// Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training", arXiv 2503.20783): the clipped surrogate
    /// summed and divided by a constant `B · max_completion_length`, removing the length bias.
    DrGrpo,
    /// DAPO (Yu et al. 2025, arXiv 2503.14476, eq. 8): token-level mean over the whole generation batch (every
    /// token of every accumulated micro-batch weighs the same), usually with ε_high > ε_low
    /// ("clip-higher").
    #[default]
    Dapo,
    /// CISPO (MiniMax-M1, arXiv 2506.13585): `−sg(min(w, ε_high)) A ℓ`, a REINFORCE term with a clipped,
    /// stop-gradient importance weight, so clipped tokens still get gradient; DAPO's
    /// normalisation.
    Cispo,
    /// SAPO (soft adaptive policy optimisation, arXiv 2511.20347): `−(4/τ) σ(τ (w − 1)) A` with
    /// `τ = τ_pos` when `A > 0` else `τ_neg`, a smooth gate in place of the hard clip;
    /// GRPO's normalisation.
    Sapo,
    /// LUSPO (length-unbiased sequence policy optimisation, arXiv 2602.05261): the clipped surrogate summed over
    /// each sequence's tokens, averaged over sequences (intended with sequence-level weights).
    Luspo,
    /// VESPO (variational sequence-level soft policy optimisation, arXiv 2602.10693): `−φ(W) A ℓ` where `W` is the
    /// sequence's importance weight and `φ(W) = e^λ W^k e^{−λW}` (gamma-shaped, `φ(1) = 1`,
    /// no gradient), with `(k, λ)` chosen by the sign of `A`; DAPO's normalisation.
    Vespo,
}

/// Where importance weights are taken (TRL `importance_sampling_level`; default `token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IsLevel {
    /// One weight per token (PPO, GRPO).
    #[default]
    Token,
    /// One weight per sequence, the geometric mean of its token ratios: GSPO (Zheng et al.
    /// 2025, "Group Sequence Policy Optimization", arXiv 2507.18071).
    Sequence,
}

/// The loss's hyper-parameters; defaults are TRL 1.16's `GRPOConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Objective. Default `dapo` (TRL 1.16).
    pub loss_type: LossType,
    /// Token or sequence importance weights. Default `token`.
    pub importance_sampling_level: IsLevel,
    /// KL coefficient `β`; 0 (default, TRL and DAPO) holds no reference model at all.
    pub beta: f64,
    /// Lower clip `ε_low` (TRL `epsilon`). Default 0.2 (PPO, TRL).
    pub epsilon: f64,
    /// Upper clip `ε_high` (for CISPO: the weight cap). Default `None` = `epsilon` (TRL); DAPO
    /// recommends 0.28, CISPO papers use caps around 4–5.
    pub epsilon_high: Option<f64>,
    /// Two-sided clipping (Wang et al. 2025, INTELLECT-2): caps the unclipped ratio at `δ` so a
    /// negative advantage cannot be multiplied without bound. `None` (default) is off; must be
    /// `> 1 + ε_high` when set.
    pub delta: Option<f64>,
    /// Multiply the k3 KL by the importance weight (TRL default true).
    pub use_bias_correction_kl: bool,
    /// SAPO gate temperature for positive advantages. Default 1.0 (TRL).
    pub sapo_temperature_pos: f64,
    /// SAPO gate temperature for non-positive advantages. Default 1.05 (TRL).
    pub sapo_temperature_neg: f64,
    /// VESPO shape `k` for `A ≥ 0`. Default 2.0 (TRL).
    pub vespo_k_pos: f64,
    /// VESPO rate `λ` for `A ≥ 0`. Default 3.0 (TRL).
    pub vespo_lambda_pos: f64,
    /// VESPO shape `k` for `A < 0`. Default 3.0 (TRL).
    pub vespo_k_neg: f64,
    /// VESPO rate `λ` for `A < 0`. Default 2.0 (TRL).
    pub vespo_lambda_neg: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            loss_type: LossType::Dapo,
            importance_sampling_level: IsLevel::Token,
            beta: 0.0,
            epsilon: 0.2,
            epsilon_high: None,
            delta: None,
            use_bias_correction_kl: true,
            sapo_temperature_pos: 1.0,
            sapo_temperature_neg: 1.05,
            vespo_k_pos: 2.0,
            vespo_lambda_pos: 3.0,
            vespo_k_neg: 3.0,
            vespo_lambda_neg: 2.0,
        }
    }
}

impl LossConfig {
    /// `ε_high`, which defaults to `ε_low`.
    pub fn eps_high(&self) -> f64 {
        self.epsilon_high.unwrap_or(self.epsilon)
    }

    /// Checks every field once; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(GrpoError::config(
                "beta",
                format!("must be finite and ≥ 0, got {}", self.beta),
            ));
        }
        if !(self.epsilon.is_finite() && (0.0..1.0).contains(&self.epsilon)) {
            return Err(GrpoError::config(
                "epsilon",
                format!("must be in [0, 1), got {}", self.epsilon),
            ));
        }
        let eps_high = self.eps_high();
        if !(eps_high.is_finite() && eps_high >= 0.0) {
            return Err(GrpoError::config(
                "epsilon_high",
                format!("must be finite and ≥ 0, got {eps_high}"),
            ));
        }
        if self.loss_type == LossType::Cispo && eps_high <= 0.0 {
            return Err(GrpoError::config(
                "epsilon_high",
                "CISPO caps the weight at epsilon_high, which must be > 0",
            ));
        }
        if let Some(d) = self.delta {
            if !(d.is_finite() && d > 1.0 + eps_high) {
                return Err(GrpoError::config(
                    "delta",
                    format!("must be > 1 + epsilon_high = {}, got {d}", 1.0 + eps_high),
                ));
            }
        }
        for (name, v) in [
            ("sapo_temperature_pos", self.sapo_temperature_pos),
            ("sapo_temperature_neg", self.sapo_temperature_neg),
            ("vespo_lambda_pos", self.vespo_lambda_pos),
            ("vespo_lambda_neg", self.vespo_lambda_neg),
        ] {
            if !finite_pos(v) {
                return Err(GrpoError::config(
                    name,
                    format!("must be finite and > 0, got {v}"),
                ));
            }
        }
        for (name, v) in [
            ("vespo_k_pos", self.vespo_k_pos),
            ("vespo_k_neg", self.vespo_k_neg),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(GrpoError::config(
                    name,
                    format!("must be finite and ≥ 0, got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// How a micro-batch's loss is normalised: constants of the run, not of the objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accumulation {
    /// Micro-batches accumulated into one optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Micro-batches per generation batch (TRL `steps_per_generation`, by default equal to
    /// `gradient_accumulation_steps`).
    pub steps_per_generation: usize,
    /// Dr. GRPO's constant denominator per sequence: the sampling `max_completion_length`.
    pub max_completion_length: usize,
}

impl Default for Accumulation {
    /// One micro-batch per step; TRL's default `max_completion_length` of 512.
    fn default() -> Self {
        Self {
            gradient_accumulation_steps: 1,
            steps_per_generation: 1,
            max_completion_length: 512,
        }
    }
}

/// One micro-batch's inputs, each `(B, T)` except `advantages` `(B,)`, all of one float dtype.
pub struct LossInputs<'a> {
    /// Current log-probs `ℓ` (the only input with a gradient).
    pub logprobs: &'a Tensor,
    /// Log-probs of the sampling policy; `None` = on-policy (TRL uses `ℓ.detach()`).
    pub old_logprobs: Option<&'a Tensor>,
    /// Reference-policy log-probs; required when `β > 0`.
    pub ref_logprobs: Option<&'a Tensor>,
    /// Advantage of each sequence.
    pub advantages: &'a Tensor,
    /// 1 for tokens that count, 0 for padding (and masked truncated completions).
    pub mask: &'a Tensor,
    /// Σ mask over the whole generation batch (all micro-batches): DAPO's token count.
    pub num_items_in_batch: f64,
    /// `Some((rows, Σ mask))` of the whole micro-batch when these inputs are only a chunk of it
    /// (activation chunking): the per-micro-batch normalisations of grpo, sapo, bnpo, dr_grpo
    /// and luspo then use the micro-batch's totals, so the chunks' losses sum to exactly the
    /// micro-batch's. `None`: the inputs are the whole micro-batch.
    pub micro_batch: Option<(usize, f64)>,
    /// Truncated importance-sampling weights for a sampler that differs from the policy
    /// ([`crate::sampler_correction`]), `(B, T)` or `(B, 1)`, detached: each token's policy
    /// term is multiplied by its weight before the KL term is added (TRL). `None`: no correction.
    pub sampler_weights: Option<&'a Tensor>,
}

/// The loss and the statistics TRL logs for one micro-batch.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Scalar loss to back-propagate (already divided for gradient accumulation).
    pub loss: Tensor,
    /// Masked mean k3 KL (`None` when β = 0).
    pub kl: Option<f64>,
    /// Fraction of tokens with `w < 1 − ε_low` and `A < 0` (clipped-surrogate losses).
    pub clip_ratio_low: Option<f64>,
    /// Fraction with `w > 1 + ε_high` and `A > 0`.
    pub clip_ratio_high: Option<f64>,
    /// Either of the two.
    pub clip_ratio_region: Option<f64>,
    /// CISPO: fraction with `w > ε_high` and `A > 0`.
    pub cispo_clip_ratio: Option<f64>,
    /// VESPO: mean of `φ(W)` over sequences.
    pub vespo_phi_mean: Option<f64>,
    /// Each row's ratio, clip, KL and term of `loss` (for `--explain`; see [`RowStats`]).
    pub rows: Vec<RowStats>,
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// TRL's `global_masked_mean`: over tokens for `(B, T)`, over sequences for `(B, 1)`.
fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<f64> {
    if x.dim(1)? == 1 {
        return Ok(scalar(&x.sum_all()?)? / x.dim(0)? as f64);
    }
    let total = scalar(&mask.sum_all()?)?;
    Ok(scalar(&(x * mask)?.sum_all()?)? / total.max(1.0))
}

/// VESPO's gamma weights `φ(W)` `(B, 1)`, without gradient (TRL `get_gamma_weights`).
fn gamma_weights(
    cfg: &LossConfig,
    log_ratio: &Tensor,
    mask: &Tensor,
    adv: &Tensor,
) -> Result<Tensor> {
    let lower = 1e-8f64.ln();
    let log_ratio = log_ratio.detach().clamp(-20.0, 20.0)?;
    let log_w = (log_ratio * mask)?
        .sum_keepdim(D::Minus1)?
        .clamp(lower, 20.0)?; // (B, 1)
    let w = log_w.exp()?;
    let nonneg = adv.ge(0.0)?;
    let pick = |a: f64, b: f64| -> Result<Tensor> {
        Ok(nonneg.where_cond(
            &adv.ones_like()?.affine(a, 0.0)?,
            &adv.ones_like()?.affine(b, 0.0)?,
        )?)
    };
    let k = pick(cfg.vespo_k_pos, cfg.vespo_k_neg)?;
    let lam = pick(cfg.vespo_lambda_pos, cfg.vespo_lambda_neg)?.clamp(1e-4, f64::INFINITY)?;
    // log φ = λ + k log W − λ W
    let log_phi = ((&lam + (k * &log_w)?)? - (lam * w)?)?;
    let phi = log_phi.exp()?;
    // TRL: nan_to_num(nan=0, posinf=0, neginf=0).
    let finite = phi.eq(&phi)?.mul(&phi.abs()?.lt(f64::INFINITY)?)?;
    Ok(finite.where_cond(&phi, &phi.zeros_like()?)?)
}

/// The GRPO-family loss of one micro-batch.
pub fn grpo_loss(cfg: &LossConfig, acc: &Accumulation, x: &LossInputs<'_>) -> Result<LossOutput> {
    if acc.gradient_accumulation_steps == 0
        || acc.steps_per_generation == 0
        || acc.max_completion_length == 0
    {
        return Err(GrpoError::InvalidInput(format!(
            "accumulation constants must be ≥ 1: {acc:?}"
        )));
    }
    let lp = x.logprobs;
    let eps_high = cfg.eps_high();
    let (b, t) = lp.dims2()?;
    let dtype = lp.dtype();
    for (name, ten) in [
        ("mask", Some(x.mask)),
        ("old_logprobs", x.old_logprobs),
        ("ref_logprobs", x.ref_logprobs),
    ] {
        if let Some(ten) = ten {
            if ten.dims() != [b, t] {
                return Err(GrpoError::InvalidInput(format!(
                    "{name} is {:?}, logprobs ({b}, {t})",
                    ten.dims()
                )));
            }
        }
    }
    if let Some(w) = x.sampler_weights {
        if w.dims() != [b, t] && w.dims() != [b, 1] {
            return Err(GrpoError::InvalidInput(format!(
                "sampler_weights is {:?}, expected ({b}, {t}) or ({b}, 1)",
                w.dims()
            )));
        }
    }
    if x.advantages.dims() != [b] {
        return Err(GrpoError::InvalidInput(format!(
            "advantages is {:?}, expected ({b},)",
            x.advantages.dims()
        )));
    }
    let mask = x.mask.to_dtype(dtype)?;
    let adv = x.advantages.to_dtype(dtype)?.unsqueeze(1)?; // (B, 1)
    let old = match x.old_logprobs {
        Some(o) => o.to_dtype(dtype)?.detach(),
        None => lp.detach(),
    };
    let log_ratio = (lp - &old)?; // (B, T)
    let log_w = match cfg.importance_sampling_level {
        IsLevel::Token => log_ratio.clone(),
        IsLevel::Sequence => {
            let len = mask.sum_keepdim(D::Minus1)?.clamp(1.0, f64::INFINITY)?;
            (&log_ratio * &mask)?.sum_keepdim(D::Minus1)?.div(&len)? // (B, 1)
        }
    };
    let mut coef_1 = log_w.exp()?;
    let weight = coef_1.detach(); // before the δ cap, for the per-row report

    let per_token_kl = if cfg.beta != 0.0 {
        let r = x
            .ref_logprobs
            .ok_or_else(|| GrpoError::InvalidInput("beta > 0 needs reference log-probs".into()))?;
        let d = (r.to_dtype(dtype)?.detach() - lp)?; // ℓʳ − ℓ
        let kl = ((d.exp()? - &d)? - 1.0)?;
        Some(if cfg.use_bias_correction_kl {
            kl.broadcast_mul(&coef_1)?
        } else {
            kl
        })
    } else {
        None
    };

    let mut out = LossOutput {
        loss: Tensor::zeros((), dtype, lp.device())?,
        kl: None,
        clip_ratio_low: None,
        clip_ratio_high: None,
        clip_ratio_region: None,
        cispo_clip_ratio: None,
        vespo_phi_mean: None,
        rows: Vec::new(),
    };
    let mut per_token_loss = match cfg.loss_type {
        LossType::Cispo => {
            let capped = coef_1.clamp(f64::NEG_INFINITY, eps_high)?.detach();
            capped.broadcast_mul(&adv)?.broadcast_mul(lp)?.neg()?
        }
        LossType::Grpo | LossType::Bnpo | LossType::DrGrpo | LossType::Dapo | LossType::Luspo => {
            let coef_2 = coef_1.clamp(1.0 - cfg.epsilon, 1.0 + eps_high)?;
            if let Some(d) = cfg.delta {
                coef_1 = coef_1.clamp(f64::NEG_INFINITY, d)?;
            }
            let l1 = coef_1.broadcast_mul(&adv)?;
            let l2 = coef_2.broadcast_mul(&adv)?;
            l1.minimum(&l2)?.neg()?
        }
        LossType::Sapo => {
            let pos = adv.gt(0.0)?;
            let tp = adv.ones_like()?.affine(cfg.sapo_temperature_pos, 0.0)?;
            let tn = adv.ones_like()?.affine(cfg.sapo_temperature_neg, 0.0)?;
            let temps = pos.where_cond(&tp, &tn)?; // (B, 1)
            let gate = candle_nn::ops::sigmoid(&coef_1.affine(1.0, -1.0)?.broadcast_mul(&temps)?)?;
            let soft = (gate.broadcast_div(&temps)? * 4.0)?;
            soft.broadcast_mul(&adv)?.neg()?
        }
        LossType::Vespo => {
            let phi = gamma_weights(cfg, &log_ratio, &mask, &adv)?; // (B, 1)
            out.vespo_phi_mean = Some(masked_mean(&phi, &mask)?);
            phi.broadcast_mul(&adv)?.broadcast_mul(lp)?.neg()?
        }
    };
    if let Some(w) = x.sampler_weights {
        per_token_loss = per_token_loss.broadcast_mul(&w.to_dtype(dtype)?.detach())?;
    }
    if let Some(kl) = &per_token_kl {
        per_token_loss = per_token_loss.broadcast_add(&(kl * cfg.beta)?)?;
        out.kl = Some(masked_mean(kl, &mask)?);
    }

    let ga = acc.gradient_accumulation_steps as f64;
    let masked = per_token_loss.broadcast_mul(&mask)?; // (B, T)
    let tokens_per_row = mask.sum(D::Minus1)?; // (B,)
                                               // Totals of the whole micro-batch (these inputs, unless they are a chunk of it).
    let mb_rows = x.micro_batch.map_or(b, |(rows, _)| rows) as f64;
    let mb_tokens = || -> Result<f64> {
        match x.micro_batch {
            Some((_, tokens)) => Ok(tokens),
            None => scalar(&mask.sum_all()?),
        }
    };
    // Each arm: the loss, and the denominator D_i that row i's masked token sum is divided by
    // (so Σ_i Σ_t m ℓ / D_i is the same number; see `loss_rows`).
    let (loss, denominators) = match cfg.loss_type {
        LossType::Grpo | LossType::Sapo => {
            let per_row = masked
                .sum(D::Minus1)?
                .div(&tokens_per_row.clamp(1.0, f64::INFINITY)?)?;
            let n = tokens_per_row.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let d = n.iter().map(|n| n.max(1.0) * mb_rows * ga).collect();
            ((per_row.sum_all()? / (mb_rows * ga))?, d)
        }
        LossType::Bnpo => {
            let d = mb_tokens()?.max(1.0) * ga;
            ((masked.sum_all()? / d)?, vec![d; b])
        }
        LossType::DrGrpo => {
            let d = mb_rows * acc.max_completion_length as f64 * ga;
            ((masked.sum_all()? / d)?, vec![d; b])
        }
        LossType::Dapo | LossType::Cispo | LossType::Vespo => {
            let d = x.num_items_in_batch.max(1.0) * ga / acc.steps_per_generation as f64;
            ((masked.sum_all()? / d)?, vec![d; b])
        }
        LossType::Luspo => {
            let d = mb_rows * ga;
            ((masked.sum_all()? / d)?, vec![d; b])
        }
    };
    out.loss = loss;

    let clipped = match cfg.loss_type {
        LossType::Grpo | LossType::Bnpo | LossType::DrGrpo | LossType::Dapo | LossType::Luspo => {
            let w = coef_1.detach();
            let low = w.lt(1.0 - cfg.epsilon)?.broadcast_mul(&adv.lt(0.0)?)?;
            let high = w.gt(1.0 + eps_high)?.broadcast_mul(&adv.gt(0.0)?)?;
            let region = low.maximum(&high)?.to_dtype(dtype)?;
            out.clip_ratio_low = Some(masked_mean(&low.to_dtype(dtype)?, &mask)?);
            out.clip_ratio_high = Some(masked_mean(&high.to_dtype(dtype)?, &mask)?);
            out.clip_ratio_region = Some(masked_mean(&region, &mask)?);
            Some(region)
        }
        LossType::Cispo => {
            let w = coef_1.detach();
            let c = w
                .gt(eps_high)?
                .broadcast_mul(&adv.gt(0.0)?)?
                .to_dtype(dtype)?;
            out.cispo_clip_ratio = Some(masked_mean(&c, &mask)?);
            Some(c)
        }
        LossType::Sapo | LossType::Vespo => None,
    };
    out.rows = row_stats(&RowInputs {
        per_token_loss: &per_token_loss.detach(),
        weight: &weight,
        clipped: clipped.as_ref(),
        kl: per_token_kl.as_ref().map(|k| k.detach()).as_ref(),
        beta: cfg.beta,
        mask: &mask,
        denominators,
    })?;
    Ok(out)
}
