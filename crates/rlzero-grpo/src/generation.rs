//! Prompts → completions → rewards, and (optionally) DAPO's dynamic sampling.
//!
//! A generation batch is `prompts_per_step` groups of `G` completions. Each group is sampled
//! from one prompt and scored by every reward function. With dynamic sampling (Yu et al. 2025,
//! DAPO §3.2) a group whose weighted rewards are all equal is dropped — its advantages are all
//! zero, so it would only dilute the batch — and more prompts are sampled until the batch is
//! full or `dynamic_sampling_max_rounds` extra rounds are spent.

use candle_core::Tensor;
use rlzero_model::{Decoder, TextTokenizer};
use rlzero_rewards::{weighted_total, Reference, RewardInput, RewardSet};
use rlzero_rollout::{rollout_on, Completion, FinishReason, RolloutBackend, SamplingParams};

use crate::advantages::{is_zero, nanstd};
use crate::error::{GrpoError, Result};

/// A prompt to train on: the text the model sees (chat template applied), its token ids,
/// and the task's reference for the verifiers.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainPrompt {
    /// The prompt text as the model sees it.
    pub text: String,
    /// Its token ids.
    pub ids: Vec<u32>,
    /// What the reward functions check completions against.
    pub reference: Reference,
}

impl TrainPrompt {
    /// A one-turn chat prompt: `user` wrapped in the model's chat template with the
    /// generation prompt appended, then tokenized (special tokens come from the template).
    pub fn chat(tokenizer: &TextTokenizer, user: &str, reference: Reference) -> Result<Self> {
        let text = tokenizer.apply_chat_template(&[rlzero_model::Message::user(user)], true)?;
        let ids = tokenizer.encode(&text, false)?;
        if ids.is_empty() {
            return Err(GrpoError::InvalidInput(format!(
                "prompt {user:?} encodes to no tokens"
            )));
        }
        Ok(Self {
            text,
            ids,
            reference,
        })
    }
}

/// The groups kept for training, prompt-major (`G` consecutive completions per prompt).
pub(crate) struct Generation {
    pub prompts: Vec<TrainPrompt>,
    pub completions: Vec<Completion>,
    /// `(N, K)` per-function rewards, NaN = abstained.
    pub rewards: Vec<Vec<f64>>,
    pub completions_sampled: usize,
    /// Completion tokens over every sampled completion.
    pub tokens_sampled: usize,
    pub reward_panics: usize,
    /// Seconds spent in the reward functions (the rest of `generate` is sampling).
    pub reward_seconds: f64,
}

/// Rollout seeds are derived from `(seed, step, prompt, sample)`; each dynamic-sampling round
/// of one generation batch gets its own `step` slot so rounds never repeat a random stream.
pub(crate) const ROUND_STRIDE: u64 = 1 << 16;

/// Settings of one generation batch.
pub(crate) struct GenerateArgs<'a> {
    pub model: &'a Decoder,
    pub tokenizer: &'a TextTokenizer,
    pub rewards: &'a RewardSet,
    pub params: &'a SamplingParams,
    /// How the rollout runs (f32 or bf16 weights on the CPU: `SamplingConfig::rollout_weights`).
    pub backend: RolloutBackend,
    pub prompts_per_step: usize,
    pub num_generations: usize,
    pub dynamic_sampling: bool,
    pub max_extra_rounds: usize,
    /// Generation batches sampled before this one (skipped steps included), so a retry after a
    /// skipped step never replays the same random streams.
    pub batch_index: u64,
}

