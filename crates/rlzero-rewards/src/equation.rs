//! A bounded recursive-descent parser and exact evaluator for Countdown equations.
//!
//! Grammar (whitespace between tokens is ignored):
//!
//! ```text
//! expr   := term   (('+' | '-') term)*
//! term   := factor (('*' | '/') factor)*
//! factor := INTEGER | '(' expr ')' | '-' factor      -- the last only with `allow_unary_minus`
//! ```
//!
//! Operators are left-associative with the usual precedence. Values are exact [`Rational`]s:
//! `8 / 3 * 3` is exactly 8, where TinyZero's float `eval` needs a `1e-5` tolerance. Division by
//! zero or `i128` overflow does not stop parsing; it makes the value `None` ("no value"), so a
//! well-formed but undefined equation is still told apart from a syntax error.
//!
//! Work is bounded: input longer than `max_chars` is rejected before parsing, and nesting
//! (parentheses and unary minus) deeper than `max_depth` is an error rather than a stack
//! overflow.
//!
//! ```
//! use rlzero_rewards::equation::{parse_equation, EquationLimits};
//! use rlzero_rewards::Rational;
//! let eq = parse_equation("(25 - 5) * 4 / 2", &EquationLimits::default()).unwrap();
//! assert_eq!(eq.value, Some(Rational::from_integer(40)));
//! assert_eq!(eq.literals, vec![25, 5, 4, 2]);
//! ```

use crate::rational::Rational;

/// Size limits and syntax options for [`parse_equation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EquationLimits {
    /// Longest accepted input, in characters (default 256).
    pub max_chars: usize,
    /// Deepest accepted nesting of parentheses and unary minus (default 64).
    pub max_depth: usize,
    /// Whether `-x` is allowed (default `false`; see [`Countdown`](crate::Countdown)).
    pub allow_unary_minus: bool,
}

impl Default for EquationLimits {
    fn default() -> Self {
        Self {
            max_chars: 256,
            max_depth: 64,
            allow_unary_minus: false,
        }
    }
}

/// A parsed equation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equation {
    /// The integer literals, in order of appearance.
    pub literals: Vec<i128>,
    /// The exact value; `None` after a division by zero or an overflow.
    pub value: Option<Rational>,
}

/// Why an equation did not parse. Positions are byte offsets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EquationError {
    /// The input is blank.
    #[error("empty equation")]
    Empty,
    /// The input is longer than the limit.
    #[error("equation has {chars} characters, more than {max}")]
    TooLong {
        /// Characters in the input.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// Nesting is deeper than the limit.
    #[error("equation nests deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// A character that cannot start or continue a token.
    #[error("unexpected `{found}` at {pos}")]
    Unexpected {
        /// What was found.
        found: char,
        /// Where.
        pos: usize,
    },
    /// The input ended where an operand or `)` was needed.
    #[error("unexpected end of equation")]
    UnexpectedEnd,
    /// An integer literal does not fit `i128`.
    #[error("integer literal at {pos} is too large")]
    LiteralOverflow {
        /// Where it starts.
        pos: usize,
    },
}

/// Parses and evaluates `src` under `limits`.
pub fn parse_equation(src: &str, limits: &EquationLimits) -> Result<Equation, EquationError> {
    let chars = src.chars().count();
    if chars > limits.max_chars {
        return Err(EquationError::TooLong {
            chars,
            max: limits.max_chars,
        });
    }
    if src.trim().is_empty() {
        return Err(EquationError::Empty);
    }
    let mut p = Parser {
        src,
        pos: 0,
        depth: 0,
        limits,
        literals: Vec::new(),
    };
    let value = p.expr()?;
    p.skip_ws();
    if let Some(found) = p.peek() {
        return Err(EquationError::Unexpected { found, pos: p.pos });
    }
    Ok(Equation {
        literals: p.literals,
        value,
    })
}

struct Parser<'s, 'l> {
    src: &'s str,
    pos: usize,
    depth: usize,
    limits: &'l EquationLimits,
    literals: Vec<i128>,
}

type Value = Option<Rational>;

