//! The trainer's configuration: one serde struct (TOML), parsed, then validated once.
//!
//! Defaults are TRL 1.16's `GRPOConfig` unless a field says why not. Errors name the field.
//!
//! ```
//! use rlzero_grpo::config::GrpoConfig;
//! let cfg = GrpoConfig::from_toml_str(r#"
//!     prompts_per_step = 4
//!     [loss]
//!     loss_type = "dr_grpo"
//!     beta = 0.04
//! "#)?;
//! assert_eq!(cfg.num_generations, 8);
//! assert!(GrpoConfig::from_toml_str("num_generations = 1").is_err()); // std of one sample
//! # Ok::<(), rlzero_grpo::GrpoError>(())
//! ```

use std::path::Path;

use rlzero_model::lora::LoraConfig;
use rlzero_rollout::{RolloutBackend, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::advantages::{Aggregation, ScaleRewards};
use crate::error::{GrpoError, Result};
use crate::loss::{Accumulation, LossConfig};
use crate::optim::AdamWParams;
use crate::precision::Precision;
use crate::sampler_correction::SamplerCorrection;
use crate::schedule::LrSchedule;

/// Where the "old" log-probs of the importance ratio come from when `num_iterations > 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OldLogprobs {
    /// The rollout's own log-probs. rlzero's sampler reports `log softmax(logits / T)` from
    /// the same f32 weights as the trainer; they agree with the trainer's forward within 3e-5
    /// (tests/rollout.rs), i.e. a ratio error of 3e-5 against clip ranges of 0.2, and they cost
    /// nothing, while recomputing costs one more forward pass over the whole batch. Default.
    /// Not with `precision = bf16`: the bf16 cache path and the bf16 full forward round
    /// differently (gaps up to ~0.1 on the tiny fixtures), which would distort the ratio.
    #[default]
    Rollout,
    /// A no-grad forward pass of the policy before the first update, as TRL does.
    Recompute,
}

/// How completions are sampled (TRL's generation fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Maximum completion tokens. Default 256: TRL's 512 costs twice the CPU time for the
    /// short answers of the arithmetic tasks rlzero targets first; raise it for long reasoning.
    pub max_completion_length: usize,
    /// EOS is suppressed until this many tokens exist (TRL: `generation_kwargs={"min_new_tokens": n}`);
    /// fixed-length work for benchmarks. Default 0.
    pub min_completion_length: usize,
    /// Sampling temperature; the trainer scores at the same temperature. Default 1.0 (TRL).
    pub temperature: f64,
    /// Nucleus sampling mass. Default 1.0 (off, TRL).
    pub top_p: f64,
    /// Top-k; `None` (default, TRL's 0) keeps every token.
    pub top_k: Option<usize>,
    /// Min-p; 0.0 (default, TRL's `None`) is off.
    pub min_p: f64,
    /// Repetition penalty. Default 1.0 (off, TRL).
    pub repetition_penalty: f64,
    /// Strings that end a completion. Default none.
    pub stop_strings: Vec<String>,
    /// The precision the CPU rollout streams the weights in. Default `f32`: the sampler is the
    /// trainer's policy to rounding (log-prob gap ~3e-5). `bf16` halves the bytes per decode step
    /// (SmolLM2-135M, one group of 8: 43–46 → 33–34 ms per step on a 2-core AVX2 host) at a
    /// policy shift (gap mean ~8e-3, max ~5e-2 there; `examples/rollout_bench.rs`), so with
    /// `num_iterations > 1` it needs `old_logprobs = "recompute"`. f32 CPU models only.
    pub rollout_weights: RolloutWeights,
}

/// The precision of the weights a CPU rollout streams ([`SamplingConfig::rollout_weights`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutWeights {
    /// The f32 weights themselves (default).
    #[default]
    F32,
    /// A bf16 copy rounded from the f32 weights at each rollout (`RolloutBackend::FastCpuBf16`).
    Bf16,
}

