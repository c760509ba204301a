//! Training checkpoints that lose nothing: a run resumed from one continues exactly as if it had
//! never stopped (on CPU, bit for bit).
//!
//! A checkpoint is one directory:
//! * `trainable.safetensors`: what the optimizer updates ([`rlzero_model::Decoder::named_trainable`]: every
//!   weight under its HF name, or only the LoRA `A`/`B` under PEFT's names). The frozen base and
//!   the reference policy are not saved: both are the model the run started from, which
//!   [`Trainer::resume`] is given again.
//! * `optimizer.safetensors`: AdamW's `exp_avg.<name>` and `exp_avg_sq.<name>` (f32).
//! * `trainer_state.json`: format version, optimizer steps (the LR schedule's position),
//!   generation batches sampled (every rollout seed derives from it), prompts drawn from the
//!   prompt stream (the data-order position), each parameter's AdamW step, the LoRA dropout
//!   streams' positions, the full config, and a free-form `user` value for the caller (its own
//!   RNG or data state).
//!
//! **Atomic.** The directory is written as `<name>.tmp-<pid>` (every file fsynced), then renamed
//! into place and its parent fsynced; an existing checkpoint of the same name is replaced only
//! by that rename. A crash or a full disk mid-write leaves every earlier checkpoint intact;
//! [`latest`] ignores temporary directories.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rlzero_model::atomic::{sync_dir, write_atomic, write_safetensors};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::GrpoConfig;
use crate::error::{GrpoError, Result};
use crate::optim::{AdamWState, ParamState};
use crate::trainer::Trainer;

/// The `trainer_state.json` format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

const STATE_FILE: &str = "trainer_state.json";
const TRAINABLE_FILE: &str = "trainable.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainerState {
    format_version: u32,
    step: u64,
    batches_sampled: u64,
    prompts_drawn: u64,
    optimizer_step: u64,
    /// `(name, AdamW step)` per trainable tensor, in optimizer order.
    params: Vec<(String, u64)>,
    lora_dropout_calls: Vec<u64>,
    config: GrpoConfig,
    user: Value,
}

/// What [`Trainer::resume`] restores besides the trainer.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// Prompts the run had drawn from its prompt stream: skip this many to continue its order.
    pub prompts_drawn: u64,
    /// The `user` value given to [`Trainer::save_checkpoint`].
    pub user: Value,
}

