//! Exact rationals over `i128` with checked arithmetic.
//!
//! Answers such as `0.1 + 0.2` or `8 / 3 * 3` must compare exactly; floats cannot promise that.
//! A [`Rational`] is always reduced with a positive denominator, so structural equality is
//! numeric equality (`72.0 == 72`, `6/8 == 3/4`). Every operation returns `None` on overflow or
//! division by zero instead of wrapping or panicking; callers decide what that means.
//!
//! ```
//! use rlzero_rewards::Rational;
//! let a = Rational::new(6, -8).unwrap();
//! assert_eq!((a.numer(), a.denom()), (-3, 4));
//! let b = a.checked_mul(Rational::from_integer(-4)).unwrap();
//! assert_eq!(b, Rational::from_integer(3));
//! assert!(a.checked_div(Rational::from_integer(0)).is_none());
//! ```

use std::fmt;

/// A reduced fraction `numer / denom` with `denom > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rational {
    num: i128,
    den: i128,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `gcd` of two `i128` magnitudes, as an `i128`; 1 when both are zero.
///
/// Callers pass at least one positive denominator, so the result is at most `i128::MAX`.
fn gcd_i(a: i128, b: i128) -> i128 {
    let g = gcd(a.unsigned_abs(), b.unsigned_abs());
    i128::try_from(g).unwrap_or(1).max(1)
}

impl Rational {
    /// `num / den` reduced; `None` when `den == 0` or the sign cannot be normalised
    /// (`i128::MIN` in a negative denominator).
    pub fn new(num: i128, den: i128) -> Option<Self> {
        if den == 0 {
            return None;
        }
        let (num, den) = if den < 0 {
            (num.checked_neg()?, den.checked_neg()?)
        } else {
            (num, den)
        };
        let g = gcd_i(num, den);
        Some(Self {
            num: num / g,
            den: den / g,
        })
    }

    /// The integer `n`.
    pub fn from_integer(n: i128) -> Self {
        Self { num: n, den: 1 }
    }

    /// Numerator (carries the sign).
    pub fn numer(&self) -> i128 {
        self.num
    }

    /// Denominator, always positive.
    pub fn denom(&self) -> i128 {
        self.den
    }

    /// Whether the value is a whole number.
    pub fn is_integer(&self) -> bool {
        self.den == 1
    }

    /// `self + other`, `None` on overflow.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        // a/b + c/d = (a·(d/g) + c·(b/g)) / (b/g · d), g = gcd(b, d): keeps intermediates small.
        let g = gcd_i(self.den, other.den);
        let lhs = self.num.checked_mul(other.den / g)?;
        let rhs = other.num.checked_mul(self.den / g)?;
        Self::new(
            lhs.checked_add(rhs)?,
            (self.den / g).checked_mul(other.den)?,
        )
    }

    /// `self − other`, `None` on overflow.
    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.checked_add(other.checked_neg()?)
    }

    /// `−self`, `None` on overflow.
    pub fn checked_neg(self) -> Option<Self> {
        Some(Self {
            num: self.num.checked_neg()?,
            den: self.den,
        })
    }

    /// `self × other`, `None` on overflow.
    pub fn checked_mul(self, other: Self) -> Option<Self> {
        // Cross-reduce first so that a product that fits is never rejected as an overflow.
        let g1 = gcd_i(self.num, other.den);
        let g2 = gcd_i(other.num, self.den);
        let num = (self.num / g1).checked_mul(other.num / g2)?;
        let den = (self.den / g2).checked_mul(other.den / g1)?;
        Self::new(num, den)
    }

    /// `self ÷ other`, `None` on division by zero or overflow.
    pub fn checked_div(self, other: Self) -> Option<Self> {
        self.checked_mul(Self::new(other.den, other.num)?)
    }

    /// Nearest `f64` (both parts fit an `f64`'s range, so this is finite).
    pub fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: i128, d: i128) -> Rational {
        Rational::new(n, d).unwrap_or(Rational::from_integer(i128::MIN))
    }

    #[test]
    fn reduces_and_normalises_sign() {
        assert_eq!(r(10, 4), r(5, 2));
        assert_eq!((r(3, -6).numer(), r(3, -6).denom()), (-1, 2));
        assert_eq!(r(0, -7), Rational::from_integer(0));
        assert!(Rational::new(1, 0).is_none());
        assert!(Rational::new(1, i128::MIN).is_none());
        assert!(Rational::new(i128::MIN, -1).is_none());
    }

    #[test]
    fn arithmetic_is_exact() {
        // 1/10 + 2/10 == 3/10, which floats get wrong.
        assert_eq!(r(1, 10).checked_add(r(2, 10)), Some(r(3, 10)));
        assert_eq!(
            r(8, 1)
                .checked_div(r(3, 1))
                .and_then(|x| x.checked_mul(r(3, 1))),
            Some(r(8, 1))
        );
        assert_eq!(r(1, 2).checked_sub(r(3, 4)), Some(r(-1, 4)));
        assert_eq!(r(2, 3).to_string(), "2/3");
        assert_eq!(r(-4, 2).to_string(), "-2");
        assert!(r(7, 7).is_integer());
    }

    #[test]
    fn overflow_is_none_not_a_panic() {
        let big = Rational::from_integer(i128::MAX);
        assert!(big.checked_add(Rational::from_integer(1)).is_none());
        assert!(big.checked_mul(Rational::from_integer(2)).is_none());
        assert!(Rational::from_integer(i128::MIN).checked_neg().is_none());
        // Cross-reduction lets (MAX/3)·(3/MAX) = 1 through without overflow.
        let a = r(i128::MAX, 3);
        let b = r(3, i128::MAX);
        assert_eq!(a.checked_mul(b), Some(Rational::from_integer(1)));
        assert!(r(1, 2).checked_div(Rational::from_integer(0)).is_none());
    }
}
