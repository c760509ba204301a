//! `rollout`: G sampled completions for each of a batch of prompts.
//!
//! 1. Each prompt is prefilled once; its KV cache is then copied into each of its G sample slots
//!    (the prompt's keys and values are computed once, not G times).
//! 2. Decoding is batched across every live sequence of every prompt; a sequence that finishes
//!    (EOS, stop string, length) leaves the batch, so it stops costing compute.
//! 3. Each sample draws from its own random stream seeded by (seed, step, prompt, sample), so the
//!    same request gives the same completions whatever the batch size or thread count.
//! 4. Each token comes with its log-prob under `softmax(logits / T)` over the full vocabulary,
//!    the distribution the trainer's forward computes, not the top-k / top-p / min-p truncated
//!    one the token was drawn from: that keeps the first-iteration importance ratio exactly 1,
//!    as in TRL (issues #4159, #6789); with heavy truncation the samples are off-policy, so
//!    keep the filters off for on-policy GRPO (details in `sampler.rs`).
//!
//! The model steps come from a backend (`backend.rs`): the fast CPU kernels for f32
//! weights on the CPU, the decoder's own tensor ops elsewhere ([`RolloutBackend`]). Sampling
//! runs on the host from each step's last-position logits, so seeding and stop rules are the same
//! on every backend.

use std::time::Instant;

use rayon::prelude::*;
use rlzero_model::{Decoder, TextTokenizer};

use crate::backend::{RolloutBackend, StepModel};
use crate::error::{Result, RolloutError};
use crate::fast_forward::{FastDecoder, StepProfile, WeightFormat, WeightGuards};
use crate::params::SamplingParams;
use crate::rng::SampleRng;
use crate::sampler::sample;
use crate::tensor_forward::TensorDecoder;

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model emitted one of the EOS ids (kept as the last token).
    Eos,
    /// The decoded text contains a stop string (text cut right after it).
    Stop,
    /// `max_new_tokens` or the model's context was reached.
    Length,
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Which prompt of the request this completes.
    pub prompt_index: usize,
    /// Which of that prompt's `G` samples this is (its randomness is seeded by it).
    pub sample_index: usize,
    /// Generated ids, including a final EOS id when `finish_reason` is `Eos`.
    pub token_ids: Vec<u32>,
    /// `log softmax(logits / T)` of each generated token, as the trainer computes it.
    pub logprobs: Vec<f32>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Decoded completion without special tokens (cut after the stop string for `Stop`).
    pub text: String,
}

struct Live<C> {
    prompt: usize,
    sample: usize,
    cache: C,
    rng: SampleRng,
    /// Prompt followed by the completion so far (repetition penalty reads it).
    context: Vec<u32>,
    prompt_len: usize,
    logprobs: Vec<f32>,
    finish: Option<FinishReason>,
    text: Option<String>,
}

impl<C> Live<C> {
    fn generated(&self) -> &[u32] {
        &self.context[self.prompt_len..]
    }
}

fn validate(
    d: &Decoder,
    prompts: &[Vec<u32>],
    group_size: usize,
    p: &SamplingParams,
) -> Result<()> {
    p.validate()?;
    if prompts.is_empty() {
        return Err(RolloutError::NoPrompts);
    }
    if group_size == 0 {
        return Err(RolloutError::ZeroGroupSize);
    }
    let (vocab, max) = (d.config().vocab_size, d.config().max_position_embeddings);
    for (index, pr) in prompts.iter().enumerate() {
        if pr.is_empty() {
            return Err(RolloutError::EmptyPrompt { index });
        }
        if pr.len() >= max {
            return Err(RolloutError::PromptTooLong {
                index,
                len: pr.len(),
                max,
            });
        }
        if let Some(&id) = pr.iter().find(|&&t| t as usize >= vocab) {
            return Err(RolloutError::TokenOutOfVocab { index, id, vocab });
        }
    }
    Ok(())
}

