//! Learning-rate schedules, exactly as `transformers.get_scheduler` builds them.
//!
//! transformers wraps each schedule in `torch.optim.lr_scheduler.LambdaLR`, so the learning
//! rate used for optimizer step `k` (counting from **0**) is `base_lr · λ(k)`: `LambdaLR`'s
//! constructor evaluates `λ(0)` before the first `optimizer.step()`, and `Trainer` calls
//! `lr_scheduler.step()` only *after* each optimizer step. With a warmup, the very first
//! update therefore runs at learning rate 0, as it does in transformers/TRL.
//!
//! With `w` warmup steps, `T` total steps and `k` the step index:
//!
//! | schedule               | `k < w`          | `k ≥ w`                                              |
//! |------------------------|------------------|------------------------------------------------------|
//! | `constant`             | 1                | 1                                                    |
//! | `constant_with_warmup` | `k / max(1, w)`  | 1                                                    |
//! | `linear`               | `k / max(1, w)`  | `max(0, (T − k) / max(1, T − w))`                    |
//! | `cosine`               | `k / max(1, w)`  | `max(0, ½ (1 + cos(π · 2 · 0.5 · p)))`, `p = (k − w) / max(1, T − w)` |
//!
//! These are `_get_constant_lambda`, `_get_constant_schedule_with_warmup_lr_lambda`,
//! `_get_linear_schedule_with_warmup_lr_lambda` and `_get_cosine_schedule_with_warmup_lr_lambda`
//! (`num_cycles = 0.5`) of `transformers/optimization.py` (5.x redefines the cosine lambda
//! with `min_lr_rate = 0.0`, which gives the same values), evaluated in the same `f64`
//! operation order. Past `T` the linear schedule stays at 0 while the cosine one rises
//! again (`p > 1`), as in transformers; tests/fixtures/grpo/adamw.json records both.
//!
//! ```
//! use rlzero_grpo::schedule::LrSchedule;
//!
//! // transformers' TrainingArguments default: lr_scheduler_type="linear", warmup_steps=0.
//! let s = LrSchedule::default();
//! assert_eq!(s.lr_at(1e-6, 0, 10), 1e-6);
//! assert_eq!(s.lr_at(1e-6, 10, 10), 0.0);
//!
//! // Warmup: step 0 runs at lr 0, step 1 at a third of it.
//! let s = LrSchedule::Cosine { warmup_steps: 3 };
//! assert_eq!(s.lr_at(1.0, 0, 10), 0.0);
//! assert_eq!(s.lr_at(1.0, 1, 10), 1.0 / 3.0);
//! assert_eq!(s.lr_at(1.0, 3, 10), 1.0);
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{GrpoError, Result};

/// A learning-rate schedule: transformers' `lr_scheduler_type` plus its warmup.
///
/// Serialized internally tagged, e.g. `{"type": "cosine", "warmup_steps": 3}` (TOML:
/// `type = "cosine"`, `warmup_steps = 3`); `warmup_steps` defaults to 0 when absent, as
/// `TrainingArguments.warmup_steps` does. The default is `Linear { warmup_steps: 0 }`,
/// `TrainingArguments`' default `lr_scheduler_type="linear"` (TRL's `GRPOConfig` keeps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// `get_constant_schedule`: λ = 1 at every step.
    Constant,
    /// `get_constant_schedule_with_warmup`: linear ramp from 0 over `warmup_steps`, then 1.
    ConstantWithWarmup {
        /// Number of warmup steps (default 0).
        #[serde(default)]
        warmup_steps: u64,
    },
    /// `get_linear_schedule_with_warmup`: ramp up over `warmup_steps`, then linear decay
    /// to 0 at `total_steps`.
    Linear {
        /// Number of warmup steps (default 0).
        #[serde(default)]
        warmup_steps: u64,
    },
    /// `get_cosine_schedule_with_warmup` with `num_cycles = 0.5` (transformers' default):
    /// ramp up over `warmup_steps`, then a half cosine down to 0 at `total_steps`.
    Cosine {
        /// Number of warmup steps (default 0).
        #[serde(default)]
        warmup_steps: u64,
    },
}

impl Default for LrSchedule {
    /// `Linear { warmup_steps: 0 }`: transformers `TrainingArguments` defaults
    /// (`lr_scheduler_type="linear"`, `warmup_steps=0`).
    fn default() -> Self {
        Self::Linear { warmup_steps: 0 }
    }
}

