//! A weighted set of rewards, scored over a batch in parallel.
//!
//! [`RewardSet::score`] evaluates every `(input, reward)` pair with rayon and returns a
//! [`RewardTable`]. Each call is isolated:
//!
//! | reward returns | stored value | counted in |
//! |---|---|---|
//! | `Some(v)`, `v` finite | `v` | — |
//! | `None` | `NaN` (abstained) | — |
//! | `Some(NaN | ±∞)` | `0.0` (a failure) | `non_finite` |
//! | panics | `0.0` (a failure) | `panics` |
//!
//! A non-finite value is a bug in the verifier, not a deliberate abstention (that is what `None`
//! is for), so it is scored like a panic rather than silently turned into an abstention. Storing
//! it as-is would poison every mean and advantage of its group.
//!
//! Panics are caught with [`std::panic::catch_unwind`], so a buggy user closure costs one score,
//! not the training run. The process-wide panic hook is left alone (a library must not mutate
//! global state), so the default hook still prints each panic's message to stderr; install your
//! own hook to silence it. Under `panic = "abort"` nothing can be caught.
//!
//! The result does not depend on the number of rayon threads: each cell is computed
//! independently, rayon's indexed `collect` keeps row and column order, and the counters and
//! totals are reduced sequentially afterwards.
//!
//! ```
//! use rlzero_rewards::{reward_fn, Reference, RewardInput, RewardSet};
//! let set = RewardSet::new()
//!     .with(reward_fn("one", |_: &RewardInput<'_>| Some(1.0)), 2.0)
//!     .with(reward_fn("skip", |_: &RewardInput<'_>| None), 1.0);
//! set.validate().unwrap();
//! let r = Reference::None;
//! let table = set.score(&[RewardInput::new("p", "c", &r)]);
//! assert_eq!(table.totals(), vec![2.0]);
//! assert!(table.values[0][1].is_nan());
//! ```

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rayon::prelude::*;

use crate::error::RewardError;
use crate::input::RewardInput;
use crate::reward::Reward;
use crate::table::RewardTable;

/// An ordered list of rewards with their weights.
#[derive(Default)]
pub struct RewardSet {
    entries: Vec<(Box<dyn Reward>, f64)>,
}

/// What one isolated reward call produced.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Scored(f64),
    Abstained,
    NonFinite,
    Panicked,
}

impl RewardSet {
    /// An empty set; add rewards with [`with`](Self::with) or [`push`](Self::push).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `reward` with `weight` (builder style). Call [`validate`](Self::validate) once the
    /// set is complete.
    #[must_use]
    pub fn with(mut self, reward: impl Reward + 'static, weight: f64) -> Self {
        self.entries.push((Box::new(reward), weight));
        self
    }

    /// Adds an already boxed reward with `weight`.
    pub fn push(&mut self, reward: Box<dyn Reward>, weight: f64) {
        self.entries.push((reward, weight));
    }

    /// Number of rewards.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set has no reward.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reward names, in column order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(r, _)| r.name()).collect()
    }

    /// Reward weights, in column order.
    pub fn weights(&self) -> Vec<f64> {
        self.entries.iter().map(|(_, w)| *w).collect()
    }

    /// Checks that the set is usable: non-empty, every name non-empty and unique, every weight
    /// finite. [`score`](Self::score) does not re-check; a trainer validates once at start-up.
    pub fn validate(&self) -> Result<(), RewardError> {
        if self.entries.is_empty() {
            return Err(RewardError::EmptySet);
        }
        let mut seen = HashSet::new();
        for (index, (reward, weight)) in self.entries.iter().enumerate() {
            let name = reward.name();
            if name.is_empty() {
                return Err(RewardError::EmptyName { index });
            }
            if !seen.insert(name) {
                return Err(RewardError::DuplicateName { name: name.into() });
            }
            if !weight.is_finite() {
                return Err(RewardError::NonFiniteWeight {
                    name: name.into(),
                    weight: *weight,
                });
            }
        }
        Ok(())
    }

    /// Scores every input with every reward, in parallel; see the module docs for how
    /// abstentions, panics and non-finite values are recorded.
    pub fn score(&self, inputs: &[RewardInput<'_>]) -> RewardTable {
        let outcomes: Vec<Vec<Outcome>> = inputs
            .par_iter()
            .map(|input| {
                self.entries
                    .par_iter()
                    .map(|(reward, _)| call(reward.as_ref(), input))
                    .collect()
            })
            .collect();

        let k = self.entries.len();
        let mut panics = vec![0usize; k];
        let mut non_finite = vec![0usize; k];
        let values = outcomes
            .iter()
            .map(|row| {
                row.iter()
                    .zip(panics.iter_mut().zip(non_finite.iter_mut()))
                    .map(|(outcome, (p, nf))| match *outcome {
                        Outcome::Scored(v) => v,
                        Outcome::Abstained => f64::NAN,
                        Outcome::NonFinite => {
                            *nf += 1;
                            0.0
                        }
                        Outcome::Panicked => {
                            *p += 1;
                            0.0
                        }
                    })
                    .collect()
            })
            .collect();

        RewardTable {
            names: self.names().into_iter().map(String::from).collect(),
            weights: self.weights(),
            values,
            panics,
            non_finite,
        }
    }
}

impl std::fmt::Debug for RewardSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(r, w)| (r.name(), w)))
            .finish()
    }
}

/// One reward call, isolated from panics.
fn call(reward: &dyn Reward, input: &RewardInput<'_>) -> Outcome {
    // AssertUnwindSafe: after a panic we only read the returned value; a reward whose own
    // interior state is left inconsistent is the reward's bug, and a poisoned Mutex reports it.
    match catch_unwind(AssertUnwindSafe(|| reward.score(input))) {
        Ok(Some(v)) if v.is_finite() => Outcome::Scored(v),
        Ok(Some(_)) => Outcome::NonFinite,
        Ok(None) => Outcome::Abstained,
        Err(_) => Outcome::Panicked,
    }
}
