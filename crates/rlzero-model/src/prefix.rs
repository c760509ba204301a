//! Shared prompts: a GRPO group's `G` completions continue one prompt, so the prompt's forward
//! pass runs once per group instead of once per completion.
//!
//! In the plain layout of [`crate::pack`] every row is `prompt ++ completion`, so a group of
//! `G = 8` computes its prompt's hidden states 8 times over. They are the same 8 times: a causal
//! decoder's state at a prompt position depends only on the prompt tokens up to it. Here the
//! batch is split into
//!
//! * prompt rows `(n, P)`: each distinct prompt once, left-padded, attending causally to itself;
//! * completion rows `(B, C)`: right-padded, at rotary positions `L_g + j` (`L_g` the real
//!   length of the row's prompt `g`), whose queries attend to the keys and values
//!   `[K_prompt(g) ; K_completion]` `(B, KV, P + C, d)`, with prompt padding masked and the
//!   completion part causal.
//!
//! Every completion query therefore sees exactly the keys, values and positions it sees in the
//! plain layout, in the same column order, and the scores are equal up to floating-point
//! rounding of the gemms; [`crate::pack::completion_logprobs`] on a shared batch matches the
//! plain one (tested in f64: log-probs to 1e-12, gradients to 1e-11 relative). Backward is exact as well: the
//! prompt's keys and values are gathered per row with `index_select`, whose backward sums the
//! `G` rows' gradients into the shared prompt, which is what the `G` copies' gradients add up to.
//!
//! The saving is the prompt's share of the tokens: 32 single-digit additions (45 prompt and
//! ≤ 24 completion tokens, 4 prompts × 8) score at most 4·45 + 32·24 instead of 32·69 tokens.
//! One difference exists: LoRA dropout draws one mask for the shared prompt rows instead of one
//! per copy (each is a valid dropout sample; with `lora_dropout = 0` nothing differs).
//!
//! ```
//! use candle_core::Device;
//! use rlzero_model::pack::PackedBatch;
//! let (p, q): (&[u32], &[u32]) = (&[5, 6, 7], &[8]);
//! let b = PackedBatch::with_shared_prompts(&[p, p, q], &[&[1][..], &[2, 3], &[4]], 0, &Device::Cpu)?;
//! let s = b.shared.as_ref().unwrap();
//! assert_eq!(s.groups, vec![0, 0, 1]); // two distinct prompts
//! assert_eq!(s.mask.to_vec2::<u32>()?, vec![vec![1, 1, 1], vec![0, 0, 1]]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// The distinct prompts of a [`crate::pack::PackedBatch`] and which one each row continues.
#[derive(Debug, Clone)]
pub struct SharedPrompts {
    /// `(n, P)` u32 prompt ids, left-padded with the batch's pad id.
    pub ids: Tensor,
    /// `(n, P)` u32: 1 for real prompt tokens, 0 for padding.
    pub mask: Tensor,
    /// `(B,)` u32: the prompt row of each completion row (the same as `groups`).
    pub group: Tensor,
    /// The prompt row of each completion row; non-decreasing.
    pub groups: Vec<usize>,
    /// Real length of each prompt row.
    pub prompt_lens: Vec<usize>,
}

impl SharedPrompts {
    /// Groups consecutive rows with equal prompts (GRPO's `G` samples of one prompt are
    /// consecutive); `p` is the padded prompt width. Prompts must be non-empty (checked by the
    /// caller).
    pub(crate) fn group(
        prompts: &[&[u32]],
        p: usize,
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        let mut distinct: Vec<&[u32]> = Vec::new();
        let mut groups = Vec::with_capacity(prompts.len());
        for pr in prompts {
            if distinct.last() != Some(pr) {
                distinct.push(pr);
            }
            groups.push(distinct.len() - 1);
        }
        let n = distinct.len();
        let mut ids = Vec::with_capacity(n * p);
        let mut mask = Vec::with_capacity(n * p);
        for pr in &distinct {
            ids.extend(std::iter::repeat_n(pad_id, p - pr.len()));
            ids.extend_from_slice(pr);
            mask.extend(std::iter::repeat_n(0u32, p - pr.len()));
            mask.extend(std::iter::repeat_n(1u32, pr.len()));
        }
        let group: Vec<u32> = groups.iter().map(|&g| g as u32).collect();
        Ok(Self {
            ids: Tensor::from_vec(ids, (n, p), device)?,
            mask: Tensor::from_vec(mask, (n, p), device)?,
            group: Tensor::from_vec(group, prompts.len(), device)?,
            groups,
            prompt_lens: distinct.iter().map(|x| x.len()).collect(),
        })
    }

