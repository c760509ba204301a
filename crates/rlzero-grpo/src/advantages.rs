//! Group-relative advantages (Shao et al. 2024, DeepSeekMath §4.1.2), as TRL 1.16 computes them
//! in `GRPOTrainer._generate_and_score_completions`.
//!
//! The `N = prompts × G` completions come in groups of `G` (one group per prompt). With `K`
//! reward functions of weights `w_k` and per-function rewards `r_ik` (NaN = the function
//! abstained), the default `sum_then_normalize` aggregation is
//!
//! * `R_i = nansum_k w_k r_ik`, NaN when every function abstained (an *unscorable* completion);
//! * `A_i = (R_i − nanmean_{j∈g(i)} R_j) / (σ + 1e-4)` with `σ` the nan-aware sample standard
//!   deviation (Bessel's correction: `/(n−1)`) of the group (`ScaleRewards::Group`), of the
//!   whole batch (`Batch`, Liu et al. 2025 argue group std biases towards easy/hard prompts),
//!   or no division at all (`None`, Dr. GRPO);
//! * unscorable completions get `A_i = 0`.
//!
//! `normalize_then_sum` (GDPO-style multi-objective) normalises each function within its group
//! first, sums with the weights, then normalises over the batch.
//!
//! ```
//! use rlzero_grpo::advantages::{compute_advantages, Aggregation, ScaleRewards};
//! let a = compute_advantages(&[vec![1.0], vec![0.0]], &[1.0], 2, ScaleRewards::Group, Aggregation::SumThenNormalize)?;
//! // mean 0.5, sample std √0.5 ≈ 0.7071
//! assert!((a.advantages[0] - 0.5 / (0.5f64.sqrt() + 1e-4)).abs() < 1e-12);
//! # Ok::<(), rlzero_grpo::GrpoError>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{GrpoError, Result};

/// TRL's constant added to the standard deviation before dividing.
pub const STD_EPS: f64 = 1e-4;

/// What the centred rewards are divided by (TRL `scale_rewards`; default `group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// The group's standard deviation: the original GRPO (Shao et al. 2024, eq. 3).
    #[default]
    Group,
    /// The whole batch's standard deviation (Lite PPO, "Tricks or Traps", arXiv 2508.08221,
    /// as TRL credits it).
    Batch,
    /// No scaling: Dr. GRPO (Liu et al. 2025); the std is still computed for the
    /// zero-variance metric.
    None,
}

/// How several reward functions combine (TRL `multi_objective_aggregation`; default sum first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Weighted sum, then group normalisation.
    #[default]
    SumThenNormalize,
    /// Per-function group normalisation, weighted sum, then batch normalisation.
    NormalizeThenSum,
}

/// Advantages and the statistics TRL logs with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Advantages {
    /// `(N,)` advantage of each completion.
    pub advantages: Vec<f64>,
    /// `(N,)` weighted reward of each completion (NaN when unscorable).
    pub rewards: Vec<f64>,
    /// `(N,)` whether the std used for this completion is zero (`torch.isclose(std, 0)`).
    pub zero_std: Vec<bool>,
    /// TRL `reward`: nan-aware mean of `rewards`.
    pub reward_mean: f64,
    /// TRL `reward_std`: nan-aware sample std of `rewards`.
    pub reward_std: f64,
    /// TRL `frac_reward_zero_std`: fraction of completions whose std is zero — with group
    /// scaling, the fraction of completions in groups that carry no learning signal.
    pub frac_zero_std: f64,
}

pub use rlzero_rewards::stats::{nan_mean as nanmean, nan_std as nanstd};
use rlzero_rewards::weighted_total;

/// `torch.isclose(x, 0)` with its default tolerances (`atol` 1e-8); false for NaN.
pub(crate) fn is_zero(x: f64) -> bool {
    x.abs() <= 1e-8
}

