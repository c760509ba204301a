//! Training curves of a run folder as SVG files under `<run>/plots/`: reward with a band of
//! ±1 std, completion length, KL, entropy, clip ratios, held-out evaluation.

use std::path::{Path, PathBuf};

use rlzero_model::atomic::write_atomic;
use serde_json::{Map, Value};

use crate::error::Result;
use crate::run_dir::read_jsonl;
use crate::svg::{Chart, Series};

fn num(m: &Map<String, Value>, key: &str) -> f64 {
    m.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// `(step, key)` over the non-skipped lines that have `key`.
fn curve(lines: &[Map<String, Value>], key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|m| m.get("skipped") != Some(&Value::Bool(true)) && m.contains_key(key))
        .map(|m| (num(m, "step"), num(m, key)))
        .collect()
}

fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
    Series {
        name: name.into(),
        points,
        band: Vec::new(),
    }
}

/// R1-Zero's signature curves from `completions.jsonl`: completion length (mean with a
/// p10–p90 band) and the share of completions with a reflection phrase
/// ([`crate::ledger::REFLECTION_PHRASES`]), each marked where it first rises.
pub fn r1_charts(completions: &[Map<String, Value>]) -> Vec<(String, Chart)> {
    use crate::ledger::{first_rise, r1_curves, REFLECTION_PHRASES};
    let c = r1_curves(completions, &REFLECTION_PHRASES);
    let length: Vec<(f64, f64)> = c.iter().map(|r| (r.0 as f64, r.1)).collect();
    let refl: Vec<(f64, f64)> = c.iter().map(|r| (r.0 as f64, r.4)).collect();
    let rise = |xs: &[(f64, f64)], gain: f64, what: &str| {
        let pts: Vec<(u64, f64)> = xs.iter().map(|p| (p.0 as u64, p.1)).collect();
        first_rise(&pts, gain).map(|s| (s as f64, format!("{what} rises at step {s}")))
    };
    vec![
        (
            "r1_length".to_string(),
            Chart {
                title: "completion length in tokens (mean, p10–p90 band)".into(),
                x_label: "optimizer step".into(),
                marker: rise(&length, 2.0, "length"),
                series: vec![Series {
                    name: "mean length".into(),
                    points: length,
                    band: c.iter().map(|r| (r.0 as f64, r.2, r.3)).collect(),
                }],
            },
        ),
        (
            "r1_reflection".to_string(),
            Chart {
                title:
                    "share of completions with a reflection phrase (\"wait\", \"let me check\", …)"
                        .into(),
                x_label: "optimizer step".into(),
                marker: rise(&refl, 0.02, "reflection"),
                series: vec![series("reflection rate", refl)],
            },
        ),
    ]
}

/// The charts for a run's `metrics.jsonl` and `eval.jsonl` lines, by file stem.
pub fn charts(
    metrics: &[Map<String, Value>],
    evals: &[Map<String, Value>],
) -> Vec<(String, Chart)> {
    let chart = |title: &str, series: Vec<Series>| Chart {
        title: title.into(),
        x_label: "optimizer step".into(),
        series,
        marker: None,
    };
    let reward = curve(metrics, "reward");
    let std = curve(metrics, "reward_std");
    let band = reward
        .iter()
        .zip(&std)
        .map(|(&(x, r), &(_, s))| (x, r - s, r + s))
        .collect();
    let mut out = vec![
        (
            "reward".to_string(),
            chart(
                "training reward (mean ± std over the step's completions)",
                vec![Series {
                    name: "reward".into(),
                    points: reward,
                    band,
                }],
            ),
        ),
        (
            "completion_length".to_string(),
            chart(
                "completion length (tokens)",
                vec![
                    series("mean", curve(metrics, "completions/mean_length")),
                    series("min", curve(metrics, "completions/min_length")),
                    series("max", curve(metrics, "completions/max_length")),
                ],
            ),
        ),
        (
            "kl".to_string(),
            chart(
                "KL to the reference policy",
                vec![series("kl", curve(metrics, "kl"))],
            ),
        ),
        (
            "entropy".to_string(),
            chart(
                "token entropy (nats)",
                vec![series("entropy", curve(metrics, "entropy"))],
            ),
        ),
        (
            "clip_ratio".to_string(),
            chart(
                "clipped share of tokens",
                vec![
                    series("low", curve(metrics, "clip_ratio/low_mean")),
                    series("high", curve(metrics, "clip_ratio/high_mean")),
                    series("region", curve(metrics, "clip_ratio/region_mean")),
                ],
            ),
        ),
    ];
    // The evaluations' shares and rewards: `eval/*` keys whose values all lie in [0, 1]
    // (counts, lengths and times would flatten them).
    let mut keys: Vec<String> = evals
        .iter()
        .flat_map(|m| m.keys().filter(|k| k.starts_with("eval/")).cloned())
        .filter(|k| {
            evals
                .iter()
                .filter_map(|m| m.get(k).and_then(Value::as_f64))
                .all(|v| (0.0..=1.0).contains(&v))
        })
        .collect();
    keys.sort();
    keys.dedup();
    if !keys.is_empty() {
        let s = keys
            .iter()
            .map(|k| {
                series(
                    k,
                    evals
                        .iter()
                        .filter(|m| m.contains_key(k))
                        .map(|m| (num(m, "step"), num(m, k)))
                        .collect(),
                )
            })
            .collect();
        out.push(("eval".to_string(), chart("held-out evaluation", s)));
    }
    out
}

/// Writes `<run>/plots/<name>.svg` for every chart; returns the files.
pub fn write_plots(run: &Path) -> Result<Vec<PathBuf>> {
    let metrics = read_jsonl(&run.join("metrics.jsonl"))?;
    let evals = read_jsonl(&run.join("eval.jsonl"))?;
    let completions = read_jsonl(&run.join("completions.jsonl"))?;
    let dir = run.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| crate::error::RunError::Io {
        path: dir.clone(),
        source: e,
    })?;
    let mut files = Vec::new();
    for (name, c) in charts(&metrics, &evals)
        .into_iter()
        .chain(r1_charts(&completions))
    {
        let p = dir.join(format!("{name}.svg"));
        write_atomic(&p, c.to_svg().as_bytes())?;
        files.push(p);
    }
    Ok(files)
}
