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
