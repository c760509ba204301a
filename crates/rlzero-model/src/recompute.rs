//! Activation recomputation ("gradient checkpointing", Chen et al. 2016, arXiv 1604.06174)
//! for scoring completions: keep only each layer's input, rebuild one layer's graph at a time
//! during the backward pass.
//!
//! A plain [`completion_logprobs`](crate::pack::completion_logprobs) with gradients keeps every
//! layer's intermediate tensors alive until `backward()`; on SmolLM2-135M with candle's
//! unfused ops that is about 4 MB per token. Here the forward runs layer by layer and keeps
//! only the `(B, T, hidden)` input of each layer, then [`Recomputed::backward`] takes
//! `g = ∂L/∂logprobs` and walks back: the head first (`norm → lm_head → log-softmax`, with the
//! last hidden state as a leaf), then each layer `i` from the last, re-running its forward
//! from the saved input `x_i` and back-propagating `Σ (layer_i(x_i) ⊙ g_{i+1})`, which yields
//! the layer's weight gradients and `g_i = ∂L/∂x_i`; finally the embedding rows. Peak
//! activation memory is one layer's graph (or the head's, with its `(B·C, V)` logits) instead
//! of all of them, for one more forward pass.
//!
//! The recomputed forward is the same code on the same inputs, so it reproduces the first
//! forward exactly; LoRA dropout masks are replayed by rewinding the adapters' call counters.
//!
//! ```
//! # use rlzero_model::{pack::{completion_logprobs, PackedBatch}, recompute::Recomputed, Decoder};
//! # fn demo(decoder: &Decoder, batch: &PackedBatch) -> rlzero_model::Result<()> {
//! let r = Recomputed::forward(decoder, batch, 1.0, false)?;
//! // A loss of the log-probs, here Σ logprobs, so ∂L/∂logprobs = 1:
//! let g = r.scores.logprobs.ones_like()?;
//! let grads = r.backward(decoder, &g)?; // gradients of every decoder variable
//! # Ok(()) }
//! ```

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::decoder::{BatchInputs, Decoder, Hidden};
use crate::error::{ModelError, Result};
use crate::pack::{score_predicting, CompletionScores, PackedBatch};

/// The result of a recomputing forward: detached scores and what the backward needs.
pub struct Recomputed {
    /// `(B, C)` log-probs and entropies, without graph: make the log-probs a leaf (e.g.
    /// `Var::from_tensor`) to get `∂L/∂logprobs` from the loss.
    pub scores: CompletionScores,
    batch: PackedBatch,
    temperature: f64,
    inputs: BatchInputs,
    /// The input of each layer (`(B, T, hidden)`, and the shared prompts' `(n, P, hidden)`).
    saved: Vec<Hidden>,
    /// The output of the last layer (before the final norm).
    last: Hidden,
    /// Each adapter's dropout-call counter before the forward, and after it.
    dropout_calls: (Vec<u64>, Vec<u64>),
}

/// Adds the gradients `part` holds for `vars` into `total` (summing where both have one);
/// every other entry of `part` is dropped. Also how a trainer accumulates micro-batches.
pub fn add_var_grads(total: &mut GradStore, mut part: GradStore, vars: &[Var]) -> Result<()> {
    for v in vars {
        if let Some(g) = part.remove(v.as_tensor()) {
            let sum = match total.remove(v.as_tensor()) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            total.insert(v.as_tensor(), sum);
        }
    }
    Ok(())
}

/// `Σ (y ⊙ g)`: a scalar whose gradient w.r.t. `y` is `g` (in `y`'s dtype: a bf16 decoder's
/// log-probs are f32, its hidden states bf16).
fn dot(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    Ok((y * g.to_dtype(y.dtype())?)?.sum_all()?)
}

/// [`dot`] summed over the parts of hidden states.
fn dot_hidden(y: &Hidden, g: &Hidden) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for (y, g) in y.parts().into_iter().zip(g.parts()) {
        let d = dot(y, g)?;
        total = Some(match total {
            Some(t) => (t + d)?,
            None => d,
        });
    }
    total.ok_or_else(|| ModelError::InvalidInput("no hidden states".into()))
}

/// Leaves for each part of `x`.
fn leaves(x: &Hidden) -> Result<Vec<Var>> {
    Ok(x.parts()
        .into_iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<_>>()?)
}

/// The gradients `part` holds for `leaves`, as hidden states; removed from `part`. A part the
/// loss does not reach gets zeros (the completion rows in the head when every completion is one
/// token long, all of it predicted by the prompt); none reached at all is an error.
fn take_grads(part: &mut GradStore, leaves: &[Var], what: &str) -> Result<Hidden> {
    let found: Vec<Option<Tensor>> = leaves.iter().map(|l| part.remove(l.as_tensor())).collect();
    if found.iter().all(Option::is_none) {
        return Err(missing(what));
    }
    let g = found
        .into_iter()
        .zip(leaves)
        .map(|(g, l)| g.map_or_else(|| Ok(l.zeros_like()?), Ok))
        .collect::<Result<_>>()?;
    Hidden::from_parts(g)
}

