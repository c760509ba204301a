//! Soft overlong punishment (DAPO, Yu et al. 2025, eq. 13).
//!
//! With `L_max` the maximum completion length and `L_cache` the soft window before it, a
//! completion of `|y|` tokens gets
//!
//! ```text
//!            ⎧ 0                                  |y| ≤ L_max − L_cache
//! R(y)  =    ⎨ ((L_max − L_cache) − |y|) / L_cache   L_max − L_cache < |y| ≤ L_max
//!            ⎩ −1                                 L_max < |y|
//! ```
//!
//! This is TRL's `get_soft_overlong_punishment(max_completion_len, soft_punish_cache)`
//! (`trl/rewards/other_rewards.py`) case for case: with `L_cache = 0` the middle case is empty,
//! so there is never a division by zero. TRL does not check `L_cache ≤ L_max`; here that is a
//! constructor error, since a window wider than the maximum would penalise the empty completion.
//! The length is [`RewardInput::completion_tokens`]. It never abstains.
//!
//! ```
//! use rlzero_rewards::{OverlongPenalty, Reference, Reward, RewardInput};
//! let p = OverlongPenalty::new(100, 20).unwrap();
//! let r = Reference::None;
//! let input = RewardInput { completion_tokens: 90, ..RewardInput::new("", "", &r) };
//! assert_eq!(p.score(&input), Some(-0.5)); // TRL's docstring example
//! ```

use crate::error::RewardError;
use crate::input::RewardInput;
use crate::reward::Reward;

/// DAPO's soft length penalty. Construct with [`OverlongPenalty::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlongPenalty {
    max_completion_len: usize,
    soft_punish_cache: usize,
}

impl OverlongPenalty {
    /// `L_max = max_completion_len`, `L_cache = soft_punish_cache`; errors when
    /// `L_cache > L_max`.
    pub fn new(max_completion_len: usize, soft_punish_cache: usize) -> Result<Self, RewardError> {
        if soft_punish_cache > max_completion_len {
            return Err(RewardError::CacheExceedsMax {
                max_completion_len,
                soft_punish_cache,
            });
        }
        Ok(Self {
            max_completion_len,
            soft_punish_cache,
        })
    }

    /// `L_max`.
    pub fn max_completion_len(&self) -> usize {
        self.max_completion_len
    }

    /// `L_cache`.
    pub fn soft_punish_cache(&self) -> usize {
        self.soft_punish_cache
    }

    /// The penalty for a completion of `len` tokens.
    pub fn penalty(&self, len: usize) -> f64 {
        // Cannot underflow: the constructor guarantees L_cache ≤ L_max.
        let soft_start = self.max_completion_len - self.soft_punish_cache;
        if len <= soft_start {
            0.0
        } else if len <= self.max_completion_len {
            // Both operands are below 2^53 in practice, so the subtraction in f64 is exact.
            (soft_start as f64 - len as f64) / self.soft_punish_cache as f64
        } else {
            -1.0
        }
    }
}

impl Reward for OverlongPenalty {
    fn name(&self) -> &str {
        "overlong_penalty"
    }

    fn score(&self, input: &RewardInput<'_>) -> Option<f64> {
        Some(self.penalty(input.completion_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_trl_case_for_case() -> Result<(), RewardError> {
        let p = OverlongPenalty::new(100, 20)?;
        let cases = [
            (0, 0.0),
            (80, 0.0),
            (81, -0.05),
            (90, -0.5),
            (99, -0.95),
            (100, -1.0),
            (101, -1.0),
            (10_000, -1.0),
        ];
        for (len, want) in cases {
            assert!(
                (p.penalty(len) - want).abs() < 1e-12,
                "len {len}: {}",
                p.penalty(len)
            );
        }
        Ok(())
    }

    #[test]
    fn zero_cache_is_a_hard_cutoff() -> Result<(), RewardError> {
        let p = OverlongPenalty::new(50, 0)?;
        assert_eq!(p.penalty(50), 0.0);
        assert_eq!(p.penalty(51), -1.0);
        let full = OverlongPenalty::new(10, 10)?;
        assert_eq!(full.penalty(0), 0.0);
        assert_eq!(full.penalty(5), -0.5);
        Ok(())
    }

    #[test]
    fn cache_larger_than_max_is_an_error() {
        assert_eq!(
            OverlongPenalty::new(10, 11),
            Err(RewardError::CacheExceedsMax {
                max_completion_len: 10,
                soft_punish_cache: 11
            })
        );
    }

    #[test]
    fn reads_completion_tokens() -> Result<(), RewardError> {
        let p = OverlongPenalty::new(8, 4)?;
        let r = crate::input::Reference::None;
        let input = RewardInput {
            completion_tokens: 7,
            ..RewardInput::new("", "ignored text", &r)
        };
        assert_eq!(p.score(&input), Some(-0.75));
        assert_eq!(p.name(), "overlong_penalty");
        Ok(())
    }
}
