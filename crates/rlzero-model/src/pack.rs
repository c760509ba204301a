//! Packing prompt + completion sequences of different lengths into one batch, and scoring the
//! completion tokens with gradients.
//!
//! Layout (TRL's): prompts left-padded to the longest prompt `P`, completions right-padded to
//! the longest completion `C`, so every completion starts at column `P`:
//!
//! ```text
//! row 0:  _  _  p  p  p | c  c  c  _      attention_mask 0 0 1 1 1 1 1 1 0
//! row 1:  p  p  p  p  p | c  c  _  _      completion_mask          1 1 0 0
//! ```
//!
//! Both masks are explicit data: nothing is inferred from the pad id, which may be a real token
//! (SmolLM2 pads with its EOS id). Completion token `j` of a row is predicted by the hidden state
//! at column `P + j − 1`, so [`completion_logprobs`] runs the LM head on exactly the `C` columns
//! `P − 1 .. P + C − 1`: no logits are ever computed for prompt tokens.
//!
//! ```
//! use candle_core::Device;
//! use rlzero_model::pack::PackedBatch;
//! let b = PackedBatch::new(&[&[5, 6, 7][..], &[8][..]], &[&[1, 2][..], &[3, 4, 9][..]], 0, &Device::Cpu)?;
//! assert_eq!((b.prompt_len, b.completion_len), (3, 3));
//! assert_eq!(b.attention_mask.to_vec2::<u32>()?, vec![vec![1, 1, 1, 1, 1, 0], vec![0, 0, 1, 1, 1, 1]]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{Device, Tensor};

use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::logprobs::{entropy, selective_log_softmax};
use crate::prefix::SharedPrompts;

/// A batch of prompt + completion sequences with explicit masks.
#[derive(Debug, Clone)]
pub struct PackedBatch {
    /// `(B, P + C)` u32 token ids; padding holds `pad_id`.
    pub input_ids: Tensor,
    /// `(B, P + C)` u32: 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `(B, C)` u32 completion ids (the targets of the scored positions).
    pub completion_ids: Tensor,
    /// `(B, C)` f32: 1 for real completion tokens, 0 for padding.
    pub completion_mask: Tensor,
    /// Real completion tokens per row.
    pub completion_lens: Vec<usize>,
    /// `P`: the longest prompt.
    pub prompt_len: usize,
    /// `C`: the longest completion.
    pub completion_len: usize,
    /// Set by [`PackedBatch::with_shared_prompts`]: the distinct prompts, scored once per group
    /// ([`crate::prefix`]). `input_ids` and `attention_mask` still hold the plain `(B, P + C)`
    /// layout, which shared scoring does not read.
    pub shared: Option<SharedPrompts>,
}

impl PackedBatch {
    /// Packs `prompts[i] ++ completions[i]` for each row. Every prompt needs ≥ 1 token (the
    /// first completion token is predicted from the prompt's last) and every completion ≥ 1.
    pub fn new(
        prompts: &[&[u32]],
        completions: &[&[u32]],
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        Self::build(prompts, completions, pad_id, device, false)
    }

    /// [`PackedBatch::new`], and consecutive rows with equal prompts (a GRPO group) share one
    /// prompt forward pass when scored ([`crate::prefix`]): the same log-probs and gradients up
    /// to float rounding (without LoRA dropout, which then draws one mask for the shared prompt),
    /// for the prompt's compute once per group instead of once per row.
    pub fn with_shared_prompts(
        prompts: &[&[u32]],
        completions: &[&[u32]],
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        Self::build(prompts, completions, pad_id, device, true)
    }

