//! The [`Reward`] trait: one completion in, one score (or an abstention) out.
//!
//! Returning `None` is TRL's `None`: "this reward does not apply to this row" (for example a math
//! verifier on a Countdown prompt). It becomes `NaN` in the [`RewardTable`](crate::RewardTable)
//! and is skipped by the weighted sum, exactly as TRL converts `None` to `torch.nan` in
//! `GRPOTrainer._calculate_rewards` and sums with `nansum`.
//!
//! Closures become rewards through [`reward_fn`]; any reward can be renamed with [`Named`].
//!
//! ```
//! use rlzero_rewards::{reward_fn, Reference, Reward, RewardInput};
//! let short = reward_fn("short", |x: &RewardInput<'_>| Some(if x.completion.len() < 10 { 1.0 } else { 0.0 }));
//! let r = Reference::None;
//! assert_eq!(short.name(), "short");
//! assert_eq!(short.score(&RewardInput::new("", "ok", &r)), Some(1.0));
//! ```

use std::sync::Arc;

use crate::input::RewardInput;

/// A verifiable reward.
///
/// Implementations must be `Send + Sync`: a [`RewardSet`](crate::RewardSet) scores rows in
/// parallel with rayon, sharing each reward across threads.
pub trait Reward: Send + Sync {
    /// Stable name, used as the column and metric key (`rewards/<name>` in TRL's logs).
    fn name(&self) -> &str;
    /// Scores one completion; `None` abstains.
    fn score(&self, input: &RewardInput<'_>) -> Option<f64>;
}

impl<R: Reward + ?Sized> Reward for Box<R> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn score(&self, input: &RewardInput<'_>) -> Option<f64> {
        (**self).score(input)
    }
}

impl<R: Reward + ?Sized> Reward for Arc<R> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn score(&self, input: &RewardInput<'_>) -> Option<f64> {
        (**self).score(input)
    }
}

/// A reward backed by a closure; build it with [`reward_fn`].
pub struct FnReward<F> {
    name: String,
    f: F,
}

/// Wraps a closure as a [`Reward`] named `name`.
pub fn reward_fn<F>(name: impl Into<String>, f: F) -> FnReward<F>
where
    F: Fn(&RewardInput<'_>) -> Option<f64> + Send + Sync,
{
    FnReward {
        name: name.into(),
        f,
    }
}

impl<F> Reward for FnReward<F>
where
    F: Fn(&RewardInput<'_>) -> Option<f64> + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn score(&self, input: &RewardInput<'_>) -> Option<f64> {
        (self.f)(input)
    }
}

impl<F> std::fmt::Debug for FnReward<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnReward")
            .field("name", &self.name)
            .finish()
    }
}

/// Gives a reward another name, so that two configurations of one verifier can sit in the same
/// [`RewardSet`](crate::RewardSet) (names must be unique there).
#[derive(Debug, Clone)]
pub struct Named<R> {
    name: String,
    inner: R,
}

impl<R: Reward> Named<R> {
    /// Renames `inner` to `name`.
    pub fn new(name: impl Into<String>, inner: R) -> Self {
        Self {
            name: name.into(),
            inner,
        }
    }
    /// The wrapped reward.
    pub fn inner(&self) -> &R {
        &self.inner
    }
}

impl<R: Reward> Reward for Named<R> {
    fn name(&self) -> &str {
        &self.name
    }
    fn score(&self, input: &RewardInput<'_>) -> Option<f64> {
        self.inner.score(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Reference;

    #[test]
    fn closure_sees_the_input_and_can_abstain() {
        let r = reward_fn("len", |x: &RewardInput<'_>| {
            (!x.completion.is_empty()).then_some(x.completion.len() as f64)
        });
        let reference = Reference::None;
        assert_eq!(
            r.score(&RewardInput::new("p", "abc", &reference)),
            Some(3.0)
        );
        assert_eq!(r.score(&RewardInput::new("p", "", &reference)), None);
    }

    #[test]
    fn named_renames_but_keeps_the_score() {
        let base = reward_fn("a", |_: &RewardInput<'_>| Some(0.25));
        let renamed = Named::new("b", base);
        let reference = Reference::None;
        assert_eq!(renamed.name(), "b");
        assert_eq!(renamed.inner().name(), "a");
        assert_eq!(
            renamed.score(&RewardInput::new("", "", &reference)),
            Some(0.25)
        );
    }

    #[test]
    fn boxed_and_arced_rewards_delegate() {
        let boxed: Box<dyn Reward> = Box::new(reward_fn("x", |_: &RewardInput<'_>| Some(2.0)));
        let arced: Arc<dyn Reward> = Arc::new(reward_fn("y", |_: &RewardInput<'_>| None));
        let reference = Reference::None;
        let input = RewardInput::new("", "", &reference);
        assert_eq!((boxed.name(), boxed.score(&input)), ("x", Some(2.0)));
        assert_eq!((arced.name(), arced.score(&input)), ("y", None));
    }
}