impl RolloutWeights {
    /// The rollout backend that streams these weights.
    pub fn backend(self) -> RolloutBackend {
        match self {
            RolloutWeights::F32 => RolloutBackend::Auto,
            RolloutWeights::Bf16 => RolloutBackend::FastCpuBf16,
        }
    }
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            max_completion_length: 256,
            min_completion_length: 0,
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            min_p: 0.0,
            repetition_penalty: 1.0,
            stop_strings: Vec::new(),
            rollout_weights: RolloutWeights::F32,
        }
    }
}

/// Everything a GRPO run needs besides the model, the prompts and the rewards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    /// Seed of every random stream (sampling, adapter initialisation). Default 0.
    pub seed: u64,
    /// Optimizer steps the LR schedule spans (`max_steps`). Default 100.
    pub max_steps: u64,
    /// Prompts per generation batch. Default 1 (TRL: `per_device_train_batch_size` 8 completions
    /// / `num_generations` 8).
    pub prompts_per_step: usize,
    /// Completions per prompt, `G`. Default 8 (TRL).
    pub num_generations: usize,
    /// Micro-batches the generation batch is split into (gradients accumulated, one optimizer
    /// step). Default 1.
    pub gradient_accumulation_steps: usize,
    /// Forward/backward passes cover at most this many sequences of a micro-batch; the loss
    /// keeps the micro-batch's normalisation, so the update is the same as one pass (up to
    /// float summation order) while peak activation memory shrinks with it. The per-call
    /// metrics (entropy, KL, clip ratios) are then means over passes rather than micro-batches.
    /// `None` (default): the whole micro-batch in one pass, as TRL.
    pub sequences_per_pass: Option<usize>,
    /// Activation recomputation (transformers' `gradient_checkpointing`): the scoring forward
    /// keeps only each layer's input and re-runs one layer at a time in the backward pass
    /// ([`rlzero_model::recompute`]): the same gradients for one more forward, with activation
    /// memory of one layer instead of all. Default true, as TRL 1.16's `GRPOConfig`
    /// (transformers' own default is false). Measured on SmolLM2-135M, 2 CPU cores, per step:
    /// 8 × 168 tokens, 28–31 s and 3.0 GiB peak, against 41 s and 8.2 GiB for one plain pass
    /// (whose saved activations cost more in page faults than the extra forward) and 28 s and
    /// 5.7 GiB for 4 plain micro-batches; 32 × 64 tokens, 32 s and 3.0 GiB against 28.5 s and
    /// 6.4 GiB for 4 plain micro-batches. It is the memory-safe default, not always the fastest.
    pub gradient_checkpointing: bool,
    /// Score each group's prompt once instead of once per completion
    /// ([`rlzero_model::prefix`]): the completions attend to their prompt's keys and values.
    /// The same log-probs and gradients (up to float rounding; with LoRA dropout the shared
    /// prompt draws one dropout mask instead of one per copy) for a fraction of the forward and
    /// backward work when prompts are long against completions. Default true (TRL has no such
    /// option and recomputes the prompt for every completion); false for the plain layout,
    /// e.g. to compare the two. A run saved before this field existed resumes with it on, so it
    /// continues equal only up to rounding, not bit for bit.
    pub share_prompts: bool,
    /// Optimizer steps per generation batch, `μ` (GRPO's inner iterations). Default 1 (TRL).
    pub num_iterations: usize,
    /// Source of the old log-probs when `μ > 1`. Default `rollout` (see [`OldLogprobs`]).
    pub old_logprobs: OldLogprobs,
    /// Divisor of the centred rewards. Default `group` (TRL).
    pub scale_rewards: ScaleRewards,
    /// Combination of several reward functions. Default `sum_then_normalize` (TRL).
    pub multi_objective_aggregation: Aggregation,
    /// Exclude completions that hit `max_completion_length` from the loss (DAPO). Default false
    /// (TRL).
    pub mask_truncated_completions: bool,
    /// DAPO's dynamic sampling: drop groups whose rewards are all equal (zero advantage, no
    /// signal) and sample more prompts to refill the batch. Default false (TRL has no such
    /// option; DAPO, Yu et al. 2025 §3.2). The step's reward and completion metrics then
    /// describe the groups trained on (so `frac_reward_zero_std` is 0); `sampled_completions`
    /// counts all.
    pub dynamic_sampling: bool,
    /// Extra rollout rounds dynamic sampling may spend per step. Default 3.
    pub dynamic_sampling_max_rounds: usize,
    /// Global gradient-norm clip; `None` disables. Default 1.0 (TRL / transformers).
    pub max_grad_norm: Option<f64>,
    /// Sampling settings.
    pub sampling: SamplingConfig,
    /// The policy objective.
    pub loss: LossConfig,
    /// AdamW hyper-parameters.
    pub optim: AdamWParams,
    /// Learning-rate schedule over `max_steps`. Default linear decay, no warmup (transformers).
    pub schedule: LrSchedule,
    /// LoRA adapters; `None` (default) fine-tunes every weight.
    pub lora: Option<LoraConfig>,
    /// The dtype rollouts, the forward and the backward run in. Default `f32`; `bf16` keeps f32
    /// master weights and optimizer state beside a bf16 working copy ([`crate::precision`]),
    /// for GPUs (on the CPU it is slower). Full fine-tuning only.
    pub precision: Precision,
    /// Truncated importance sampling for a sampler that differs from the trained f32 policy
    /// (bf16 rollout weights): each token's loss is weighted by the capped ratio of the
    /// trainer's to the sampler's probability ([`crate::sampler_correction`], TRL's
    /// `vllm_importance_sampling_correction`). Default `None`, off: with f32 rollouts the two
    /// agree to ~3e-5 and the weights would all be 1.
    pub sampler_correction: Option<SamplerCorrection>,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            max_steps: 100,
            prompts_per_step: 1,
            num_generations: 8,
            gradient_accumulation_steps: 1,
            sequences_per_pass: None,
            gradient_checkpointing: true,
            share_prompts: true,
            num_iterations: 1,
            old_logprobs: OldLogprobs::Rollout,
            scale_rewards: ScaleRewards::Group,
            multi_objective_aggregation: Aggregation::SumThenNormalize,
            mask_truncated_completions: false,
            dynamic_sampling: false,
            dynamic_sampling_max_rounds: 3,
            max_grad_norm: Some(1.0),
            sampling: SamplingConfig::default(),
            loss: LossConfig::default(),
            optim: AdamWParams::default(),
            schedule: LrSchedule::default(),
            lora: None,
            precision: Precision::F32,
            sampler_correction: None,
        }
    }
}