fn ckpt_err(file: &Path, reason: impl Into<String>) -> GrpoError {
    GrpoError::Checkpoint {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

impl Trainer {
    /// Writes a checkpoint to `dir` (see the module docs), replacing one already there only once
    /// the new one is complete. `user` is stored as is and returned by [`Trainer::resume`].
    pub fn save_checkpoint(&self, dir: &Path, user: Value) -> Result<()> {
        let name = dir
            .file_name()
            .ok_or_else(|| ckpt_err(dir, "a checkpoint directory needs a name"))?;
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| ckpt_err(parent, e.to_string()))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = parent.join(tmp_name);
        let old = parent.join(format!(
            "{}.old-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        // Leftovers of an interrupted save by a process that had our pid: the old copy goes
        // back into place if the checkpoint itself is missing, then both names are cleared.
        recover(dir, &old)?;
        let written = self.write_checkpoint_files(&tmp, user);
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // Replace an existing checkpoint of the same name: move it aside, move the new one in.
        // A crash between the two renames leaves `<name>.old-<pid>`, which `list` reads in
        // place of the missing checkpoint (and a later save by the same pid moves back).
        let had_old = dir.exists();
        if had_old {
            std::fs::rename(dir, &old).map_err(|e| ckpt_err(dir, e.to_string()))?;
        }
        if let Err(e) = std::fs::rename(&tmp, dir) {
            if had_old {
                let _ = std::fs::rename(&old, dir);
            }
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ckpt_err(dir, e.to_string()));
        }
        sync_dir(parent).map_err(|e| ckpt_err(parent, e.to_string()))?;
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        tracing::info!(dir = %dir.display(), step = self.step, "checkpoint saved");
        Ok(())
    }

    fn write_checkpoint_files(&self, tmp: &Path, user: Value) -> Result<()> {
        std::fs::create_dir_all(tmp).map_err(|e| ckpt_err(tmp, e.to_string()))?;
        let named = self.policy.named_trainable()?;
        let opt = self.optimizer.state()?;
        if opt.params.len() != named.len() {
            return Err(GrpoError::InvalidInput(format!(
                "optimizer holds {} tensors, the policy {} trainable ones",
                opt.params.len(),
                named.len()
            )));
        }
        let weights: Vec<(String, Tensor)> = named
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        write_safetensors(
            &tmp.join(TRAINABLE_FILE),
            weights.iter().map(|(n, t)| (n.as_str(), t)),
        )?;
        let mut moments = Vec::with_capacity(2 * named.len());
        for ((n, v), p) in named.iter().zip(&opt.params) {
            for (kind, data) in [("exp_avg", &p.exp_avg), ("exp_avg_sq", &p.exp_avg_sq)] {
                let t = Tensor::from_slice(data, v.dims(), &Device::Cpu)?;
                moments.push((format!("{kind}.{n}"), t));
            }
        }
        write_safetensors(
            &tmp.join(OPTIMIZER_FILE),
            moments.iter().map(|(n, t)| (n.as_str(), t)),
        )?;
        let state = TrainerState {
            format_version: FORMAT_VERSION,
            step: self.step,
            batches_sampled: self.batches,
            prompts_drawn: self.prompts_drawn,
            optimizer_step: opt.step,
            params: named
                .iter()
                .zip(&opt.params)
                .map(|((n, _), p)| (n.clone(), p.step))
                .collect(),
            lora_dropout_calls: self.policy.lora_dropout_calls(),
            config: self.cfg.clone(),
            user,
        };
        let path = tmp.join(STATE_FILE);
        let mut json =
            serde_json::to_vec_pretty(&state).map_err(|e| ckpt_err(&path, e.to_string()))?;
        json.push(b'\n');
        write_atomic(&path, &json)?;
        Ok(())
    }

    /// Continues a run from the checkpoint in `dir`. `model` must be the model the run started
    /// from (its weights are the frozen base and the reference policy), `cfg` the run's config:
    /// a config that differs in any field but `max_steps` is refused with
    /// [`GrpoError::ConfigChanged`] naming the fields, unless `force`. Nothing is modified on
    /// error; every file problem names the file.
    pub fn resume(
        cfg: GrpoConfig,
        model: rlzero_model::LoadedModel,
        rewards: rlzero_rewards::RewardSet,
        dir: &Path,
        force: bool,
    ) -> Result<(Self, Resumed)> {
        let state = read_state(dir)?;
        let changed = config_diff(&state.config, &cfg, &dir.join(STATE_FILE))?;
        if !changed.is_empty() && !force {
            return Err(GrpoError::ConfigChanged {
                checkpoint: dir.to_path_buf(),
                fields: changed,
            });
        }
        let mut trainer = Trainer::new(cfg, model, rewards)?;
        let named = trainer.policy.named_trainable()?;
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        let saved: Vec<&str> = state.params.iter().map(|(n, _)| n.as_str()).collect();
        if names != saved {
            return Err(ckpt_err(
                &dir.join(STATE_FILE),
                format!(
                    "the checkpoint trains {} tensors ({}…), this model {} ({}…): another \
                     model or LoRA setting",
                    saved.len(),
                    saved.first().unwrap_or(&""),
                    names.len(),
                    names.first().unwrap_or(&"")
                ),
            ));
        }
        let weights = read_tensors(&dir.join(TRAINABLE_FILE))?;
        let moments = read_tensors(&dir.join(OPTIMIZER_FILE))?;
        // Check every tensor before changing anything.
        let mut updates = Vec::with_capacity(named.len());
        let mut params = Vec::with_capacity(named.len());
        for ((name, var), (_, step)) in named.iter().zip(&state.params) {
            let w = take(&weights, name, var.as_tensor(), &dir.join(TRAINABLE_FILE))?;
            let m = take(
                &moments,
                &format!("exp_avg.{name}"),
                var.as_tensor(),
                &dir.join(OPTIMIZER_FILE),
            )?;
            let v = take(
                &moments,
                &format!("exp_avg_sq.{name}"),
                var.as_tensor(),
                &dir.join(OPTIMIZER_FILE),
            )?;
            params.push(ParamState {
                step: *step,
                exp_avg: m.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
                exp_avg_sq: v.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
            });
            updates.push((var, w.to_dtype(var.dtype())?.to_device(var.device())?));
        }
        let calls = &state.lora_dropout_calls;
        if calls.len() != trainer.policy.lora_dropout_calls().len() {
            return Err(ckpt_err(
                &dir.join(STATE_FILE),
                format!(
                    "{} LoRA dropout streams saved, the model has {}",
                    calls.len(),
                    trainer.policy.lora_dropout_calls().len()
                ),
            ));
        }
        trainer.optimizer.load_state(&AdamWState {
            step: state.optimizer_step,
            params,
        })?;
        for (var, w) in updates {
            var.set(&w)?;
        }
        // bf16 mode: the working copy follows the restored master weights.
        if let Some(c) = &trainer.compute {
            c.sync(trainer.optimizer.vars())?;
        }
        trainer.policy.set_lora_dropout_calls(calls)?;
        trainer.step = state.step;
        trainer.batches = state.batches_sampled;
        trainer.prompts_drawn = state.prompts_drawn;
        tracing::info!(dir = %dir.display(), step = trainer.step, "resumed from checkpoint");
        Ok((
            trainer,
            Resumed {
                prompts_drawn: state.prompts_drawn,
                user: state.user,
            },
        ))
    }
}

fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|e| ckpt_err(&path, e.to_string()))?;
    let raw: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ckpt_err(&path, format!("not a trainer state ({e})")))?;
    // The version is read first, so a newer format is reported as such, not as a parse error.
    let version = raw
        .get("format_version")
        .and_then(Value::as_u64)
        .ok_or_else(|| ckpt_err(&path, "no `format_version`: not an rlzero checkpoint"))?;
    if version > FORMAT_VERSION as u64 {
        return Err(ckpt_err(
            &path,
            format!(
                "format version {version} is newer than this rlzero reads ({FORMAT_VERSION}); \
                 upgrade rlzero"
            ),
        ));
    }
    serde_json::from_value(raw).map_err(|e| ckpt_err(&path, e.to_string()))
}

