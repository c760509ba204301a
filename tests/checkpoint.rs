//! Training checkpoints: a run killed with SIGKILL and resumed continues bit for bit as if it
//! had never stopped; LoRA dropout streams resume too; a changed config is refused; bad
//! checkpoints are typed errors naming the file; a full disk mid-save keeps the previous
//! checkpoint; a skipped non-finite step leaves the next checkpoint with the pre-NaN weights.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::grpo_tiny::{config, deterministic_metrics, low_words, prompts, tiny};
use common::tmpdir::TempDir;
use rlzero::grpo::checkpoint::{checkpoint_dir, latest, list, CheckpointPolicy};
use rlzero::grpo::{GrpoConfig, GrpoError, Trainer};
use rlzero::model::lora::LoraConfig;
use rlzero::rewards::{reward_fn, RewardInput};

/// Every trainable tensor's bits, by name.
fn weights(t: &Trainer) -> Vec<(String, Vec<u32>)> {
    t.policy()
        .named_trainable()
        .unwrap()
        .into_iter()
        .map(|(n, v)| {
            let x = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (n, x.into_iter().map(f32::to_bits).collect())
        })
        .collect()
}

/// `steps` steps from `trainer`, drawing prompts from the run's stream at its position.
fn run(trainer: &mut Trainer, steps: usize) -> Vec<String> {
    let mut ps = prompts().skip(trainer.prompts_drawn() as usize);
    (0..steps)
        .map(|_| deterministic_metrics(&trainer.step(&mut ps).unwrap().metrics))
        .collect()
}

const CHILD_ENV: &str = "RLZERO_CHECKPOINT_CHILD_DIR";
const TOTAL_STEPS: usize = 10;

fn sigkill_config() -> GrpoConfig {
    let mut cfg = config();
    cfg.loss.beta = 0.02; // a reference policy too
    cfg
}

/// One test, two roles: run as the parent it spawns itself as the child, which trains with a
/// checkpoint after every step until it is killed (or has done all but the last step).
#[test]
fn a_run_killed_with_sigkill_resumes_bit_for_bit() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let policy = CheckpointPolicy {
            root: PathBuf::from(dir),
            save_every: 1,
            keep_last: 3,
        };
        let mut t = Trainer::new(sigkill_config(), tiny(), low_words()).unwrap();
        let mut ps = prompts();
        // Stop one step short of the end, so the parent always has steps left to compare
        // however late its kill lands; then wait to be killed.
        for _ in 0..TOTAL_STEPS - 1 {
            t.step(&mut ps).unwrap();
            policy.maybe_save(&t, serde_json::Value::Null).unwrap();
        }
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    // The uninterrupted run.
    let mut reference = Trainer::new(sigkill_config(), tiny(), low_words()).unwrap();
    let want = run(&mut reference, TOTAL_STEPS);

    let root = TempDir::new("sigkill");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_run_killed_with_sigkill_resumes_bit_for_bit",
            "--nocapture",
        ])
        .env(CHILD_ENV, root.path())
        .env("RUST_TEST_THREADS", "1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill at a pseudo-random moment after the second checkpoint (the clock's nanoseconds pick
    // how long after), so the kill lands anywhere in a step or in a save.
    let started = Instant::now();
    while list(root.path()).unwrap().len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "child made no checkpoint"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "child exited on its own"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 400;
    std::thread::sleep(Duration::from_millis(jitter as u64));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    let last = latest(root.path()).unwrap().expect("a complete checkpoint");
    let (mut resumed, info) =
        Trainer::resume(sigkill_config(), tiny(), low_words(), &last, false).unwrap();
    let done = resumed.step_count() as usize;
    eprintln!(
        "killed after {jitter} ms; resuming at step {done} from {}",
        last.display()
    );
    assert!((2..TOTAL_STEPS).contains(&done), "resumed at {done}");
    assert_eq!(info.prompts_drawn, resumed.prompts_drawn());
    let got = run(&mut resumed, TOTAL_STEPS - done);
    assert_eq!(got.len(), want[done..].len());
    for (k, (a, b)) in got.iter().zip(&want[done..]).enumerate() {
        assert_eq!(a, b, "step {} after resume differs", done + k + 1);
    }
    assert!(
        weights(&resumed) == weights(&reference),
        "final weights differ"
    );
}

