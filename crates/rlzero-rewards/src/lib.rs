//! # rlzero-rewards
//!
//! Verifiable rewards for GRPO, with no dependency on candle: they compile in seconds and are
//! tested on strings alone.
//!
//! ## Design
//!
//! * **No candle.** A verifiable reward is a function of text (and token counts), not of
//!   tensors; keeping this crate free of the ML stack keeps it fast to build, trivially
//!   testable and usable from data-cleaning tools. The trainer turns the
//!   [`RewardTable`] into a tensor.
//! * **One completion at a time.** A [`Reward`] scores one [`RewardInput`]; the
//!   [`RewardSet`] runs all `(input, reward)` pairs in parallel with rayon. The result does not
//!   depend on the thread count.
//! * **Abstention** is TRL's `None`: a reward that does not apply to a row (no reference of its
//!   kind, an unparseable gold answer) returns `None`, stored as `NaN` and skipped by the
//!   weighted sum (`nansum`). A row on which *every* reward abstains is unscorable and its total
//!   is `NaN`, as in TRL's `GRPOTrainer` (`rewards[unscorable_mask] = nan`).
//! * **Failures are contained.** A reward that panics or returns NaN/±∞ scores `0.0` for that
//!   row and is counted ([`RewardTable::panics`], [`RewardTable::non_finite`]); training goes
//!   on. The global panic hook is not touched, so the default hook still prints the panic.
//! * **No regex.** The verifiers use small hand-written scanners and a bounded recursive-descent
//!   parser, each linear in the input and safe on adversarial completions.
//!
//! ## Built-in verifiers
//!
//! | reward | name | rule |
//! |---|---|---|
//! | [`FormatReward`] | `format` | `<think>…</think><answer>…</answer>` and nothing else |
//! | [`NumericAnswer`] | `numeric_answer` | final number equals the reference's, exactly |
//! | [`ExactMatch`] | `exact_match` | final answer equals the reference's, as text |
//! | [`Countdown`] | `countdown` | the equation reaches the target with the given numbers |
//! | [`OverlongPenalty`] | `overlong_penalty` | DAPO's soft length penalty |
//!
//! ```
//! use rlzero_rewards::{FormatReward, NumericAnswer, Reference, RewardInput, RewardSet};
//! let set = RewardSet::new()
//!     .with(NumericAnswer::default(), 1.0)
//!     .with(FormatReward::default(), 0.5);
//! set.validate().unwrap();
//! let gold = Reference::Answer("#### 42".into());
//! let inputs = [
//!     RewardInput::new("Q", "<think>6*7</think><answer>42</answer>", &gold),
//!     RewardInput::new("Q", "42", &gold),
//! ];
//! let table = set.score(&inputs);
//! assert_eq!(table.totals(), vec![1.5, 1.0]);
//! ```

#![warn(missing_docs)]

pub mod countdown;
pub mod equation;
pub mod error;
pub mod exact;
pub mod extract;
pub mod format;
pub mod input;
pub mod number;
pub mod numeric;
pub mod overlong;
pub mod rational;
pub mod reward;
pub mod set;
pub mod stats;
pub mod table;
pub mod tags;

pub use countdown::{Countdown, UseRule};
pub use equation::{parse_equation, Equation, EquationError, EquationLimits};
pub use error::RewardError;
pub use exact::ExactMatch;
pub use extract::{extract_answer, extract_answer_with, extract_number, extract_number_with};
pub use format::{FormatReward, ThinkOpening};
pub use input::{Reference, RewardInput};
pub use number::{parse_number, Number, RELATIVE_TOLERANCE};
pub use numeric::NumericAnswer;
pub use overlong::OverlongPenalty;
pub use rational::Rational;
pub use reward::{reward_fn, FnReward, Named, Reward};
pub use set::RewardSet;
pub use stats::{nan_mean, nan_std};
pub use table::{weighted_total, RewardTable};
pub use tags::TagPair;
