//! `--explain`: one group of one GRPO step, printed so a reader can redo the arithmetic by hand.
//!
//! For the group's prompt it prints each completion's rewards, the group mean and sample std,
//! each advantage beside the formula recomputed from those two numbers, and per completion
//! the mean importance ratio, the clipped fraction, the KL and its term of the loss
//! ([`rlzero_grpo::loss::RowStats`]), with the hand check `−A·n/D` where the loss type
//! allows one. It closes with R1-Zero's two signature curves seen in this group: completion
//! length and reflection phrases ([`crate::ledger::REFLECTION_PHRASES`]).
//!
//! ```
//! use rlzero_grpo::{GrpoConfig, SampleRecord, StepMetrics, StepReport};
//! use rlzero_run::explain::{explain_group, pick_group, ExplainInput};
//! let sample = |i: usize, r: f64, a: f64| SampleRecord {
//!     prompt_index: 0, sample_index: i, prompt: "2+2=".into(), completion: format!("{r}"),
//!     rewards: vec![r], reward: r, advantage: a,
//!     finish_reason: rlzero_rollout::FinishReason::Eos, tokens: 1, loss: vec![],
//! };
//! let report = StepReport {
//!     metrics: StepMetrics::default(),
//!     samples: vec![sample(0, 1.0, 0.7070), sample(1, 0.0, -0.7070)],
//! };
//! let cfg = GrpoConfig { num_generations: 2, ..GrpoConfig::default() };
//! let x = ExplainInput { report: &report, config: &cfg, reward_names: &["correct"],
//!     reward_weights: &[1.0], phrases: &rlzero_run::ledger::REFLECTION_PHRASES };
//! let text = explain_group(&x, pick_group(&report).unwrap()).unwrap();
//! assert!(text.contains("(1.000 + 0.000) / 2 = 0.5000; sample std s = 0.7071"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt::Write as _;

use rlzero_grpo::advantages::{nanmean, nanstd, Aggregation, ScaleRewards, STD_EPS};
use rlzero_grpo::{GrpoConfig, IsLevel, LossType, SampleRecord, StepReport};

use crate::ledger::reflection_phrase;

/// What [`explain_group`] reads.
pub struct ExplainInput<'a> {
    /// The step to explain.
    pub report: &'a StepReport,
    /// The run's config (loss type, ε, β, reward scaling).
    pub config: &'a GrpoConfig,
    /// Reward function names, in the reward set's order.
    pub reward_names: &'a [&'a str],
    /// Their weights.
    pub reward_weights: &'a [f64],
    /// Reflection phrases to look for (R1-Zero's "aha" words).
    pub phrases: &'a [&'a str],
}

/// The first group whose completions got different rewards (the only kind that teaches
/// anything: equal rewards give every advantage 0), else the first group.
pub fn pick_group(report: &StepReport) -> Option<usize> {
    let first = report.samples.first()?.prompt_index;
    let learning = report.samples.iter().find(|s| s.advantage != 0.0);
    Some(learning.map_or(first, |s| s.prompt_index))
}

fn flat(s: &str, n: usize) -> String {
    let f: String = s.chars().map(|c| if c == '\n' { '⏎' } else { c }).collect();
    if f.chars().count() > n {
        f.chars().take(n.saturating_sub(1)).collect::<String>() + "…"
    } else {
        f
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.digits$}"))
}

/// The per-token loss and its denominator, in words, for the header.
fn loss_formula(cfg: &GrpoConfig) -> String {
    let l = &cfg.loss;
    let clip = format!(
        "−min(w·A, clip(w, {:.2}, {:.2})·A)",
        1.0 - l.epsilon,
        1.0 + l.eps_high()
    );
    let (per_token, denom) = match l.loss_type {
        LossType::Grpo => (clip, "D = n_i · rows · GA (each sequence's token mean)"),
        LossType::Bnpo => (clip, "D = tokens in the micro-batch · GA"),
        LossType::DrGrpo => (clip, "D = rows · max_completion_length · GA"),
        LossType::Dapo => (clip, "D = completion tokens in the whole batch"),
        LossType::Luspo => (clip, "D = rows · GA"),
        LossType::Cispo => (
            format!("−sg(min(w, {:.2}))·A·ℓ", l.eps_high()),
            "D = completion tokens in the whole batch",
        ),
        LossType::Sapo => ("−(4/τ)·σ(τ(w−1))·A".to_string(), "D = n_i · rows · GA"),
        LossType::Vespo => (
            "−φ(W)·A·ℓ".to_string(),
            "D = completion tokens in the whole batch",
        ),
    };
    let level = match l.importance_sampling_level {
        IsLevel::Token => "w = exp(ℓ − ℓ_old) per token",
        IsLevel::Sequence => "w = one weight per sequence (GSPO)",
    };
    let level = match l.delta {
        Some(d) => format!("{level}, the unclipped w capped at δ = {d}"),
        None => level.to_string(),
    };
    let kl = if l.beta > 0.0 {
        format!(" + {}·KL", l.beta)
    } else {
        String::new()
    };
    format!(
        "{:?}: term L_i = Σ_t [{per_token}{kl}] / D_i, {denom}; {level}",
        l.loss_type
    )
}

