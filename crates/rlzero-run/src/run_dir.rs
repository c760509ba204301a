//! A run folder: everything one training run leaves behind, in files other tools read.
//!
//! ```text
//! <run>/config.toml         the resolved GrpoConfig (GrpoConfig::from_file reads it back)
//! <run>/run.json            what else defines the run (model, task, seeds, rlzero version)
//! <run>/metrics.jsonl       one JSON object per step: TRL's metric names, tokens/s, phase times
//! <run>/completions.jsonl   sampled completions: step, prompt, completion, rewards, advantage
//! <run>/eval.jsonl          held-out evaluations: step and the evaluation's numbers
//! <run>/checkpoints/        checkpoint-<step>/ folders (rlzero_grpo::checkpoint)
//! <run>/plots/*.svg, report.html   written by crate::plots and crate::report
//! ```
//!
//! Whole files (`config.toml`, `run.json`) are written atomically. The JSONL logs are appended
//! one line at a time and flushed, so a killed run loses at most the line being written; on
//! resume from a checkpoint at step `s` every line of a later step is dropped (the resumed run
//! writes them again), so the logs read as one uninterrupted run.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use rlzero_grpo::StepReport;
use rlzero_model::atomic::write_atomic;
use serde_json::{json, Map, Value};

use crate::error::{Result, RunError};

/// The step-indexed logs of a run folder.
pub const LOGS: [&str; 3] = ["metrics.jsonl", "completions.jsonl", "eval.jsonl"];

/// An open run folder.
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    metrics: File,
    completions: File,
    evals: File,
}

fn io_err(path: &Path, e: std::io::Error) -> RunError {
    RunError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err(path, e))
}

impl RunDir {
    /// Starts a new run in `root` (created; it must not already hold a run), writing
    /// `config.toml` and `run.json`.
    pub fn create(root: &Path, config_toml: &str, run_info: &Value) -> Result<Self> {
        if root.join("metrics.jsonl").exists() || root.join("config.toml").exists() {
            return Err(RunError::Exists(root.to_path_buf()));
        }
        std::fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
        write_atomic(&root.join("config.toml"), config_toml.as_bytes())?;
        let mut info = serde_json::to_vec_pretty(run_info).map_err(|e| RunError::Json {
            path: root.join("run.json"),
            reason: e.to_string(),
        })?;
        info.push(b'\n');
        write_atomic(&root.join("run.json"), &info)?;
        tracing::info!(root = %root.display(), "run folder created");
        Self::open(root)
    }

    /// Reopens the run in `root` to continue from a checkpoint taken after `step` optimizer
    /// steps and `batches` generation batches (`Trainer::batches_sampled`): later lines are
    /// dropped (atomically), new ones are appended. Metrics lines are cut by their `batch`, so
    /// skipped steps after the checkpoint (same `step`) are dropped too; the other logs by
    /// `step`.
    pub fn resume(root: &Path, step: u64, batches: u64) -> Result<Self> {
        if !root.join("config.toml").is_file() {
            return Err(RunError::NotARun(root.to_path_buf()));
        }
        truncate_after(&root.join("metrics.jsonl"), |m| {
            match m.get("batch").and_then(Value::as_u64) {
                Some(b) => b <= batches,
                None => step_of(m).is_none_or(|s| s <= step),
            }
        })?;
        for log in ["completions.jsonl", "eval.jsonl"] {
            truncate_after(&root.join(log), |m| step_of(m).is_none_or(|s| s <= step))?;
        }
        tracing::info!(root = %root.display(), step, batches, "run folder reopened; later log lines dropped");
        Self::open(root)
    }

    fn open(root: &Path) -> Result<Self> {
        Ok(Self {
            root: root.to_path_buf(),
            metrics: open_append(&root.join("metrics.jsonl"))?,
            completions: open_append(&root.join("completions.jsonl"))?,
            evals: open_append(&root.join("eval.jsonl"))?,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where checkpoints go.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The resolved config as written.
    pub fn config_toml(&self) -> Result<String> {
        let p = self.root.join("config.toml");
        std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))
    }

    /// Appends a step: its metrics (plus `extra` keys, e.g. tokens/s) to `metrics.jsonl` and
    /// every trained completion to `completions.jsonl`.
    pub fn log_step(&mut self, report: &StepReport, extra: Map<String, Value>) -> Result<()> {
        let m = &report.metrics;
        let mut line = m.to_json();
        line.extend(extra);
        write_line(
            &mut self.metrics,
            &self.root.join("metrics.jsonl"),
            &Value::Object(line),
        )?;
        let path = self.root.join("completions.jsonl");
        for s in &report.samples {
            let v = json!({
                "step": m.step,
                "prompt_index": s.prompt_index,
                "sample_index": s.sample_index,
                "prompt": s.prompt,
                "completion": s.completion,
                "rewards": s.rewards.iter().map(|r| finite(*r)).collect::<Vec<_>>(),
                "reward": finite(s.reward),
                "advantage": finite(s.advantage),
                "tokens": s.tokens,
                "finish_reason": format!("{:?}", s.finish_reason),
                // The last optimizer iteration's view of this row (see `RowStats`).
                "loss_term": s.loss.last().map(|r| finite(r.loss)),
                "mean_ratio": s.loss.last().map(|r| finite(r.mean_ratio)),
            });
            write_line(&mut self.completions, &path, &v)?;
        }
        Ok(())
    }

    /// Appends a held-out evaluation taken after `step` optimizer steps.
    pub fn log_eval(&mut self, step: u64, eval: &Value) -> Result<()> {
        let mut line = Map::new();
        line.insert("step".into(), json!(step));
        if let Value::Object(m) = eval {
            line.extend(m.clone());
        } else {
            line.insert("value".into(), eval.clone());
        }
        write_line(
            &mut self.evals,
            &self.root.join("eval.jsonl"),
            &Value::Object(line),
        )
    }
}

/// JSON has no NaN: an abstaining / unscorable reward is written as `null`.
fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

fn write_line(f: &mut File, path: &Path, v: &Value) -> Result<()> {
    let mut s = v.to_string();
    s.push('\n');
    // One write per line: an append of a whole line, then a flush to the OS.
    f.write_all(s.as_bytes())
        .and_then(|_| f.flush())
        .map_err(|e| io_err(path, e))
}

/// Reads a JSONL log; a torn last line (the run was killed mid-write) is skipped, any other
/// malformed line is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, e)),
    };
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(|e| io_err(path, e))?;
    let mut out = Vec::with_capacity(lines.len());
    let n = lines.len();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => out.push(m),
            Ok(_) => {
                return Err(RunError::Json {
                    path: path.to_path_buf(),
                    reason: format!("line {}: not a JSON object", i + 1),
                })
            }
            Err(_) if i + 1 == n => {} // torn last line of a killed run
            Err(e) => {
                return Err(RunError::Json {
                    path: path.to_path_buf(),
                    reason: format!("line {}: {e}", i + 1),
                })
            }
        }
    }
    Ok(out)
}

