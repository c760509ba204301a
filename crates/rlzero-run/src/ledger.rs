//! The compute and cost ledger of a run, and the run set beside DeepSeek-R1's.
//!
//! **FLOPs** follow Kaplan et al. 2020's per-token counts for a decoder of `N` parameters
//! (attention's sequence-length term left out, as is usual at these context lengths):
//! a forward pass costs `2N` per token, a backward pass `4N` (gradients of activations and of
//! weights, `2N` each). So full fine-tuning costs `6N` per trained token; LoRA costs about
//! `4N` (forward, and backward through the frozen weights for the activations' gradient; the
//! adapters' own weight gradients are negligible at small rank); sampling costs `2N` per
//! generated or prefilled token, and so does each no-grad forward over the trained sequences
//! (a KL reference, recomputed old log-probs). `N` counts every weight the forward multiplies by, embeddings
//! included (the LM head is a matmul; a tied embedding is counted once).
//!
//! **Cost** is wall-clock device-hours times a price per device-hour. Defaults, each an
//! assumption you can change: one device; US$2 per GPU-hour for R1's H800s (the rental price
//! DeepSeek's Nature paper, Guo et al. 2025, and its supplement use); US$0.10 per hour for a
//! 2-vCPU machine like this one (a typical on-demand price of a 2-vCPU cloud VM; not measured).
//!
//! **R1's figures** (Guo et al., Nature 645, 2025, and its supplementary information): 512
//! NVIDIA H800 GPUs; about 198 hours for R1-Zero's RL and about 80 hours for R1's final RL
//! stage; about US$294k in total (R1-Zero about $202k, SFT data about $10k, R1 about $82k) at
//! $2 per GPU-hour.

use serde_json::{json, Map, Value};

use crate::svg::escape;

/// DeepSeek-R1's training figures as published (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct R1Reference {
    /// GPUs used (H800).
    pub gpus: f64,
    /// Hours of R1-Zero's RL stage.
    pub r1_zero_hours: f64,
    /// Hours of R1's final RL stage.
    pub r1_hours: f64,
    /// Total reported cost, US$.
    pub total_cost_usd: f64,
    /// Price per GPU-hour the cost assumes, US$.
    pub usd_per_gpu_hour: f64,
}

impl Default for R1Reference {
    fn default() -> Self {
        Self {
            gpus: 512.0,
            r1_zero_hours: 198.0,
            r1_hours: 80.0,
            total_cost_usd: 294_000.0,
            usd_per_gpu_hour: 2.0,
        }
    }
}

impl R1Reference {
    /// GPU-hours of R1-Zero's RL stage.
    pub fn r1_zero_gpu_hours(&self) -> f64 {
        self.gpus * self.r1_zero_hours
    }
}

/// How a run is priced and what was trained.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerOptions {
    /// Parameters the forward multiplies by, `N`.
    pub params: u64,
    /// Whether only LoRA adapters were trained (backward ≈ 4N per token instead of 6N).
    pub lora: bool,
    /// Devices the run used (machines or GPUs). Default 1.
    pub devices: f64,
    /// US$ per device-hour. Default 0.10 (a 2-vCPU cloud VM; see the module docs).
    pub usd_per_device_hour: f64,
    /// Label of the device for the printout ("2-vCPU CPU", "H200 GPU", …).
    pub device: String,
    /// Completions per prompt, `G`: sampling prefills each prompt once per group.
    pub num_generations: usize,
    /// No-grad forward passes over each generation batch besides the training forward: 1 for
    /// a KL reference (β > 0), 1 more for recomputed old log-probs (μ > 1 with
    /// `old_logprobs = recompute`). `2N` per token each.
    pub extra_forwards: f64,
}