/// Where a rollout's time went.
#[derive(Debug, Clone, Default)]
pub struct RolloutStats {
    /// Prefill of every prompt, including the first sampled token.
    pub prefill_s: f64,
    /// Batched decode steps (model and sampling).
    pub decode_s: f64,
    /// Number of batched decode steps.
    pub decode_steps: usize,
    /// Sequence-steps actually computed: finished sequences leave the batch, so this is the sum
    /// over completions of (length − 1), the first token coming from the prefill.
    pub decode_rows: usize,
    /// Sampling during decode (softmax, filters, draws, stop-string checks).
    pub sampling_s: f64,
    /// Model time of the decode steps, by part.
    pub profile: StepProfile,
}

/// Samples `group_size` completions for each prompt (token ids, e.g. a rendered chat template).
/// Results are ordered prompt-major: `[p0s0, p0s1, …, p1s0, …]`. `step` is the optimizer step,
/// one coordinate of every sample's random stream.
pub fn rollout(
    decoder: &Decoder,
    tokenizer: &TextTokenizer,
    prompts: &[Vec<u32>],
    group_size: usize,
    params: &SamplingParams,
    step: u64,
) -> Result<Vec<Completion>> {
    rollout_with_stats(decoder, tokenizer, prompts, group_size, params, step).map(|(c, _)| c)
}

/// [`rollout`], also returning where the time went.
pub fn rollout_with_stats(
    decoder: &Decoder,
    tokenizer: &TextTokenizer,
    prompts: &[Vec<u32>],
    group_size: usize,
    params: &SamplingParams,
    step: u64,
) -> Result<(Vec<Completion>, RolloutStats)> {
    rollout_on(
        RolloutBackend::Auto,
        decoder,
        tokenizer,
        prompts,
        group_size,
        params,
        step,
    )
}

/// [`rollout_with_stats`] on a chosen backend. `Auto` takes the fast CPU path for an f32
/// decoder on the CPU without adapters and the tensor path otherwise; the two give the same
/// tokens under greedy decoding and log-probs within 1e-4 (`tests/rollout_backends.rs`).
pub fn rollout_on(
    backend: RolloutBackend,
    decoder: &Decoder,
    tokenizer: &TextTokenizer,
    prompts: &[Vec<u32>],
    group_size: usize,
    params: &SamplingParams,
    step: u64,
) -> Result<(Vec<Completion>, RolloutStats)> {
    validate(decoder, prompts, group_size, params)?;
    let fast = match backend {
        RolloutBackend::FastCpu => Some(WeightFormat::F32),
        RolloutBackend::FastCpuBf16 => Some(WeightFormat::Bf16),
        RolloutBackend::Tensor => None,
        RolloutBackend::Auto => (decoder.device().is_cpu()
            && decoder.dtype() == candle_core::DType::F32
            && !decoder.has_adapters())
        .then_some(WeightFormat::F32),
    };
    let run = Request {
        decoder,
        tokenizer,
        prompts,
        group_size,
        params,
        step,
    };
    match fast {
        Some(format) => {
            let guards = WeightGuards::lock(decoder)?;
            run.on(&FastDecoder::new(decoder, &guards, format)?)
        }
        None => run.on(&TensorDecoder::new(decoder)?),
    }
}

/// A validated rollout request.
struct Request<'r> {
    decoder: &'r Decoder,
    tokenizer: &'r TextTokenizer,
    prompts: &'r [Vec<u32>],
    group_size: usize,
    params: &'r SamplingParams,
    step: u64,
}