/// Computes advantages from `rewards_per_func` `(N, K)` (NaN = abstained).
///
/// Errors when `N` is not a multiple of `num_generations`, rows have different lengths, or the
/// weights do not match the functions.
pub fn compute_advantages(
    rewards_per_func: &[Vec<f64>],
    weights: &[f64],
    num_generations: usize,
    scale: ScaleRewards,
    aggregation: Aggregation,
) -> Result<Advantages> {
    let n = rewards_per_func.len();
    let k = weights.len();
    if num_generations == 0 || n == 0 || !n.is_multiple_of(num_generations) {
        return Err(GrpoError::InvalidInput(format!(
            "{n} completions cannot form groups of {num_generations}"
        )));
    }
    if let Some(i) = rewards_per_func.iter().position(|r| r.len() != k) {
        return Err(GrpoError::InvalidInput(format!(
            "completion {i} has {} rewards for {k} reward functions",
            rewards_per_func[i].len()
        )));
    }
    // Weighted raw rewards, NaN for unscorable completions (every function abstained): what
    // sum_then_normalize normalises and what is logged, whatever the aggregation.
    let rewards: Vec<f64> = rewards_per_func
        .iter()
        .map(|r| weighted_total(r, weights))
        .collect();
    let g = num_generations;
    let (advantages, std) = match aggregation {
        Aggregation::SumThenNormalize => {
            let std: Vec<f64> = match scale {
                ScaleRewards::Group | ScaleRewards::None => rewards
                    .chunks(g)
                    .flat_map(|grp| {
                        let s = if g > 1 { nanstd(grp) } else { 0.0 };
                        std::iter::repeat_n(s, g)
                    })
                    .collect(),
                ScaleRewards::Batch => {
                    let s = if n > 1 { nanstd(&rewards) } else { 0.0 };
                    vec![s; n]
                }
            };
            let adv = rewards
                .chunks(g)
                .zip(std.chunks(g))
                .flat_map(|(grp, sd)| {
                    let m = nanmean(grp);
                    grp.iter().zip(sd).map(move |(r, s)| match scale {
                        ScaleRewards::None => r - m,
                        ScaleRewards::Group | ScaleRewards::Batch => (r - m) / (s + STD_EPS),
                    })
                })
                .collect::<Vec<_>>();
            (adv, std)
        }
        Aggregation::NormalizeThenSum => {
            // Each function normalised within its group, then weighted and summed.
            let mut normed = vec![vec![f64::NAN; k]; n];
            for (gi, grp) in rewards_per_func.chunks(g).enumerate() {
                for f in 0..k {
                    let col: Vec<f64> = grp.iter().map(|r| r[f]).collect();
                    let m = nanmean(&col);
                    let s = if g > 1 { nanstd(&col) } else { 0.0 };
                    for (j, x) in col.iter().enumerate() {
                        normed[gi * g + j][f] = (x - m) / (s + STD_EPS);
                    }
                }
            }
            // A scorable completion whose normalised values are all NaN sums to 0 (TRL's
            // nansum); only unscorable ones stay NaN.
            let summed: Vec<f64> = normed
                .iter()
                .zip(&rewards)
                .map(
                    |(r, raw)| match (raw.is_nan(), weighted_total(r, weights)) {
                        (true, _) => f64::NAN,
                        (false, t) if t.is_nan() => 0.0,
                        (false, t) => t,
                    },
                )
                .collect();
            let s = if n > 1 { nanstd(&summed) } else { 0.0 };
            let m = nanmean(&summed);
            let adv = summed.iter().map(|r| (r - m) / (s + STD_EPS)).collect();
            (adv, vec![s; n])
        }
    };
    let zero_std: Vec<bool> = std.iter().map(|&s| is_zero(s)).collect();
    Ok(Advantages {
        // Unscorable completions carry no signal: NaN → 0 (TRL `nan_to_num`).
        advantages: advantages
            .into_iter()
            .map(|a| if a.is_nan() { 0.0 } else { a })
            .collect(),
        reward_mean: nanmean(&rewards),
        reward_std: nanstd(&rewards),
        frac_zero_std: zero_std.iter().filter(|&&z| z).count() as f64 / n as f64,
        rewards,
        zero_std,
    })
}