#[test]
fn lora_runs_resume_their_adapters_optimizer_and_dropout_streams() {
    let mut cfg = config();
    cfg.lora = Some(LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.1,
        ..LoraConfig::default()
    });
    cfg.optim.lr = 0.03;
    cfg.loss.beta = 0.01;
    let mut whole = Trainer::new(cfg.clone(), tiny(), low_words()).unwrap();
    let want = run(&mut whole, 6);

    let dir = TempDir::new("lora-ckpt");
    let ckpt = checkpoint_dir(dir.path(), 3);
    let mut first = Trainer::new(cfg.clone(), tiny(), low_words()).unwrap();
    let mut got = run(&mut first, 3);
    first
        .save_checkpoint(&ckpt, serde_json::json!({"note": "mine"}))
        .unwrap();
    drop(first);
    let (mut second, info) = Trainer::resume(cfg, tiny(), low_words(), &ckpt, false).unwrap();
    assert_eq!(info.user, serde_json::json!({"note": "mine"}));
    assert_eq!(second.step_count(), 3);
    got.extend(run(&mut second, 3));
    assert_eq!(got, want);
    assert!(weights(&second) == weights(&whole));
    assert_eq!(
        second.policy().lora_dropout_calls(),
        whole.policy().lora_dropout_calls()
    );
}

/// `precision = bf16`: the checkpoint holds the f32 master; on resume the bf16 working copy is
/// rebuilt from it, so the continued run matches the uninterrupted one step for step.
#[test]
fn bf16_runs_resume_from_their_f32_master() {
    let mut cfg = config();
    cfg.precision = rlzero::grpo::Precision::Bf16;
    let mut whole = Trainer::new(cfg.clone(), tiny(), low_words()).unwrap();
    let want = run(&mut whole, 5);
    let dir = TempDir::new("bf16-ckpt");
    let ckpt = checkpoint_dir(dir.path(), 2);
    let mut first = Trainer::new(cfg.clone(), tiny(), low_words()).unwrap();
    let mut got = run(&mut first, 2);
    first
        .save_checkpoint(&ckpt, serde_json::Value::Null)
        .unwrap();
    drop(first);
    let (mut second, _) = Trainer::resume(cfg, tiny(), low_words(), &ckpt, false).unwrap();
    got.extend(run(&mut second, 3));
    assert_eq!(got, want);
    assert!(weights(&second) == weights(&whole));
}

#[test]
fn a_changed_config_is_refused_with_the_fields_named_unless_forced() {
    let dir = TempDir::new("cfg-ckpt");
    let mut t = Trainer::new(config(), tiny(), low_words()).unwrap();
    run(&mut t, 1);
    t.save_checkpoint(dir.path(), serde_json::Value::Null)
        .unwrap();
    let mut changed = config();
    changed.loss.beta = 0.5;
    changed.sampling.temperature = 0.7;
    changed.max_steps = 500; // extending a run is not a change
    let e = Trainer::resume(changed.clone(), tiny(), low_words(), dir.path(), false)
        .err()
        .expect("a changed config must be refused");
    match &e {
        GrpoError::ConfigChanged { fields, .. } => {
            assert_eq!(fields, &["loss.beta", "sampling.temperature"], "{e}")
        }
        other => panic!("expected ConfigChanged, got {other}"),
    }
    let (t, _) = Trainer::resume(changed, tiny(), low_words(), dir.path(), true).unwrap();
    assert_eq!(t.step_count(), 1);
}

/// Asserts a `GrpoError::Checkpoint` naming `file`.
fn assert_names(e: GrpoError, file: &str) {
    let s = e.to_string();
    assert!(
        matches!(&e, GrpoError::Checkpoint { file: f, .. } if f.ends_with(file)),
        "expected a checkpoint error naming {file}, got: {s}"
    );
}

