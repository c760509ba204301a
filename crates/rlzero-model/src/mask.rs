//! Attention masks and position ids from an explicit per-token mask.
//!
//! The caller says which tokens are real (`1`) and which are padding (`0`); nothing is inferred
//! from a pad id. From that mask:
//!
//! * position of token `t` in row `b` = number of real tokens before it (`cumsum − 1`), so a
//!   left-padded prompt is positioned exactly as if it were alone in the batch;
//! * token `i` may attend to token `j` iff `j ≤ i` and `j` is real. A padding query would then
//!   see nothing and its softmax row would be `0/0`; it is allowed to see itself instead, which
//!   keeps every value finite (a NaN in an ignored row still poisons gradients through `0·NaN`).
//!   Outputs at padding positions are meaningless and must be ignored by the caller.
//!
//! [`MaskInfo`] validates and builds them on the host; [`positions_and_bias`] builds the same
//! tensors with device ops from a mask tensor, so a forward on a GPU never copies the mask to the
//! host and back.
//!
//! ```
//! use rlzero_model::mask::MaskInfo;
//! let m = MaskInfo::from_rows(&[vec![0, 0, 1, 1], vec![1, 1, 1, 1]]).unwrap();
//! assert_eq!(m.positions, vec![vec![0, 0, 0, 1], vec![0, 1, 2, 3]]);
//! ```

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// Position ids and attention permissions derived from a 0/1 mask.
#[derive(Debug, Clone)]
pub struct MaskInfo {
    /// `(B, T)` 0/1 mask as given.
    pub mask: Vec<Vec<u32>>,
    /// `(B, T)` rotary positions.
    pub positions: Vec<Vec<u32>>,
}

impl MaskInfo {
    /// Validates a `(B, T)` mask: every value 0 or 1, every row with at least one real token.
    pub fn from_rows(mask: &[Vec<u32>]) -> Result<Self> {
        let t = mask.first().map(|r| r.len()).unwrap_or(0);
        if mask.is_empty() || t == 0 {
            return Err(ModelError::InvalidInput("attention mask is empty".into()));
        }
        let mut positions = Vec::with_capacity(mask.len());
        for (b, row) in mask.iter().enumerate() {
            if row.len() != t {
                return Err(ModelError::InvalidInput(format!(
                    "attention mask row {b} has {} entries, row 0 has {t}",
                    row.len()
                )));
            }
            if let Some(v) = row.iter().find(|&&v| v > 1) {
                return Err(ModelError::InvalidInput(format!(
                    "attention mask row {b} holds {v}; only 0 (padding) and 1 (token) are allowed"
                )));
            }
            if row.iter().all(|&v| v == 0) {
                return Err(ModelError::InvalidInput(format!(
                    "attention mask row {b} has no real token"
                )));
            }
            // Real tokens count up from 0; padding gets position 0 (its output is ignored).
            let mut seen = 0u32;
            let pos = row
                .iter()
                .map(|&v| {
                    let p = if v == 1 { seen } else { 0 };
                    seen += v;
                    p
                })
                .collect();
            positions.push(pos);
        }
        Ok(Self {
            mask: mask.to_vec(),
            positions,
        })
    }

    /// Reads a `(B, T)` mask tensor of any integer or float dtype.
    pub fn from_tensor(mask: &Tensor) -> Result<Self> {
        let rows = mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        Self::from_rows(&rows)
    }