    fn build(
        prompts: &[&[u32]],
        completions: &[&[u32]],
        pad_id: u32,
        device: &Device,
        share: bool,
    ) -> Result<Self> {
        if prompts.is_empty() || prompts.len() != completions.len() {
            return Err(ModelError::InvalidInput(format!(
                "{} prompts and {} completions: need the same, non-zero number",
                prompts.len(),
                completions.len()
            )));
        }
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(ModelError::InvalidInput(format!("prompt {i} is empty")));
        }
        if let Some(i) = completions.iter().position(|c| c.is_empty()) {
            return Err(ModelError::InvalidInput(format!("completion {i} is empty")));
        }
        let p = prompts.iter().map(|x| x.len()).max().unwrap_or(0);
        let c = completions.iter().map(|x| x.len()).max().unwrap_or(0);
        let b = prompts.len();
        let mut ids = Vec::with_capacity(b * (p + c));
        let mut attn = Vec::with_capacity(b * (p + c));
        let mut cids = Vec::with_capacity(b * c);
        let mut cmask = Vec::with_capacity(b * c);
        for (pr, co) in prompts.iter().zip(completions) {
            let lpad = p - pr.len();
            let rpad = c - co.len();
            ids.extend(std::iter::repeat_n(pad_id, lpad));
            ids.extend_from_slice(pr);
            ids.extend_from_slice(co);
            ids.extend(std::iter::repeat_n(pad_id, rpad));
            attn.extend(std::iter::repeat_n(0u32, lpad));
            attn.extend(std::iter::repeat_n(1u32, pr.len() + co.len()));
            attn.extend(std::iter::repeat_n(0u32, rpad));
            cids.extend_from_slice(co);
            cids.extend(std::iter::repeat_n(pad_id, rpad));
            cmask.extend(std::iter::repeat_n(1f32, co.len()));
            cmask.extend(std::iter::repeat_n(0f32, rpad));
        }
        Ok(Self {
            input_ids: Tensor::from_vec(ids, (b, p + c), device)?,
            attention_mask: Tensor::from_vec(attn, (b, p + c), device)?,
            completion_ids: Tensor::from_vec(cids, (b, c), device)?,
            completion_mask: Tensor::from_vec(cmask, (b, c), device)?,
            completion_lens: completions.iter().map(|x| x.len()).collect(),
            prompt_len: p,
            completion_len: c,
            shared: if share {
                Some(SharedPrompts::group(prompts, p, pad_id, device)?)
            } else {
                None
            },
        })
    }

    /// Rows `start .. start + len` as a batch of their own, with the same `P` and `C` columns
    /// (extra padding is masked, so each row scores exactly as before).
    pub fn rows(&self, start: usize, len: usize) -> Result<Self> {
        if len == 0 || start + len > self.len() {
            return Err(ModelError::InvalidInput(format!(
                "rows {start}..{} of a {}-row batch",
                start + len,
                self.len()
            )));
        }
        Ok(Self {
            input_ids: self.input_ids.narrow(0, start, len)?,
            attention_mask: self.attention_mask.narrow(0, start, len)?,
            completion_ids: self.completion_ids.narrow(0, start, len)?,
            completion_mask: self.completion_mask.narrow(0, start, len)?,
            completion_lens: self.completion_lens[start..start + len].to_vec(),
            prompt_len: self.prompt_len,
            completion_len: self.completion_len,
            shared: self
                .shared
                .as_ref()
                .map(|s| s.rows(start, len))
                .transpose()?,
        })
    }

    /// Number of rows `B`.
    pub fn len(&self) -> usize {
        self.completion_lens.len()
    }

    /// Whether the batch has no rows (never true for a batch built by [`PackedBatch::new`]).
    pub fn is_empty(&self) -> bool {
        self.completion_lens.is_empty()
    }
}

/// Log-probs (and optionally entropies) of a batch's completion tokens.
#[derive(Debug, Clone)]
pub struct CompletionScores {
    /// `(B, C)` `log softmax(logits / τ)` of each completion token, in the decoder's dtype,
    /// differentiable w.r.t. the decoder's variables. Padding positions hold finite garbage:
    /// multiply by `completion_mask`.
    pub logprobs: Tensor,
    /// `(B, C)` entropy of `softmax(logits / τ)` at each completion position (no graph).
    pub entropy: Option<Tensor>,
}

/// Scores `batch`'s completion tokens under `decoder` at sampling temperature `temperature`
/// (TRL divides the logits by the generation temperature before the log-softmax, so the
/// trainer's log-probs are those of the distribution that was sampled).
pub fn completion_logprobs(
    decoder: &Decoder,
    batch: &PackedBatch,
    temperature: f64,
    with_entropy: bool,
) -> Result<CompletionScores> {
    let inputs = decoder.batch_inputs(batch)?;
    let mut x = decoder.embed_batch(&inputs)?;
    for layer in decoder.layers() {
        x = layer.forward_batch(&x, &inputs)?;
    }
    let h = decoder.predicting(&x, batch)?; // (B, C, H)
    score_predicting(decoder, &h, batch, temperature, with_entropy)
}

/// Supervised fine-tuning's loss: the mean negative log-likelihood of `batch`'s real
/// completion tokens under `decoder` (T = 1), a differentiable scalar.
pub fn completion_nll(decoder: &Decoder, batch: &PackedBatch) -> Result<Tensor> {
    let lp = completion_logprobs(decoder, batch, 1.0, false)?.logprobs; // (B, C)
    let mask = batch.completion_mask.to_dtype(lp.dtype())?; // (B, C)
    let tokens = batch.completion_mask.sum_all()?.to_scalar::<f32>()? as f64;
    Ok(((lp * mask)?.sum_all()?.neg()? / tokens)?)
}

/// The head of [`completion_logprobs`]: the normed hidden states that predict the completion
/// tokens `(B, C, H)` ([`Decoder::predicting`]) → their log-probs (and entropies).
pub(crate) fn score_predicting(
    decoder: &Decoder,
    h: &Tensor,
    batch: &PackedBatch,
    temperature: f64,
    with_entropy: bool,
) -> Result<CompletionScores> {
    let (b, c) = (batch.len(), batch.completion_len);
    let hidden = h.dim(2)?;
    let logits = decoder.lm_head.forward(&h.reshape((b * c, hidden))?)?; // (B·C, V)
    let targets = batch.completion_ids.flatten_all()?; // (B·C,)
    let logprobs = selective_log_softmax(&logits, &targets, temperature)?.reshape((b, c))?;
    let entropy = if with_entropy {
        Some(entropy(&logits, temperature)?.reshape((b, c))?)
    } else {
        None
    };
    Ok(CompletionScores { logprobs, entropy })
}