/// Reads a checkpoint safetensors file; any problem is an error naming it.
fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    rlzero_model::safetensors_io::read_safetensors(path).map_err(|e| match e {
        rlzero_model::ModelError::Io { .. } | rlzero_model::ModelError::Safetensors { .. } => {
            ckpt_err(path, e.to_string())
        }
        other => other.into(),
    })
}

fn take(all: &HashMap<String, Tensor>, name: &str, like: &Tensor, file: &Path) -> Result<Tensor> {
    let t = all
        .get(name)
        .ok_or_else(|| ckpt_err(file, format!("no tensor `{name}`")))?;
    if t.dims() != like.dims() {
        return Err(ckpt_err(
            file,
            format!(
                "`{name}` has shape {:?}, the model {:?}",
                t.dims(),
                like.dims()
            ),
        ));
    }
    Ok(t.clone())
}

/// Leaf paths (`loss.beta`, `sampling.temperature`) whose values differ, `max_steps` excepted
/// (extending a run is not a change of the run).
fn config_diff(saved: &GrpoConfig, now: &GrpoConfig, file: &Path) -> Result<Vec<String>> {
    let to_json =
        |c: &GrpoConfig| serde_json::to_value(c).map_err(|e| ckpt_err(file, e.to_string()));
    let (a, b) = (to_json(saved)?, to_json(now)?);
    let mut out = Vec::new();
    diff("", &a, &b, &mut out);
    out.retain(|f| f != "max_steps");
    Ok(out)
}

