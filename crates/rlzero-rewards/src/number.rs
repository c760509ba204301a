//! Parsing a written number into an exact rational (or, past `i128`, a float) and comparing two.
//!
//! Accepted forms, after trimming: an optional sign (`+`, `-` or `−`), then
//!
//! * a decimal `1234`, `1,234,567` (commas only as thousands separators), `72.50`, `.5`;
//! * a fraction `3/4`, `-3 / 4` of two decimals;
//! * a LaTeX fraction `\frac{3}{4}` (also `\dfrac`, `\tfrac`) of two numbers.
//!
//! `$`, `\$`, a trailing `%` or `\%`, LaTeX's `{,}` and `\!`/`\,` spacing and one trailing
//! sentence period are ignored: `$1{,}000.` is 1000 and `50%` is 50 (a percentage is compared
//! as written, as GSM8K states them). Anything else — words, units, `1,23` — is not a number.
//!
//! Values are [`Rational`]s, so `72.0 == 72` and `0.75 == 3/4` hold exactly. A number whose
//! digits overflow `i128` becomes an `f64`; comparisons involving one use a relative tolerance
//! of [`RELATIVE_TOLERANCE`].
//!
//! ```
//! use rlzero_rewards::{parse_number, Number, Rational};
//! assert_eq!(parse_number("$1,234"), Some(Number::Exact(Rational::from_integer(1234))));
//! assert!(parse_number("0.75").unwrap().matches(&parse_number(r"\frac{3}{4}").unwrap()));
//! assert!(parse_number("1,23").is_none());
//! ```

use crate::rational::Rational;

/// Relative tolerance for comparisons that fall back to floats (overflowing numbers).
pub const RELATIVE_TOLERANCE: f64 = 1e-9;

/// Nested `\frac` deeper than this is rejected (bounded recursion on adversarial input).
const MAX_FRAC_DEPTH: usize = 4;

/// A parsed number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// Exact value.
    Exact(Rational),
    /// A finite value too large (or too precise) for `i128` rationals.
    Approx(f64),
}

impl Number {
    /// The value as an `f64`.
    pub fn to_f64(&self) -> f64 {
        match self {
            Number::Exact(r) => r.to_f64(),
            Number::Approx(x) => *x,
        }
    }

    /// Numeric equality: exact when both are rationals, otherwise
    /// `|a − b| ≤ RELATIVE_TOLERANCE · max(|a|, |b|)`.
    pub fn matches(&self, other: &Number) -> bool {
        match (self, other) {
            (Number::Exact(a), Number::Exact(b)) => a == b,
            _ => {
                let (a, b) = (self.to_f64(), other.to_f64());
                a == b || (a - b).abs() <= RELATIVE_TOLERANCE * a.abs().max(b.abs())
            }
        }
    }

    fn neg(self) -> Option<Number> {
        match self {
            Number::Exact(r) => r.checked_neg().map(Number::Exact),
            Number::Approx(x) => Some(Number::Approx(-x)),
        }
    }

    fn div(self, other: Number) -> Option<Number> {
        if let (Number::Exact(a), Number::Exact(b)) = (self, other) {
            if let Some(q) = a.checked_div(b) {
                return Some(Number::Exact(q));
            }
            if b.numer() == 0 {
                return None;
            }
        }
        let q = self.to_f64() / other.to_f64();
        q.is_finite().then_some(Number::Approx(q))
    }
}

/// Parses `s` as one number (see the module docs for the accepted forms).
pub fn parse_number(s: &str) -> Option<Number> {
    parse_at(s, MAX_FRAC_DEPTH)
}

fn parse_at(s: &str, depth: usize) -> Option<Number> {
    let cleaned = clean(s);
    let mut body = cleaned.as_str();
    let negative = match body.as_bytes().first() {
        Some(b'-') => true,
        Some(b'+') => false,
        _ => {
            return unsigned(body, depth);
        }
    };
    body = &body[1..];
    let value = unsigned(body, depth)?;
    if negative {
        value.neg()
    } else {
        Some(value)
    }
}

/// Removes currency, percent and LaTeX spacing decorations, and one trailing period.
fn clean(s: &str) -> String {
    let mut t = s
        .trim()
        .replace("\\$", "")
        .replace('$', "")
        .replace("\\%", "%")
        .replace("{,}", ",")
        .replace("\\!", "")
        .replace("\\,", "")
        .replace('\u{2212}', "-");
    for suffix in ['.', '%'] {
        let trimmed = t.trim_end();
        if let Some(stripped) = trimmed.strip_suffix(suffix) {
            t = stripped.trim_end().to_string();
        }
    }
    t.trim().to_string()
}

fn unsigned(s: &str, depth: usize) -> Option<Number> {
    for cmd in ["\\frac", "\\dfrac", "\\tfrac"] {
        if let Some(rest) = s.strip_prefix(cmd) {
            return latex_frac(rest, depth);
        }
    }
    match s.split_once('/') {
        Some((a, b)) => decimal(a.trim())?.div(decimal(b.trim())?),
        None => decimal(s),
    }
}

/// `{A}{B}` after `\frac`, with `A` and `B` parsed as numbers (each may be signed).
fn latex_frac(rest: &str, depth: usize) -> Option<Number> {
    let depth = depth.checked_sub(1)?;
    let (a, rest) = braced(rest.trim_start())?;
    let (b, rest) = braced(rest.trim_start())?;
    if !rest.trim().is_empty() {
        return None;
    }
    parse_at(a, depth)?.div(parse_at(b, depth)?)
}

