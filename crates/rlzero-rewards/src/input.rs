//! What a reward sees: one completion, its prompt and the task's reference data.
//!
//! TRL passes reward functions parallel lists (`prompts`, `completions`, `completion_ids` and
//! every dataset column as `**kwargs`, see `GRPOTrainer._calculate_rewards`). Here one
//! [`RewardInput`] carries one row, and the dataset's reference travels as a typed
//! [`Reference`] instead of an untyped keyword argument, so a verifier can tell "no reference
//! for me" (abstain) from "wrong answer" (0.0).
//!
//! ```
//! use rlzero_rewards::{Reference, RewardInput};
//! let r = Reference::Answer("72".into());
//! let input = RewardInput::new("Q: 70 + 2?", "<answer>72</answer>", &r);
//! assert_eq!(input.completion, "<answer>72</answer>");
//! assert!(!input.truncated);
//! ```

use serde::{Deserialize, Serialize};

/// The reference data a task attaches to a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// No reference: reference-based verifiers abstain.
    #[default]
    None,
    /// A gold answer, either bare (`"72"`) or a full GSM8K solution ending in `#### 72`.
    Answer(String),
    /// A Countdown puzzle (TinyZero): reach `target` from `numbers` with `+ - * /`.
    Countdown {
        /// The numbers the equation may use.
        numbers: Vec<i64>,
        /// The value the equation must reach.
        target: i64,
    },
}

/// What a reward sees for one completion.
#[derive(Debug, Clone, Copy)]
pub struct RewardInput<'a> {
    /// Index of the prompt in the batch.
    pub prompt_index: usize,
    /// Index of this completion among the prompt's samples (its place in the GRPO group).
    pub sample_index: usize,
    /// The prompt text as the model saw it (after the chat template).
    pub prompt: &'a str,
    /// The decoded completion, without special tokens.
    pub completion: &'a str,
    /// The task's reference for this prompt.
    pub reference: &'a Reference,
    /// Number of completion tokens (what DAPO's length penalty measures).
    pub completion_tokens: usize,
    /// The generation cap the completion was sampled under.
    pub max_completion_tokens: usize,
    /// Whether generation stopped at the cap rather than at an end-of-sequence token.
    pub truncated: bool,
}

impl<'a> RewardInput<'a> {
    /// A text-only input: indices and token counts are 0 and `truncated` is false.
    ///
    /// Enough for every text verifier; length-based rewards need the token fields set.
    pub fn new(prompt: &'a str, completion: &'a str, reference: &'a Reference) -> Self {
        Self {
            prompt_index: 0,
            sample_index: 0,
            prompt,
            completion,
            reference,
            completion_tokens: 0,
            max_completion_tokens: 0,
            truncated: false,
        }
    }
}