/// Samples and scores groups until `prompts_per_step` are kept (or prompts/rounds run out).
pub(crate) fn generate(
    a: &GenerateArgs<'_>,
    prompts: &mut dyn Iterator<Item = TrainPrompt>,
) -> Result<Generation> {
    let g = a.num_generations;
    let weights = a.rewards.weights();
    let mut out = Generation {
        prompts: Vec::new(),
        completions: Vec::new(),
        rewards: Vec::new(),
        completions_sampled: 0,
        tokens_sampled: 0,
        reward_panics: 0,
        reward_seconds: 0.0,
    };
    let rounds = if a.dynamic_sampling {
        1 + a.max_extra_rounds
    } else {
        1
    };
    for round in 0..rounds {
        let need = a.prompts_per_step - out.prompts.len();
        if need == 0 {
            break;
        }
        let batch: Vec<TrainPrompt> = prompts.take(need).collect();
        if batch.is_empty() {
            break;
        }
        let ids: Vec<Vec<u32>> = batch.iter().map(|p| p.ids.clone()).collect();
        let seed_step = a.batch_index * ROUND_STRIDE + round as u64;
        let (completions, _) = rollout_on(
            a.backend,
            a.model,
            a.tokenizer,
            &ids,
            g,
            a.params,
            seed_step,
        )?;
        out.completions_sampled += completions.len();
        out.tokens_sampled += completions.iter().map(|c| c.token_ids.len()).sum::<usize>();
        let inputs = reward_inputs(&batch, &completions, a.params.max_new_tokens);
        let t = std::time::Instant::now();
        let table = a.rewards.score(&inputs);
        out.reward_seconds += t.elapsed().as_secs_f64();
        let panics = table.panics.iter().sum::<usize>();
        if panics > 0 {
            tracing::warn!(
                panics,
                "reward functions panicked; those completions scored as failures"
            );
        }
        out.reward_panics += panics;
        let mut groups = completions.chunks(g).zip(table.values.chunks(g));
        for (p, prompt) in batch.into_iter().enumerate() {
            let Some((comps, rows)) = groups.next() else {
                return Err(GrpoError::InvalidInput(format!(
                    "rollout returned no group for prompt {p}"
                )));
            };
            if a.dynamic_sampling && !has_variance(rows, &weights) {
                continue;
            }
            out.prompts.push(prompt);
            out.completions.extend_from_slice(comps);
            out.rewards.extend_from_slice(rows);
        }
    }
    Ok(out)
}

/// What the reward functions see of each completion: its prompt (by `prompt_index` into
/// `prompts`), text, reference, token count against the budget `max_tokens`, and whether it
/// was truncated.
pub fn reward_inputs<'a>(
    prompts: &'a [TrainPrompt],
    completions: &'a [Completion],
    max_tokens: usize,
) -> Vec<RewardInput<'a>> {
    completions
        .iter()
        .map(|c| {
            let p = &prompts[c.prompt_index];
            RewardInput {
                prompt_index: c.prompt_index,
                sample_index: c.sample_index,
                prompt: &p.text,
                completion: &c.text,
                reference: &p.reference,
                completion_tokens: c.token_ids.len(),
                max_completion_tokens: max_tokens,
                truncated: c.finish_reason == FinishReason::Length,
            }
        })
        .collect()
}

/// Whether a group's weighted rewards differ (an all-equal group has zero advantages): the
/// same zero test as the `frac_reward_zero_std` metric.
fn has_variance(rows: &[Vec<f64>], weights: &[f64]) -> bool {
    let totals: Vec<f64> = rows.iter().map(|r| weighted_total(r, weights)).collect();
    let s = nanstd(&totals);
    !s.is_nan() && !is_zero(s)
}

/// `(B, C)` rollout log-probs of `rows`, zero-padded to `c` tokens (the old or sampler policy's).
pub(crate) fn padded_logprobs(
    rows: &[Completion],
    c: usize,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let mut data = vec![0f32; rows.len() * c];
    for (i, r) in rows.iter().enumerate() {
        data[i * c..i * c + r.logprobs.len().min(c)]
            .copy_from_slice(&r.logprobs[..r.logprobs.len().min(c)]);
    }
    Ok(Tensor::from_vec(data, (rows.len(), c), dev)?)
}
