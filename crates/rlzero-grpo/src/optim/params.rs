//! AdamW hyper-parameters and their validation.

use serde::{Deserialize, Serialize};

use crate::error::{GrpoError, Result};

/// AdamW hyper-parameters. Defaults are those of TRL's `GRPOConfig` / transformers'
/// `TrainingArguments` (which pass them to `torch.optim.AdamW`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWParams {
    /// Base learning rate (the schedule scales it; [`AdamW::step_default_lr`] uses it as is);
    /// default `1e-6` (TRL `GRPOConfig.learning_rate`; transformers' own default is `5e-5`).
    ///
    /// [`AdamW::step_default_lr`]: super::AdamW::step_default_lr
    pub lr: f64,
    /// `β1`, default `0.9` (`TrainingArguments.adam_beta1`).
    pub beta1: f64,
    /// `β2`, default `0.999` (`TrainingArguments.adam_beta2`).
    pub beta2: f64,
    /// `ε`, default `1e-8` (`TrainingArguments.adam_epsilon`).
    pub eps: f64,
    /// Decoupled weight decay, default `0.0` (`TrainingArguments.weight_decay`).
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamWParams {
    /// Checks the ranges `torch.optim.AdamW.__init__` enforces: `lr ≥ 0`, `eps ≥ 0`,
    /// `0 ≤ β1, β2 < 1`, `weight_decay ≥ 0` (all finite).
    ///
    /// # Errors
    /// [`GrpoError::Config`] naming the first offending field.
    pub fn validate(&self) -> Result<()> {
        let nonneg = |field: &str, x: f64| {
            if x.is_finite() && x >= 0.0 {
                Ok(())
            } else {
                Err(GrpoError::config(
                    field,
                    format!("must be finite and ≥ 0, got {x}"),
                ))
            }
        };
        let beta = |field: &str, x: f64| {
            if (0.0..1.0).contains(&x) {
                Ok(())
            } else {
                Err(GrpoError::config(
                    field,
                    format!("must be in [0, 1), got {x}"),
                ))
            }
        };
        nonneg("lr", self.lr)?;
        beta("beta1", self.beta1)?;
        beta("beta2", self.beta2)?;
        nonneg("eps", self.eps)?;
        nonneg("weight_decay", self.weight_decay)
    }
}