/// A log line's `step` (an integer; older logs wrote it as a float).
pub fn step_of(m: &Map<String, Value>) -> Option<u64> {
    let v = m.get("step")?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|x| *x >= 0.0 && x.fract() == 0.0)
            .map(|x| x as u64)
    })
}

/// Rewrites `path` with only the lines `keep` accepts (and without a torn last line).
fn truncate_after(path: &Path, keep: impl Fn(&Map<String, Value>) -> bool) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let kept: Vec<String> = read_jsonl(path)?
        .into_iter()
        .filter(|m| keep(m))
        .map(|m| Value::Object(m).to_string() + "\n")
        .collect();
    write_atomic(path, kept.concat().as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlzero_grpo::{SampleRecord, StepMetrics};

    fn report(step: u64, reward: f64) -> StepReport {
        StepReport {
            metrics: StepMetrics {
                step,
                batch: step,
                reward,
                ..StepMetrics::default()
            },
            samples: vec![SampleRecord {
                prompt_index: 0,
                sample_index: 0,
                prompt: "p".into(),
                completion: "c \"quoted\"\n".into(),
                rewards: vec![reward, f64::NAN],
                reward,
                advantage: 0.5,
                finish_reason: rlzero_rollout::FinishReason::Eos,
                tokens: 3,
                loss: Vec::new(),
            }],
        }
    }

    #[test]
    fn logs_resume_without_duplicates_and_survive_a_torn_line() {
        let root = std::env::temp_dir().join(format!("rlzero-run-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut run = RunDir::create(&root, "seed = 1\n", &json!({"model": "tiny"})).unwrap();
        for s in 1..=5 {
            run.log_step(&report(s, s as f64 / 10.0), Map::new())
                .unwrap();
            run.log_eval(s, &json!({"accuracy": 0.1 * s as f64}))
                .unwrap();
        }
        drop(run);
        assert!(matches!(
            RunDir::create(&root, "", &json!({})),
            Err(RunError::Exists(_))
        ));
        // A kill mid-write leaves a torn last line; reading skips it.
        let mut f = OpenOptions::new()
            .append(true)
            .open(root.join("metrics.jsonl"))
            .unwrap();
        f.write_all(b"{\"step\": 6, \"rew").unwrap();
        assert_eq!(read_jsonl(&root.join("metrics.jsonl")).unwrap().len(), 5);
        // Resume from the checkpoint after step 3: steps 4..5 are dropped, then rewritten.
        let mut run = RunDir::resume(&root, 3, 3).unwrap();
        run.log_step(&report(4, 0.9), Map::new()).unwrap();
        let m = read_jsonl(&root.join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = m.iter().map(|l| l["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [1, 2, 3, 4]);
        assert_eq!(m[3]["reward"], 0.9);
        let c = read_jsonl(&root.join("completions.jsonl")).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(
            c[0]["rewards"],
            json!([0.1, null]),
            "NaN is written as null"
        );
        assert_eq!(read_jsonl(&root.join("eval.jsonl")).unwrap().len(), 3);
        // A malformed line that is not the last is an error naming file and line.
        std::fs::write(
            root.join("eval.jsonl"),
            "{\"step\":1}\nnot json\n{\"step\":2}\n",
        )
        .unwrap();
        let e = read_jsonl(&root.join("eval.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("eval.jsonl") && e.contains("line 2"), "{e}");
        // Plots and the report render from the logs.
        std::fs::write(
            root.join("eval.jsonl"),
            "{\"step\":1,\"eval/accuracy\":0.5,\"eval/prompts\":64}\n",
        )
        .unwrap();
        let plots = crate::plots::write_plots(&root).unwrap();
        assert!(plots.iter().any(|p| p.ends_with("reward.svg")));
        assert!(plots.iter().any(|p| p.ends_with("eval.svg")));
        let html =
            std::fs::read_to_string(crate::report::write_report(&root, "t <1>", "").unwrap())
                .unwrap();
        assert!(
            html.contains("t &lt;1&gt;")
                && html.contains("<svg")
                && html.contains("c &quot;quoted&quot;")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
