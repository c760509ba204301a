//! Typed errors for building reward sets and configuring verifiers.
//!
//! Scoring itself never fails: a verifier that cannot judge a completion abstains (`None`), and
//! a verifier that panics or returns a non-finite value is counted in the
//! [`RewardTable`](crate::RewardTable). Errors are only raised where a *configuration* is wrong,
//! and every variant names the reward or value at fault.
//!
//! ```
//! use rlzero_rewards::{RewardError, RewardSet};
//! assert!(matches!(RewardSet::new().validate(), Err(RewardError::EmptySet)));
//! ```

/// Errors raised while configuring rewards.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RewardError {
    /// A [`RewardSet`](crate::RewardSet) with no reward cannot score anything: every row would be
    /// unscorable.
    #[error("the reward set is empty")]
    EmptySet,
    /// A reward's name is empty; names key the logged metrics.
    #[error("reward #{index} has an empty name")]
    EmptyName {
        /// Position of the reward in the set.
        index: usize,
    },
    /// Two rewards share a name, so their columns and metrics could not be told apart.
    #[error("two rewards are named `{name}`; wrap one in `Named` to rename it")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A weight is NaN or infinite, which would poison every total.
    #[error("reward `{name}` has a non-finite weight {weight}")]
    NonFiniteWeight {
        /// The reward whose weight is wrong.
        name: String,
        /// The offending weight.
        weight: f64,
    },
    /// A tag pair cannot be matched unambiguously.
    #[error("invalid tag pair `{open}` … `{close}`: {reason}")]
    InvalidTags {
        /// Opening tag as given.
        open: String,
        /// Closing tag as given.
        close: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// DAPO's soft-overlong window is longer than the maximum length it sits in.
    #[error(
        "soft_punish_cache ({soft_punish_cache}) exceeds max_completion_len ({max_completion_len})"
    )]
    CacheExceedsMax {
        /// `L_max`.
        max_completion_len: usize,
        /// `L_cache`.
        soft_punish_cache: usize,
    },
}
