//! What one training step reports, under TRL's metric names.
//!
//! [`StepMetrics::to_json`] renders the flat map TRL logs (`reward`, `rewards/<name>/mean`,
//! `completions/mean_length`, `clip_ratio/region_mean`, …) plus rlzero's phase timings, so a
//! `metrics.jsonl` from rlzero reads like TRL's `log_history`.

use serde_json::{Map, Value};

/// Mean and sample std of one reward function over the batch (NaN-aware).
#[derive(Debug, Clone, PartialEq)]
pub struct RewardStat {
    /// The reward's name.
    pub name: String,
    /// `rewards/<name>/mean`.
    pub mean: f64,
    /// `rewards/<name>/std`.
    pub std: f64,
}

/// Wall-clock seconds of each phase of a step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseTimes {
    /// Sampling completions (prefill + decode), all dynamic-sampling rounds included.
    pub rollout: f64,
    /// Scoring completions with the reward functions.
    pub rewards: f64,
    /// Forward passes computing log-probs (policy, old and reference).
    pub forward: f64,
    /// Back-propagation.
    pub backward: f64,
    /// Gradient clipping and the optimizer update.
    pub optimizer: f64,
}

/// Everything one [`crate::trainer::Trainer::step`] measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepMetrics {
    /// Optimizer step count after this step (1-based, TRL `step`).
    pub step: u64,
    /// Generation batches sampled so far, this one included (1-based; skipped steps count, so
    /// it orders every line of a run, where `step` repeats across skipped steps).
    pub batch: u64,
    /// Mean weighted reward (`reward`).
    pub reward: f64,
    /// Its sample std (`reward_std`).
    pub reward_std: f64,
    /// Per reward function.
    pub rewards: Vec<RewardStat>,
    /// Fraction of completions in zero-std groups (`frac_reward_zero_std`).
    pub frac_reward_zero_std: f64,
    /// Completion lengths in tokens (`completions/mean_length`, `min_length`, `max_length`).
    pub mean_length: f64,
    /// Shortest completion.
    pub min_length: f64,
    /// Longest completion.
    pub max_length: f64,
    /// Fraction that hit `max_completion_length` (`completions/clipped_ratio`). TRL counts every
    /// completion not ending in EOS/pad, stop-string endings included; rlzero counts only those
    /// cut by the length cap, which is what `mask_truncated_completions` masks too.
    pub clipped_ratio: f64,
    /// Mean length of the completions that ended by themselves
    /// (`completions/mean_terminated_length`; 0 when none did).
    pub mean_terminated_length: f64,
    /// Masked mean k3 KL to the reference (`kl`), when β > 0.
    pub kl: Option<f64>,
    /// Policy entropy: the masked mean per loss call, averaged over calls (`entropy`, as TRL).
    pub entropy: f64,
    /// `clip_ratio/low_mean`, for the clipped-surrogate losses.
    pub clip_ratio_low: Option<f64>,
    /// `clip_ratio/high_mean`.
    pub clip_ratio_high: Option<f64>,
    /// `clip_ratio/region_mean`.
    pub clip_ratio_region: Option<f64>,
    /// `cispo_clip_ratio`.
    pub cispo_clip_ratio: Option<f64>,
    /// `vespo/phi_seq_mean`.
    pub vespo_phi_mean: Option<f64>,
    /// With a sampler correction ([`crate::sampler_correction`]): TRL's
    /// `sampling/sampling_logp_difference/{mean,max}` and
    /// `sampling/importance_sampling_ratio/{min,mean,max}`.
    pub sampler: Option<crate::sampler_correction::SamplerStats>,
    /// The loss summed over the step's micro-batches, as back-propagated (`loss`).
    pub loss: f64,
    /// Global gradient L2 norm before clipping (`grad_norm`); of the last iteration when μ > 1.
    pub grad_norm: f64,
    /// Learning rate of the update (`learning_rate`).
    pub learning_rate: f64,
    /// Optimizer steps this call applied (`num_iterations`, fewer when a later iteration hit
    /// a non-finite loss or gradient, 0 when skipped).
    pub iterations: usize,
    /// Whether a non-finite loss or gradient in the first iteration made the step leave weights
    /// and optimizer state alone (or no prompt / no group with reward variance was left).
    pub skipped: bool,
    /// Why the step was skipped, or why it stopped after fewer than `num_iterations`.
    pub skip_reason: Option<String>,
    /// Completions sampled this step (all dynamic-sampling rounds).
    pub sampled_completions: usize,
    /// Completions trained on.
    pub trained_completions: usize,
    /// Completion tokens trained on (`num_tokens` counts prompt tokens too in TRL).
    pub completion_tokens: usize,
    /// Prompt tokens of the sequences trained on (each prompt counted once per completion, as
    /// the forward and backward passes see it).
    pub prompt_tokens: usize,
    /// Completion tokens sampled this step (all dynamic-sampling rounds, trained or not).
    pub sampled_tokens: usize,
    /// Reward calls that panicked (scored 0).
    pub reward_panics: usize,
    /// Whole step seconds (`step_time`).
    pub step_time: f64,
    /// Peak resident memory of the process so far, MiB (0 where the OS does not say).
    pub peak_rss_mib: f64,
    /// Seconds per phase.
    pub phases: PhaseTimes,
}