impl Parser<'_, '_> {
    fn peek(&self) -> Option<char> {
        self.src.get(self.pos..).and_then(|s| s.chars().next())
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.pos += c.len_utf8();
        }
    }

    /// Consumes `c` if it is the next non-blank character.
    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Value, EquationError> {
        let mut acc = self.term()?;
        loop {
            if self.eat('+') {
                let rhs = self.term()?;
                acc = acc.zip(rhs).and_then(|(a, b)| a.checked_add(b));
            } else if self.eat('-') {
                let rhs = self.term()?;
                acc = acc.zip(rhs).and_then(|(a, b)| a.checked_sub(b));
            } else {
                return Ok(acc);
            }
        }
    }

    fn term(&mut self) -> Result<Value, EquationError> {
        let mut acc = self.factor()?;
        loop {
            if self.eat('*') {
                let rhs = self.factor()?;
                acc = acc.zip(rhs).and_then(|(a, b)| a.checked_mul(b));
            } else if self.eat('/') {
                let rhs = self.factor()?;
                acc = acc.zip(rhs).and_then(|(a, b)| a.checked_div(b));
            } else {
                return Ok(acc);
            }
        }
    }

    fn factor(&mut self) -> Result<Value, EquationError> {
        self.skip_ws();
        match self.peek() {
            None => Err(EquationError::UnexpectedEnd),
            Some('(') => {
                self.pos += 1;
                self.nested(|p| {
                    let v = p.expr()?;
                    if p.eat(')') {
                        Ok(v)
                    } else {
                        p.skip_ws();
                        Err(p.peek().map_or(EquationError::UnexpectedEnd, |found| {
                            EquationError::Unexpected { found, pos: p.pos }
                        }))
                    }
                })
            }
            Some('-') if self.limits.allow_unary_minus => {
                self.pos += 1;
                self.nested(|p| Ok(p.factor()?.and_then(Rational::checked_neg)))
            }
            Some(c) if c.is_ascii_digit() => self.integer(),
            Some(found) => Err(EquationError::Unexpected {
                found,
                pos: self.pos,
            }),
        }
    }

    /// Runs `f` one nesting level deeper, failing past the limit.
    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Value, EquationError>,
    ) -> Result<Value, EquationError> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return Err(EquationError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn integer(&mut self) -> Result<Value, EquationError> {
        let start = self.pos;
        let mut n: Option<i128> = Some(0);
        while let Some(d) = self.peek().and_then(|c| c.to_digit(10)) {
            n = n
                .and_then(|n| n.checked_mul(10))
                .and_then(|n| n.checked_add(i128::from(d)));
            self.pos += 1;
        }
        let n = n.ok_or(EquationError::LiteralOverflow { pos: start })?;
        self.literals.push(n);
        Ok(Some(Rational::from_integer(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(s: &str) -> Result<Option<Rational>, EquationError> {
        parse_equation(s, &EquationLimits::default()).map(|e| e.value)
    }

    fn int(n: i128) -> Result<Option<Rational>, EquationError> {
        Ok(Some(Rational::from_integer(n)))
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(eval("2 + 3 * 4"), int(14));
        assert_eq!(eval("(2 + 3) * 4"), int(20));
        assert_eq!(eval("10 - 3 - 2"), int(5));
        assert_eq!(eval("64 / 4 / 2"), int(8));
        assert_eq!(eval("8 / 3 * 3"), int(8));
        assert_eq!(eval("1 / 3"), Ok(Rational::new(1, 3)));
        assert_eq!(eval(" ( ( 7 ) ) "), int(7));
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(eval(""), Err(EquationError::Empty));
        assert_eq!(eval("1 +"), Err(EquationError::UnexpectedEnd));
        assert_eq!(eval("(1 + 2"), Err(EquationError::UnexpectedEnd));
        assert_eq!(
            eval("1 + 2)"),
            Err(EquationError::Unexpected { found: ')', pos: 5 })
        );
        assert_eq!(
            eval("2 x 3"),
            Err(EquationError::Unexpected { found: 'x', pos: 2 })
        );
        assert_eq!(
            eval("1 = 1"),
            Err(EquationError::Unexpected { found: '=', pos: 2 })
        );
        assert_eq!(
            eval("1.5 * 2"),
            Err(EquationError::Unexpected { found: '.', pos: 1 })
        );
        assert_eq!(
            eval("1 2"),
            Err(EquationError::Unexpected { found: '2', pos: 2 })
        );
        assert_eq!(
            eval("-3 + 5"),
            Err(EquationError::Unexpected { found: '-', pos: 0 })
        );
    }

    #[test]
    fn unary_minus_when_allowed() {
        let limits = EquationLimits {
            allow_unary_minus: true,
            ..EquationLimits::default()
        };
        let e = parse_equation("-3 + 5 * -(2)", &limits);
        assert_eq!(
            e.map(|e| (e.value, e.literals)),
            Ok((Some(Rational::from_integer(-13)), vec![3, 5, 2]))
        );
    }

    #[test]
    fn undefined_values_still_parse() {
        assert_eq!(eval("5 / (3 - 3)"), Ok(None));
        assert_eq!(eval("5 / (3 - 3) + 1"), Ok(None));
        let big = format!("{m} * {m} * {m}", m = i64::MAX);
        assert_eq!(eval(&big), Ok(None));
        assert_eq!(
            eval("999999999999999999999999999999999999999999"),
            Err(EquationError::LiteralOverflow { pos: 0 })
        );
    }

    #[test]
    fn adversarial_inputs_are_bounded() {
        let deep = format!("{}1{}", "(".repeat(65), ")".repeat(65));
        assert_eq!(eval(&deep), Err(EquationError::TooDeep { max: 64 }));
        let ok = format!("{}1{}", "(".repeat(64), ")".repeat(64));
        assert_eq!(eval(&ok), int(1));
        let huge = "(".repeat(100_000);
        assert!(matches!(eval(&huge), Err(EquationError::TooLong { .. })));
        // Even with a generous length limit, depth stops the recursion.
        let limits = EquationLimits {
            max_chars: 1_000_000,
            allow_unary_minus: true,
            ..EquationLimits::default()
        };
        let minus = format!("{}1", "-".repeat(500_000));
        assert_eq!(
            parse_equation(&minus, &limits),
            Err(EquationError::TooDeep { max: 64 })
        );
    }
}