/// `−A·n/D`, the term an on-policy row has when the loss is linear in `A` with `w = 1`
/// (the clipped-surrogate family; SAPO's gate is `2/τ` there). `None` where the term depends
/// on the log-probs themselves (CISPO, VESPO).
fn hand_term(cfg: &GrpoConfig, s: &SampleRecord, n: f64, d: f64) -> Option<f64> {
    let scale = match cfg.loss.loss_type {
        LossType::Grpo | LossType::Bnpo | LossType::DrGrpo | LossType::Dapo | LossType::Luspo => {
            1.0
        }
        LossType::Sapo if s.advantage > 0.0 => 2.0 / cfg.loss.sapo_temperature_pos,
        LossType::Sapo => 2.0 / cfg.loss.sapo_temperature_neg,
        LossType::Cispo | LossType::Vespo => return None,
    };
    Some(-scale * s.advantage * n / d)
}

/// One group of one step, as text (see the module doc). `None` if the step has no such group.
pub fn explain_group(x: &ExplainInput<'_>, group: usize) -> Option<String> {
    let cfg = x.config;
    let m = &x.report.metrics;
    let rows: Vec<&SampleRecord> = x
        .report
        .samples
        .iter()
        .filter(|s| s.prompt_index == group)
        .collect();
    let first = rows.first()?;
    let groups = x
        .report
        .samples
        .iter()
        .map(|s| s.prompt_index)
        .max()
        .map_or(0, |g| g + 1);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "── explain: step {}, group {} of {} ({} completions) ──",
        m.step,
        group + 1,
        groups,
        rows.len()
    );
    let _ = writeln!(o, "prompt: {}", flat(&first.prompt, 300));
    let weights: Vec<String> = x
        .reward_names
        .iter()
        .zip(x.reward_weights)
        .map(|(n, w)| format!("{w}×{n}"))
        .collect();
    let _ = writeln!(
        o,
        "reward r_i = {} (a NaN reward abstains)",
        weights.join(" + ")
    );

    // Rewards and advantages.
    let r: Vec<f64> = rows.iter().map(|s| s.reward).collect();
    let (mean, std) = (nanmean(&r), nanstd(&r));
    let mean_txt = r
        .iter()
        .map(|v| format!("{v:.3}"))
        .collect::<Vec<_>>()
        .join(" + ");
    let _ = writeln!(
        o,
        "group mean r̄ = ({mean_txt}) / {} = {mean:.4}; sample std s = {std:.4} (Bessel, n−1)",
        r.iter().filter(|v| !v.is_nan()).count()
    );
    let scale = match (cfg.multi_objective_aggregation, cfg.scale_rewards) {
        (Aggregation::NormalizeThenSum, _) => None,
        (_, ScaleRewards::Group) => Some(std + STD_EPS),
        (_, ScaleRewards::Batch) => Some(m.reward_std + STD_EPS),
        (_, ScaleRewards::None) => Some(1.0),
    };
    let _ = match (cfg.multi_objective_aggregation, cfg.scale_rewards) {
        (Aggregation::NormalizeThenSum, _) => writeln!(
            o,
            "advantage: each reward normalised in its group, weighted sum, then over the batch \
             (normalize_then_sum)"
        ),
        (_, ScaleRewards::Group) => writeln!(o, "advantage A_i = (r_i − r̄) / (s + 1e-4)"),
        (_, ScaleRewards::Batch) => writeln!(
            o,
            "advantage A_i = (r_i − r̄) / (batch std {:.4} + 1e-4)",
            m.reward_std
        ),
        (_, ScaleRewards::None) => writeln!(o, "advantage A_i = r_i − r̄ (Dr. GRPO: no std)"),
    };
    let _ = writeln!(o, "loss: {}", loss_formula(cfg));
    let iterations = rows.iter().map(|s| s.loss.len()).max().unwrap_or(0);
    if iterations > 1 {
        let _ = writeln!(
            o,
            "({iterations} optimizer iterations on this batch; ratio, clip, KL and L_i are the \
             last one's; the first starts on-policy, w = 1, or ≈ 1 with the rollout's \
             log-probs as old policy)"
        );
    }

    // The table.
    let _ = writeln!(
        o,
        "\n  #  {:>8} {:>9} {:>9} {:>5} {:>7} {:>7} {:>8} {:>9} {:>10} {:>10}",
        "reward", "A_i", "(r−r̄)/σ", "n_i", "ratio", "clipped", "KL", "D_i", "L_i", "−A·n/D"
    );
    let mut sum_l = 0.0;
    for s in &rows {
        let check = match scale {
            Some(sc) if !s.reward.is_nan() => format!("{:+9.4}", (s.reward - mean) / sc),
            _ => format!("{:>9}", "–"),
        };
        let st = s.loss.last();
        let n = st.map_or(s.tokens as f64, |r| r.tokens);
        let (ratio, clipped, kl, d, l, hand) = match st {
            Some(r) => {
                sum_l += r.loss;
                (
                    format!("{:.4}", r.mean_ratio),
                    opt(r.clipped_fraction, 3),
                    opt(r.kl, 5),
                    format!("{:.1}", r.denominator),
                    format!("{:+.6}", r.loss),
                    (cfg.num_iterations == 1 && cfg.loss.beta == 0.0)
                        .then(|| hand_term(cfg, s, r.tokens, r.denominator))
                        .flatten()
                        .map_or_else(|| "–".to_string(), |h| format!("{h:+.6}")),
                )
            }
            None => {
                let dash = || "–".to_string();
                (dash(), dash(), dash(), dash(), dash(), dash())
            }
        };
        let _ = writeln!(
            o,
            "  {:<2} {:>8.3} {:>+9.4} {check} {:>5} {:>7} {:>7} {:>8} {:>9} {:>10} {:>10}",
            s.sample_index, s.reward, s.advantage, n, ratio, clipped, kl, d, l, hand
        );
    }
    let _ = writeln!(
        o,
        "  Σ L_i over this group = {sum_l:+.6}; the step's loss (every group) = {:+.6}",
        m.loss
    );
    if cfg.loss.beta > 0.0 {
        let kl_part: f64 = rows
            .iter()
            .filter_map(|s| s.loss.last())
            .map(|r| r.kl_loss)
            .sum();
        let _ = writeln!(o, "  of which β·KL = {kl_part:+.6}");
    }
    let _ = writeln!(
        o,
        "  ∂L/∂ℓ_it = −w·A_i/D_i where the clip is inactive: descending L raises the log-probs of \
         completions with A > 0 and lowers those with A < 0."
    );

    // R1-Zero's lens: length and reflection.
    let mean_len = rows.iter().map(|s| s.tokens as f64).sum::<f64>() / rows.len() as f64;
    let found: Vec<String> = rows
        .iter()
        .filter_map(|s| {
            reflection_phrase(&s.completion, x.phrases)
                .map(|p| format!("#{} “{p}”", s.sample_index))
        })
        .collect();
    let _ = writeln!(
        o,
        "\nR1-Zero's curves here: mean length {mean_len:.1} tokens (step mean {:.1}); \
         reflection phrases in {} of {}{}",
        m.mean_length,
        found.len(),
        rows.len(),
        if found.is_empty() {
            String::new()
        } else {
            format!(": {}", found.join(", "))
        }
    );

    let _ = writeln!(o, "\ncompletions:");
    for s in &rows {
        let tag = reflection_phrase(&s.completion, x.phrases)
            .map_or_else(String::new, |p| format!("  [reflection: {p}]"));
        let _ = writeln!(
            o,
            "  #{} ({:?}, r = {:.3}, A = {:+.4}){tag}: {}",
            s.sample_index,
            s.finish_reason,
            s.reward,
            s.advantage,
            flat(&s.completion, 200)
        );
    }
    Some(o)
}
