//! Hub loading against a local HTTP server that speaks the Hub's file protocol, and offline
//! loading from a cache laid out as Python's `huggingface_hub` lays it out.

mod common;

use std::collections::HashMap;

use common::hub_server::{serve, COMMIT};
use common::tmpdir::TempDir;
use common::{fixtures, max_abs_diff, reference};
use rlzero::model::{
    load, HubOptions, LoadOptions, LogitsToKeep, ModelError, ModelSource, WeightMode,
};

const REPO: &str = "rlzero-test/tiny-qwen3";

fn fixture_files() -> HashMap<String, Vec<u8>> {
    [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .iter()
    .map(|f| {
        (
            f.to_string(),
            std::fs::read(fixtures().join("tiny-qwen3").join(f)).unwrap(),
        )
    })
    .collect()
}

fn opts(endpoint: &str, cache: &std::path::Path, offline: bool) -> LoadOptions {
    LoadOptions {
        mode: WeightMode::Frozen,
        hub: HubOptions {
            endpoint: endpoint.into(),
            cache_dir: cache.to_path_buf(),
            token: None,
            offline,
        },
        ..LoadOptions::default()
    }
}

fn check_logits(m: &rlzero::model::LoadedModel) {
    let r = reference("tiny-qwen3");
    let got = m
        .decoder
        .forward(&r["input_ids"], &r["attention_mask"], LogitsToKeep::All)
        .unwrap();
    assert!(max_abs_diff(&got.get(0).unwrap(), &r["logits_batch"].get(0).unwrap()) < 1e-4);
}

#[test]
fn downloads_into_a_python_compatible_cache_then_loads_offline() {
    let cache = TempDir::new("hub-cache");
    let server = serve(REPO, fixture_files(), 64);
    let src = ModelSource::parse(REPO);
    let m = load(&src, &opts(&server.endpoint, cache.path(), false)).unwrap();
    check_logits(&m);

    // huggingface_hub's layout: refs/main holds the commit, snapshots/<commit>/<file> the files.
    let repo_dir = cache.path().join("models--rlzero-test--tiny-qwen3");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    assert!(repo_dir
        .join("snapshots")
        .join(COMMIT)
        .join("model.safetensors")
        .exists());
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|p| p.ends_with("/resolve/main/model.safetensors")),
        "{log:?}"
    );
    // Optional files the repo lacks were asked for and answered 404, not treated as fatal.
    assert!(log.iter().any(|p| p.ends_with("chat_template.jinja")));

    // Offline, with an unreachable endpoint: everything comes from the cache.
    let m = load(&src, &opts("http://127.0.0.1:9", cache.path(), true)).unwrap();
    check_logits(&m);
}

#[test]
fn offline_reads_a_prefilled_cache_and_names_what_is_missing() {
    // Lay the cache out by hand, as Python would have left it (blobs + snapshot links + ref).
    let cache = TempDir::new("hub-prefilled");
    let repo_dir = cache.path().join("models--rlzero-test--tiny-qwen3");
    let snap = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    for (i, (name, bytes)) in fixture_files().into_iter().enumerate() {
        let blob = repo_dir.join("blobs").join(format!("blob{i}"));
        std::fs::write(&blob, bytes).unwrap();
        std::os::unix::fs::symlink(&blob, snap.join(&name)).unwrap();
    }
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    let m = load(
        &ModelSource::parse(REPO),
        &opts("http://127.0.0.1:9", cache.path(), true),
    )
    .unwrap();
    check_logits(&m);
    // A pinned commit resolves through snapshots/<commit> directly.
    let pinned = ModelSource::parse(&format!("{REPO}@{COMMIT}"));
    check_logits(&load(&pinned, &opts("http://127.0.0.1:9", cache.path(), true)).unwrap());

    // Not cached, offline: a Hub error naming the repo and the file.
    let empty = TempDir::new("hub-empty");
    let e = load(
        &ModelSource::parse(REPO),
        &opts("http://127.0.0.1:9", empty.path(), true),
    )
    .err()
    .unwrap();
    assert!(matches!(e, ModelError::Hub { .. }), "{e:?}");
    let s = e.to_string();
    assert!(s.contains(REPO) && s.contains("HF_HUB_OFFLINE"), "{s}");
}

#[test]
fn a_repo_without_weights_is_a_typed_error() {
    let cache = TempDir::new("hub-noweights");
    let mut files = fixture_files();
    files.remove("model.safetensors");
    let server = serve(REPO, files, 64);
    let e = load(
        &ModelSource::parse(REPO),
        &opts(&server.endpoint, cache.path(), false),
    )
    .err()
    .unwrap();
    let s = e.to_string();
    assert!(
        matches!(e, ModelError::Hub { .. }) && s.contains("model.safetensors"),
        "{s}"
    );
}
