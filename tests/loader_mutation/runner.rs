//! The machinery of `loader_mutation.rs`: the tracking allocator, the child that runs cases,
//! and the parent that re-executes the test binary, watches it and collects failures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::{exercise, fixture, Loader};
use rlzero::model::ModelError;

// ---------------------------------------------------------------- allocation tracking

struct Tracking;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Requests above this are refused (null: the child aborts and the parent reports the seed).
const HARD_CAP: usize = 4 << 30;

impl Tracking {
    fn grew(size: usize) {
        let live = LIVE.fetch_add(size, Relaxed) + size;
        PEAK.fetch_max(live, Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged, or refused with null (allowed by the
// `GlobalAlloc` contract); the counters are plain atomics and never allocate or panic.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Relaxed);
        if l.size() > HARD_CAP {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            Self::grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Relaxed);
        if l.size() > HARD_CAP {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            Self::grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Relaxed);
        if new > HARD_CAP {
            return std::ptr::null_mut();
        }
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Relaxed);
            Self::grew(new);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

const MIB: usize = 1 << 20;
fn single_bound(files: usize) -> usize {
    16 * files + 16 * MIB
}
fn peak_bound(files: usize) -> usize {
    32 * files + 64 * MIB
}

// ---------------------------------------------------------------- the child

pub(super) const CHILD_ENV: &str = "RLZERO_MUTATION_CHILD";
static PANIC_MSG: Mutex<String> = Mutex::new(String::new());
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Runs the cases named by `spec` (`<loader>|<seed>,<seed>,…`), one protocol line per event.
pub(super) fn child(spec: &str) {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Relaxed);
        if let Ok(mut m) = PANIC_MSG.lock() {
            *m = info.to_string();
        }
    }));
    let (loader, seeds) = spec.split_once('|').expect("child spec");
    let loader = Loader::parse(loader).expect("loader name");
    let seeds: Vec<u64> = seeds.split(',').map(|s| s.parse().expect("seed")).collect();
    let fx = fixture(loader);
    let dir = fx.dir.path().display().to_string();
    for (i, &seed) in seeds.iter().enumerate() {
        let (file, bytes, what) = fx.mutation(seed);
        let path = fx.dir.path().join(&fx.files[file].0);
        std::fs::write(&path, &bytes).unwrap();
        let total: usize = fx.files.iter().map(|(_, b)| b.len()).sum::<usize>()
            - fx.files[file].1.len()
            + bytes.len();
        println!("@@START {i} {what}");
        let panics = PANICS.load(Relaxed);
        let started = Instant::now();
        LARGEST.store(0, Relaxed);
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        let r = std::panic::catch_unwind(|| {
            let loaded = fx.load().map_err(|e| (true, e))?;
            exercise(&loaded).map_err(|e| (false, e))?;
            Ok::<_, (bool, ModelError)>(())
        });
        let (largest, peak) = (
            LARGEST.load(Relaxed),
            PEAK.load(Relaxed).saturating_sub(base),
        );
        let contained = PANICS.load(Relaxed) - panics;
        std::fs::write(&path, &fx.files[file].1).unwrap();
        let fail = |msg: String| println!("@@FAIL {i} {msg} [mutation: {what}]");
        let outcome = match r {
            Err(_) => {
                let msg = PANIC_MSG.lock().map(|m| m.clone()).unwrap_or_default();
                fail(format!("panicked: {}", msg.replace('\n', " ")));
                "panic"
            }
            Ok(Ok(())) => "ok",
            Ok(Err((in_load, e))) => {
                let s = e.to_string();
                // Errors from loading must say which file (everything lives under `dir`).
                if in_load && !s.contains(&dir) {
                    fail(format!("error does not name the file: {s}"));
                }
                "err"
            }
        };
        if largest > single_bound(total) {
            fail(format!(
                "single allocation of {largest} bytes exceeds 16·{total} + 16 MiB"
            ));
        }
        if peak > peak_bound(total) {
            fail(format!(
                "peak of {peak} live bytes exceeds 32·{total} + 64 MiB"
            ));
        }
        println!(
            "@@DONE {i} {outcome} {} {largest} {peak} {total} {contained}",
            started.elapsed().as_micros()
        );
    }
}

// ---------------------------------------------------------------- the parent

/// Per-case limit: a child silent for this long is hung and killed.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);
const CHUNK: usize = 400;
/// Cases per loader in a default `cargo test` run (7 loaders).
const DEFAULT_CASES: u64 = 1000;