impl Request<'_> {
    fn on<M: StepModel>(&self, model: &M) -> Result<(Vec<Completion>, RolloutStats)> {
        let Self {
            decoder,
            tokenizer,
            prompts,
            group_size,
            params,
            step,
        } = *self;
        let mut stats = RolloutStats::default();
        let t0 = Instant::now();
        let max_ctx = decoder.config().max_position_embeddings;
        let vocab = decoder.config().vocab_size;

        // 1. Prefill each prompt once, then fan out into its G samples.
        let mut live: Vec<Live<M::Cache>> = Vec::with_capacity(prompts.len() * group_size);
        for (pi, prompt) in prompts.iter().enumerate() {
            let budget = (prompt.len() + params.max_new_tokens).min(max_ctx);
            let mut cache = model.new_cache(prompt.len())?;
            let logits = model.step(
                &mut [&mut cache],
                &[prompt.as_slice()],
                &mut StepProfile::default(),
            )?;
            for si in 0..group_size {
                let mut s = Live {
                    prompt: pi,
                    sample: si,
                    cache: model.fork(&cache, budget - prompt.len())?,
                    rng: SampleRng::new(params.seed, step, pi as u64, si as u64),
                    context: prompt.clone(),
                    prompt_len: prompt.len(),
                    logprobs: Vec::with_capacity(params.max_new_tokens),
                    finish: None,
                    text: None,
                };
                accept(&mut s, &logits[..vocab], params, tokenizer, max_ctx)?;
                live.push(s);
            }
        }

        stats.prefill_s = t0.elapsed().as_secs_f64();

        // 2. Batched decoding over every unfinished sequence.
        let t0 = Instant::now();
        loop {
            let mut active: Vec<&mut Live<M::Cache>> =
                live.iter_mut().filter(|s| s.finish.is_none()).collect();
            if active.is_empty() {
                break;
            }
            let last: Vec<[u32; 1]> = active
                .iter()
                .map(|s| [*s.context.last().expect("non-empty")])
                .collect();
            let tokens: Vec<&[u32]> = last.iter().map(|t| t.as_slice()).collect();
            let mut caches: Vec<&mut M::Cache> = active.iter_mut().map(|s| &mut s.cache).collect();
            stats.decode_rows += tokens.len();
            let logits = model.step(&mut caches, &tokens, &mut stats.profile)?;
            let ts = Instant::now();
            active
                .par_iter_mut()
                .zip(logits.par_chunks(vocab))
                .try_for_each(|(s, row)| accept(s, row, params, tokenizer, max_ctx))?;
            stats.sampling_s += ts.elapsed().as_secs_f64();
            stats.decode_steps += 1;
        }
        stats.decode_s = t0.elapsed().as_secs_f64();

        let completions = live
            .into_iter()
            .map(|s| {
                let text = match s.text {
                    Some(t) => t,
                    None => tokenizer.decode(s.generated(), true)?,
                };
                Ok(Completion {
                    prompt_index: s.prompt,
                    sample_index: s.sample,
                    token_ids: s.context[s.prompt_len..].to_vec(),
                    logprobs: s.logprobs,
                    finish_reason: s.finish.unwrap_or(FinishReason::Length),
                    text,
                })
            })
            .collect::<Result<_>>()?;
        Ok((completions, stats))
    }
}

/// Samples the next token of `s` from `logits` and decides whether `s` is finished.
fn accept<C>(
    s: &mut Live<C>,
    logits: &[f32],
    p: &SamplingParams,
    tok: &TextTokenizer,
    max_ctx: usize,
) -> Result<()> {
    let n = s.context.len() - s.prompt_len;
    let (t, lp) = sample(logits, p, &s.context, n, &mut s.rng);
    s.context.push(t);
    s.logprobs.push(lp);
    let n = n + 1;
    if p.eos_token_ids.contains(&t) {
        s.finish = Some(FinishReason::Eos);
        return Ok(());
    }
    if !p.stop_strings.is_empty() {
        let text = tok.decode(s.generated(), true)?;
        let hit = p
            .stop_strings
            .iter()
            .filter_map(|stop| text.find(stop.as_str()).map(|i| i + stop.len()))
            .min();
        if let Some(end) = hit {
            s.text = Some(text[..end].to_string());
            s.finish = Some(FinishReason::Stop);
            return Ok(());
        }
    }
    if n >= p.max_new_tokens || s.context.len() >= max_ctx {
        s.finish = Some(FinishReason::Length);
    }
    Ok(())
}