    /// The prompts of completion rows `start .. start + len` (the caller checked the range).
    /// Groups are consecutive, so those rows continue the contiguous prompt rows `g0 ..= g1`.
    pub(crate) fn rows(&self, start: usize, len: usize) -> Result<Self> {
        let (g0, g1) = (self.groups[start], self.groups[start + len - 1]);
        let groups: Vec<usize> = self.groups[start..start + len]
            .iter()
            .map(|g| g - g0)
            .collect();
        let group: Vec<u32> = groups.iter().map(|&g| g as u32).collect();
        Ok(Self {
            ids: self.ids.narrow(0, g0, g1 - g0 + 1)?,
            mask: self.mask.narrow(0, g0, g1 - g0 + 1)?,
            group: Tensor::from_vec(group, len, self.group.device())?,
            groups,
            prompt_lens: self.prompt_lens[g0..=g1].to_vec(),
        })
    }

    /// Rotary positions `(B, C)` (u32) of the completion rows and their additive attention bias
    /// `(B, 1, 1, C, P + C)` over `[prompt ; completion]` keys, for completions of `lens` real
    /// tokens in `c` columns. As in [`crate::mask`], a padding query sees itself so that its
    /// softmax row stays finite; its output is ignored. Built on the host from lengths: on a
    /// GPU that is one `B·C·(P + C)` upload per scoring call, small for GRPO-sized batches
    /// (32 × 128 × 173 floats is 2.8 MB) but worth moving to device ops for long contexts.
    pub(crate) fn completion_positions_and_bias(
        &self,
        lens: &[usize],
        c: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let b = lens.len();
        if b != self.groups.len() {
            return Err(ModelError::InvalidInput(format!(
                "{b} completion rows for {} grouped rows",
                self.groups.len()
            )));
        }
        let p = self.ids.dim(1)?;
        let w = p + c;
        let mut positions = Vec::with_capacity(b * c);
        let mut bias = vec![f32::NEG_INFINITY; b * c * w];
        for (row, (&g, &len)) in self.groups.iter().zip(lens).enumerate() {
            let pl = self.prompt_lens[g];
            positions.extend((0..c).map(|j| (pl + j) as u32));
            for j in 0..c {
                let base = (row * c + j) * w;
                // The prompt is left-padded: its real tokens are the last `pl` columns.
                bias[base + p - pl..base + p].fill(0.0);
                for i in 0..=j {
                    if i < len || i == j {
                        bias[base + p + i] = 0.0;
                    }
                }
            }
        }
        Ok((
            Tensor::from_vec(positions, (b, c), device)?,
            Tensor::from_vec(bias, (b, 1, 1, c, w), device)?.to_dtype(dtype)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_bias_sees_the_prompt_and_the_causal_completion() {
        let p: [&[u32]; 3] = [&[1, 2], &[1, 2], &[3]];
        let s = SharedPrompts::group(&p, 2, 0, &Device::Cpu).unwrap();
        assert_eq!(s.groups, vec![0, 0, 1]);
        let (pos, bias) = s
            .completion_positions_and_bias(&[3, 1, 2], 3, DType::F32, &Device::Cpu)
            .unwrap();
        assert_eq!(
            pos.to_vec2::<u32>().unwrap(),
            vec![vec![2, 3, 4], vec![2, 3, 4], vec![1, 2, 3]]
        );
        let allowed: Vec<Vec<u8>> = bias
            .reshape((9, 5))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|r| r.iter().map(|&v| u8::from(v == 0.0)).collect())
            .collect();
        // Columns: 2 prompt, then 3 completion.
        #[rustfmt::skip]
        let want = vec![
            // row 0: three real completion tokens, causal
            vec![1, 1, 1, 0, 0], vec![1, 1, 1, 1, 0], vec![1, 1, 1, 1, 1],
            // row 1: one real token; padding queries see it and themselves, not other padding
            vec![1, 1, 1, 0, 0], vec![1, 1, 1, 1, 0], vec![1, 1, 1, 0, 1],
            // row 2: a one-token prompt, left-padded
            vec![0, 1, 1, 0, 0], vec![0, 1, 1, 1, 0], vec![0, 1, 1, 1, 1],
        ];
        assert_eq!(allowed, want);
        let sub = s.rows(1, 2).unwrap();
        assert_eq!(sub.groups, vec![0, 1]);
        assert_eq!(sub.prompt_lens, vec![2, 1]);
    }
}