impl LrSchedule {
    /// Builds a schedule from transformers' `lr_scheduler_type` name (`"constant"`,
    /// `"constant_with_warmup"`, `"linear"`, `"cosine"`) and a warmup length.
    ///
    /// `"constant"` ignores `warmup_steps`, as `get_scheduler` does for it.
    ///
    /// # Errors
    /// [`GrpoError::Config`] (field `lr_scheduler_type`) for any other name.
    pub fn from_name(name: &str, warmup_steps: u64) -> Result<Self> {
        match name {
            "constant" => Ok(Self::Constant),
            "constant_with_warmup" => Ok(Self::ConstantWithWarmup { warmup_steps }),
            "linear" => Ok(Self::Linear { warmup_steps }),
            "cosine" => Ok(Self::Cosine { warmup_steps }),
            other => Err(GrpoError::config(
                "lr_scheduler_type",
                format!(
                    "unknown schedule `{other}` (supported: constant, constant_with_warmup, \
                     linear, cosine)"
                ),
            )),
        }
    }

    /// The warmup length, 0 for [`LrSchedule::Constant`].
    pub fn warmup_steps(&self) -> u64 {
        match *self {
            Self::Constant => 0,
            Self::ConstantWithWarmup { warmup_steps }
            | Self::Linear { warmup_steps }
            | Self::Cosine { warmup_steps } => warmup_steps,
        }
    }

    /// The multiplier λ(`step`) applied to the base learning rate, for a run of
    /// `total_steps` optimizer steps. `step` counts from 0 (see the module docs).
    pub fn lambda(&self, step: u64, total_steps: u64) -> f64 {
        // Python ints are unbounded; i128 keeps `total - step` exact for any u64 inputs.
        let k = i128::from(step);
        let t = i128::from(total_steps);
        let w = i128::from(self.warmup_steps());
        // `float(current_step) / float(max(1, num_warmup_steps))` (constant_with_warmup uses
        // `max(1.0, ...)`, the same value).
        let warmup = || k as f64 / w.max(1) as f64;
        match *self {
            Self::Constant => 1.0,
            Self::ConstantWithWarmup { .. } => {
                if k < w {
                    warmup()
                } else {
                    1.0
                }
            }
            Self::Linear { .. } => {
                if k < w {
                    warmup()
                } else {
                    // max(0.0, float(T - k) / float(max(1, T - w)))
                    f64::max(0.0, (t - k) as f64 / (t - w).max(1) as f64)
                }
            }
            Self::Cosine { .. } => {
                if k < w {
                    warmup()
                } else {
                    let progress = (k - w) as f64 / (t - w).max(1) as f64;
                    let num_cycles = 0.5_f64;
                    // max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))
                    f64::max(
                        0.0,
                        0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos()),
                    )
                }
            }
        }
    }

    /// The learning rate for optimizer step `step` (from 0): `base_lr · λ(step)`, the value
    /// `LambdaLR` puts in `param_groups[0]["lr"]` before that step.
    pub fn lr_at(&self, base_lr: f64, step: u64, total_steps: u64) -> f64 {
        base_lr * self.lambda(step, total_steps)
    }
}

/// Converts a warmup *ratio* into a step count: `ceil(total_steps · warmup_ratio)`.
///
/// transformers 5 takes the ratio through `warmup_steps` itself (`TrainingArguments.
/// get_warmup_steps`: `int(warmup_steps) if warmup_steps >= 1 else
/// math.ceil(num_training_steps * warmup_steps)`); transformers 4 had a separate
/// `warmup_ratio` with the same `ceil`, used when `warmup_steps == 0`.
///
/// ```
/// use rlzero_grpo::schedule::warmup_steps_from_ratio;
/// # fn main() -> rlzero_grpo::Result<()> {
/// assert_eq!(warmup_steps_from_ratio(0.1, 25)?, 3); // ceil(2.5)
/// assert_eq!(warmup_steps_from_ratio(0.0, 25)?, 0);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`GrpoError::Config`] (field `warmup_ratio`) unless `0 ≤ warmup_ratio < 1` (transformers
/// reads `warmup_steps ≥ 1` as a step count, not a ratio).
pub fn warmup_steps_from_ratio(warmup_ratio: f64, total_steps: u64) -> Result<u64> {
    if !(0.0..1.0).contains(&warmup_ratio) {
        return Err(GrpoError::config(
            "warmup_ratio",
            format!("must be in [0, 1), got {warmup_ratio}"),
        ));
    }
    // `math.ceil(num_training_steps * warmup_steps)`; the product is below `total_steps`.
    Ok((total_steps as f64 * warmup_ratio).ceil() as u64)
}