impl GrpoConfig {
    /// Parses TOML and validates.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| GrpoError::ConfigFile {
            path: "<string>".into(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a TOML file and validates; errors name the file (and the line, from the parser).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| GrpoError::ConfigFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|e| GrpoError::ConfigFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The resolved config as TOML (what a run folder saves).
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| GrpoError::ConfigFile {
            path: "<resolved config>".into(),
            message: e.to_string(),
        })
    }

    /// Completions per generation batch: `prompts_per_step × num_generations`.
    pub fn generation_batch_size(&self) -> usize {
        self.prompts_per_step * self.num_generations
    }

    /// The loss normalisation constants of this run.
    pub fn accumulation(&self) -> Accumulation {
        Accumulation {
            gradient_accumulation_steps: self.gradient_accumulation_steps,
            // One generation batch per optimizer step (TRL's default steps_per_generation).
            steps_per_generation: self.gradient_accumulation_steps,
            max_completion_length: self.sampling.max_completion_length,
        }
    }

    /// The rollout crate's sampling parameters for this config.
    pub fn sampling_params(&self, eos_token_ids: Vec<u32>) -> SamplingParams {
        let s = &self.sampling;
        SamplingParams {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repetition_penalty: s.repetition_penalty,
            max_new_tokens: s.max_completion_length,
            min_new_tokens: s.min_completion_length,
            stop_strings: s.stop_strings.clone(),
            eos_token_ids,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }

    /// Checks every field once, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_steps", self.max_steps as usize),
            ("prompts_per_step", self.prompts_per_step),
            ("num_generations", self.num_generations),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("num_iterations", self.num_iterations),
            (
                "sampling.max_completion_length",
                self.sampling.max_completion_length,
            ),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(GrpoError::config(field, "must be ≥ 1"));
            }
        }
        if self.precision == Precision::Bf16
            && self.num_iterations > 1
            && self.old_logprobs == OldLogprobs::Rollout
        {
            return Err(GrpoError::config(
                "old_logprobs",
                "with precision = bf16 and num_iterations > 1 the old log-probs must be recomputed \
                 (old_logprobs = \"recompute\"): bf16 rollout log-probs differ from the bf16 \
                 forward's by up to ~0.1, a ratio error of ~10 % against a clip range of 0.2",
            ));
        }
        if let Some(c) = &self.sampler_correction {
            c.validate()?;
            if self.num_iterations > 1 && self.old_logprobs == OldLogprobs::Rollout {
                return Err(GrpoError::config(
                    "old_logprobs",
                    "the sampler correction compares the trainer's log-probs with the sampler's; \
                     with num_iterations > 1 and old_logprobs = \"rollout\" those are the same \
                     numbers (every weight 1): use old_logprobs = \"recompute\"",
                ));
            }
            if self.loss.loss_type == crate::loss::LossType::Vespo {
                return Err(GrpoError::config(
                    "sampler_correction",
                    "not implemented with loss_type = vespo (TRL folds the sampler ratio into \
                     VESPO's gamma weights instead of weighting the per-token loss)",
                ));
            }
        }
        if self.sampling.rollout_weights == RolloutWeights::Bf16 {
            if self.precision == Precision::Bf16 {
                return Err(GrpoError::config(
                    "sampling.rollout_weights",
                    "bf16 rollout weights are for f32 models on the CPU; with precision = bf16 the \
                     rollout already runs on the bf16 working copy",
                ));
            }
            if self.num_iterations > 1 && self.old_logprobs == OldLogprobs::Rollout {
                return Err(GrpoError::config(
                    "old_logprobs",
                    "with rollout_weights = bf16 and num_iterations > 1 the old log-probs must be \
                     recomputed (old_logprobs = \"recompute\"): the bf16 sampler's log-probs differ \
                     from the f32 policy's by up to ~5e-2",
                ));
            }
        }
        if self.precision == Precision::Bf16 && self.lora.is_some() {
            return Err(GrpoError::config(
                "precision",
                "bf16 with LoRA is not implemented (it needs f32 adapters on a bf16 base); use f32",
            ));
        }
        if self.num_generations < 2 && self.scale_rewards != ScaleRewards::None {
            return Err(GrpoError::config(
                "num_generations",
                "a group of 1 has no standard deviation to scale by (and no baseline: every advantage is 0); use ≥ 2",
            ));
        }
        if !self
            .generation_batch_size()
            .is_multiple_of(self.gradient_accumulation_steps)
        {
            return Err(GrpoError::config(
                "gradient_accumulation_steps",
                format!(
                    "must divide the generation batch of {} × {} = {} completions",
                    self.prompts_per_step,
                    self.num_generations,
                    self.generation_batch_size()
                ),
            ));
        }
        if self.sequences_per_pass == Some(0) {
            return Err(GrpoError::config("sequences_per_pass", "must be ≥ 1"));
        }
        if let Some(c) = self.max_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(GrpoError::config(
                    "max_grad_norm",
                    format!("must be finite and > 0, got {c}"),
                ));
            }
        }
        if self.dynamic_sampling && self.dynamic_sampling_max_rounds == 0 {
            return Err(GrpoError::config(
                "dynamic_sampling_max_rounds",
                "must be ≥ 1 with dynamic_sampling",
            ));
        }
        self.sampling_params(Vec::new())
            .validate()
            .map_err(|e| GrpoError::config("sampling", e.to_string()))?;
        self.loss.validate().map_err(|e| prefix_field("loss", e))?;
        self.optim
            .validate()
            .map_err(|e| prefix_field("optim", e))?;
        if let Some(l) = &self.lora {
            l.validate()
                .map_err(|e| GrpoError::config("lora", e.to_string()))?;
        }
        Ok(())
    }
}

