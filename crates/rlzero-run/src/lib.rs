//! # rlzero-run
//!
//! What a training run leaves behind and how a person sees it: a run folder with the resolved
//! config and step-indexed JSONL logs ([`RunDir`]), SVG training curves ([`plots`]) and a
//! self-contained HTML report ([`report`]). Used by the examples; a library user gets the same
//! files from their own loop:
//!
//! ```no_run
//! # fn demo(trainer: &mut rlzero_grpo::Trainer, prompts: &mut dyn Iterator<Item = rlzero_grpo::TrainPrompt>) -> Result<(), Box<dyn std::error::Error>> {
//! let mut run = rlzero_run::RunDir::create("runs/demo".as_ref(), &trainer.config().to_toml_string()?, &serde_json::json!({}))?;
//! for _ in 0..10 {
//!     let report = trainer.step(prompts)?;
//!     run.log_step(&report, Default::default())?;
//! }
//! rlzero_run::plots::write_plots(run.path())?;
//! rlzero_run::report::write_report(run.path(), "demo", "")?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod error;
pub mod eval;
pub mod explain;
pub mod ledger;
pub mod plots;
pub mod report;
pub mod run_dir;
pub mod svg;
pub mod tasks;

pub use error::{Result, RunError};
pub use eval::{evaluate, EvalOptions, EvalResult};
pub use run_dir::{read_jsonl, RunDir};