#[derive(Default)]
struct Stats {
    cases: usize,
    ok: usize,
    err: usize,
    contained: usize,
    micros: u128,
    largest: usize,
    worst_single: f64,
    worst_peak: (usize, String),
}

/// Runs `seeds` of `loader` in children of test `test`; returns the failures, each naming the
/// loader, seed and mutation.
pub(super) fn run_seeds(test: &str, loader: Loader, seeds: &[u64]) -> Vec<String> {
    let mut failures = vec![];
    let mut stats = Stats::default();
    let mut next = 0;
    while next < seeds.len() {
        let chunk = &seeds[next..(next + CHUNK).min(seeds.len())];
        let list: Vec<String> = chunk.iter().map(u64::to_string).collect();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}|{}", loader.name(), list.join(",")))
            .env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("re-executing the test binary");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let mut err = child.stderr.take().unwrap();
        let tail = stderr_tail.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap();
                t.extend_from_slice(&buf[..n]);
                let excess = t.len().saturating_sub(2000);
                t.drain(..excess);
            }
        });
        let mut current: Option<(usize, String)> = None;
        let mut current_what = String::new();
        let mut done = 0;
        let mut hung = false;
        loop {
            match rx.recv_timeout(CASE_TIMEOUT) {
                Ok(line) => {
                    let Some(at) = line.find("@@") else { continue };
                    let mut parts = line[at + 2..].splitn(3, ' ');
                    let (kind, i) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let i: usize = i.parse().unwrap_or(0);
                    let rest = parts.next().unwrap_or("").to_string();
                    match kind {
                        "START" => {
                            current_what = rest.clone();
                            current = Some((i, rest));
                        }
                        "FAIL" => {
                            failures.push(format!("{} seed {}: {rest}", loader.name(), chunk[i]))
                        }
                        "DONE" => {
                            current = None;
                            done = i + 1;
                            let f: Vec<u128> =
                                rest.split(' ').filter_map(|x| x.parse().ok()).collect();
                            stats.cases += 1;
                            match rest.split(' ').next() {
                                Some("ok") => stats.ok += 1,
                                Some("err") => stats.err += 1,
                                _ => {}
                            }
                            if let [micros, largest, peak, total, contained] = f[..] {
                                stats.micros += micros;
                                stats.contained += contained as usize;
                                stats.largest = stats.largest.max(largest as usize);
                                stats.worst_single =
                                    stats.worst_single.max(largest as f64 / total as f64);
                                if peak as usize > stats.worst_peak.0 {
                                    let what = current_what.clone();
                                    stats.worst_peak =
                                        (peak as usize, format!("seed {}: {what}", chunk[i]));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    hung = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = child.wait().expect("waiting for the child");
        let tail = String::from_utf8_lossy(&stderr_tail.lock().unwrap()).into_owned();
        match current {
            Some((i, what)) => {
                let how = if hung {
                    format!("hung (no progress in {CASE_TIMEOUT:?})")
                } else {
                    format!("killed the process ({status})")
                };
                failures.push(format!(
                    "{} seed {}: {how} [mutation: {what}]; stderr: {}",
                    loader.name(),
                    chunk[i],
                    tail.trim()
                ));
                next += i + 1;
            }
            None if done < chunk.len() => {
                failures.push(format!(
                    "{}: child exited ({status}) before case {}; stderr: {}",
                    loader.name(),
                    chunk[done],
                    tail.trim()
                ));
                break;
            }
            None => next += chunk.len(),
        }
    }
    eprintln!(
        "{}: {} cases, {} ok, {} typed errors, {} panics contained in the library, {:.1} ms/case; \
         largest single allocation {} KiB (at most {:.2}·F), worst peak {} KiB ({})",
        loader.name(),
        stats.cases,
        stats.ok,
        stats.err,
        stats.contained,
        stats.micros as f64 / 1000.0 / stats.cases.max(1) as f64,
        stats.largest / 1024,
        stats.worst_single,
        stats.worst_peak.0 / 1024,
        stats.worst_peak.1
    );
    failures
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The body of each per-loader test: the child's work when re-executed, else the parent's.
pub(super) fn mutation_test(test: &str, loader: Loader) {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    let first = env_u64("RLZERO_MUTATION_SEED", 0);
    let n = env_u64("RLZERO_MUTATION_CASES", DEFAULT_CASES);
    let seeds: Vec<u64> = (first..first + n).collect();
    let failures = run_seeds(test, loader, &seeds);
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed (add the seeds to tests/fixtures/mutation_regressions.txt):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
