//! Opening/closing tag pairs (`<think>`/`</think>`, `<answer>`/`</answer>`) and where they are.
//!
//! Tags are found by plain substring search; a pair is rejected at construction when either tag
//! is empty or one contains the other, because then "the next closing tag" is ambiguous.
//!
//! ```
//! use rlzero_rewards::TagPair;
//! let t = TagPair::answer();
//! assert_eq!(t.last_content("<answer>1</answer> then <answer> 2 </answer>"), Some(" 2 "));
//! assert!(TagPair::new("<a>", "<a>").is_err());
//! ```

use crate::error::RewardError;

/// An opening and a closing tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagPair {
    open: String,
    close: String,
}

impl TagPair {
    /// A custom pair; errors when a tag is empty or one tag contains the other.
    pub fn new(open: impl Into<String>, close: impl Into<String>) -> Result<Self, RewardError> {
        let (open, close) = (open.into(), close.into());
        let reason = if open.is_empty() || close.is_empty() {
            Some("tags must not be empty")
        } else if open.contains(&close) || close.contains(&open) {
            Some("one tag contains the other")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(RewardError::InvalidTags {
                open,
                close,
                reason,
            }),
            None => Ok(Self { open, close }),
        }
    }

    /// `<think>` … `</think>` (DeepSeek-R1-Zero's template).
    pub fn think() -> Self {
        Self {
            open: "<think>".into(),
            close: "</think>".into(),
        }
    }

    /// `<answer>` … `</answer>` (DeepSeek-R1-Zero's template, TinyZero's Countdown).
    pub fn answer() -> Self {
        Self {
            open: "<answer>".into(),
            close: "</answer>".into(),
        }
    }

    /// The opening tag.
    pub fn open(&self) -> &str {
        &self.open
    }

    /// The closing tag.
    pub fn close(&self) -> &str {
        &self.close
    }

    /// Untrimmed content of the last *complete* pair in `text`: the text between the last
    /// closing tag and the last opening tag before it. A trailing unclosed opening tag (a
    /// truncated completion) is ignored.
    pub fn last_content<'t>(&self, text: &'t str) -> Option<&'t str> {
        let close = text.rfind(&self.close)?;
        let open = text[..close].rfind(&self.open)?;
        text.get(open + self.open.len()..close)
    }
}
