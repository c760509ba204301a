//! [`Trainer::step`]: one GRPO step, top to bottom.
//!
//! prompts → rollout → rewards → advantages → (old / reference log-probs) → loss → backward →
//! clip → optimizer → metrics. Each stage is a small module of its own
//! ([`crate::generation`], [`crate::advantages`], [`rlzero_model::pack`], [`crate::loss`],
//! [`crate::optim`]); this file only wires them in order.
//!
//! ```no_run
//! use rlzero_grpo::{GrpoConfig, Trainer, TrainPrompt};
//! use rlzero_model::{load, LoadOptions, ModelSource};
//! use rlzero_rewards::{NumericAnswer, Reference, RewardSet};
//!
//! let model = load(&ModelSource::parse("models/SmolLM2-135M-Instruct.Q4_1.gguf"), &LoadOptions::default())?;
//! let prompt = TrainPrompt::chat(&model.tokenizer, "What is 3+4?", Reference::Answer("7".into()))?;
//! let rewards = RewardSet::new().with(NumericAnswer::default(), 1.0);
//! let mut trainer = Trainer::new(GrpoConfig::default(), model, rewards)?;
//! let report = trainer.step(&mut std::iter::repeat(prompt))?;
//! println!("{}", serde_json::Value::Object(report.metrics.to_json()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rlzero_model::pack::{completion_logprobs, CompletionScores, PackedBatch};
use rlzero_model::recompute::{add_var_grads, Recomputed};
use rlzero_model::{Decoder, LoadedModel, TextTokenizer, WeightMode};
use rlzero_rewards::RewardSet;
use rlzero_rollout::{Completion, FinishReason};

use crate::advantages::compute_advantages;
use crate::config::{GrpoConfig, OldLogprobs};
use crate::error::{GrpoError, Result};
use crate::generation::{generate, padded_logprobs, GenerateArgs, TrainPrompt};
use crate::loss::{grpo_loss, LossInputs, RowStats};
use crate::metrics::{PhaseTimes, StepMetrics};
use crate::optim::{clip_grad_norm, grad_norm, AdamW};
use crate::precision::{ComputeCopy, Precision};
use crate::report::{fill_reward_metrics, records, LossStats, StepReport};
use crate::sampler_correction::sampler_weights;

/// A micro-batch ready for the loss: packed sequences and per-token data.
struct MicroBatch {
    batch: PackedBatch,
    /// `(B, C)` f32: completion mask × row mask (truncated completions, when masked).
    loss_mask: Tensor,
    /// `(B,)` f32.
    advantages: Tensor,
    old: Option<Tensor>,
    reference: Option<Tensor>,
    /// `(B, C)` the rollout's own log-probs, when a sampler correction is configured.
    sampler: Option<Tensor>,
}

/// GRPO training state: policy, optional reference, optimizer, rewards, step count.
pub struct Trainer {
    pub(crate) cfg: GrpoConfig,
    pub(crate) policy: Decoder,
    /// With `precision = bf16`: the bf16 working copy of `policy` (which then holds the f32
    /// master weights) that rollouts, the forward and the backward run on.
    pub(crate) compute: Option<ComputeCopy>,
    reference: Option<Decoder>,
    tokenizer: TextTokenizer,
    eos_token_ids: Vec<u32>,
    rewards: RewardSet,
    pub(crate) optimizer: AdamW,
    /// Optimizer steps taken.
    pub(crate) step: u64,
    /// Generation batches sampled (every `step()` call, skipped or not): the rollout seed.
    pub(crate) batches: u64,
    /// Prompts taken from the prompt streams given to `step()` (the data-order position).
    pub(crate) prompts_drawn: u64,
}

