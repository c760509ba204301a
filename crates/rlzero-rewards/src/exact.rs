//! Exact-match reward: the completion's final answer, as text, equals the reference's.
//!
//! The answer is found with the tagged strategies of [`extract`](crate::extract) only
//! (`<answer>` tags, then `####`, then `\boxed{}`), falling back to the whole text. The
//! last-number strategy is deliberately skipped: for a textual answer (`Paris`) it would pick
//! an unrelated number out of the reasoning. The reference goes through the same extraction, so
//! GSM8K-style `"... #### Paris"` references work. Both sides are trimmed and, unless
//! `case_sensitive`, lower-cased.
//!
//! | case | score |
//! |---|---|
//! | reference is not [`Reference::Answer`], or is blank | `None` (abstain) |
//! | answers equal | `1.0` |
//! | otherwise | `0.0` |
//!
//! ```
//! use rlzero_rewards::{ExactMatch, Reference, Reward, RewardInput};
//! let gold = Reference::Answer("Paris".into());
//! let v = ExactMatch::default();
//! assert_eq!(v.score(&RewardInput::new("", "<answer> paris </answer>", &gold)), Some(1.0));
//! assert_eq!(v.score(&RewardInput::new("", "It is Lyon", &gold)), Some(0.0));
//! ```

use crate::extract::find;
use crate::input::{Reference, RewardInput};
use crate::reward::Reward;
use crate::tags::TagPair;

/// Textual equality against a [`Reference::Answer`]. Defaults: `<answer>` tags,
/// case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactMatch {
    /// Tags around the final answer.
    pub answer: TagPair,
    /// Compare case-sensitively (default `false`).
    pub case_sensitive: bool,
}

impl Default for ExactMatch {
    fn default() -> Self {
        Self {
            answer: TagPair::answer(),
            case_sensitive: false,
        }
    }
}

impl ExactMatch {
    /// The normalised answer of `text`: tagged answer or whole text, trimmed, maybe lower-cased.
    pub fn normalize(&self, text: &str) -> String {
        let answer = find(text, &self.answer, false)
            .map_or(text, |(s, _)| s)
            .trim();
        if self.case_sensitive {
            answer.to_string()
        } else {
            answer.to_lowercase()
        }
    }
}

impl Reward for ExactMatch {
    fn name(&self) -> &str {
        "exact_match"
    }

    fn score(&self, input: &RewardInput<'_>) -> Option<f64> {
        let Reference::Answer(reference) = input.reference else {
            return None;
        };
        let gold = self.normalize(reference);
        if gold.is_empty() {
            return None;
        }
        Some(if self.normalize(input.completion) == gold {
            1.0
        } else {
            0.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(v: &ExactMatch, completion: &str, reference: &str) -> Option<f64> {
        let r = Reference::Answer(reference.into());
        v.score(&RewardInput::new("", completion, &r))
    }

    #[test]
    fn extraction_then_whole_text() {
        let v = ExactMatch::default();
        assert_eq!(
            score(
                &v,
                "<think>hmm 3 cities</think><answer>Paris</answer>",
                "Paris"
            ),
            Some(1.0)
        );
        assert_eq!(score(&v, "  Paris\n", "Paris"), Some(1.0));
        assert_eq!(score(&v, r"so \boxed{B}", "b"), Some(1.0));
        assert_eq!(
            score(&v, "reasoning...\n#### Paris", "The capital.\n#### Paris"),
            Some(1.0)
        );
        // No last-number fallback: the whole text is compared.
        assert_eq!(score(&v, "I think 2, so Paris", "Paris"), Some(0.0));
        assert_eq!(
            score(&v, "<answer>Paris, France</answer>", "Paris"),
            Some(0.0)
        );
    }

    #[test]
    fn case_sensitivity() {
        let strict = ExactMatch {
            case_sensitive: true,
            ..ExactMatch::default()
        };
        assert_eq!(score(&strict, "<answer>paris</answer>", "Paris"), Some(0.0));
        assert_eq!(score(&strict, "<answer>Paris</answer>", "Paris"), Some(1.0));
        assert_eq!(score(&ExactMatch::default(), "ÉTÉ", "été"), Some(1.0));
    }

    #[test]
    fn abstains_without_a_usable_reference() {
        let v = ExactMatch::default();
        assert_eq!(score(&v, "x", "   "), None);
        assert_eq!(v.score(&RewardInput::new("", "x", &Reference::None)), None);
        assert_eq!(v.name(), "exact_match");
    }
}
