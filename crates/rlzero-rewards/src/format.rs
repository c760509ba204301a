//! Format reward: the completion is exactly `<think>…</think>` then `<answer>…</answer>`.
//!
//! Rule (1.0 if it holds, else 0.0; never abstains):
//!
//! ```text
//! ws* <think> T </think> ws* <answer> A </answer> ws*
//! ```
//!
//! where `ws*` is any whitespace, `T` and `A` are any text (possibly empty) not containing
//! another tag, and each of the four tags occurs exactly once. With a prefilled opening tag
//! (the R1-Zero template ends the prompt with `Assistant: <think>`), the completion starts
//! directly with `T` and must not contain `<think>` at all.
//!
//! **Differences from TRL's `think_format_reward`** (`trl/rewards/format_rewards.py`, regex
//! `^<think>(?!.*<think>)(.*?)</think>.*$`): TRL only checks the think block — the completion
//! must *start* with `<think>` (no leading whitespace), contain no second `<think>`, and close it;
//! anything may follow. This reward is the R1-Zero format instead (the DeepSeek-R1 paper's R1-Zero template, Table 1, and its format reward;
//! open-r1's `format_reward`): it also requires the answer block and nothing outside the two
//! blocks, because the answer verifiers read `<answer>` and a reward that ignores it can be
//! satisfied without ever committing to an answer. Leading whitespace is tolerated because
//! tokenizers often emit a leading space or newline after a chat template.
//!
//! ```
//! use rlzero_rewards::{FormatReward, Reference, Reward, RewardInput};
//! let f = FormatReward::default();
//! let r = Reference::None;
//! let ok = RewardInput::new("Q", "<think>2+2</think>\n<answer>4</answer>", &r);
//! let bad = RewardInput::new("Q", "<think>2+2</think> so 4", &r);
//! assert_eq!((f.score(&ok), f.score(&bad)), (Some(1.0), Some(0.0)));
//! ```

use crate::input::RewardInput;
use crate::reward::Reward;
use crate::tags::TagPair;

/// Where the opening think tag is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThinkOpening {
    /// The model writes it: the completion must start with it.
    InCompletion,
    /// The prompt already ends with it: the completion must not contain it.
    Prefilled,
    /// Prefilled when the prompt, trailing whitespace removed, ends with the opening tag.
    #[default]
    Detect,
}

/// R1-Zero format check. Defaults: `<think>`/`</think>`, `<answer>`/`</answer>`,
/// [`ThinkOpening::Detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatReward {
    /// Tags around the reasoning.
    pub think: TagPair,
    /// Tags around the answer.
    pub answer: TagPair,
    /// Whether the opening think tag is in the prompt.
    pub think_opening: ThinkOpening,
}

impl Default for FormatReward {
    fn default() -> Self {
        Self {
            think: TagPair::think(),
            answer: TagPair::answer(),
            think_opening: ThinkOpening::Detect,
        }
    }
}

impl FormatReward {
    /// Whether `completion` has the required format.
    pub fn is_well_formed(&self, prompt: &str, completion: &str) -> bool {
        let prefilled = match self.think_opening {
            ThinkOpening::InCompletion => false,
            ThinkOpening::Prefilled => true,
            ThinkOpening::Detect => prompt.trim_end().ends_with(self.think.open()),
        };
        let once = |tag: &str| completion.matches(tag).count() == 1;
        let think_opens = completion.matches(self.think.open()).count();
        if think_opens != usize::from(!prefilled)
            || !once(self.think.close())
            || !once(self.answer.open())
            || !once(self.answer.close())
        {
            return false;
        }
        let rest = if prefilled {
            Some(completion)
        } else {
            completion.trim_start().strip_prefix(self.think.open())
        };
        rest.and_then(|r| r.split_once(self.think.close()))
            .and_then(|(_, r)| r.trim_start().strip_prefix(self.answer.open()))
            .and_then(|r| r.split_once(self.answer.close()))
            .is_some_and(|(_, tail)| tail.trim().is_empty())
    }
}

impl Reward for FormatReward {
    fn name(&self) -> &str {
        "format"
    }
    fn score(&self, input: &RewardInput<'_>) -> Option<f64> {
        Some(if self.is_well_formed(input.prompt, input.completion) {
            1.0
        } else {
            0.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(prompt: &str, completion: &str) -> bool {
        FormatReward::default().is_well_formed(prompt, completion)
    }

    #[test]
    fn accepts_the_r1_zero_format() {
        assert!(ok("Q", "<think>a</think><answer>b</answer>"));
        assert!(ok(
            "Q",
            "\n <think>\nlong\nthought\n</think>\n\n<answer> 42 </answer>\n"
        ));
        assert!(ok("Q", "<think></think><answer></answer>"));
    }

    #[test]
    fn rejects_anything_outside_or_missing() {
        for c in [
            "<think>a</think>",
            "<answer>b</answer>",
            "x<think>a</think><answer>b</answer>",
            "<think>a</think> x <answer>b</answer>",
            "<think>a</think><answer>b</answer> trailing",
            "<answer>b</answer><think>a</think>",
            "<think>a<answer>b</answer></think>",
            "<think>a</think><answer>b",
            "<think>a<think>b</think><answer>c</answer>",
            "<think>a</think><answer>b</answer><answer>c</answer>",
            "",
        ] {
            assert!(!ok("Q", c), "{c:?}");
        }
    }

    #[test]
    fn prefilled_opening_tag() {
        let prompt = "User: 2+2?\nAssistant: <think>\n";
        assert!(ok(prompt, "2+2 is 4</think> <answer>4</answer>"));
        assert!(!ok(prompt, "<think>2+2 is 4</think> <answer>4</answer>"));
        // Without the prompt's tag the same completion is malformed.
        assert!(!ok("User: 2+2?", "2+2 is 4</think> <answer>4</answer>"));
        let forced = FormatReward {
            think_opening: ThinkOpening::Prefilled,
            ..FormatReward::default()
        };
        assert!(forced.is_well_formed("", "x</think><answer>4</answer>"));
        let never = FormatReward {
            think_opening: ThinkOpening::InCompletion,
            ..FormatReward::default()
        };
        assert!(!never.is_well_formed(prompt, "x</think><answer>4</answer>"));
    }

    #[test]
    fn custom_tags() {
        let f = FormatReward {
            think: TagPair::new("<reasoning>", "</reasoning>").unwrap_or_else(|_| TagPair::think()),
            answer: TagPair::new("<final>", "</final>").unwrap_or_else(|_| TagPair::answer()),
            think_opening: ThinkOpening::InCompletion,
        };
        assert!(f.is_well_formed("", "<reasoning>r</reasoning><final>1</final>"));
        assert!(!f.is_well_formed("", "<think>r</think><answer>1</answer>"));
    }

    #[test]
    fn score_is_one_or_zero_and_named() {
        let f = FormatReward::default();
        let r = crate::input::Reference::None;
        assert_eq!(f.name(), "format");
        assert_eq!(f.score(&RewardInput::new("", "nope", &r)), Some(0.0));
    }
}