fn diff(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeMap<&String, ()> = x.keys().chain(y.keys()).map(|k| (k, ())).collect();
            for k in keys.keys() {
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                diff(
                    &path,
                    x.get(*k).unwrap_or(&Value::Null),
                    y.get(*k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// The newest complete checkpoint under `root` (directories `checkpoint-<step>`), if any;
/// temporary directories of an interrupted save are ignored.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list(root)?.pop())
}

/// Puts `old` (a checkpoint moved aside by an interrupted replace) back at `dir` when `dir` is
/// missing; removes it when `dir` is complete.
fn recover(dir: &Path, old: &Path) -> Result<()> {
    if !old.exists() {
        return Ok(());
    }
    if dir.join(STATE_FILE).is_file() {
        std::fs::remove_dir_all(old).map_err(|e| ckpt_err(old, e.to_string()))
    } else {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| ckpt_err(dir, e.to_string()))?;
        }
        std::fs::rename(old, dir).map_err(|e| ckpt_err(dir, e.to_string()))
    }
}

/// Complete checkpoints under `root`, oldest first. A checkpoint left as `<name>.old-<pid>` by
/// a replace interrupted between its two renames stands in for `<name>` when that is missing
/// (read only: the next save of that name moves it back).
pub fn list(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ckpt_err(root, e.to_string())),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let name = match name.rsplit_once(".old-") {
            Some((base, _)) if !root.join(base).join(STATE_FILE).is_file() => base.to_string(),
            Some(_) => continue,
            None => name,
        };
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if entry.path().join(STATE_FILE).is_file() {
                found.push((step, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// `root/checkpoint-<step>` with the step zero-padded, so names sort by step.
pub fn checkpoint_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("checkpoint-{step:08}"))
}

/// Saves every `save_every` optimizer steps under `root` and keeps the newest `keep_last`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointPolicy {
    /// Directory holding `checkpoint-<step>` folders.
    pub root: PathBuf,
    /// Save after every this many optimizer steps (0: never).
    pub save_every: u64,
    /// Checkpoints kept, newest first; older ones are deleted after a save (0: keep all).
    pub keep_last: usize,
}

impl CheckpointPolicy {
    /// Saves if `trainer`'s step is a multiple of `save_every` and not saved yet; returns the
    /// directory written.
    pub fn maybe_save(&self, trainer: &Trainer, user: Value) -> Result<Option<PathBuf>> {
        let step = trainer.step_count();
        if self.save_every == 0 || step == 0 || !step.is_multiple_of(self.save_every) {
            return Ok(None);
        }
        self.save_now(trainer, user)
    }

    /// Saves `root/checkpoint-<step>` now (unless one of this step and generation batch is
    /// there already) and prunes to `keep_last`; returns the directory when it wrote one.
    pub fn save_now(&self, trainer: &Trainer, user: Value) -> Result<Option<PathBuf>> {
        let dir = checkpoint_dir(&self.root, trainer.step_count());
        if dir.join(STATE_FILE).is_file()
            && read_state(&dir).is_ok_and(|s| s.batches_sampled == trainer.batches_sampled())
        {
            return Ok(None);
        }
        trainer.save_checkpoint(&dir, user)?;
        if self.keep_last > 0 {
            let all = list(&self.root)?;
            for old in all.iter().take(all.len().saturating_sub(self.keep_last)) {
                std::fs::remove_dir_all(old).map_err(|e| ckpt_err(old, e.to_string()))?;
            }
        }
        Ok(Some(dir))
    }

    /// Keeps `root/best` as the checkpoint with the best held-out `metric` so far (higher is
    /// better when `higher_is_better`): saves `trainer` there when `metric` beats the one in
    /// `root/best/trainer_state.json`'s `user.best_metric`, or when there is none yet. Returns
    /// whether it saved. The previous best is replaced only once the new one is complete.
    pub fn save_if_best(
        &self,
        trainer: &Trainer,
        metric: f64,
        higher_is_better: bool,
    ) -> Result<bool> {
        if !metric.is_finite() {
            return Ok(false);
        }
        let dir = self.root.join("best");
        let prev = if dir.join(STATE_FILE).is_file() {
            read_state(&dir)?
                .user
                .get("best_metric")
                .and_then(Value::as_f64)
        } else {
            None
        };
        let better = match prev {
            None => true,
            Some(p) if higher_is_better => metric > p,
            Some(p) => metric < p,
        };
        if better {
            let user = serde_json::json!({"best_metric": metric, "step": trainer.step_count()});
            trainer.save_checkpoint(&dir, user)?;
        }
        Ok(better)
    }
}
