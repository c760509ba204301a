//! Finding the final answer in a completion (or in a GSM8K-style reference).
//!
//! Strategies, in priority order — the first that finds something wins:
//!
//! 1. the content of the last complete `<answer>…</answer>` (R1-Zero template);
//! 2. the rest of the line after the last `####` (GSM8K's answer marker);
//! 3. the content of the last `\boxed{…}` with balanced, possibly nested braces (MATH);
//! 4. the last number in the text (`-3`, `1,234.5`, `3/4`, `\frac{3}{4}`).
//!
//! [`extract_number`] first tries the whole text as a number; then, when the extracted answer is
//! not itself a number (`<answer>\boxed{72}</answer>`, `<answer>72 apples</answer>`), it applies
//! the same strategies *inside* the answer, a bounded number of times.
//!
//! Every strategy is a linear scan, so hostile completions (thousands of unclosed `\boxed{`)
//! cost linear time.
//!
//! ```
//! use rlzero_rewards::{extract_answer, extract_number, parse_number};
//! assert_eq!(extract_answer("so 3 + 4 = 7.\n#### 7").as_deref(), Some("7"));
//! assert_eq!(extract_answer(r"\boxed{\frac{1}{2}}").as_deref(), Some(r"\frac{1}{2}"));
//! assert_eq!(extract_number("<answer>The total is $1,200.</answer>"), parse_number("1200"));
//! ```

use crate::number::{braced, parse_number, Number};
use crate::tags::TagPair;

/// How deep [`extract_number`] looks inside an extracted answer that is not a bare number.
const MAX_NESTING: usize = 4;

/// Which strategy found an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Tags,
    Hashes,
    Boxed,
    LastNumber,
}

/// The last answer found by strategies 1–3 (and 4 when `last_number`), untrimmed.
pub(crate) fn find<'t>(
    text: &'t str,
    tags: &TagPair,
    last_number: bool,
) -> Option<(&'t str, Source)> {
    if let Some(s) = tags.last_content(text) {
        return Some((s, Source::Tags));
    }
    if let Some(s) = after_hashes(text) {
        return Some((s, Source::Hashes));
    }
    if let Some(s) = last_boxed(text) {
        return Some((s, Source::Boxed));
    }
    if last_number {
        return last_number_token(text).map(|s| (s, Source::LastNumber));
    }
    None
}

/// The final answer of `text` with `<answer>` tags, trimmed (see the module docs).
pub fn extract_answer(text: &str) -> Option<String> {
    extract_answer_with(text, &TagPair::answer())
}

/// [`extract_answer`] with custom answer tags.
pub fn extract_answer_with(text: &str, tags: &TagPair) -> Option<String> {
    find(text, tags, true).map(|(s, _)| s.trim().to_string())
}

/// The final answer of `text` as a number, with `<answer>` tags (see the module docs).
pub fn extract_number(text: &str) -> Option<Number> {
    extract_number_with(text, &TagPair::answer())
}

/// [`extract_number`] with custom answer tags.
pub fn extract_number_with(text: &str, tags: &TagPair) -> Option<Number> {
    let mut text = text;
    for _ in 0..=MAX_NESTING {
        if let Some(n) = parse_number(text) {
            return Some(n);
        }
        let (candidate, source) = find(text, tags, true)?;
        if let Some(n) = parse_number(candidate) {
            return Some(n);
        }
        if source == Source::LastNumber {
            return None;
        }
        text = candidate;
    }
    None
}

/// Rest of the line after the last `####`, trimmed; `None` when that is empty.
fn after_hashes(text: &str) -> Option<&str> {
    let idx = text.rfind("####")?;
    let rest = &text[idx + 4..];
    let line = rest.split('\n').next().unwrap_or("").trim();
    (!line.is_empty()).then_some(line)
}

/// Content of the last `\boxed{…}` whose braces balance.
fn last_boxed(text: &str) -> Option<&str> {
    // Scanning a candidate may stop at the start of the previous (later) failed candidate: if it
    // has not closed by then, the later unclosed brace keeps its depth above zero to the end.
    let mut limit = text.len();
    for (pos, _) in text.rmatch_indices("\\boxed") {
        let after = &text[pos + "\\boxed".len()..limit.max(pos + "\\boxed".len())];
        let trimmed = after.trim_start();
        if trimmed.starts_with('{') {
            if let Some((inner, _)) = braced(trimmed) {
                return Some(inner);
            }
            limit = pos;
        } else if after.starts_with(' ') {
            // `\boxed 5` (no braces), as in MATH's `last_boxed_only_string`.
            let token = trimmed
                .split(|c: char| c.is_whitespace() || c == '$')
                .next();
            if let Some(t) = token.filter(|t| !t.is_empty()) {
                return Some(t);
            }
        }
    }
    None
}

/// Span of the last number-looking token: `-3`, `1,234.5`, `3/4`, `\frac{3}{4}`.
fn last_number_token(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut last = None;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(end) = frac_at(text, i).or_else(|| number_at(bytes, i)) {
            last = Some(&text[i..end]);
            i = end;
        } else {
            i += 1;
        }
    }
    last
}

/// End of a `\frac{…}{…}` (or `\dfrac`, `\tfrac`) starting at `i`.
fn frac_at(text: &str, i: usize) -> Option<usize> {
    let rest = text.get(i..)?;
    let cmd = ["\\frac", "\\dfrac", "\\tfrac"]
        .into_iter()
        .find(|c| rest.starts_with(c))?;
    let (_, after_a) = braced(&rest[cmd.len()..])?;
    let (_, after_b) = braced(after_a)?;
    Some(text.len() - after_b.len())
}

