//! What a step hands back: the trained completions, and the metric bookkeeping that turns
//! per-call loss outputs, rewards and completions into [`StepMetrics`] (TRL's definitions).

use candle_core::{DType, Tensor};
use rlzero_rewards::RewardSet;
use rlzero_rollout::{Completion, FinishReason};

use crate::error::Result;
use crate::generation::TrainPrompt;
use crate::loss::RowStats;
use crate::metrics::{RewardStat, StepMetrics};
use crate::sampler_correction::SamplerStats;

/// One trained completion, for logs and `--explain`.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRecord {
    /// Index of its prompt in the step's batch.
    pub prompt_index: usize,
    /// Its place in the group.
    pub sample_index: usize,
    /// Prompt text.
    pub prompt: String,
    /// Completion text.
    pub completion: String,
    /// Per reward function (NaN = abstained).
    pub rewards: Vec<f64>,
    /// Weighted total (NaN = unscorable).
    pub reward: f64,
    /// Its advantage.
    pub advantage: f64,
    /// How it ended.
    pub finish_reason: FinishReason,
    /// Completion tokens.
    pub tokens: usize,
    /// Its importance ratio, clip fraction, KL and term of the loss, one entry per
    /// optimizer iteration applied (`num_iterations`; empty for a skipped step).
    pub loss: Vec<RowStats>,
}

/// What a step returns: TRL-named metrics and the completions it trained on.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Numbers for `metrics.jsonl`.
    pub metrics: StepMetrics,
    /// Every trained completion.
    pub samples: Vec<SampleRecord>,
}

/// Loss statistics and entropy averaged over every loss call of a step: TRL appends one value
/// per micro-batch (and iteration) and logs their mean.
#[derive(Default)]
pub(crate) struct LossStats {
    calls: f64,
    entropy: f64,
    kl: Option<f64>,
    low: Option<f64>,
    high: Option<f64>,
    region: Option<f64>,
    cispo: Option<f64>,
    phi: Option<f64>,
    sampler: Option<SamplerStats>,
}

impl LossStats {
    pub(crate) fn add(
        &mut self,
        o: &crate::loss::LossOutput,
        entropy: Option<&Tensor>,
        mask: &Tensor,
    ) -> Result<()> {
        let add = |acc: &mut Option<f64>, v: Option<f64>| {
            if let Some(v) = v {
                *acc = Some(acc.unwrap_or(0.0) + v);
            }
        };
        self.calls += 1.0;
        if let Some(e) = entropy {
            let tokens = mask.sum_all()?.to_scalar::<f32>()? as f64;
            let total = (e.to_dtype(DType::F32)? * mask)?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
            self.entropy += total / tokens.max(1.0);
        }
        add(&mut self.kl, o.kl);
        add(&mut self.low, o.clip_ratio_low);
        add(&mut self.high, o.clip_ratio_high);
        add(&mut self.region, o.clip_ratio_region);
        add(&mut self.cispo, o.cispo_clip_ratio);
        add(&mut self.phi, o.vespo_phi_mean);
        Ok(())
    }

    /// One loss call's sampler-correction statistics, merged over the step's tokens.
    pub(crate) fn add_sampler(&mut self, s: SamplerStats) {
        self.sampler = Some(match self.sampler {
            None => s,
            Some(a) => a.merge(s),
        });
    }

    pub(crate) fn finish(&self, m: &mut StepMetrics) {
        let n = self.calls.max(1.0);
        let mean = |v: Option<f64>| v.map(|s| s / n);
        m.entropy = self.entropy / n;
        m.kl = mean(self.kl);
        m.clip_ratio_low = mean(self.low);
        m.clip_ratio_high = mean(self.high);
        m.clip_ratio_region = mean(self.region);
        m.cispo_clip_ratio = mean(self.cispo);
        m.vespo_phi_mean = mean(self.phi);
        m.sampler = self.sampler.filter(|s| s.weights > 0);
    }
}

pub(crate) fn fill_reward_metrics(
    m: &mut StepMetrics,
    set: &RewardSet,
    rows: &[Vec<f64>],
    adv: &crate::advantages::Advantages,
    completions: &[Completion],
) {
    m.reward = adv.reward_mean;
    m.reward_std = adv.reward_std;
    m.frac_reward_zero_std = adv.frac_zero_std;
    m.rewards = set
        .names()
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let col: Vec<f64> = rows.iter().map(|r| r[k]).collect();
            RewardStat {
                name: name.to_string(),
                mean: crate::advantages::nanmean(&col),
                std: crate::advantages::nanstd(&col),
            }
        })
        .collect();
    let lens: Vec<f64> = completions
        .iter()
        .map(|c| c.token_ids.len() as f64)
        .collect();
    let n = lens.len().max(1) as f64;
    m.mean_length = lens.iter().sum::<f64>() / n;
    m.min_length = lens.iter().copied().fold(f64::INFINITY, f64::min);
    m.max_length = lens.iter().copied().fold(0.0, f64::max);
    let truncated = completions
        .iter()
        .filter(|c| c.finish_reason == FinishReason::Length)
        .count();
    m.clipped_ratio = truncated as f64 / n;
    let term: Vec<f64> = completions
        .iter()
        .filter(|c| c.finish_reason != FinishReason::Length)
        .map(|c| c.token_ids.len() as f64)
        .collect();
    m.mean_terminated_length = if term.is_empty() {
        0.0
    } else {
        term.iter().sum::<f64>() / term.len() as f64
    };
}

pub(crate) fn records(
    prompts: &[TrainPrompt],
    completions: &[Completion],
    rows: &[Vec<f64>],
    adv: &crate::advantages::Advantages,
    g: usize,
    row_stats: &[Vec<RowStats>],
) -> Vec<SampleRecord> {
    completions
        .iter()
        .enumerate()
        .map(|(i, c)| SampleRecord {
            prompt_index: i / g,
            sample_index: c.sample_index,
            prompt: prompts[i / g].text.clone(),
            completion: c.text.clone(),
            rewards: rows[i].clone(),
            reward: adv.rewards[i],
            advantage: adv.advantages[i],
            finish_reason: c.finish_reason,
            tokens: c.token_ids.len(),
            loss: row_stats
                .iter()
                .filter_map(|iteration| iteration.get(i).copied())
                .collect(),
        })
        .collect()
}
