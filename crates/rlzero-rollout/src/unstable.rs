//! Low-level pieces exposed for benchmarks and experiments. **Unstable**: no semver promise;
//! anything here may change or disappear in any release. Inputs are checked, so misuse is a
//! typed error rather than a panic.

use crate::error::{Result, RolloutError};

/// The decode-time linear kernel, `y (m × o) = x (m × k) · wᵀ + bias` with `w` row-major
/// `(o × k)`: what one rollout step runs for every projection (see `kernels.rs` for the blocking
/// and why its results do not depend on `m` or the thread count).
///
/// ```
/// let y = rlzero_rollout::unstable::linear(&[1.0, 2.0], 1, 2, &[3.0, 4.0], 1, Some(&[0.5]))?;
/// assert_eq!(y, vec![11.5]);
/// # Ok::<(), rlzero_rollout::RolloutError>(())
/// ```
pub fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    o: usize,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let check =
        |name: &'static str, len: usize, rows: usize, cols: usize| match rows.checked_mul(cols) {
            Some(n) if n == len && n > 0 => Ok(()),
            _ => Err(RolloutError::InvalidParam {
                name,
                value: format!("{len} values"),
                reason: "does not match the given shape (or the shape is empty)",
            }),
        };
    check("x", x.len(), m, k)?;
    check("w", w.len(), o, k)?;
    if let Some(b) = bias {
        check("bias", b.len(), o, 1)?;
    }
    Ok(crate::kernels::linear(x, m, k, w, o, bias))
}
