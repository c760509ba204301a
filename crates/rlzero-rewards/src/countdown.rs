//! Countdown reward (TinyZero, `verl/utils/reward_score/countdown.py`): reach the target from
//! the given numbers with `+ - * /` and parentheses.
//!
//! The equation is the content of the last `<answer>…</answer>` (or, when tags are not
//! required and absent, the whole completion). It is parsed by [`parse_equation`] and scored:
//!
//! | case | score |
//! |---|---|
//! | reference is not [`Reference::Countdown`] | `None` (abstain) |
//! | no equation, a syntax error, or over the size/depth limits | `0.0` |
//! | parses, but uses a number not given, breaks the [`UseRule`], divides by zero, overflows, or misses the target | `format_score` |
//! | parses, obeys the rule, and equals the target exactly | `1.0` |
//!
//! Differences from TinyZero, and why:
//!
//! * **exact arithmetic**: TinyZero `eval`s in floats and accepts `|value − target| < 1e-5`;
//!   here values are exact rationals, so `8 / 3 * 3 = 8` holds and near-misses do not.
//! * **a real parser** instead of a character whitelist and `eval`: an `=` (e.g. `1 + 2 = 3`)
//!   or a decimal is a syntax error (0.0, where TinyZero gives `format_score`).
//! * **no unary minus by default**: the Countdown rules allow only the four binary operators,
//!   and TinyZero's number check (`re.findall(r"\d+")`) cannot see a sign, so it lets `-3` pass
//!   as a use of `3`. Enable it with [`EquationLimits::allow_unary_minus`].
//! * **`format_score` defaults to 0.0** (TinyZero: 0.1), so that, by default, only correct
//!   equations are rewarded.
//!
//! ```
//! use rlzero_rewards::{Countdown, Reference, Reward, RewardInput};
//! let puzzle = Reference::Countdown { numbers: vec![44, 19, 35], target: 98 };
//! let v = Countdown::default();
//! let score = |c| v.score(&RewardInput::new("", c, &puzzle));
//! assert_eq!(score("<answer>44 + 19 + 35</answer>"), Some(1.0));
//! assert_eq!(score("<answer>44 + 19</answer>"), Some(0.0)); // 35 unused
//! ```

use crate::equation::{parse_equation, EquationLimits};
use crate::input::{Reference, RewardInput};
use crate::rational::Rational;
use crate::reward::Reward;
use crate::tags::TagPair;

/// How often each given number may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UseRule {
    /// Each given number at most once; some may be left out.
    AtMostOnce,
    /// Every given number exactly once (TinyZero's `validate_equation`, which compares the
    /// sorted lists).
    #[default]
    ExactlyOnce,
}

/// Countdown verifier. Defaults: `<answer>` tags required, [`UseRule::ExactlyOnce`],
/// `format_score` 0.0, equations of at most 256 characters nested at most 64 deep, no unary
/// minus.
#[derive(Debug, Clone, PartialEq)]
pub struct Countdown {
    /// Tags around the equation.
    pub answer: TagPair,
    /// Whether a completion without answer tags scores 0 (`true`, TinyZero) or is read whole.
    pub require_answer_tags: bool,
    /// How the given numbers may be used.
    pub use_rule: UseRule,
    /// Score of an equation that parses but is wrong.
    pub format_score: f64,
    /// Parser limits and options.
    pub limits: EquationLimits,
}

impl Default for Countdown {
    fn default() -> Self {
        Self {
            answer: TagPair::answer(),
            require_answer_tags: true,
            use_rule: UseRule::ExactlyOnce,
            format_score: 0.0,
            limits: EquationLimits::default(),
        }
    }
}

/// Whether the multiset `used` fits the multiset `given` under `rule`.
fn uses_numbers(used: &[i128], given: &[i64], rule: UseRule) -> bool {
    let mut used = used.to_vec();
    let mut given: Vec<i128> = given.iter().map(|&n| i128::from(n)).collect();
    used.sort_unstable();
    given.sort_unstable();
    match rule {
        UseRule::ExactlyOnce => used == given,
        UseRule::AtMostOnce => {
            // Sub-multiset check by merging the two sorted lists.
            let mut g = given.iter().peekable();
            used.iter().all(|u| {
                while g.next_if(|x| *x < u).is_some() {}
                g.next_if(|x| *x == u).is_some()
            })
        }
    }
}

impl Reward for Countdown {
    fn name(&self) -> &str {
        "countdown"
    }

