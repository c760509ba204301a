//! # rlzero-grpo
//!
//! Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) and its successors, as
//! TRL 1.16's `GRPOTrainer` computes them.

#![warn(missing_docs)]

pub mod advantages;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generation;
pub mod loss;
mod loss_rows;
pub mod metrics;
pub mod optim;
pub mod precision;
pub mod report;
pub mod sampler_correction;
pub mod schedule;
pub mod trainer;

pub use config::{GrpoConfig, OldLogprobs, RolloutWeights, SamplingConfig};
pub use error::{GrpoError, Result};
pub use generation::TrainPrompt;
pub use loss::{IsLevel, LossConfig, LossType};
pub use metrics::StepMetrics;
pub use optim::{clip_grad_norm, grad_norm, AdamW, AdamWParams, AdamWState};
pub use precision::Precision;
pub use report::{SampleRecord, StepReport};
pub use schedule::LrSchedule;
pub use trainer::Trainer;
