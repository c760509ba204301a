//! One hand-written case for each class of panic, abort or silent misread that the fuzzing
//! campaign of issue 11 found, each asserting a typed error whose message names the file.

use super::*;
use rlzero::model::DecoderConfig;

fn frozen() -> LoadOptions {
    LoadOptions {
        mode: WeightMode::Frozen,
        ..LoadOptions::default()
    }
}

/// The error `r` must be, with `needles` and the file's path in its message.
#[track_caller]
fn typed_err<T>(r: Result<T, ModelError>, file: &Path, needles: &[&str]) -> ModelError {
    let Err(e) = r else {
        panic!("expected an error naming {}", file.display())
    };
    let s = e.to_string();
    assert!(
        s.contains(&file.display().to_string()),
        "does not name the file: {s}"
    );
    for n in needles {
        assert!(s.contains(n), "`{n}` missing from: {s}");
    }
    e
}

/// A tiny GGUF fixture, its path, bytes and field offsets.
fn gguf(loader: Loader) -> (Fixture, PathBuf, Vec<u8>, GgufFields) {
    let fx = fixture(loader);
    let path = fx.dir.path().join("model.gguf");
    let bytes = fx.files[0].1.clone();
    let fields = fx.gguf.clone().expect("a GGUF fixture");
    (fx, path, bytes, fields)
}

/// Writes `bytes` with `value` (little-endian) at the offset of field `what`.
fn patched(path: &Path, bytes: &[u8], f: &GgufFields, edits: &[(&str, &[u8])]) {
    let mut b = bytes.to_vec();
    for (what, v) in edits {
        let at = f.at(what);
        b[at..at + v.len()].copy_from_slice(v);
    }
    std::fs::write(path, b).unwrap();
}

fn decoder(path: &Path) -> Result<Decoder, ModelError> {
    load_gguf_decoder(path, &frozen())
}

