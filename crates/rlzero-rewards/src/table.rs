//! The `(N, K)` table of scores a [`RewardSet`](crate::RewardSet) produces, and its reductions.
//!
//! `values[i][k]` is reward `k`'s score for row `i`; `NaN` means reward `k` abstained. The
//! weighted total follows TRL's `sum_then_normalize` path (`grpo_trainer.py`):
//!
//! ```text
//! total_i = Σ_k w_k · v_ik   over the k with v_ik not NaN   (torch nansum)
//! total_i = NaN              when every v_ik is NaN          (rewards[unscorable_mask] = nan)
//! ```
//!
//! A row where every reward abstained is *unscorable*: summing it to 0 would bias the group
//! baseline and hand the completion a spurious advantage, so it stays `NaN` and the trainer
//! excludes it (TRL forces its advantage to 0).
//!
//! ```
//! use rlzero_rewards::RewardTable;
//! let t = RewardTable {
//!     names: vec!["a".into(), "b".into()],
//!     weights: vec![1.0, 0.5],
//!     values: vec![vec![1.0, 2.0], vec![f64::NAN, 4.0], vec![f64::NAN, f64::NAN]],
//!     panics: vec![0, 0],
//!     non_finite: vec![0, 0],
//! };
//! let totals = t.totals();
//! assert_eq!(&totals[..2], &[2.0, 2.0]);
//! assert!(totals[2].is_nan());
//! assert_eq!(t.unscorable(2), Some(true));
//! ```

use serde::Serialize;

use crate::stats::{nan_mean, nan_std};

/// Per-(row, reward) scores with failure counters.
///
/// Not `PartialEq`: it holds `NaN`s, which never compare equal.
#[derive(Debug, Clone, Serialize)]
pub struct RewardTable {
    /// Reward names, one per column.
    pub names: Vec<String>,
    /// Reward weights, one per column.
    pub weights: Vec<f64>,
    /// `(N, K)` scores; `NaN` where the reward abstained.
    pub values: Vec<Vec<f64>>,
    /// Per reward: how many calls panicked (each scored 0.0).
    pub panics: Vec<usize>,
    /// Per reward: how many calls returned NaN or ±∞ (each scored 0.0).
    pub non_finite: Vec<usize>,
}

impl RewardTable {
    /// Number of rows `N`.
    pub fn n_rows(&self) -> usize {
        self.values.len()
    }

    /// Number of rewards `K`.
    pub fn n_rewards(&self) -> usize {
        self.names.len()
    }

    /// Column index of the reward called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Weighted, NaN-skipping sum per row; `NaN` for unscorable rows.
    pub fn totals(&self) -> Vec<f64> {
        self.values
            .iter()
            .map(|row| weighted_total(row, &self.weights))
            .collect()
    }

    /// Reward `k`'s scores for every row; `None` when `k ≥ K`.
    pub fn column(&self, k: usize) -> Option<Vec<f64>> {
        (k < self.n_rewards()).then(|| {
            self.values
                .iter()
                .map(|row| row.get(k).copied().unwrap_or(f64::NAN))
                .collect()
        })
    }

    /// NaN-aware mean of reward `k` (TRL's `rewards/<name>/mean`); `NaN` when it abstained on
    /// every row or `k ≥ K`.
    pub fn mean(&self, k: usize) -> f64 {
        self.column(k).map_or(f64::NAN, |c| nan_mean(&c))
    }

    /// NaN-aware, Bessel-corrected std of reward `k` (TRL's `rewards/<name>/std`); `NaN` with
    /// fewer than two scored rows or `k ≥ K`.
    pub fn std(&self, k: usize) -> f64 {
        self.column(k).map_or(f64::NAN, |c| nan_std(&c))
    }

    /// How many rows reward `k` abstained on; `None` when `k ≥ K`.
    pub fn abstentions(&self, k: usize) -> Option<usize> {
        self.column(k)
            .map(|c| c.iter().filter(|v| v.is_nan()).count())
    }

    /// Whether every reward abstained on row `i`; `None` when `i ≥ N`.
    pub fn unscorable(&self, i: usize) -> Option<bool> {
        self.values.get(i).map(|row| row.iter().all(|v| v.is_nan()))
    }

    /// [`unscorable`](Self::unscorable) for every row.
    pub fn unscorable_mask(&self) -> Vec<bool> {
        self.values
            .iter()
            .map(|row| row.iter().all(|v| v.is_nan()))
            .collect()
    }
}

/// One row's weighted reward: the nan-aware weighted sum (TRL's `nansum` of `rewards × weights`),
/// or `NaN` when every reward abstained (TRL's unscorable completion).
pub fn weighted_total(row: &[f64], weights: &[f64]) -> f64 {
    if row.iter().all(|v| v.is_nan()) {
        return f64::NAN;
    }
    row.iter()
        .zip(weights)
        .filter(|(v, _)| !v.is_nan())
        .map(|(v, w)| v * w)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RewardTable {
        RewardTable {
            names: vec!["acc".into(), "fmt".into(), "len".into()],
            weights: vec![1.0, 0.5, -2.0],
            values: vec![
                vec![1.0, 1.0, 0.0],
                vec![0.0, f64::NAN, -0.5],
                vec![f64::NAN, f64::NAN, f64::NAN],
                vec![1.0, 0.0, f64::NAN],
            ],
            panics: vec![0; 3],
            non_finite: vec![0; 3],
        }
    }

    #[test]
    fn totals_are_weighted_and_skip_abstentions() {
        let t = table().totals();
        assert_eq!(t[0], 1.5);
        assert_eq!(t[1], 1.0); // 0·1 + (−0.5)·(−2)
        assert!(t[2].is_nan());
        assert_eq!(t[3], 1.0);
    }

    #[test]
    fn column_mean_std_by_hand() {
        let t = table();
        assert!(t.column(3).is_none());
        let c = t.column(0).unwrap_or_default();
        assert_eq!(c.len(), 4);
        // acc: 1, 0, 1 → mean 2/3; deviations 1/3, −2/3, 1/3 → ss = 6/9, / 2 → 1/3.
        assert!((t.mean(0) - 2.0 / 3.0).abs() < 1e-12);
        assert!((t.std(0) - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        // fmt: 1, 0 → mean 0.5, std sqrt(0.5).
        assert_eq!(t.mean(1), 0.5);
        assert!((t.std(1) - 0.5f64.sqrt()).abs() < 1e-12);
        assert!(t.mean(9).is_nan() && t.std(9).is_nan());
        assert_eq!(t.abstentions(1), Some(2));
        assert_eq!(t.position("len"), Some(2));
    }

    #[test]
    fn unscorable_rows() {
        let t = table();
        assert_eq!(t.unscorable_mask(), vec![false, false, true, false]);
        assert_eq!(t.unscorable(1), Some(false));
        assert_eq!(t.unscorable(4), None);
    }
}
