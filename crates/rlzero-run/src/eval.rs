//! Held-out evaluation: the same rewards the run trains on, measured on prompts it never
//! trains on, for a base model and a trained one alike.
//!
//! For each prompt: one greedy completion (accuracy: its total reward ≥ `success_threshold`),
//! and `samples` completions at the sampling temperature (mean reward, pass@k with the
//! unbiased estimator of Chen et al. 2021, `1 − C(n−c, k)/C(n, k)`), plus the share of
//! completions each named reward scores above zero (e.g. a format reward's rate).

use rlzero_grpo::generation::reward_inputs;
use rlzero_grpo::TrainPrompt;
use rlzero_model::{Decoder, TextTokenizer};
use rlzero_rewards::RewardSet;
use rlzero_rollout::{rollout, RolloutError, SamplingParams};
use serde_json::{json, Map, Value};

/// What [`evaluate`] measures and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Sampling settings of the sampled completions (greedy is added on top).
    pub params: SamplingParams,
    /// Sampled completions per prompt, `n` (0: greedy only).
    pub samples: usize,
    /// `k` of pass@k (≤ `samples`).
    pub pass_k: usize,
    /// A completion counts as correct when its total reward reaches this. Default 1.0.
    pub success_threshold: f64,
    /// Rollout seed slot, so repeated evaluations draw fresh but reproducible samples.
    pub seed_step: u64,
}

/// One evaluation's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// Prompts evaluated.
    pub prompts: usize,
    /// Share of prompts whose greedy completion is correct.
    pub greedy_accuracy: f64,
    /// Mean total reward of the sampled completions (NaN without samples).
    pub mean_reward: f64,
    /// Unbiased pass@k over the sampled completions (NaN without samples).
    pub pass_at_k: f64,
    /// `k` of `pass_at_k`.
    pub k: usize,
    /// Mean sampled completion length in tokens.
    pub mean_length: f64,
    /// Per reward function: share of sampled (or greedy, without samples) completions it
    /// scores above zero.
    pub rates: Vec<(String, f64)>,
    /// The greedy completions, in prompt order (for before/after tables).
    pub greedy: Vec<String>,
}

impl EvalResult {
    /// Flat JSON for `eval.jsonl` (`eval/greedy_accuracy`, `eval/mean_reward`, …).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: f64| {
            m.insert(
                format!("eval/{k}"),
                serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
            );
        };
        put("greedy_accuracy", self.greedy_accuracy);
        put("mean_reward", self.mean_reward);
        put(&format!("pass@{}", self.k), self.pass_at_k);
        put("mean_length", self.mean_length);
        for (name, r) in &self.rates {
            put(&format!("rate/{name}"), *r);
        }
        m.insert("eval/prompts".into(), json!(self.prompts));
        m
    }
}

/// `1 − C(n−c, k)/C(n, k)`: the chance that at least one of `k` completions drawn without
/// replacement from `n` (of which `c` are correct) is correct.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || n == 0 || k > n || c > n {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    // Product form, stable for large n.
    1.0 - ((n - c + 1)..=n).fold(1.0, |acc, i| acc * (1.0 - k as f64 / i as f64))
}

fn score(
    prompts: &[TrainPrompt],
    completions: &[rlzero_rollout::Completion],
    rewards: &RewardSet,
    max_tokens: usize,
) -> rlzero_rewards::RewardTable {
    rewards.score(&reward_inputs(prompts, completions, max_tokens))
}

/// Evaluates `model` on `prompts` (see the module docs). Merge LoRA adapters first
/// (`Decoder::merged`): rollouts refuse unmerged ones.
pub fn evaluate(
    model: &Decoder,
    tokenizer: &TextTokenizer,
    prompts: &[TrainPrompt],
    rewards: &RewardSet,
    opts: &EvalOptions,
) -> Result<EvalResult, RolloutError> {
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let greedy_params = SamplingParams {
        greedy: true,
        ..opts.params.clone()
    };
    let max = opts.params.max_new_tokens;
    let greedy = rollout(model, tokenizer, &ids, 1, &greedy_params, opts.seed_step)?;
    let g_scores = score(prompts, &greedy, rewards, max).totals();
    let correct = g_scores
        .iter()
        .filter(|r| **r >= opts.success_threshold)
        .count();
    let names: Vec<String> = rewards.names().iter().map(|s| s.to_string()).collect();
    let (mean_reward, pass, mean_length, table) = if opts.samples > 0 {
        let sampled = rollout(
            model,
            tokenizer,
            &ids,
            opts.samples,
            &opts.params,
            opts.seed_step,
        )?;
        let table = score(prompts, &sampled, rewards, max);
        let totals = table.totals();
        let finite: Vec<f64> = totals.iter().copied().filter(|x| x.is_finite()).collect();
        let mean = finite.iter().sum::<f64>() / finite.len().max(1) as f64;
        let k = opts.pass_k.clamp(1, opts.samples);
        let pass = totals
            .chunks(opts.samples)
            .map(|g| {
                pass_at_k(
                    g.len(),
                    g.iter().filter(|r| **r >= opts.success_threshold).count(),
                    k,
                )
            })
            .sum::<f64>()
            / prompts.len().max(1) as f64;
        let len = sampled
            .iter()
            .map(|c| c.token_ids.len() as f64)
            .sum::<f64>()
            / sampled.len().max(1) as f64;
        (mean, pass, len, table)
    } else {
        let len = greedy.iter().map(|c| c.token_ids.len() as f64).sum::<f64>()
            / greedy.len().max(1) as f64;
        (
            f64::NAN,
            f64::NAN,
            len,
            score(prompts, &greedy, rewards, max),
        )
    };
    let rates = names
        .iter()
        .enumerate()
        .map(|(j, n)| {
            let col: Vec<f64> = table
                .values
                .iter()
                .map(|row| row[j])
                .filter(|x| !x.is_nan())
                .collect();
            (
                n.clone(),
                col.iter().filter(|x| **x > 0.0).count() as f64 / col.len().max(1) as f64,
            )
        })
        .collect();
    Ok(EvalResult {
        prompts: prompts.len(),
        greedy_accuracy: correct as f64 / prompts.len().max(1) as f64,
        mean_reward,
        pass_at_k: pass,
        k: opts.pass_k.clamp(1, opts.samples.max(1)),
        mean_length,
        rates,
        greedy: greedy.into_iter().map(|c| c.text).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::pass_at_k;

    #[test]
    fn pass_at_k_is_the_unbiased_estimator() {
        assert_eq!(pass_at_k(8, 0, 1), 0.0);
        assert_eq!(pass_at_k(8, 8, 4), 1.0);
        assert!((pass_at_k(8, 2, 1) - 0.25).abs() < 1e-12);
        // 1 − C(6,2)/C(8,2) = 1 − 15/28
        assert!((pass_at_k(8, 2, 2) - 13.0 / 28.0).abs() < 1e-12);
        assert!(pass_at_k(4, 1, 5).is_nan());
    }
}