impl Trainer {
    /// Prepares a run: validates the config and rewards, makes the decoder trainable (every
    /// weight, or LoRA adapters on a frozen base), keeps a frozen reference only when β > 0.
    pub fn new(cfg: GrpoConfig, model: LoadedModel, rewards: RewardSet) -> Result<Self> {
        cfg.validate()?;
        rewards.validate()?;
        let mut policy = model.decoder;
        if policy.dtype() != DType::F32 {
            return Err(GrpoError::InvalidInput(format!(
                "training loads f32 weights (with precision = bf16 they are the master copy), the model is {:?}",
                policy.dtype()
            )));
        }
        match &cfg.lora {
            Some(lora) => {
                policy.freeze()?;
                policy.add_lora(lora)?;
            }
            None => {
                if policy.mode() == WeightMode::Frozen {
                    policy = policy.to_dtype(policy.dtype(), WeightMode::Trainable)?;
                }
            }
        }
        let compute = match cfg.precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(ComputeCopy::new(&policy)?),
        };
        // π_ref = the initial policy (TRL); for LoRA, the base without adapters (shared storage).
        // In bf16 mode the reference is the bf16 copy's, so both log-probs round alike.
        let reference = if cfg.loss.beta > 0.0 {
            Some(
                compute
                    .as_ref()
                    .map_or(&policy, |c| c.decoder())
                    .frozen_copy()?,
            )
        } else {
            None
        };
        let optimizer = AdamW::new(policy.vars()?, cfg.optim)?;
        Ok(Self {
            cfg,
            policy,
            compute,
            reference,
            tokenizer: model.tokenizer,
            eos_token_ids: model.generation.eos_token_ids,
            rewards,
            optimizer,
            step: 0,
            batches: 0,
            prompts_drawn: 0,
        })
    }

    /// The policy being trained (with `precision = bf16`, its f32 master weights).
    pub fn policy(&self) -> &Decoder {
        &self.policy
    }

    /// The decoder rollouts and the scoring forward/backward run on: the policy itself, or its
    /// bf16 working copy with `precision = bf16`.
    pub fn working_policy(&self) -> &Decoder {
        self.compute.as_ref().map_or(&self.policy, |c| c.decoder())
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The validated config.
    pub fn config(&self) -> &GrpoConfig {
        &self.cfg
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Generation batches sampled, skipped steps included (the next rollout's seed slot).
    pub fn batches_sampled(&self) -> u64 {
        self.batches
    }

    /// Prompts drawn from the streams given to [`Trainer::step`] so far: a resumed run skips
    /// this many to continue the same data order.
    pub fn prompts_drawn(&self) -> u64 {
        self.prompts_drawn
    }

    /// The optimizer (its state is what a checkpoint saves).
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// One generation batch and its `num_iterations` optimizer steps.
    pub fn step(&mut self, prompts: &mut dyn Iterator<Item = TrainPrompt>) -> Result<StepReport> {
        let t_step = Instant::now();
        let mut times = PhaseTimes::default();
        let cfg = self.cfg.clone();
        let g = cfg.num_generations;

        // 1–2. Prompts → rollout → rewards. Rollouts read the weights directly, so a LoRA
        // policy samples from its merged weights.
        let t = Instant::now();
        let merged = if self.policy.has_adapters() {
            Some(self.policy.merged()?)
        } else {
            None
        };
        let working = self.working_policy();
        let params = cfg.sampling_params(self.eos_token_ids.clone());
        let mut drawn = 0u64;
        let generated = {
            let mut counted = prompts.inspect(|_| drawn += 1);
            generate(
                &GenerateArgs {
                    model: merged.as_ref().unwrap_or(working),
                    tokenizer: &self.tokenizer,
                    rewards: &self.rewards,
                    params: &params,
                    backend: cfg.sampling.rollout_weights.backend(),
                    prompts_per_step: cfg.prompts_per_step,
                    num_generations: g,
                    dynamic_sampling: cfg.dynamic_sampling,
                    max_extra_rounds: cfg.dynamic_sampling_max_rounds,
                    batch_index: self.batches,
                },
                &mut counted,
            )?
        };
        self.batches += 1;
        self.prompts_drawn += drawn;
        drop(merged);
        times.rewards = generated.reward_seconds;
        times.rollout = t.elapsed().as_secs_f64() - times.rewards;
        let mut m = StepMetrics {
            batch: self.batches,
            sampled_completions: generated.completions_sampled,
            sampled_tokens: generated.tokens_sampled,
            reward_panics: generated.reward_panics,
            ..StepMetrics::default()
        };
        if generated.completions.is_empty() {
            return Ok(self.skipped(
                m,
                t_step,
                times,
                "no prompt left, or no group with reward variance",
            ));
        }

        // 3. Advantages.
        let weights = self.rewards.weights();
        let adv = compute_advantages(
            &generated.rewards,
            &weights,
            g,
            cfg.scale_rewards,
            cfg.multi_objective_aggregation,
        )?;
        fill_reward_metrics(
            &mut m,
            &self.rewards,
            &generated.rewards,
            &adv,
            &generated.completions,
        );

        // 4. Micro-batches with their masks, and old / reference log-probs.
        let t = Instant::now();
        let micro =
            self.micro_batches(&generated.prompts, &generated.completions, &adv.advantages)?;
        let num_items: f64 = micro
            .iter()
            .map(|mb| Ok(mb.loss_mask.sum_all()?.to_scalar::<f32>()? as f64))
            .sum::<Result<f64>>()?;
        m.completion_tokens = num_items as usize;
        m.prompt_tokens = generated.prompts.iter().map(|p| p.ids.len() * g).sum();
        times.forward += t.elapsed().as_secs_f64();

        // 5. μ optimizer steps on this generation batch.
        let mut row_stats = Vec::new();
        if let Some(why) = self.optimize(&micro, num_items, &mut m, &mut times, &mut row_stats)? {
            return Ok(self.skipped(m, t_step, times, &why));
        }
        m.step = self.step;
        m.trained_completions = generated.completions.len();
        m.step_time = t_step.elapsed().as_secs_f64();
        m.peak_rss_mib = crate::metrics::peak_rss_mib();
        m.phases = times;
        tracing::debug!(
            step = m.step,
            reward = m.reward,
            loss = m.loss,
            grad_norm = m.grad_norm,
            rollout_s = m.phases.rollout,
            forward_s = m.phases.forward,
            backward_s = m.phases.backward,
            optimizer_s = m.phases.optimizer,
            "step done"
        );
        let samples = records(
            &generated.prompts,
            &generated.completions,
            &generated.rewards,
            &adv,
            g,
            &row_stats,
        );
        Ok(StepReport {
            metrics: m,
            samples,
        })
    }

    /// Loss → backward → clip → AdamW, `num_iterations` times over the micro-batches.
    ///
    /// A non-finite loss or gradient norm in the first iteration returns its reason before
    /// anything was applied (the caller reports a skipped step). In a later iteration (μ > 1)
    /// the iterations already applied stay applied: the step ends early, `iterations` says how
    /// many ran and `skip_reason` why it stopped.
    ///
    /// `rows` receives, per iteration applied, every completion's [`RowStats`] in batch order.
    fn optimize(
        &mut self,
        micro: &[MicroBatch],
        num_items: f64,
        m: &mut StepMetrics,
        times: &mut PhaseTimes,
        rows: &mut Vec<Vec<RowStats>>,
    ) -> Result<Option<String>> {
        let cfg = self.cfg.clone();
        let mut acc = cfg.accumulation();
        // Dynamic sampling may leave fewer micro-batches than configured.
        acc.gradient_accumulation_steps = micro.len();
        acc.steps_per_generation = micro.len();
        // The optimizer's variables (the f32 master in bf16 mode), and where the backward pass
        // files gradients (the bf16 copy's variables in bf16 mode).
        let vars: Vec<Var> = self.optimizer.vars().to_vec();
        let working = self.compute.as_ref().map_or(&self.policy, |c| c.decoder());
        let mut stats = LossStats::default();
        for it in 0..cfg.num_iterations {
            let mut grads: Option<GradStore> = None;
            let mut loss_total = 0.0;
            let mut failure = None;
            let mut iteration_rows = Vec::new();
            'micro: for mb in micro {
                let rows = mb.batch.len();
                let pass = cfg.sequences_per_pass.unwrap_or(rows).min(rows);
                let chunked = pass < rows;
                let mb_tokens = if chunked {
                    Some(mb.loss_mask.sum_all()?.to_scalar::<f32>()? as f64)
                } else {
                    None
                };
                for start in (0..rows).step_by(pass) {
                    let len = pass.min(rows - start);
                    let part = |t: &Tensor| -> Result<Tensor> {
                        Ok(if chunked {
                            t.narrow(0, start, len)?
                        } else {
                            t.clone()
                        })
                    };
                    let t = Instant::now();
                    let batch = if chunked {
                        mb.batch.rows(start, len)?
                    } else {
                        mb.batch.clone()
                    };
                    let mask = part(&mb.loss_mask)?;
                    // With recomputation the log-probs are a leaf of the loss's graph; the
                    // decoder's gradients come from `Recomputed::backward` below.
                    let (scores, tape, leaf) = if cfg.gradient_checkpointing {
                        let r =
                            Recomputed::forward(working, &batch, cfg.sampling.temperature, true)?;
                        let leaf = Var::from_tensor(&r.scores.logprobs)?;
                        let scores = CompletionScores {
                            logprobs: leaf.as_tensor().clone(),
                            entropy: r.scores.entropy.clone(),
                        };
                        (scores, Some(r), Some(leaf))
                    } else {
                        let s =
                            completion_logprobs(working, &batch, cfg.sampling.temperature, true)?;
                        (s, None, None)
                    };
                    let old = mb.old.as_ref().map(&part).transpose()?;
                    let reference = mb.reference.as_ref().map(&part).transpose()?;
                    // The trainer's log-probs of the sampled tokens: the old policy's when
                    // recomputed, else the current ones (the same numbers on the first update).
                    let sampler_weights = match (&cfg.sampler_correction, &mb.sampler) {
                        (Some(c), Some(s)) => {
                            let trainer = old.as_ref().unwrap_or(&scores.logprobs);
                            let (w, s) = sampler_weights(c, trainer, &part(s)?, &mask)?;
                            stats.add_sampler(s);
                            Some(w)
                        }
                        _ => None,
                    };
                    let out = grpo_loss(
                        &cfg.loss,
                        &acc,
                        &LossInputs {
                            logprobs: &scores.logprobs,
                            old_logprobs: old.as_ref(),
                            ref_logprobs: reference.as_ref(),
                            advantages: &part(&mb.advantages)?,
                            mask: &mask,
                            num_items_in_batch: num_items,
                            micro_batch: mb_tokens.map(|tokens| (rows, tokens)),
                            sampler_weights: sampler_weights.as_ref(),
                        },
                    )?;
                    times.forward += t.elapsed().as_secs_f64();
                    stats.add(&out, scores.entropy.as_ref(), &mask)?;
                    iteration_rows.extend_from_slice(&out.rows);
                    let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    if !loss.is_finite() {
                        failure = Some(format!("non-finite loss {loss}"));
                        break 'micro;
                    }
                    loss_total += loss;
                    let t = Instant::now();
                    let mut g = out.loss.backward()?;
                    if let (Some(tape), Some(leaf)) = (tape, &leaf) {
                        // No entry: the loss does not depend on these log-probs (all masked).
                        let d = match g.remove(leaf.as_tensor()) {
                            Some(d) => d,
                            None => leaf.zeros_like()?,
                        };
                        g = tape.backward(working, &d)?;
                    }
                    if let Some(c) = &self.compute {
                        g = c.to_master(g, &vars)?;
                    }
                    add_var_grads(grads.get_or_insert_with(GradStore::default), g, &vars)?;
                    times.backward += t.elapsed().as_secs_f64();
                }
            }
            let t = Instant::now();
            let norm = match (&failure, grads.as_mut()) {
                (None, Some(g)) => match cfg.max_grad_norm {
                    Some(c) => clip_grad_norm(g, &vars, c)?,
                    None => grad_norm(g, &vars)?,
                },
                (None, None) => {
                    return Err(GrpoError::InvalidInput("no micro-batch to train on".into()))
                }
                (Some(_), _) => f64::NAN,
            };
            if failure.is_none() && !norm.is_finite() {
                failure = Some(format!("non-finite gradient norm {norm}"));
            }
            if let Some(why) = failure {
                if it == 0 {
                    return Ok(Some(why));
                }
                m.skip_reason = Some(format!(
                    "iteration {} of {}: {why}; the {it} before it were applied",
                    it + 1,
                    cfg.num_iterations
                ));
                break;
            }
            let lr = cfg.schedule.lr_at(cfg.optim.lr, self.step, cfg.max_steps);
            if let Some(g) = &grads {
                self.optimizer.step(g, lr)?;
                if let Some(c) = &self.compute {
                    c.sync(&vars)?;
                }
            }
            self.step += 1;
            times.optimizer += t.elapsed().as_secs_f64();
            m.iterations = it + 1;
            rows.push(iteration_rows);
            m.loss = loss_total;
            m.grad_norm = norm;
            m.learning_rate = lr;
        }
        stats.finish(m);
        Ok(None)
    }

    /// Packs the generation batch into (up to) `gradient_accumulation_steps` equal micro-batches.
    fn micro_batches(
        &self,
        prompts: &[TrainPrompt],
        completions: &[Completion],
        advantages: &[f64],
    ) -> Result<Vec<MicroBatch>> {
        let cfg = &self.cfg;
        let g = cfg.num_generations;
        let n = completions.len();
        // Equal micro-batches (TRL never has ragged ones; the per-sequence losses weigh each
        // micro-batch by 1/GA): the largest count ≤ GA that divides N, which is GA itself
        // unless dynamic sampling returned fewer groups.
        let k = (1..=cfg.gradient_accumulation_steps)
            .rev()
            .find(|d| n.is_multiple_of(*d))
            .unwrap_or(1);
        let per = n / k;
        let dev = self.policy.device().clone();
        let pad = self.eos_token_ids.first().copied().unwrap_or(0);
        let mut out = Vec::new();
        for start in (0..n).step_by(per.max(1)) {
            let rows = &completions[start..(start + per).min(n)];
            let prompt_ids: Vec<&[u32]> = (start..start + rows.len())
                .map(|i| prompts[i / g].ids.as_slice())
                .collect();
            // A completion always holds ≥ 1 token (rollout stops after one at the earliest);
            // guard anyway with one masked pad token rather than fail the step.
            let empty = [pad];
            let comp_ids: Vec<&[u32]> = rows
                .iter()
                .map(|c| {
                    if c.token_ids.is_empty() {
                        &empty[..]
                    } else {
                        c.token_ids.as_slice()
                    }
                })
                .collect();
            let batch = if cfg.share_prompts {
                PackedBatch::with_shared_prompts(&prompt_ids, &comp_ids, pad, &dev)?
            } else {
                PackedBatch::new(&prompt_ids, &comp_ids, pad, &dev)?
            };
            let keep: Vec<f32> = rows
                .iter()
                .map(|c| {
                    let masked = c.token_ids.is_empty()
                        || (cfg.mask_truncated_completions
                            && c.finish_reason == FinishReason::Length);
                    if masked {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect();
            let keep = Tensor::from_vec(keep, (rows.len(), 1), &dev)?;
            let loss_mask = batch.completion_mask.broadcast_mul(&keep)?; // (B, C)
            let adv: Vec<f32> = advantages[start..start + rows.len()]
                .iter()
                .map(|&a| a as f32)
                .collect();
            let advantages = Tensor::from_vec(adv, rows.len(), &dev)?;
            let old = match (cfg.num_iterations > 1, cfg.old_logprobs) {
                (false, _) => None, // on-policy: TRL uses the current log-probs, detached
                (true, OldLogprobs::Rollout) => {
                    Some(padded_logprobs(rows, batch.completion_len, &dev)?)
                }
                (true, OldLogprobs::Recompute) => Some(
                    completion_logprobs(
                        self.working_policy(),
                        &batch,
                        cfg.sampling.temperature,
                        false,
                    )?
                    .logprobs
                    .detach()
                    .to_dtype(DType::F32)?,
                ),
            };
            let reference = match &self.reference {
                Some(r) => Some(
                    completion_logprobs(r, &batch, cfg.sampling.temperature, false)?
                        .logprobs
                        .detach()
                        .to_dtype(DType::F32)?,
                ),
                None => None,
            };
            let sampler = cfg
                .sampler_correction
                .map(|_| padded_logprobs(rows, batch.completion_len, &dev))
                .transpose()?;
            out.push(MicroBatch {
                batch,
                loss_mask,
                advantages,
                old,
                reference,
                sampler,
            });
        }
        Ok(out)
    }

    fn skipped(&self, mut m: StepMetrics, t0: Instant, times: PhaseTimes, why: &str) -> StepReport {
        m.skipped = true;
        m.skip_reason = Some(why.to_string());
        tracing::warn!(
            step = self.step,
            batch = self.batches,
            reason = why,
            "step skipped"
        );
        m.step = self.step;
        m.learning_rate = self
            .cfg
            .schedule
            .lr_at(self.cfg.optim.lr, self.step, self.cfg.max_steps);
        m.step_time = t0.elapsed().as_secs_f64();
        m.phases = times;
        StepReport {
            metrics: m,
            samples: Vec::new(),
        }
    }
}