/// `loss.beta` rather than `beta` in an error from a nested section.
fn prefix_field(section: &str, e: GrpoError) -> GrpoError {
    match e {
        GrpoError::Config { field, message } => GrpoError::Config {
            field: format!("{section}.{field}"),
            message,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(text: &str) -> String {
        match GrpoConfig::from_toml_str(text) {
            Err(GrpoError::Config { field, .. }) => field,
            Err(e) => panic!("{text:?}: expected a config-field error, got {e}"),
            Ok(_) => panic!("{text:?}: accepted"),
        }
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let cfg = GrpoConfig::default();
        cfg.validate().unwrap();
        let again = GrpoConfig::from_toml_str(&cfg.to_toml_string().unwrap()).unwrap();
        assert_eq!(cfg, again);
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(field_of("num_generations = 1"), "num_generations");
        assert_eq!(field_of("[loss]\nbeta = -0.1"), "loss.beta");
        assert_eq!(field_of("[loss]\nepsilon = 1.5"), "loss.epsilon");
        assert_eq!(field_of("[loss]\nepsilon_high = -1.0"), "loss.epsilon_high");
        assert_eq!(field_of("[loss]\ndelta = 1.1"), "loss.delta");
        assert_eq!(
            field_of("prompts_per_step = 3\nnum_generations = 5\ngradient_accumulation_steps = 2"),
            "gradient_accumulation_steps"
        );
        assert_eq!(field_of("num_iterations = 0"), "num_iterations");
        assert_eq!(field_of("max_grad_norm = -1.0"), "max_grad_norm");
        assert_eq!(field_of("[sampling]\ntemperature = 0.0"), "sampling");
        assert_eq!(field_of("[optim]\nlr = -1.0"), "optim.lr");
        assert_eq!(field_of("[lora]\nr = 0"), "lora");
        // bf16 rollout weights: not with a bf16 model, nor as the old policy of several updates.
        let bf16 = "[sampling]\nrollout_weights = \"bf16\"";
        assert_eq!(
            field_of(&format!("precision = \"bf16\"\n{bf16}")),
            "sampling.rollout_weights"
        );
        assert_eq!(
            field_of(&format!("num_iterations = 2\n{bf16}")),
            "old_logprobs"
        );
        let ok = GrpoConfig::from_toml_str(&format!(
            "num_iterations = 2\nold_logprobs = \"recompute\"\n{bf16}"
        ))
        .unwrap();
        assert_eq!(
            ok.sampling.rollout_weights.backend(),
            RolloutBackend::FastCpuBf16
        );
        assert_eq!(
            field_of("[sampler_correction]\ncap = 0.0"),
            "sampler_correction.cap"
        );
        assert_eq!(
            field_of("[sampler_correction]\n[loss]\nloss_type = \"vespo\""),
            "sampler_correction"
        );
        let c = GrpoConfig::from_toml_str("[sampler_correction]\nmode = \"sequence_mask\"")
            .unwrap()
            .sampler_correction
            .unwrap();
        assert_eq!(
            (c.mode, c.cap),
            (crate::sampler_correction::IsMode::SequenceMask, 2.0)
        );
    }

    #[test]
    fn one_sample_groups_are_fine_without_std_scaling() {
        GrpoConfig::from_toml_str("num_generations = 1\nscale_rewards = \"none\"").unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_syntax_are_file_errors() {
        for text in [
            "num_generation = 8",
            "[loss]\nloss_type = \"ppo\"",
            "seed = ",
        ] {
            match GrpoConfig::from_toml_str(text) {
                Err(GrpoError::ConfigFile { message, .. }) => assert!(!message.is_empty()),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn from_file_names_the_file() {
        let p = std::path::Path::new("/nonexistent/rlzero.toml");
        match GrpoConfig::from_file(p) {
            Err(GrpoError::ConfigFile { path, .. }) => assert!(path.contains("rlzero.toml")),
            other => panic!("{other:?}"),
        }
    }
}