    /// `(B, T)` u32 position ids.
    pub fn positions_tensor(&self, device: &Device) -> Result<Tensor> {
        let t = self.positions[0].len();
        let flat: Vec<u32> = self.positions.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (self.positions.len(), t), device)?)
    }

    /// Additive attention bias `(B, 1, 1, T, T)`: 0 where allowed, −∞ elsewhere. The two unit
    /// dims broadcast over k/v heads and the query heads grouped on each.
    pub fn bias(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let b = self.mask.len();
        let t = self.mask[0].len();
        let mut data = vec![f32::NEG_INFINITY; b * t * t];
        for (bi, row) in self.mask.iter().enumerate() {
            for i in 0..t {
                let base = (bi * t + i) * t;
                for j in 0..=i {
                    if row[j] == 1 || i == j {
                        data[base + j] = 0.0;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(data, (b, 1, 1, t, t), device)?.to_dtype(dtype)?)
    }
}

/// `(B, T)` rotary positions (f32) and the `(B, 1, 1, T, T)` additive bias of [`MaskInfo`],
/// computed on `mask`'s own device with tensor ops (no host round-trip; values equal
/// [`MaskInfo::positions`] and [`MaskInfo::bias`]). `mask` must hold only 0 and 1, with a real
/// token in every row: [`MaskInfo::from_tensor`] checks that on the host.
pub fn positions_and_bias(mask: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
    let (b, t) = mask.dims2()?;
    let dev = mask.device();
    let m = mask.to_dtype(DType::F32)?; // (B, T)

    // Real tokens count up from 0; padding gets (count − 1)·0 = 0.
    let positions = ((m.cumsum(1)? - 1.0)? * &m)?; // (B, T)
    let ar = Tensor::arange(0u32, t as u32, dev)?;
    let (rows, cols) = (ar.reshape((t, 1))?, ar.reshape((1, t))?);
    let causal = cols.broadcast_le(&rows)?.to_dtype(DType::F32)?; // (T, T): j ≤ i
    let diag = cols.broadcast_eq(&rows)?.to_dtype(DType::F32)?; // (T, T): j = i
    let allowed = causal
        .unsqueeze(0)?
        .broadcast_mul(&m.unsqueeze(1)?)? // (B, T, T): j ≤ i and j real
        .broadcast_maximum(&diag.unsqueeze(0)?)?; // or j = i
    let bias = additive(&allowed)?
        .reshape((b, 1, 1, t, t))?
        .to_dtype(dtype)?;
    Ok((positions, bias))
}

/// The bias `(1, 1, 1, n, past + n)` for `n` new queries appended after `past` cached keys:
/// query `i` sees keys `0 ..= past + i` (a prefill continuing a KV cache, all tokens real).
pub fn cached_causal_bias(n: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let total = past + n;
    let rows = (Tensor::arange(0u32, n as u32, device)? + past as f64)?.reshape((n, 1))?;
    let cols = Tensor::arange(0u32, total as u32, device)?.reshape((1, total))?;
    let allowed = cols.broadcast_le(&rows)?.to_dtype(DType::F32)?; // (n, total)
    Ok(additive(&allowed)?
        .reshape((1, 1, 1, n, total))?
        .to_dtype(dtype)?)
}

/// 0 where `allowed` is 1, −∞ where it is 0 (f32, same shape).
fn additive(allowed: &Tensor) -> Result<Tensor> {
    let zeros = allowed.zeros_like()?;
    let blocked = Tensor::full(f32::NEG_INFINITY, allowed.shape(), allowed.device())?;
    Ok(allowed.ne(0f32)?.where_cond(&zeros, &blocked)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ops_give_the_host_positions_and_bias() {
        let rows = vec![
            vec![0, 0, 1, 1, 1],
            vec![1, 1, 1, 1, 1],
            vec![1, 1, 1, 0, 0],
            vec![0, 1, 0, 1, 1],
        ];
        let info = MaskInfo::from_rows(&rows).unwrap();
        let mask = Tensor::new(rows.clone(), &Device::Cpu).unwrap();
        let (pos, bias) = positions_and_bias(&mask, DType::F32).unwrap();
        let pos: Vec<Vec<u32>> = pos.to_dtype(DType::U32).unwrap().to_vec2().unwrap();
        assert_eq!(pos, info.positions);
        let want = info.bias(DType::F32, &Device::Cpu).unwrap();
        let (a, b): (Vec<f32>, Vec<f32>) = (
            bias.flatten_all().unwrap().to_vec1().unwrap(),
            want.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn cached_bias_continues_the_causal_mask() {
        // Two new queries after three cached keys: the last two rows of a 5×5 causal mask.
        let info = MaskInfo::from_rows(&[vec![1; 5]]).unwrap();
        let full = info.bias(DType::F32, &Device::Cpu).unwrap(); // (1, 1, 1, 5, 5)
        let want = full.narrow(3, 3, 2).unwrap();
        let got = cached_causal_bias(2, 3, DType::F32, &Device::Cpu).unwrap();
        let (a, b): (Vec<f32>, Vec<f32>) = (
            got.flatten_all().unwrap().to_vec1().unwrap(),
            want.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(a, b);
    }
}