/// A minimal GGUF v3 file: u32/string metadata and raw tensor records (dims in ggml order).
fn raw_gguf(path: &Path, meta: &[(&str, u32)], arch: &str, tensors: &[(&str, &[u64], &[u8])]) {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64 + 1).to_le_bytes());
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    string(&mut b, arch);
    for (k, v) in meta {
        string(&mut b, k);
        b.extend(4u32.to_le_bytes());
        b.extend(v.to_le_bytes());
    }
    let mut offset = 0u64;
    for (name, dims, data) in tensors {
        string(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    for (_, _, data) in tensors {
        b.extend(*data);
        b.resize(b.len().div_ceil(32) * 32, 0);
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn gguf_token_embd_without_dimensions_is_a_typed_error() {
    let dir = TempDir::new("reg-embd");
    let meta = [
        ("llama.embedding_length", 64),
        ("llama.feed_forward_length", 128),
        ("llama.block_count", 1),
        ("llama.attention.head_count", 4),
    ];
    // Rank 0 (was: index out of bounds in the config reader).
    let p = dir.path().join("rank0.gguf");
    raw_gguf(&p, &meta, "llama", &[("token_embd.weight", &[], &[0; 4])]);
    typed_err(decoder(&p), &p, &["token_embd.weight", "shape []"]);
    // A zero-sized dimension, written so and patched into the tiny model.
    let p = dir.path().join("zero.gguf");
    raw_gguf(&p, &meta, "llama", &[("token_embd.weight", &[64, 0], &[])]);
    typed_err(decoder(&p), &p, &["token_embd.weight", "is zero"]);
    let (_fx, p, b, f) = gguf(Loader::GgufLlama);
    patched(
        &p,
        &b,
        &f,
        &[("`token_embd.weight` dim 1", &0u64.to_le_bytes())],
    );
    typed_err(decoder(&p), &p, &["token_embd.weight", "is zero"]);
}

#[test]
fn huge_head_dim_is_rejected_before_anything_is_sized_by_it() {
    for d in [1u64 << 63, (1 << 62) + 16, u32::MAX as u64 + 1] {
        let (_fx, p, b, f) = gguf(Loader::GgufLlama);
        patched(
            &p,
            &b,
            &f,
            &[("llama.attention.key_length", &d.to_le_bytes())],
        );
        let e = typed_err(decoder(&p), &p, &["llama.attention.key_length"]);
        assert!(matches!(e, ModelError::InvalidField { .. }), "{e:?}");
    }
    let fx = fixture(Loader::HfQwen3);
    let cfg = fx.dir.path().join("config.json");
    for d in [1u64 << 62, (1 << 63) + 2, 1 << 20] {
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
        json["head_dim"] = d.into();
        std::fs::write(&cfg, json.to_string()).unwrap();
        typed_err(
            DecoderConfig::from_file(&cfg),
            &cfg,
            &["head_dim", "exceeds"],
        );
        typed_err(fx.load(), &cfg, &["head_dim"]);
    }
}

#[test]
fn overflowing_tensor_dims_are_typed_errors() {
    let big: [[u64; 2]; 3] = [[1 << 32, 1 << 32], [64, (1 << 58) + 64], [u64::MAX, 2]];
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "output.weight"] {
        for [d0, d1] in big {
            let (_fx, p, b, f) = gguf(Loader::GgufLlama);
            let (k0, k1) = (format!("`{name}` dim 0"), format!("`{name}` dim 1"));
            patched(
                &p,
                &b,
                &f,
                &[(&k0, &d0.to_le_bytes()), (&k1, &d1.to_le_bytes())],
            );
            let e = typed_err(decoder(&p), &p, &[name]);
            assert!(matches!(e, ModelError::Gguf { .. }), "{e:?}");
        }
    }
}

#[test]
fn gguf_alignment_must_be_a_power_of_two_matching_the_layout() {
    let (_fx, p, b, f) = gguf(Loader::GgufLlama);
    // Alignment 1 only shifts the data if the header does not end on a 32-byte boundary.
    assert_ne!(
        f.header_end % 32,
        0,
        "the fixture must have an unaligned header end"
    );
    for a in [0u32, 3, 33, u32::MAX] {
        patched(&p, &b, &f, &[("general.alignment", &a.to_le_bytes())]);
        let e = typed_err(decoder(&p), &p, &["general.alignment", "power of two"]);
        assert!(matches!(e, ModelError::InvalidField { .. }), "{e:?}");
    }
    // Powers of two that do not match how the file was laid out: before, 1 read every tensor
    // from a shifted offset without an error. (2 shifts the data unless the header ends at 31
    // mod 32; 2^20 puts it past the end of the file.)
    assert_ne!(f.header_end % 32, 31);
    for a in [1u32, 2, 1 << 20] {
        patched(&p, &b, &f, &[("general.alignment", &a.to_le_bytes())]);
        let e = typed_err(decoder(&p), &p, &[]);
        assert!(matches!(e, ModelError::Gguf { .. }), "alignment {a}: {e:?}");
    }
    patched(&p, &b, &f, &[("general.alignment", &32u32.to_le_bytes())]);
    decoder(&p).unwrap();
}

#[test]
fn malformed_decoder_json_in_tokenizer_json_is_a_typed_error() {
    let fx = fixture(Loader::HfLlama);
    let tok = fx.dir.path().join("tokenizer.json");
    let text = String::from_utf8(std::fs::read(&tok).unwrap()).unwrap();
    assert!(text.contains("\"decoder\": null"));
    for bad in [
        r#"{"type": "ByteLevel", "add_prefix_space": tru}"#,
        r#"{"type": "ByteLevel","#,
        r#"{"type": 5}"#,
        r#"{"type": "Sequence", "decoders": [{"type": "Replace"}]}"#,
        r#"[1, 2"#,
    ] {
        std::fs::write(
            &tok,
            text.replace("\"decoder\": null", &format!("\"decoder\": {bad}")),
        )
        .unwrap();
        let e = typed_err(fx.load(), &tok, &[]);
        assert!(
            matches!(e, ModelError::Json { .. } | ModelError::Tokenizer { .. }),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn bad_precompiled_charsmaps_are_typed_errors() {
    let fx = fixture(Loader::HfLlama);
    let tok = fx.dir.path().join("tokenizer.json");
    let text = String::from_utf8(std::fs::read(&tok).unwrap()).unwrap();
    let with = |map: &str| {
        let n =
            format!(r#""normalizer": {{"type": "Precompiled", "precompiled_charsmap": "{map}"}}"#);
        std::fs::write(&tok, text.replace("\"normalizer\": null", &n)).unwrap();
    };
    // Empty, not base64, a 4 GiB trie header (was an 8 GiB reservation), a trie longer than the
    // data, strings that are not UTF-8.
    for map in ["", "!!!!", "/////w==", "CAAAAAEAAAA=", "BAAAAAAAAAD/"] {
        with(map);
        let e = typed_err(fx.load(), &tok, &["precompiled_charsmap"]);
        assert!(matches!(e, ModelError::Tokenizer { .. }), "{map}: {e:?}");
    }
    // A well-formed map whose one-entry trie points outside itself loads, and encoding (where
    // `spm_precompiled` indexes the trie unchecked) is a typed error instead of a panic.
    with("BAAAAP///wBhAA==");
    let m = fx.load().unwrap();
    let Loaded::Model(m) = m else { unreachable!() };
    let e = typed_err(m.tokenizer.encode("w7 w8", false), &tok, &["panicked"]);
    assert!(matches!(e, ModelError::Tokenizer { .. }), "{e:?}");
}

#[test]
fn token_ids_beyond_u32_or_the_vocabulary_are_typed_errors() {
    let fx = fixture(Loader::HfLlama);
    let edit = |file: &str, key: &str, v: serde_json::Value| {
        let p = fx.dir.path().join(file);
        let orig = std::fs::read(&p).unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&orig).unwrap();
        json[key] = v;
        std::fs::write(&p, json.to_string()).unwrap();
        let e = typed_err(fx.load(), &p, &[key]);
        assert!(matches!(e, ModelError::InvalidField { .. }), "{e:?}");
        std::fs::write(&p, orig).unwrap();
    };
    // 2^63 + 125 used to become 125 through `as u32`.
    edit(
        "config.json",
        "eos_token_id",
        serde_json::json!((1u64 << 63) + 125),
    );
    edit(
        "config.json",
        "bos_token_id",
        serde_json::json!([1, 1u64 << 32]),
    );
    edit("config.json", "eos_token_id", serde_json::json!(128)); // vocab_size is 128
    edit(
        "generation_config.json",
        "eos_token_id",
        serde_json::json!([2, 4294967298u64]),
    );
    edit(
        "generation_config.json",
        "pad_token_id",
        serde_json::json!(500),
    );

    let (_fx, p, b, f) = gguf(Loader::GgufLlama);
    let source = ModelSource::Gguf(p.clone());
    for id in [(1u64 << 63) + 125, 1 << 32, 128] {
        patched(
            &p,
            &b,
            &f,
            &[("tokenizer.ggml.eos_token_id", &id.to_le_bytes())],
        );
        let e = typed_err(
            load(&source, &frozen()),
            &p,
            &["tokenizer.ggml.eos_token_id"],
        );
        assert!(matches!(e, ModelError::InvalidField { .. }), "{e:?}");
    }
}

#[test]
fn non_finite_or_non_positive_eps_is_a_typed_error() {
    let (_fx, p, b, f) = gguf(Loader::GgufLlama);
    for eps in [f32::INFINITY, f32::NAN, 0.0, -1e-5] {
        let key = "llama.attention.layer_norm_rms_epsilon";
        patched(&p, &b, &f, &[(key, &eps.to_le_bytes())]);
        let e = typed_err(decoder(&p), &p, &[key]);
        assert!(matches!(e, ModelError::InvalidField { .. }), "{eps}: {e:?}");
    }
    let fx = fixture(Loader::HfLlama);
    let cfg = fx.dir.path().join("config.json");
    let text = String::from_utf8(std::fs::read(&cfg).unwrap()).unwrap();
    for (eps, json_error) in [("1e999", true), ("0", false), ("-1e-5", false)] {
        std::fs::write(&cfg, text.replace("1e-05", eps)).unwrap();
        let e = typed_err(fx.load(), &cfg, &[]);
        match json_error {
            true => assert!(matches!(e, ModelError::Json { .. }), "{e:?}"),
            false => assert!(e.to_string().contains("rms_norm_eps"), "{e}"),
        }
    }
}

#[test]
fn changed_ggml_types_and_shapes_are_typed_errors() {
    // F32 <-> F16 <-> BF16 on a tensor in the middle and on the last one: the data would be
    // reinterpreted; the layout check sees the size no longer lines up.
    // (The llama file ends with `rope_freqs.weight`, 32 bytes in F32: as F16 it pads to the
    // same length, and only its non-zero "padding" gives it away.)
    for loader in [Loader::GgufLlama, Loader::GgufQwen3F16] {
        let (_fx, p, b, f) = gguf(loader);
        let q = f.tensors.iter().find(|t| t.contains("attn_q.w")).unwrap();
        for name in [q, f.tensors.last().unwrap()] {
            let key = format!("`{name}` ggml type");
            let at = f.at(&key);
            let ty = match u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) {
                0 => 1u32,
                1 => 0,
                other => panic!("{name} has type {other}"),
            };
            patched(&p, &b, &f, &[(&key, &ty.to_le_bytes())]);
            let e = typed_err(decoder(&p), &p, &[name]);
            assert!(
                matches!(e, ModelError::Gguf { .. }),
                "{name} -> {ty}: {e:?}"
            );
        }
    }
    // Same byte size, wrong shape for the role: `ffn_up` (128, 64) stored as (64, 128).
    let (_fx, p, b, f) = gguf(Loader::GgufLlama);
    let (k0, k1) = ("`blk.0.ffn_up.weight` dim 0", "`blk.0.ffn_up.weight` dim 1");
    patched(
        &p,
        &b,
        &f,
        &[(k0, &128u64.to_le_bytes()), (k1, &64u64.to_le_bytes())],
    );
    let e = typed_err(decoder(&p), &p, &["blk.0.ffn_up.weight"]);
    assert!(matches!(e, ModelError::ShapeMismatch { .. }), "{e:?}");
}