impl StepMetrics {
    /// The flat, TRL-named map (non-finite numbers become `null`).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: f64| {
            m.insert(
                k.to_string(),
                serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
            );
        };
        put("reward", self.reward);
        put("reward_std", self.reward_std);
        for r in &self.rewards {
            put(&format!("rewards/{}/mean", r.name), r.mean);
            put(&format!("rewards/{}/std", r.name), r.std);
        }
        put("frac_reward_zero_std", self.frac_reward_zero_std);
        put("completions/mean_length", self.mean_length);
        put("completions/min_length", self.min_length);
        put("completions/max_length", self.max_length);
        put("completions/clipped_ratio", self.clipped_ratio);
        put(
            "completions/mean_terminated_length",
            self.mean_terminated_length,
        );
        let optional = [
            ("kl", self.kl),
            ("clip_ratio/low_mean", self.clip_ratio_low),
            ("clip_ratio/high_mean", self.clip_ratio_high),
            ("clip_ratio/region_mean", self.clip_ratio_region),
            ("cispo_clip_ratio", self.cispo_clip_ratio),
            ("vespo/phi_seq_mean", self.vespo_phi_mean),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                put(k, v);
            }
        }
        if let Some(s) = &self.sampler {
            put("sampling/sampling_logp_difference/mean", s.logp_diff_mean);
            put("sampling/sampling_logp_difference/max", s.logp_diff_max);
            put("sampling/importance_sampling_ratio/min", s.ratio_min);
            put("sampling/importance_sampling_ratio/mean", s.ratio_mean);
            put("sampling/importance_sampling_ratio/max", s.ratio_max);
        }
        put("entropy", self.entropy);
        put("loss", self.loss);
        put("grad_norm", self.grad_norm);
        put("learning_rate", self.learning_rate);
        put("step_time", self.step_time);
        put("iterations", self.iterations as f64);
        put("peak_rss_mib", self.peak_rss_mib);
        put("sampled_completions", self.sampled_completions as f64);
        put("trained_completions", self.trained_completions as f64);
        put("completion_tokens", self.completion_tokens as f64);
        put("prompt_tokens", self.prompt_tokens as f64);
        put("sampled_tokens", self.sampled_tokens as f64);
        put("reward_panics", self.reward_panics as f64);
        put("time/rollout", self.phases.rollout);
        put("time/rewards", self.phases.rewards);
        put("time/forward", self.phases.forward);
        put("time/backward", self.phases.backward);
        put("time/optimizer", self.phases.optimizer);
        m.insert("skipped".into(), Value::Bool(self.skipped));
        // An integer, as TRL's `global_step`, so readers need not round.
        m.insert("step".into(), Value::from(self.step));
        m.insert("batch".into(), Value::from(self.batch));
        if let Some(r) = &self.skip_reason {
            m.insert("skip_reason".into(), Value::String(r.clone()));
        }
        m
    }
}

/// Peak resident set size of this process in MiB: Linux's `VmHWM` from `/proc/self/status`;
/// 0 on systems without it.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
