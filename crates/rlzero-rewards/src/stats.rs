//! NaN-aware mean and standard deviation, as TRL computes reward statistics.
//!
//! An abstained score is `NaN`, so statistics must skip NaNs rather than propagate them.
//!
//! * `nan_mean(x) = Σ_{x_i not NaN} x_i / n`, with `n` the number of non-NaN values; `NaN` when
//!   `n = 0` (`torch.nanmean`).
//! * `nan_std(x) = sqrt( Σ (x_i − mean)² / (n − 1) )`, Bessel-corrected; `NaN` when `n < 2`.
//!   This is TRL's `nanstd` (`trl/trainer/utils.py`), which multiplies the biased variance by
//!   `n / (n − 1)` and sets the factor to `NaN` when `n ≤ 1`.
//!
//! ```
//! use rlzero_rewards::stats::{nan_mean, nan_std};
//! let x = [1.0, f64::NAN, 3.0];
//! assert_eq!(nan_mean(&x), 2.0);
//! assert!((nan_std(&x) - 2f64.sqrt()).abs() < 1e-12);
//! assert!(nan_std(&[5.0, f64::NAN]).is_nan());
//! ```

/// Mean of the non-NaN values; `NaN` when there are none.
pub fn nan_mean(values: &[f64]) -> f64 {
    let (sum, n) = values
        .iter()
        .filter(|v| !v.is_nan())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Bessel-corrected standard deviation of the non-NaN values; `NaN` when fewer than two.
pub fn nan_std(values: &[f64]) -> f64 {
    let n = values.iter().filter(|v| !v.is_nan()).count();
    if n < 2 {
        return f64::NAN;
    }
    let mean = nan_mean(values);
    let ss: f64 = values
        .iter()
        .filter(|v| !v.is_nan())
        .map(|v| (v - mean) * (v - mean))
        .sum();
    (ss / (n - 1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_skips_nan_and_is_nan_when_empty() {
        assert_eq!(nan_mean(&[2.0, f64::NAN, 4.0, 9.0]), 5.0);
        assert!(nan_mean(&[]).is_nan());
        assert!(nan_mean(&[f64::NAN, f64::NAN]).is_nan());
    }

    #[test]
    fn std_uses_bessel_correction() {
        // values 2, 4, 9 → mean 5, squared deviations 9 + 1 + 16 = 26, / (3 − 1) = 13.
        let s = nan_std(&[2.0, f64::NAN, 4.0, 9.0]);
        assert!((s - 13f64.sqrt()).abs() < 1e-12, "{s}");
        // The biased estimator would give sqrt(26 / 3); make sure we are not computing that.
        assert!((s - (26.0f64 / 3.0).sqrt()).abs() > 1e-3);
    }

    #[test]
    fn std_needs_two_values() {
        assert!(nan_std(&[]).is_nan());
        assert!(nan_std(&[1.0]).is_nan());
        assert!(nan_std(&[1.0, f64::NAN, f64::NAN]).is_nan());
        assert_eq!(nan_std(&[3.0, 3.0]), 0.0);
    }
}