/// What a run consumed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ledger {
    /// Optimizer steps.
    pub steps: u64,
    /// Completion tokens sampled (all rollouts).
    pub tokens_sampled: f64,
    /// Prompt tokens prefilled for sampling (each prompt once per group).
    pub tokens_prefilled: f64,
    /// Tokens through the training forward and backward (prompt + completion, per iteration).
    pub tokens_trained: f64,
    /// Sampling FLOPs (`2N` per sampled or prefilled token).
    pub flops_sampling: f64,
    /// Training FLOPs (`6N` full, `4N` LoRA, per trained token).
    pub flops_training: f64,
    /// Seconds per phase: rollout, rewards, forward, backward, optimizer.
    pub seconds: [f64; 5],
    /// Whole-run wall-clock seconds (sum of step times).
    pub wall_seconds: f64,
    /// Device-hours (`devices × wall hours`).
    pub device_hours: f64,
    /// Estimated cost, US$.
    pub cost_usd: f64,
}

const PHASES: [&str; 5] = ["rollout", "rewards", "forward", "backward", "optimizer"];

fn num(m: &Map<String, Value>, k: &str) -> f64 {
    m.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

impl Ledger {
    /// Sums a run's `metrics.jsonl` lines (skipped steps included: their rollouts were paid
    /// for). `num_generations` recovers prefill tokens from the trained prompt tokens.
    pub fn from_metrics(lines: &[Map<String, Value>], opts: &LedgerOptions) -> Self {
        let mut l = Ledger::default();
        let n = opts.params as f64;
        let mut extra_tokens = 0.0;
        for m in lines {
            let skipped = m.get("skipped") == Some(&Value::Bool(true));
            if !skipped {
                l.steps = l
                    .steps
                    .max(m.get("step").and_then(Value::as_u64).unwrap_or(0));
            }
            l.tokens_sampled += num(m, "sampled_tokens");
            let iterations = num(m, "iterations").max(1.0);
            let prompt = num(m, "prompt_tokens");
            let batch_tokens = prompt + num(m, "completion_tokens");
            l.tokens_trained += batch_tokens * iterations;
            extra_tokens += batch_tokens * opts.extra_forwards;
            // Sampling prefills each trained prompt once for its group (prompts of groups that
            // dynamic sampling dropped are not counted).
            l.tokens_prefilled += prompt / opts.num_generations.max(1) as f64;
            for (i, p) in PHASES.iter().enumerate() {
                l.seconds[i] += num(m, &format!("time/{p}"));
            }
            l.wall_seconds += num(m, "step_time");
        }
        l.flops_sampling = 2.0 * n * (l.tokens_sampled + l.tokens_prefilled);
        l.flops_training =
            if opts.lora { 4.0 } else { 6.0 } * n * l.tokens_trained + 2.0 * n * extra_tokens;
        l.device_hours = opts.devices * l.wall_seconds / 3600.0;
        l.cost_usd = l.device_hours * opts.usd_per_device_hour;
        l
    }

    /// The ledger and the R1 comparison as flat JSON (for run.json / reports).
    pub fn to_json(&self, opts: &LedgerOptions, r1: &R1Reference) -> Value {
        json!({
            "steps": self.steps,
            "tokens_sampled": self.tokens_sampled,
            "tokens_prefilled": self.tokens_prefilled,
            "tokens_trained": self.tokens_trained,
            "flops_sampling": self.flops_sampling,
            "flops_training": self.flops_training,
            "seconds": PHASES.iter().zip(self.seconds).map(|(p, s)| (p.to_string(), json!(s))).collect::<Map<_, _>>(),
            "wall_seconds": self.wall_seconds,
            "device": opts.device,
            "devices": opts.devices,
            "device_hours": self.device_hours,
            "usd_per_device_hour": opts.usd_per_device_hour,
            "cost_usd": self.cost_usd,
            "params": opts.params,
            "lora": opts.lora,
            "r1_zero_gpu_hours": r1.r1_zero_gpu_hours(),
            "fraction_of_r1_zero_gpu_hours": self.device_hours / r1.r1_zero_gpu_hours(),
            "fraction_of_r1_cost": self.cost_usd / r1.total_cost_usd,
        })
    }

    /// A plain-text summary with the assumptions spelled out.
    pub fn summary(&self, opts: &LedgerOptions, r1: &R1Reference) -> String {
        let one_in = |x: f64| match 1.0 / x {
            n if x.is_nan() || x <= 0.0 || !n.is_finite() => "–".to_string(),
            n if n >= 1e6 => format!("1/{n:.2e}"),
            n => format!("1/{n:.0}"),
        };
        let phases: Vec<String> = PHASES
            .iter()
            .zip(self.seconds)
            .map(|(p, s)| format!("{p} {s:.0} s"))
            .collect();
        format!(
            "{} steps, {:.0} s wall-clock ({})\n\
             tokens: {:.0} sampled (+{:.0} prefilled), {:.0} through training forward+backward\n\
             FLOPs: {:.2e} sampling (2N/token) + {:.2e} training ({}N/token), N = {:.1}M parameters\n\
             {:.4} device-hours on {} × {} at ${}/device-hour ≈ ${:.4}\n\
             beside DeepSeek-R1: {} of R1-Zero's RL GPU-hours ({} H800 × {} h = {:.0}), {} of R1's ${:.0}k \
             (at ${}/GPU-hour; Guo et al., Nature 2025)",
            self.steps,
            self.wall_seconds,
            phases.join(", "),
            self.tokens_sampled,
            self.tokens_prefilled,
            self.tokens_trained,
            self.flops_sampling,
            self.flops_training,
            if opts.lora { 4 } else { 6 },
            opts.params as f64 / 1e6,
            self.device_hours,
            opts.devices,
            opts.device,
            opts.usd_per_device_hour,
            self.cost_usd,
            one_in(self.device_hours / r1.r1_zero_gpu_hours()),
            r1.gpus,
            r1.r1_zero_hours,
            r1.r1_zero_gpu_hours(),
            one_in(self.cost_usd / r1.total_cost_usd),
            r1.total_cost_usd / 1000.0,
            r1.usd_per_gpu_hour,
        )
    }

    /// The summary as an HTML section for the report.
    pub fn html(&self, opts: &LedgerOptions, r1: &R1Reference) -> String {
        format!(
            "<h2>Compute and cost, beside DeepSeek-R1</h2><pre>{}</pre>",
            escape(&self.summary(opts, r1))
        )
    }
}

/// Default English reflection phrases (R1-Zero's "aha moment": the model re-checks itself).
/// Matched case-insensitively as whole words; a trailing `*` matches any word continuing the
/// phrase ("let me re*": "let me recompute", "let me re-read").
pub const REFLECTION_PHRASES: [&str; 10] = [
    "wait",
    "let me check",
    "let me verify",
    "let me re*",
    "double-check",
    "double check",
    "recheck",
    "re-check",
    "on second thought",
    "hmm",
];

/// Whether `text` contains one of `phrases` as whole words (case-insensitive).
pub fn has_reflection(text: &str, phrases: &[&str]) -> bool {
    reflection_phrase(text, phrases).is_some()
}

/// The first of `phrases` (in list order) that `text` contains as whole words
/// (case-insensitive; a trailing `*` matches any continuation of the last word).
pub fn reflection_phrase<'p>(text: &str, phrases: &[&'p str]) -> Option<&'p str> {
    let lower = text.to_lowercase();
    phrases.iter().copied().find(|phrase| {
        let p = phrase.to_lowercase();
        let (p, prefix) = match p.strip_suffix('*') {
            Some(stem) => (stem.to_string(), true),
            None => (p.clone(), false),
        };
        if p.is_empty() {
            return false;
        }
        lower.match_indices(p.as_str()).any(|(i, _)| {
            let before = lower[..i].chars().next_back();
            let after = lower[i + p.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric)
                && (prefix || !after.is_some_and(char::is_alphanumeric))
        })
    })
}

