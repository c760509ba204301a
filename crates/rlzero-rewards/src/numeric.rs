//! Numeric-answer reward: the completion's final number equals the reference's.
//!
//! Both sides go through the same [`extract_number_with`] (answer tags, then `####`, then
//! `\boxed{}`, then the last number), so a full GSM8K solution `"... #### 72"` works as a
//! reference as well as a bare `"72"`. Numbers compare exactly as rationals (`72.0 == 72`,
//! `0.75 == 3/4`), or within a relative `1e-9` when one overflows `i128`
//! ([`Number::matches`](crate::Number::matches)).
//!
//! | case | score |
//! |---|---|
//! | reference is not [`Reference::Answer`], or has no number | `None` (abstain) |
//! | completion's number equals the reference's | `1.0` |
//! | different, or the completion has no number | `0.0` |
//!
//! Abstaining on an unparseable reference follows TRL's `accuracy_reward`, which returns `None`
//! when the gold solution cannot be parsed so the example does not count as a failure.
//!
//! ```
//! use rlzero_rewards::{NumericAnswer, Reference, Reward, RewardInput};
//! let gold = Reference::Answer("She earns 3 * 24 = 72.\n#### 72".into());
//! let v = NumericAnswer::default();
//! assert_eq!(v.score(&RewardInput::new("", "<answer>72.0</answer>", &gold)), Some(1.0));
//! assert_eq!(v.score(&RewardInput::new("", "<answer>71</answer>", &gold)), Some(0.0));
//! ```

use crate::extract::extract_number_with;
use crate::input::{Reference, RewardInput};
use crate::number::parse_number;
use crate::reward::Reward;
use crate::tags::TagPair;

/// Numeric correctness against a [`Reference::Answer`]. Default: `<answer>` tags, lenient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumericAnswer {
    /// Tags around the final answer (strategy 1 of the extraction).
    pub answer: TagPair,
    /// Strict format: only the content of the last `answer` tag pair counts, and it must be a
    /// number by itself (`<answer> 72 </answer>`); no fallback to `####`, `\boxed{}` or the
    /// last number. Default false. A recipe that wants the model to learn the format, not
    /// only the arithmetic, turns this on (R1-Zero's rule-based accuracy reward required the
    /// answer in a given place).
    pub strict: bool,
}

impl NumericAnswer {
    /// The strict variant (see [`NumericAnswer::strict`]) with `<answer>` tags.
    pub fn strict() -> Self {
        Self {
            strict: true,
            ..Self::default()
        }
    }
}

impl Default for NumericAnswer {
    fn default() -> Self {
        Self {
            answer: TagPair::answer(),
            strict: false,
        }
    }
}

impl Reward for NumericAnswer {
    fn name(&self) -> &str {
        "numeric_answer"
    }

    fn score(&self, input: &RewardInput<'_>) -> Option<f64> {
        let Reference::Answer(reference) = input.reference else {
            return None;
        };
        let gold = extract_number_with(reference, &self.answer)?;
        let answer = if self.strict {
            self.answer
                .last_content(input.completion)
                .and_then(|c| parse_number(c.trim()))
        } else {
            extract_number_with(input.completion, &self.answer)
        };
        let correct = answer.is_some_and(|n| n.matches(&gold));
        Some(if correct { 1.0 } else { 0.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(completion: &str, reference: &str) -> Option<f64> {
        let r = Reference::Answer(reference.into());
        NumericAnswer::default().score(&RewardInput::new("", completion, &r))
    }

    #[test]
    fn strict_takes_only_a_bare_number_in_the_last_answer_tags() {
        let r = Reference::Answer("#### 72".into());
        let s = |c: &str| NumericAnswer::strict().score(&RewardInput::new("", c, &r));
        assert_eq!(s("<answer> 72 </answer>"), Some(1.0));
        assert_eq!(
            s("<answer>71</answer> then <answer>72.0</answer>"),
            Some(1.0)
        );
        assert_eq!(s("<answer>72</answer> then <answer>71</answer>"), Some(0.0));
        assert_eq!(s("The answer is 72."), Some(0.0), "no tags");
        assert_eq!(
            s("<answer>It is 72</answer>"),
            Some(0.0),
            "not a bare number"
        );
        assert_eq!(s("\\boxed{72} #### 72"), Some(0.0), "no fallback");
        // The lenient default accepts all but the tagged wrong answers.
        let l = |c: &str| score(c, "#### 72");
        assert_eq!(l("The answer is 72."), Some(1.0));
        assert_eq!(l("<answer>It is 72</answer>"), Some(1.0));
    }

    #[test]
    fn gsm8k_references() {
        let gold = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n\
                    Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72";
        assert_eq!(
            score("<think>48+24</think><answer>72</answer>", gold),
            Some(1.0)
        );
        assert_eq!(score("<answer>24</answer>", gold), Some(0.0));
        assert_eq!(score("So she sold 72 clips.", gold), Some(1.0));
        assert_eq!(score("The answer is \\boxed{72}.", gold), Some(1.0));
        assert_eq!(score("#### 72", "72"), Some(1.0));
    }

    #[test]
    fn number_forms() {
        assert_eq!(score("<answer>1,234</answer>", "1234"), Some(1.0));
        assert_eq!(score("<answer>$1,234.00</answer>", "#### 1234"), Some(1.0));
        assert_eq!(score("<answer>-7</answer>", "-7"), Some(1.0));
        assert_eq!(score("<answer>7</answer>", "-7"), Some(0.0));
        assert_eq!(score("<answer>0.5</answer>", "1/2"), Some(1.0));
        assert_eq!(score(r"<answer>\frac{3}{4}</answer>", "0.75"), Some(1.0));
        assert_eq!(score(r"\boxed{\dfrac{6}{8}}", r"\frac{3}{4}"), Some(1.0));
        assert_eq!(
            score("<answer>0.3</answer>", "0.1 + 0.2 = 0.3\n#### 0.3"),
            Some(1.0)
        );
        assert_eq!(score("<answer>25%</answer>", "25"), Some(1.0));
        assert_eq!(score("<answer>72.000001</answer>", "72"), Some(0.0));
    }

    #[test]
    fn missing_answers_score_zero() {
        assert_eq!(score("I do not know.", "72"), Some(0.0));
        assert_eq!(score("<answer>seventy-two</answer>", "72"), Some(0.0));
        assert_eq!(score("", "72"), Some(0.0));
    }

    #[test]
    fn abstains_without_a_numeric_reference() {
        assert_eq!(score("72", "Paris"), None);
        assert_eq!(score("72", ""), None);
        let r = Reference::Countdown {
            numbers: vec![1, 2],
            target: 3,
        };
        assert_eq!(
            NumericAnswer::default().score(&RewardInput::new("", "3", &r)),
            None
        );
        assert_eq!(
            NumericAnswer::default().score(&RewardInput::new("", "3", &Reference::None)),
            None
        );
    }

    #[test]
    fn huge_numbers_overflowing_i128() {
        let big = "340282366920938463463374607431768211457"; // > i128::MAX
        assert_eq!(score(&format!("<answer>{big}</answer>"), big), Some(1.0));
        assert_eq!(
            score(
                "<answer>340282366920938463463374607431768211457</answer>",
                "3402823669209384634633746074317682114570"
            ),
            Some(0.0)
        );
    }
}
