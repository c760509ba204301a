//! `report.html`: one self-contained page (inline SVG, no scripts, no network) with the run's
//! config, final numbers, curves, held-out evaluations and sample completions.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use rlzero_model::atomic::write_atomic;
use serde_json::{Map, Value};

use crate::error::Result;
use crate::plots::{charts, r1_charts};
use crate::run_dir::read_jsonl;
use crate::svg::escape;

/// Completions shown per report: from the last logged step, the best and worst few.
const SAMPLES: usize = 6;

fn cell(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if x.fract() != 0.0 => format!("{x:.4}"),
            _ => n.to_string(),
        },
        Some(Value::String(s)) => escape(s),
        Some(Value::Null) | None => "–".into(),
        Some(other) => escape(&other.to_string()),
    }
}

fn table(rows: &[Map<String, Value>], keys: &[&str]) -> String {
    let mut h = String::from("<table><tr>");
    for k in keys {
        let _ = write!(h, "<th>{}</th>", escape(k));
    }
    h.push_str("</tr>");
    for r in rows {
        h.push_str("<tr>");
        for k in keys {
            let _ = write!(h, "<td>{}</td>", cell(r.get(*k)));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}

/// Writes `<run>/report.html`; `extra_html` is placed after the summary (e.g. a compute
/// ledger). Returns the file.
pub fn write_report(run: &Path, title: &str, extra_html: &str) -> Result<PathBuf> {
    let metrics = read_jsonl(&run.join("metrics.jsonl"))?;
    let evals = read_jsonl(&run.join("eval.jsonl"))?;
    let completions = read_jsonl(&run.join("completions.jsonl"))?;
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap_or_default();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1320px;margin:24px auto;padding:0 16px;color:#222}}\
         table{{border-collapse:collapse;font-size:13px;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         td.t{{text-align:left;white-space:pre-wrap;font-family:monospace;max-width:640px}}\
         .charts{{display:flex;flex-wrap:wrap;gap:8px}}pre{{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto}}\
         </style></head><body><h1>{t}</h1>",
        t = escape(title)
    );
    let trained: Vec<&Map<String, Value>> = metrics
        .iter()
        .filter(|m| m.get("skipped") != Some(&Value::Bool(true)))
        .collect();
    let _ = write!(
        h,
        "<p>{} optimizer steps logged ({} skipped).</p>",
        trained.len(),
        metrics.len() - trained.len()
    );
    if let (Some(first), Some(last)) = (trained.first(), trained.last()) {
        h.push_str("<h2>First and last step</h2>");
        let keys = [
            "step",
            "reward",
            "reward_std",
            "completions/mean_length",
            "kl",
            "entropy",
            "grad_norm",
            "step_time",
        ];
        h.push_str(&table(&[(*first).clone(), (*last).clone()], &keys));
    }
    h.push_str(extra_html);
    if !evals.is_empty() {
        h.push_str("<h2>Held-out evaluations</h2>");
        let mut keys: Vec<&str> = evals
            .iter()
            .flat_map(|m| m.keys().map(String::as_str))
            .collect();
        keys.sort_by_key(|k| (*k != "step", *k));
        keys.dedup();
        h.push_str(&table(&evals, &keys));
    }
    h.push_str("<h2>Curves</h2><div class=\"charts\">");
    for (_, c) in charts(&metrics, &evals) {
        h.push_str(&c.to_svg());
    }
    h.push_str(
        "</div><h2>R1-Zero's signature curves</h2><p>DeepSeek-R1-Zero's completions grew \
         longer as RL went on and began to re-check themselves (\"wait\", \"let me check\"); \
         the dashed line marks the step where a curve first rises, if it does.</p>\
         <div class=\"charts\">",
    );
    for (_, c) in r1_charts(&completions) {
        h.push_str(&c.to_svg());
    }
    h.push_str("</div>");
    if let Some(last_step) = completions
        .iter()
        .filter_map(|c| c.get("step")?.as_u64())
        .max()
    {
        let mut last: Vec<&Map<String, Value>> = completions
            .iter()
            .filter(|c| c.get("step").and_then(Value::as_u64) == Some(last_step))
            .collect();
        last.sort_by(|a, b| {
            let r = |m: &Map<String, Value>| {
                m.get("reward").and_then(Value::as_f64).unwrap_or(f64::NAN)
            };
            r(b).total_cmp(&r(a))
        });
        let shown: Vec<_> = if last.len() > SAMPLES {
            last[..SAMPLES / 2]
                .iter()
                .chain(&last[last.len() - SAMPLES / 2..])
                .collect()
        } else {
            last.iter().collect()
        };
        let _ = write!(h, "<h2>Completions of step {last_step} (best and worst)</h2><table><tr><th>reward</th><th>advantage</th><th>prompt</th><th>completion</th></tr>");
        for c in shown {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td></tr>",
                cell(c.get("reward")),
                cell(c.get("advantage")),
                cell(c.get("prompt")),
                cell(c.get("completion"))
            );
        }
        h.push_str("</table>");
    }
    let _ = writeln!(
        h,
        "<h2>Config</h2><pre>{}</pre></body></html>",
        escape(&config)
    );
    let path = run.join("report.html");
    write_atomic(&path, h.as_bytes())?;
    Ok(path)
}