/// Per step: `(step, mean length, p10, p90, reflection rate)` from `completions.jsonl`.
pub fn r1_curves(
    completions: &[Map<String, Value>],
    phrases: &[&str],
) -> Vec<(u64, f64, f64, f64, f64)> {
    let mut by_step: std::collections::BTreeMap<u64, (Vec<f64>, usize)> = Default::default();
    for c in completions {
        let Some(step) = c.get("step").and_then(Value::as_u64) else {
            continue;
        };
        let e = by_step.entry(step).or_default();
        e.0.push(num(c, "tokens"));
        let text = c.get("completion").and_then(Value::as_str).unwrap_or("");
        e.1 += usize::from(has_reflection(text, phrases));
    }
    by_step
        .into_iter()
        .map(|(s, (mut lens, refl))| {
            lens.sort_by(f64::total_cmp);
            let q = |p: f64| lens[((lens.len() - 1) as f64 * p).round() as usize];
            let mean = lens.iter().sum::<f64>() / lens.len() as f64;
            (s, mean, q(0.1), q(0.9), refl as f64 / lens.len() as f64)
        })
        .collect()
}

/// The first step at which a curve "rises": the last step of the first 5-step window whose
/// mean exceeds the first window's mean by both 50 % and `min_gain` (absolute). `None` if it
/// never does (or the curve is shorter than two windows).
pub fn first_rise(curve: &[(u64, f64)], min_gain: f64) -> Option<u64> {
    const W: usize = 5;
    if curve.len() < 2 * W {
        return None;
    }
    let mean = |xs: &[(u64, f64)]| xs.iter().map(|p| p.1).sum::<f64>() / xs.len() as f64;
    let base = mean(&curve[..W]);
    (W..=curve.len() - W).find_map(|i| {
        let m = mean(&curve[i..i + W]);
        (m > base * 1.5 && m > base + min_gain).then_some(curve[i + W - 1].0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_and_cost_follow_the_stated_formulas() {
        let line = |step: u64, skipped: bool| {
            json!({"step": step, "skipped": skipped, "sampled_tokens": 100.0, "prompt_tokens": 80.0,
                   "completion_tokens": 100.0, "trained_completions": 8.0, "iterations": 1.0,
                   "time/rollout": 2.0, "step_time": 3600.0})
            .as_object()
            .unwrap()
            .clone()
        };
        let opts = LedgerOptions {
            params: 1_000_000,
            lora: false,
            devices: 1.0,
            usd_per_device_hour: 0.1,
            device: "CPU".into(),
            num_generations: 8,
            extra_forwards: 0.0,
        };
        let l = Ledger::from_metrics(&[line(1, false), line(1, true)], &opts);
        assert_eq!(l.steps, 1);
        assert_eq!(l.tokens_trained, 2.0 * 180.0);
        assert_eq!(l.tokens_prefilled, 2.0 * 80.0 / 8.0);
        assert_eq!(l.flops_training, 6.0 * 1e6 * 360.0);
        assert_eq!(l.device_hours, 2.0);
        assert!((l.cost_usd - 0.2).abs() < 1e-12);
        let r1 = R1Reference::default();
        assert_eq!(r1.r1_zero_gpu_hours(), 101_376.0);
        let s = l.summary(&opts, &r1);
        assert!(s.contains("1/50688") && s.contains("$294k"), "{s}");
        let lora = Ledger::from_metrics(
            &[line(1, false)],
            &LedgerOptions {
                lora: true,
                ..opts.clone()
            },
        );
        assert_eq!(lora.flops_training, 4.0 * 1e6 * 180.0);
        let kl = Ledger::from_metrics(
            &[line(1, false)],
            &LedgerOptions {
                extra_forwards: 1.0,
                ..opts
            },
        );
        assert_eq!(kl.flops_training, 6.0 * 1e6 * 180.0 + 2.0 * 1e6 * 180.0);
    }

    #[test]
    fn reflection_phrases_match_whole_words() {
        let p = &REFLECTION_PHRASES;
        assert!(has_reflection("3 + 4 = 8. Wait, that is wrong.", p));
        assert!(has_reflection("Let me check: 7.", p));
        assert!(has_reflection("let me recompute that", p));
        assert!(!has_reflection("let me return 7", &["let me ret"]));
        assert!(has_reflection("wait", &["Wait"]) && !has_reflection("x", &["*"]));
        assert!(!has_reflection("I awaited the answer.", p));
        assert!(!has_reflection("The answer is 7.", p));
    }

    #[test]
    fn first_rise_finds_the_step_a_curve_leaves_its_start() {
        let flat: Vec<(u64, f64)> = (1..=20).map(|s| (s, 0.1)).collect();
        assert_eq!(first_rise(&flat, 0.05), None);
        let rising: Vec<(u64, f64)> = (1..=20)
            .map(|s| (s, if s > 10 { 0.5 } else { 0.1 }))
            .collect();
        assert_eq!(first_rise(&rising, 0.05), Some(11));
    }
}
