//! Each sequence's share of a [`grpo_loss`](crate::loss::grpo_loss) call, for `--explain`.
//!
//! Every loss type's aggregation is linear in the rows: the scalar loss is
//! `L = Σ_i (Σ_t m_it ℓ_it) / D_i`, where `ℓ_it` is the per-token loss (policy term plus
//! `β·KL`) and `D_i` the row's denominator (`n_i · B · GA` for grpo/sapo, the generation batch's
//! token count `N · GA / steps_per_generation` for dapo/cispo/vespo, and so on). So each row has
//! a term `L_i` with `Σ_i L_i = L`, and a reader can redo it by hand: on-policy (`w = 1`),
//! DAPO's term is `L_i = −A_i · n_i / D`.
//!
//! These numbers are read from detached tensors after the loss is built: they cost a few
//! `(B, T)` reductions and `B` host reads per call, and change no gradient.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// One sequence's view of a loss call.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RowStats {
    /// Completion tokens that count, `n_i = Σ_t m_it` (0 for a masked truncated completion).
    pub tokens: f64,
    /// Masked mean importance weight `w` (exactly 1 on-policy; for sequence-level weights, the
    /// sequence's one weight), before any two-sided `δ` cap. Token means here are NaN for a row
    /// with no counted token.
    pub mean_ratio: f64,
    /// Fraction of its tokens where the clip binds (`w` outside `[1−ε_low, 1+ε_high]` on the
    /// side the advantage's sign makes active; CISPO: `w > ε_high` with `A > 0`); `None` for
    /// SAPO and VESPO, which have no hard clip.
    pub clipped_fraction: Option<f64>,
    /// Masked mean k3 KL to the reference (`None` when `β = 0`).
    pub kl: Option<f64>,
    /// The row's denominator `D_i`.
    pub denominator: f64,
    /// Its term `L_i` of the returned loss (`Σ_i L_i` = the loss).
    pub loss: f64,
    /// The part of `L_i` that is `β·KL`.
    pub kl_loss: f64,
}

/// The tensors [`row_stats`] reads, all detached.
pub(crate) struct RowInputs<'a> {
    /// `(B, T)` per-token loss including `β·KL`, unmasked.
    pub per_token_loss: &'a Tensor,
    /// `(B, T)` or `(B, 1)` importance weight before the `δ` cap.
    pub weight: &'a Tensor,
    /// `(B, T)` or `(B, 1)` 1 where the clip binds, if the loss has one.
    pub clipped: Option<&'a Tensor>,
    /// `(B, T)` per-token KL (already bias-corrected when configured), if `β > 0`.
    pub kl: Option<&'a Tensor>,
    /// The KL coefficient `β`.
    pub beta: f64,
    /// `(B, T)` mask.
    pub mask: &'a Tensor,
    /// `(B,)` denominators `D_i`.
    pub denominators: Vec<f64>,
}

fn to_f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// Masked mean of each row (NaN for a row without counted tokens); a `(B, 1)` input is one
/// value per row already.
fn row_means(x: &Tensor, mask: &Tensor, tokens: &[f64]) -> Result<Vec<f64>> {
    let x = x.detach().to_dtype(DType::F64)?;
    if x.dim(1)? == 1 {
        return to_f64s(&x.squeeze(1)?);
    }
    let mask = mask.to_dtype(DType::F64)?;
    let sums = to_f64s(&(x * mask)?.sum(D::Minus1)?)?;
    Ok(sums
        .iter()
        .zip(tokens)
        .map(|(s, n)| if *n > 0.0 { s / n } else { f64::NAN })
        .collect())
}

/// Masked row sums of `x`, `(B, T)` or `(B, 1)` (one value per token of the row).
fn row_sums(x: &Tensor, mask: &Tensor) -> Result<Vec<f64>> {
    let x = x.detach().to_dtype(DType::F64)?;
    to_f64s(
        &x.broadcast_mul(&mask.to_dtype(DType::F64)?)?
            .sum(D::Minus1)?,
    )
}

pub(crate) fn row_stats(x: &RowInputs<'_>) -> Result<Vec<RowStats>> {
    let tokens = to_f64s(&x.mask.to_dtype(DType::F64)?.sum(D::Minus1)?)?;
    let ratio = row_means(x.weight, x.mask, &tokens)?;
    let clipped = x
        .clipped
        .map(|c| row_means(c, x.mask, &tokens))
        .transpose()?;
    let kl = x.kl.map(|k| row_means(k, x.mask, &tokens)).transpose()?;
    let kl_sums = x.kl.map(|k| row_sums(k, x.mask)).transpose()?;
    let loss_sums = row_sums(x.per_token_loss, x.mask)?;
    Ok((0..tokens.len())
        .map(|i| {
            let d = x.denominators[i];
            RowStats {
                tokens: tokens[i],
                mean_ratio: ratio[i],
                clipped_fraction: clipped.as_ref().map(|c| c[i]),
                kl: kl.as_ref().map(|k| k[i]),
                denominator: d,
                loss: loss_sums[i] / d,
                kl_loss: kl_sums.as_ref().map_or(0.0, |k| x.beta * k[i] / d),
            }
        })
        .collect())
}
