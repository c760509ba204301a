//! Rotary position embeddings (Su et al. 2021, "RoFormer"), in the NeoX/HF "rotate half" layout.
//!
//! For head dimension `d` and position `p`, frequency `i < d/2` rotates the pair
//! `(x_i, x_{i+d/2})` by the angle `p · f_i`, with `f_i = θ^(-2i/d)` (then rescaled, see
//! [`RopeScaling`]):
//!
//! `rope(x) = x ⊙ cos(p f) + rotate_half(x) ⊙ sin(p f)`, `rotate_half([a, b]) = [-b, a]`.
//!
//! Positions are per row (`(B, T)`), so left-padded prompts rotate their first real token as
//! position 0, exactly as an unpadded batch of one would. [`apply`] has a backward pass
//! (candle's fused `rope` has none).
//!
//! ```
//! use candle_core::{Device, Tensor, DType};
//! use rlzero_model::rope::Rotary;
//! use rlzero_model::RopeScaling;
//! let rot = Rotary::new(4, 10_000.0, &RopeScaling::None);
//! let pos = Tensor::new(&[[0u32, 1]], &Device::Cpu).unwrap();
//! let (cos, sin) = rot.cos_sin(&pos, DType::F32).unwrap(); // (1, 1, 2, 4)
//! let x = Tensor::ones((1, 1, 2, 4), DType::F32, &Device::Cpu).unwrap();
//! let y = rlzero_model::rope::apply(&x, &cos, &sin).unwrap();
//! // position 0 is the identity rotation
//! assert_eq!(y.get(0).unwrap().get(0).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 4]);
//! ```

use candle_core::{DType, Tensor, D};

use crate::config::RopeScaling;
use crate::error::Result;

/// Precomputed inverse frequencies for one head dimension.
#[derive(Debug, Clone)]
pub struct Rotary {
    /// `f_i` for `i < d/2`, as f32 the way transformers computes them.
    inv_freq: Vec<f32>,
}

impl Rotary {
    /// Frequencies for head dimension `head_dim` (even), base `theta` and `scaling`.
    pub fn new(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Self {
        let half = head_dim / 2;
        // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), evaluated in float32.
        let base: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let inv_freq = match scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / *factor as f32).collect(),
            RopeScaling::Divisors(div) => base.iter().zip(div).map(|(f, d)| f / d).collect(),
            // transformers `_compute_llama3_parameters` (modeling_rope_utils.py).
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            } => {
                let (factor, low, high, old) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *old_ctx as f32,
                );
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        Self { inv_freq }
    }

    /// The frequencies `f_i` (after scaling), `head_dim / 2` of them.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `cos` and `sin` tables for integer positions `(B, T)`, each `(B, 1, T, d)` in `dtype`.
    pub fn cos_sin(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let dev = positions.device();
        let half = self.inv_freq.len();
        let inv = Tensor::from_slice(&self.inv_freq, (1, 1, half), dev)?; // (1, 1, d/2)
        let pos = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // (B, T, 1)
        let freqs = pos.broadcast_mul(&inv)?; // (B, T, d/2)
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?; // (B, T, d)
        let cos = emb.cos()?.to_dtype(dtype)?.unsqueeze(1)?; // (B, 1, T, d)
        let sin = emb.sin()?.to_dtype(dtype)?.unsqueeze(1)?;
        Ok((cos, sin))
    }
}

/// Rotates `x` `(B, H, T, d)` by tables from [`Rotary::cos_sin`] `(B, 1, T, d)`:
/// [`crate::fused::rope()`], one op with a backward pass on the CPU.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    crate::fused::rope(x, cos, sin)
}