    fn score(&self, input: &RewardInput<'_>) -> Option<f64> {
        let Reference::Countdown { numbers, target } = input.reference else {
            return None;
        };
        let equation = match self.answer.last_content(input.completion) {
            Some(e) => e,
            None if self.require_answer_tags => return Some(0.0),
            None => input.completion,
        };
        let Ok(parsed) = parse_equation(equation, &self.limits) else {
            return Some(0.0);
        };
        let target = Rational::from_integer(i128::from(*target));
        let correct =
            uses_numbers(&parsed.literals, numbers, self.use_rule) && parsed.value == Some(target);
        Some(if correct { 1.0 } else { self.format_score })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score_with(v: &Countdown, completion: &str, numbers: &[i64], target: i64) -> Option<f64> {
        let r = Reference::Countdown {
            numbers: numbers.to_vec(),
            target,
        };
        v.score(&RewardInput::new("", completion, &r))
    }

    fn lenient() -> Countdown {
        Countdown {
            format_score: 0.1,
            ..Countdown::default()
        }
    }

    #[test]
    fn correct_equations() {
        let v = lenient();
        let s = |c: &str| score_with(&v, c, &[3, 5, 8, 2], 32);
        assert_eq!(
            s("<think>..</think><answer>(3 + 5) * 8 / 2</answer>"),
            Some(1.0)
        );
        assert_eq!(s("<answer> 8*(5-3)*2 </answer>"), Some(1.0));
        assert_eq!(
            s("<answer>1</answer> retry <answer>(5 + 3) * (8 / 2)</answer>"),
            Some(1.0)
        );
        // Exact rationals: 8 / 3 * 3 = 8, not 7.999….
        assert_eq!(
            score_with(&v, "<answer>8 / 3 * 3</answer>", &[8, 3, 3], 8),
            Some(1.0)
        );
    }

    #[test]
    fn wrong_but_well_formed_gets_format_score() {
        let v = lenient();
        let s = |c: &str| score_with(&v, c, &[3, 5, 8, 2], 32);
        assert_eq!(s("<answer>3 + 5 + 8 + 2</answer>"), Some(0.1)); // wrong value
        assert_eq!(s("<answer>(3 + 5) * 4</answer>"), Some(0.1)); // 4 not given
        assert_eq!(s("<answer>8 * 2 * 2</answer>"), Some(0.1)); // 2 reused
        assert_eq!(s("<answer>(3 + 5) * 8 / (2 - 2)</answer>"), Some(0.1)); // division by zero
        assert_eq!(
            score_with(&v, "<answer>7 * 5</answer>", &[7, 5, 1], 35),
            Some(0.1)
        ); // 1 unused
    }

    #[test]
    fn malformed_scores_zero() {
        let v = lenient();
        let s = |c: &str| score_with(&v, c, &[3, 5, 8, 2], 32);
        assert_eq!(s("(3 + 5) * 8 / 2"), Some(0.0)); // no tags
        assert_eq!(s("<answer>(3 + 5) * 8 / 2 = 32</answer>"), Some(0.0));
        assert_eq!(s("<answer>three plus five</answer>"), Some(0.0));
        assert_eq!(s("<answer></answer>"), Some(0.0));
        assert_eq!(s("<answer>-3 + 5 * 8 - 2</answer>"), Some(0.0)); // unary minus off
        let deep = format!("<answer>{}3{}</answer>", "(".repeat(200), ")".repeat(200));
        assert_eq!(s(&deep), Some(0.0));
        let nested = format!(
            "<answer>{}3 + 5{} * 8 / 2</answer>",
            "(".repeat(70),
            ")".repeat(70)
        );
        assert_eq!(s(&nested), Some(0.0));
    }

    #[test]
    fn overflow_is_wrong_not_a_crash() {
        let n = i64::MAX;
        let v = lenient();
        let eq = format!("<answer>{n} * {n} * {n} / {n} / {n}</answer>");
        assert_eq!(score_with(&v, &eq, &[n, n, n, n, n], n), Some(0.1));
    }

    #[test]
    fn at_most_once_rule() {
        let v = Countdown {
            use_rule: UseRule::AtMostOnce,
            ..lenient()
        };
        assert_eq!(
            score_with(&v, "<answer>7 * 5</answer>", &[7, 5, 1], 35),
            Some(1.0)
        );
        assert_eq!(
            score_with(&v, "<answer>7 * 5 * 1</answer>", &[7, 5, 1], 35),
            Some(1.0)
        );
        assert_eq!(
            score_with(&v, "<answer>7 * 5 * 1 * 1</answer>", &[7, 5, 1], 35),
            Some(0.1)
        );
        assert_eq!(
            score_with(&v, "<answer>7 * 5 * 1 * 1</answer>", &[1, 7, 1, 5], 35),
            Some(1.0)
        );
        assert_eq!(
            score_with(&v, "<answer>35</answer>", &[7, 5], 35),
            Some(0.1)
        );
    }

    #[test]
    fn options() {
        let whole = Countdown {
            require_answer_tags: false,
            ..Countdown::default()
        };
        assert_eq!(score_with(&whole, "3 + 4", &[3, 4], 7), Some(1.0));
        assert_eq!(score_with(&whole, "3 + 4", &[3, 4], 8), Some(0.0)); // format_score 0
        let unary = Countdown {
            limits: EquationLimits {
                allow_unary_minus: true,
                ..EquationLimits::default()
            },
            ..Countdown::default()
        };
        assert_eq!(
            score_with(&unary, "<answer>-3 + 10</answer>", &[3, 10], 7),
            Some(1.0)
        );
        assert_eq!(
            score_with(&unary, "<answer>-5 - -2</answer>", &[5, 2], -3),
            Some(1.0)
        );
    }

    #[test]
    fn abstains_on_other_references() {
        let v = Countdown::default();
        let r = Reference::Answer("7".into());
        assert_eq!(
            v.score(&RewardInput::new("", "<answer>3+4</answer>", &r)),
            None
        );
        assert_eq!(v.name(), "countdown");
    }

    #[test]
    fn multiset_check() {
        assert!(uses_numbers(&[2, 1, 2], &[2, 2, 1], UseRule::ExactlyOnce));
        assert!(!uses_numbers(&[2, 1], &[2, 2, 1], UseRule::ExactlyOnce));
        assert!(uses_numbers(&[2, 1], &[2, 2, 1], UseRule::AtMostOnce));
        assert!(!uses_numbers(&[2, 2, 2], &[2, 2, 1], UseRule::AtMostOnce));
        assert!(!uses_numbers(&[3], &[2, 2, 1], UseRule::AtMostOnce));
        assert!(uses_numbers(&[], &[2], UseRule::AtMostOnce));
    }
}