/// End of a plain number starting at `i`: `-?\d+(,\d{3})*(\.\d+)?(/\d+)?`.
///
/// A `-` is a sign only at the start or after a space or an opening/relational character, so
/// `10-3` reads as `10` then `3`, not `-3`.
fn number_at(bytes: &[u8], i: usize) -> Option<usize> {
    let digit = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_digit);
    let mut j = i;
    if bytes.get(j) == Some(&b'-') {
        let sign_ok = i == 0
            || matches!(
                bytes[i - 1],
                b' ' | b'\t' | b'\n' | b'(' | b'=' | b':' | b'$' | b'[' | b'{' | b','
            );
        if !sign_ok {
            return None;
        }
        j += 1;
    }
    // A digit right before `i` means we are inside a longer token; only start at its beginning.
    if !digit(j) || (i > 0 && digit(i - 1)) {
        return None;
    }
    while digit(j) {
        j += 1;
    }
    while bytes.get(j) == Some(&b',') && (1..=3).all(|d| digit(j + d)) && !digit(j + 4) {
        j += 4;
    }
    if bytes.get(j) == Some(&b'.') && digit(j + 1) {
        j += 1;
        while digit(j) {
            j += 1;
        }
    }
    if bytes.get(j) == Some(&b'/') && digit(j + 1) {
        j += 1;
        while digit(j) {
            j += 1;
        }
    }
    Some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(s: &str) -> Option<String> {
        extract_answer(s)
    }

    #[test]
    fn answer_tags_win_and_the_last_complete_pair_is_used() {
        assert_eq!(
            ans("<answer>1</answer> #### 2 \\boxed{3}").as_deref(),
            Some("1")
        );
        assert_eq!(
            ans("<answer>1</answer> <answer> 2 </answer>").as_deref(),
            Some("2")
        );
        // A truncated trailing answer is ignored in favour of the last complete one.
        assert_eq!(ans("<answer>1</answer> <answer>2").as_deref(), Some("1"));
        assert_eq!(ans("<answer></answer> 5").as_deref(), Some(""));
    }

    #[test]
    fn hashes_then_boxed_then_last_number() {
        assert_eq!(
            ans("Natalia sold 48/2 = 24 clips.\n#### 72").as_deref(),
            Some("72")
        );
        assert_eq!(ans("#### 1,234\nmore text 9").as_deref(), Some("1,234"));
        assert_eq!(ans("####\n5").as_deref(), Some("5")); // empty marker line: falls through
        assert_eq!(
            ans(r"\boxed{1} then \boxed{\frac{1}{2}}").as_deref(),
            Some(r"\frac{1}{2}")
        );
        assert_eq!(ans(r"\boxed{a{b{c}}d} 7").as_deref(), Some("a{b{c}}d"));
        assert_eq!(ans(r"\boxed{5} and \boxed{6").as_deref(), Some("5"));
        assert_eq!(ans(r"so \boxed 42$.").as_deref(), Some("42"));
        assert_eq!(ans("I got 3 apples, then 12 more").as_deref(), Some("12"));
        assert_eq!(ans("no numbers here"), None);
    }

    #[test]
    fn last_number_tokens() {
        assert_eq!(ans("the answer is -5").as_deref(), Some("-5"));
        assert_eq!(ans("10-3").as_deref(), Some("3"));
        assert_eq!(ans("costs $1,234.50.").as_deref(), Some("1,234.50"));
        assert_eq!(ans("1,2,3").as_deref(), Some("3"));
        assert_eq!(ans("ratio 3/4 overall").as_deref(), Some("3/4"));
        assert_eq!(ans(r"is \frac{3}{4}.").as_deref(), Some(r"\frac{3}{4}"));
        assert_eq!(ans("x7y").as_deref(), Some("7"));
    }

    #[test]
    fn numbers_inside_answers() {
        let n = |s: &str| extract_number(s);
        assert_eq!(n(r"<answer>\boxed{72}</answer>"), parse_number("72"));
        assert_eq!(n("<answer>72 apples</answer>"), parse_number("72"));
        assert_eq!(n("<answer>seventy-two</answer> 72"), None);
        assert_eq!(n(r"\frac{1}{3}"), parse_number("1/3"));
        assert_eq!(n("He pays 5*4 = 20 dollars.\n#### 20"), parse_number("20"));
        // The last `\boxed` is the innermost one, as in MATH's `last_boxed_only_string`.
        let nested = format!("{}7{}", r"\boxed{".repeat(20), "}".repeat(20));
        assert_eq!(n(&nested), parse_number("7"));
        // Tags → `####` line `5}` → last number: three strategies deep.
        assert_eq!(n(r"<answer>so \boxed{#### 5}</answer>"), parse_number("5"));
    }

    #[test]
    fn custom_tags() {
        let tags = TagPair::new("[ans]", "[/ans]").unwrap_or_else(|_| TagPair::answer());
        assert_eq!(
            extract_answer_with("[ans] 4 [/ans] 5", &tags).as_deref(),
            Some("4")
        );
        assert_eq!(
            extract_number_with("<answer>4</answer> 5", &tags),
            parse_number("5")
        );
    }

    #[test]
    fn adversarial_unclosed_boxes_are_linear_and_safe() {
        let text = r"\boxed{".repeat(20_000);
        assert_eq!(ans(&text), None);
        let text = format!(r"\boxed{{9}}{}", r"\boxed{".repeat(20_000));
        assert_eq!(ans(&text).as_deref(), Some("9"));
    }
}