#[test]
fn bad_checkpoints_are_typed_errors_naming_the_file() {
    let good = TempDir::new("good-ckpt");
    let mut t = Trainer::new(config(), tiny(), low_words()).unwrap();
    run(&mut t, 1);
    t.save_checkpoint(good.path(), serde_json::Value::Null)
        .unwrap();
    let resume = |dir: &Path| Trainer::resume(config(), tiny(), low_words(), dir, false);
    let variant = |tag: &str, edit: &dyn Fn(&Path)| {
        let d = common::tmpdir::copy_fixture(good.path(), tag);
        edit(d.path());
        d
    };
    let state = "trainer_state.json";
    let cases: Vec<(&str, TempDir, &str)> = vec![
        (
            "missing",
            variant("ck-missing", &|d| {
                std::fs::remove_file(d.join("optimizer.safetensors")).unwrap()
            }),
            "optimizer.safetensors",
        ),
        (
            "truncated",
            variant("ck-trunc", &|d| {
                let p = d.join("trainable.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() / 2]).unwrap();
            }),
            "trainable.safetensors",
        ),
        (
            "corrupted json",
            variant("ck-json", &|d| {
                std::fs::write(d.join(state), b"{\"format_version\": 1, ").unwrap()
            }),
            state,
        ),
        (
            "future version",
            variant("ck-future", &|d| {
                let p = d.join(state);
                let s = std::fs::read_to_string(&p).unwrap();
                std::fs::write(
                    &p,
                    s.replace("\"format_version\": 1", "\"format_version\": 99"),
                )
                .unwrap();
            }),
            state,
        ),
        (
            "foreign json",
            variant("ck-foreign", &|d| {
                std::fs::write(d.join(state), b"{\"global_step\": 3}").unwrap()
            }),
            state,
        ),
    ];
    for (what, dir, file) in cases {
        let e = resume(dir.path())
            .err()
            .unwrap_or_else(|| panic!("{what}: resumed"));
        eprintln!("{what}: {e}");
        assert_names(e, file);
        if what == "future version" {
            // The version error must say so, not report a parse failure.
            let s = resume(dir.path()).err().unwrap().to_string();
            assert!(s.contains("newer"), "{s}");
        }
    }
    // Another model's (LoRA) checkpoint: refused, naming the state file.
    let lora_dir = TempDir::new("ck-lora");
    let mut cfg = config();
    cfg.lora = Some(LoraConfig::default());
    let mut l = Trainer::new(cfg, tiny(), low_words()).unwrap();
    run(&mut l, 1);
    l.save_checkpoint(lora_dir.path(), serde_json::Value::Null)
        .unwrap();
    assert_names(resume_forced(lora_dir.path()), state);
}

fn resume_forced(dir: &Path) -> GrpoError {
    Trainer::resume(config(), tiny(), low_words(), dir, true)
        .err()
        .expect("a foreign checkpoint must not resume")
}

#[test]
fn a_full_disk_during_a_save_keeps_the_previous_checkpoint() {
    let root = TempDir::new("full-disk");
    let mut t = Trainer::new(config(), tiny(), low_words()).unwrap();
    run(&mut t, 1);
    let ckpt = checkpoint_dir(root.path(), 1);
    t.save_checkpoint(&ckpt, serde_json::Value::Null).unwrap();
    let before: Vec<(String, Vec<u8>)> = [
        "trainable.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ]
    .iter()
    .map(|f| (f.to_string(), std::fs::read(ckpt.join(f)).unwrap()))
    .collect();
    run(&mut t, 1);
    // Overwrite the same checkpoint while the disk is "full": the save writes its files into
    // `<name>.tmp-<pid>/`, the state file last through its own temporary name; a symlink there
    // to /dev/full makes the kernel answer ENOSPC after both tensor files were written.
    let tmp = root
        .path()
        .join(format!("checkpoint-00000001.tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::os::unix::fs::symlink(
        "/dev/full",
        tmp.join(format!("trainer_state.json.tmp-{}", std::process::id())),
    )
    .unwrap();
    let e = t
        .save_checkpoint(&ckpt, serde_json::Value::Null)
        .unwrap_err();
    eprintln!("full disk: {e}");
    assert!(e.to_string().contains("trainer_state.json"), "{e}");
    for (f, bytes) in &before {
        assert!(
            &std::fs::read(ckpt.join(f)).unwrap() == bytes,
            "{f} changed"
        );
    }
    assert!(!tmp.exists(), "the temporary directory is cleaned up");
    assert_eq!(list(root.path()).unwrap(), vec![ckpt]);
}

#[test]
fn a_skipped_non_finite_step_is_reported_and_the_next_checkpoint_holds_the_pre_nan_weights() {
    // A reward that, once poisoned, gives ±1e300 with unscaled advantages: an infinite loss.
    let poison = Arc::new(AtomicBool::new(false));
    let flag = poison.clone();
    let rewards = low_words().with(
        reward_fn("poison", move |x: &RewardInput<'_>| {
            let on = flag.load(Ordering::SeqCst);
            Some(match (on, x.sample_index % 2) {
                (false, _) => 0.0,
                (true, 0) => 1e300,
                (true, _) => -1e300,
            })
        }),
        1.0,
    );
    let mut cfg = config();
    cfg.scale_rewards = rlzero::grpo::advantages::ScaleRewards::None;
    let root = TempDir::new("nan-ckpt");
    let policy = CheckpointPolicy {
        root: root.path().to_path_buf(),
        save_every: 1,
        keep_last: 0,
    };
    let mut t = Trainer::new(cfg.clone(), tiny(), rewards).unwrap();
    let mut ps = prompts();
    assert!(!t.step(&mut ps).unwrap().metrics.skipped);
    policy.maybe_save(&t, serde_json::Value::Null).unwrap();
    let pre_nan = weights(&t);
    poison.store(true, Ordering::SeqCst);
    let r = t.step(&mut ps).unwrap();
    assert!(r.metrics.skipped && r.metrics.to_json()["skipped"] == true);
    assert!(r
        .metrics
        .skip_reason
        .as_deref()
        .unwrap()
        .contains("non-finite"));
    poison.store(false, Ordering::SeqCst);
    assert!(!t.step(&mut ps).unwrap().metrics.skipped);
    // The step after the skipped one is step 2: its checkpoint starts from the pre-NaN weights
    // plus one clean update, never from a NaN-touched state.
    let saved = policy
        .maybe_save(&t, serde_json::Value::Null)
        .unwrap()
        .unwrap();
    let (back, _) = Trainer::resume(
        cfg,
        tiny(),
        low_words().with(reward_fn("poison", |_: &RewardInput<'_>| Some(0.0)), 1.0),
        &checkpoint_dir(root.path(), 1),
        false,
    )
    .unwrap();
    assert!(
        weights(&back) == pre_nan,
        "checkpoint 1 holds the pre-NaN weights"
    );
    assert!(weights(&t)
        .iter()
        .all(|(_, w)| w.iter().all(|b| f32::from_bits(*b).is_finite())));
    assert_eq!(list(root.path()).unwrap().len(), 2, "{}", saved.display());
}

#[test]
fn keep_last_prunes_old_checkpoints_and_latest_ignores_unfinished_ones() {
    let root = TempDir::new("keep-last");
    let policy = CheckpointPolicy {
        root: root.path().to_path_buf(),
        save_every: 2,
        keep_last: 2,
    };
    let mut t = Trainer::new(config(), tiny(), low_words()).unwrap();
    let mut ps = prompts();
    for _ in 0..7 {
        t.step(&mut ps).unwrap();
        policy.maybe_save(&t, serde_json::Value::Null).unwrap();
    }
    let names: Vec<String> = list(root.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["checkpoint-00000004", "checkpoint-00000006"]);
    // The best-by-metric checkpoint is replaced only by a better value, and is not pruned.
    assert!(policy.save_if_best(&t, 0.5, true).unwrap());
    assert!(!policy.save_if_best(&t, 0.4, true).unwrap());
    assert!(!policy.save_if_best(&t, f64::NAN, true).unwrap());
    t.step(&mut ps).unwrap();
    assert!(policy.save_if_best(&t, 0.6, true).unwrap());
    let (b, info) = Trainer::resume(
        config(),
        tiny(),
        low_words(),
        &root.path().join("best"),
        false,
    )
    .unwrap();
    assert_eq!(
        (b.step_count(), info.user["best_metric"].as_f64()),
        (8, Some(0.6))
    );
    // A replace interrupted between its two renames leaves `<name>.old-<pid>`: it still counts,
    // read in place of the missing checkpoint.
    let six = checkpoint_dir(root.path(), 6);
    std::fs::rename(&six, root.path().join("checkpoint-00000006.old-4242")).unwrap();
    assert_eq!(list(root.path()).unwrap().len(), 2);
    // A save interrupted before its rename leaves only a temporary directory.
    std::fs::create_dir_all(root.path().join("checkpoint-00000008.tmp-1")).unwrap();
    assert_eq!(
        latest(root.path()).unwrap(),
        Some(root.path().join("checkpoint-00000006.old-4242"))
    );
}