/// Splits `{inner}rest` at the brace matching the first one.
pub(crate) fn braced(s: &str) -> Option<(&str, &str)> {
    if !s.starts_with('{') {
        return None;
    }
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some((&s[1..i], &s[i + 1..]));
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether `int` is digits, optionally grouped by commas in threes (`1,234,567`).
fn valid_integer_part(int: &str) -> bool {
    let mut groups = int.split(',');
    let first = groups.next().unwrap_or("");
    let all_digits = |g: &str| g.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(first) {
        return false;
    }
    if !int.contains(',') {
        return true;
    }
    (1..=3).contains(&first.len()) && groups.all(|g| g.len() == 3 && all_digits(g))
}

/// An unsigned decimal: `1,234.5`, `72`, `.5`.
fn decimal(s: &str) -> Option<Number> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    if !valid_integer_part(int) {
        return None;
    }
    let frac = frac.unwrap_or("");
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    if s.ends_with('.') {
        return None;
    }
    let digits: String = int
        .chars()
        .filter(|c| *c != ',')
        .chain(frac.chars())
        .collect();
    match exact_decimal(&digits, frac.len()) {
        Some(r) => Some(Number::Exact(r)),
        None => {
            let x: f64 = format!("{}.{}", int.replace(',', ""), frac)
                .trim_end_matches('.')
                .parse()
                .ok()?;
            x.is_finite().then_some(Number::Approx(x))
        }
    }
}

/// `digits / 10^scale` as a rational; `None` on `i128` overflow.
fn exact_decimal(digits: &str, scale: usize) -> Option<Rational> {
    let mut num: i128 = 0;
    for b in digits.bytes() {
        num = num.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    let den = 10i128.checked_pow(u32::try_from(scale).ok()?)?;
    Rational::new(num, den)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(n: i128, d: i128) -> Option<Number> {
        Rational::new(n, d).map(Number::Exact)
    }

    #[test]
    fn integers_signs_and_decorations() {
        assert_eq!(parse_number("72"), exact(72, 1));
        assert_eq!(parse_number("  -5 "), exact(-5, 1));
        assert_eq!(parse_number("+5"), exact(5, 1));
        assert_eq!(parse_number("\u{2212}5"), exact(-5, 1));
        assert_eq!(parse_number("$18"), exact(18, 1));
        assert_eq!(parse_number(r"\$18.00"), exact(18, 1));
        assert_eq!(parse_number("$-3$"), exact(-3, 1));
        assert_eq!(parse_number("50%"), exact(50, 1));
        assert_eq!(parse_number(r"50\%"), exact(50, 1));
        assert_eq!(parse_number("72."), exact(72, 1));
        assert_eq!(parse_number("-0"), exact(0, 1));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(parse_number("1,234"), exact(1234, 1));
        assert_eq!(parse_number("12,345,678.5"), exact(24_691_357, 2));
        assert_eq!(parse_number("1{,}000"), exact(1000, 1));
        assert_eq!(parse_number(r"1\!000"), exact(1000, 1));
        for bad in ["1,23", "1234,567", ",123", "1,,234", "1,234,", "12,34.5"] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_number("72.0"), exact(72, 1));
        assert_eq!(parse_number("0.1"), exact(1, 10));
        assert_eq!(parse_number(".5"), exact(1, 2));
        assert_eq!(parse_number("-2.250"), exact(-9, 4));
        for bad in ["", ".", "1.2.3", "1e5", "five", "3 apples", "--3", "1.-2"] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_number("3/4"), exact(3, 4));
        assert_eq!(parse_number("-6 / 8"), exact(-3, 4));
        assert_eq!(parse_number(r"\frac{3}{4}"), exact(3, 4));
        assert_eq!(parse_number(r"\dfrac{-1}{2}"), exact(-1, 2));
        assert_eq!(parse_number(r"-\tfrac{ 10 }{4}"), exact(-5, 2));
        assert_eq!(parse_number(r"\frac{\frac{1}{2}}{3}"), exact(1, 6));
        assert_eq!(parse_number("1/0"), None);
        assert_eq!(parse_number(r"\frac{1}{0}"), None);
        assert_eq!(parse_number(r"\frac{1}{2"), None);
        assert_eq!(parse_number(r"\frac{1}{2}x"), None);
        let deep = format!("{}1{}", r"\frac{".repeat(50), "}{2}".repeat(50));
        assert_eq!(parse_number(&deep), None);
    }

    #[test]
    fn huge_numbers_fall_back_to_floats() {
        let big = "123456789012345678901234567890123456789012345";
        let Some(Number::Approx(x)) = parse_number(big) else {
            panic!("expected an approximate number");
        };
        assert!((x / 1.234_567_890_123_456_8e44 - 1.0).abs() < 1e-12);
        let bigger = "123456789012345678901234567890123456789012346";
        // Equal to 1e-9 relative: the fallback is a tolerance, not exact.
        assert!(parse_number(big)
            .unwrap()
            .matches(&parse_number(bigger).unwrap()));
        let other = "223456789012345678901234567890123456789012345";
        assert!(!parse_number(big)
            .unwrap()
            .matches(&parse_number(other).unwrap()));
        assert_eq!(parse_number(&"9".repeat(400)), None);
    }

    #[test]
    fn matches_compares_numerically() {
        let p = |s: &str| parse_number(s).unwrap();
        assert!(p("72").matches(&p("72.000")));
        assert!(p("0.75").matches(&p("3/4")));
        assert!(!p("0.75").matches(&p("0.7500001")));
        assert!(!p("1").matches(&p("-1")));
        assert!(Number::Approx(0.0).matches(&p("0")));
    }
}