/// Hidden states made of `leaves`' tensors.
fn leaf_hidden(leaves: &[Var]) -> Result<Hidden> {
    Hidden::from_parts(leaves.iter().map(|l| l.as_tensor().clone()).collect())
}

fn detach(x: &Hidden) -> Hidden {
    Hidden {
        rows: x.rows.detach(),
        prompts: x.prompts.as_ref().map(|p| p.detach()),
    }
}

impl Recomputed {
    /// Scores `batch` like [`completion_logprobs`](crate::pack::completion_logprobs), keeping
    /// only each layer's input for [`Recomputed::backward`].
    pub fn forward(
        decoder: &Decoder,
        batch: &PackedBatch,
        temperature: f64,
        with_entropy: bool,
    ) -> Result<Self> {
        let before = decoder.lora_dropout_calls();
        let inputs = decoder.batch_inputs(batch)?;
        let mut x = detach(&decoder.embed_batch(&inputs)?);
        let mut saved = Vec::with_capacity(decoder.layers.len());
        for layer in &decoder.layers {
            let y = detach(&layer.forward_batch(&x, &inputs)?); // drops this layer's graph
            saved.push(x);
            x = y;
        }
        let h = decoder.predicting(&x, batch)?;
        let scores = score_predicting(decoder, &h, batch, temperature, with_entropy)?;
        let scores = CompletionScores {
            logprobs: scores.logprobs.detach(),
            entropy: scores.entropy.map(|e| e.detach()),
        };
        Ok(Self {
            scores,
            batch: batch.clone(),
            temperature,
            inputs,
            saved,
            last: x,
            dropout_calls: (before, decoder.lora_dropout_calls()),
        })
    }

    /// Gradients of every variable of `decoder` (the one given to [`Recomputed::forward`],
    /// unchanged since) for a loss whose gradient w.r.t. `scores.logprobs` is `grad`
    /// `(B, C)`: what `loss.backward()` would give without recomputation.
    pub fn backward(mut self, decoder: &Decoder, grad: &Tensor) -> Result<GradStore> {
        let want = self.scores.logprobs.dims();
        if grad.dims() != want {
            return Err(ModelError::InvalidInput(format!(
                "gradient of the log-probs is {:?}, the log-probs {want:?}",
                grad.dims()
            )));
        }
        let vars = decoder.vars()?;
        let grad = grad.detach();
        let mut total = GradStore::default();
        let (saved_in, replay_end) = self.dropout_calls;
        // Layer 0's input needs a gradient only when the embedding rows are trained (every
        // weight trainable; tied to lm_head, the two gradients add).
        let embedding_trained = decoder.embed_tokens.is_variable();

        // The head: norm → lm_head → log-softmax, from the last hidden state as a leaf. Its
        // own scope, so the (B·C, V) logits its graph holds are freed before the layers run.
        let mut g = {
            let x = leaves(&self.last)?;
            let h = decoder.predicting(&leaf_hidden(&x)?, &self.batch)?;
            let lp = score_predicting(decoder, &h, &self.batch, self.temperature, false)?.logprobs;
            let mut part = dot(&lp, &grad)?.backward()?;
            let g = take_grads(&mut part, &x, "the final norm")?;
            add_var_grads(&mut total, part, &vars)?;
            g
        };

        // The layers, last first: re-run each from its saved input, freed once used.
        while let Some(input) = self.saved.pop() {
            let i = self.saved.len();
            decoder.set_lora_dropout_calls(&saved_in)?; // replay the forward's masks
            let need_input_grad = i > 0 || embedding_trained;
            let leaf = if need_input_grad {
                Some(leaves(&input)?)
            } else {
                None
            };
            let x = match &leaf {
                Some(l) => leaf_hidden(l)?,
                None => input,
            };
            let y = decoder.layers[i].forward_batch(&x, &self.inputs)?;
            let mut part = dot_hidden(&y, &g)?.backward()?;
            if let Some(leaf) = &leaf {
                g = take_grads(&mut part, leaf, &format!("layer {i}"))?;
            }
            add_var_grads(&mut total, part, &vars)?;
        }
        decoder.set_lora_dropout_calls(&replay_end)?;

        // The embedding rows.
        if embedding_trained {
            let e = decoder.embed_batch(&self.inputs)?;
            add_var_grads(&mut total, dot_hidden(&e, &g)?.backward()?, &vars)?;
        }
        Ok(total)
    }
}

fn missing(what: &str) -> ModelError {
    ModelError::InvalidInput(format!(
        "no gradient reached the input of {what} during recomputation"
    ))
}
