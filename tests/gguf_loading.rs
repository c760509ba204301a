//! GGUF loading: llama.cpp names and Q/K row order, config from metadata, every quant type
//! candle reads, and typed errors for broken files. The GGUFs are written here from the tiny
//! fixtures exactly as llama.cpp's converter would lay them out.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use common::mutate::gguf::gguf_name;
use common::{max_abs_diff, reference, tiny_decoder};
use rlzero::model::gguf::{permute_rows, GgufFile};
use rlzero::model::{
    load_gguf_decoder, Architecture, DecoderConfig, LoadOptions, LogitsToKeep, ModelError,
    WeightMode,
};

/// llama.cpp's `rope_freqs` for llama3 scaling: the divisor of each base frequency.
fn llama3_rope_freqs(
    head_dim: usize,
    theta: f64,
    factor: f64,
    low: f64,
    high: f64,
    old: f64,
) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor as f32
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

/// Writes `cfg` + HF-named f32 `tensors` as a GGUF, 2-D weights stored as `dtype`.
fn write_gguf(
    path: &Path,
    cfg: &DecoderConfig,
    tensors: &[(String, Tensor)],
    dtype: GgmlDType,
    extra: Vec<(String, Tensor)>,
) {
    let arch = match cfg.architecture {
        Architecture::Llama => "llama",
        Architecture::Qwen2 => "qwen2",
        Architecture::Qwen3 => "qwen3",
    };
    let mut q: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in tensors {
        let t = t.to_dtype(DType::F32).unwrap();
        let t = match (cfg.architecture, name.as_str()) {
            (Architecture::Llama, n) if n.ends_with("q_proj.weight") => {
                permute_rows(&t, cfg.num_attention_heads).unwrap()
            }
            (Architecture::Llama, n) if n.ends_with("k_proj.weight") => {
                permute_rows(&t, cfg.num_key_value_heads).unwrap()
            }
            _ => t,
        };
        let ty = if t.rank() == 2 { dtype } else { GgmlDType::F32 };
        q.push((gguf_name(name), QTensor::quantize(&t, ty).unwrap()));
    }
    for (name, t) in extra {
        q.push((name, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let u = |x: usize| Value::U32(x as u32);
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (format!("{arch}.embedding_length"), u(cfg.hidden_size)),
        (
            format!("{arch}.feed_forward_length"),
            u(cfg.intermediate_size),
        ),
        (format!("{arch}.block_count"), u(cfg.num_hidden_layers)),
        (
            format!("{arch}.attention.head_count"),
            u(cfg.num_attention_heads),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            u(cfg.num_key_value_heads),
        ),
        (format!("{arch}.attention.key_length"), u(cfg.head_dim)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{arch}.context_length"),
            u(cfg.max_position_embeddings),
        ),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &q_refs).unwrap();
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rlzero-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn frozen() -> LoadOptions {
    LoadOptions {
        mode: WeightMode::Frozen,
        ..LoadOptions::default()
    }
}

#[test]
fn f32_gguf_matches_the_safetensors_model_for_every_architecture() {
    for name in common::TINY {
        let st = tiny_decoder(name, DType::F32, WeightMode::Frozen);
        let cfg = st.config().clone();
        let mut extra = vec![];
        if let rlzero::model::RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } = cfg.rope_scaling
        {
            let f = llama3_rope_freqs(
                cfg.head_dim,
                cfg.rope_theta,
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            );
            extra.push((
                "rope_freqs.weight".to_string(),
                Tensor::new(f.as_slice(), &Device::Cpu).unwrap(),
            ));
        }
        let path = tmp(&format!("{name}.gguf"));
        write_gguf(&path, &cfg, st.named_parameters(), GgmlDType::F32, extra);
        let g = load_gguf_decoder(&path, &frozen()).unwrap();
        assert_eq!(g.config().architecture, cfg.architecture);
        assert_eq!(
            g.config().tie_word_embeddings,
            cfg.tie_word_embeddings,
            "{name}"
        );
        assert_eq!(g.config().attention_bias, cfg.attention_bias, "{name}");
        let r = reference(name);
        let a = st
            .forward(&r["input_ids"], &r["attention_mask"], LogitsToKeep::All)
            .unwrap();
        let b = g
            .forward(&r["input_ids"], &r["attention_mask"], LogitsToKeep::All)
            .unwrap();
        let err = max_abs_diff(&a, &b);
        assert!(
            err < 1e-5,
            "{name}: GGUF vs safetensors logits differ by {err}"
        );
    }
}

#[test]
fn every_quant_type_dequantizes_into_trainable_f32_weights() {
    // K-quants need rows of 256: a one-layer llama of width 256.
    let cfg = DecoderConfig::from_json(
        &serde_json::json!({"model_type": "llama", "vocab_size": 256, "hidden_size": 256,
            "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5}),
        Path::new("synthetic"),
    )
    .unwrap();
    let dev = Device::Cpu;
    let d = cfg.head_dim;
    let mut tensors = vec![];
    let mut shapes: Vec<(&str, Vec<usize>)> = vec![
        ("model.embed_tokens.weight", vec![256, 256]),
        ("model.norm.weight", vec![256]),
        ("lm_head.weight", vec![256, 256]),
    ];
    for (n, s) in [
        ("input_layernorm.weight", vec![256]),
        ("post_attention_layernorm.weight", vec![256]),
        ("self_attn.q_proj.weight", vec![4 * d, 256]),
        ("self_attn.k_proj.weight", vec![2 * d, 256]),
        ("self_attn.v_proj.weight", vec![2 * d, 256]),
        ("self_attn.o_proj.weight", vec![256, 4 * d]),
        ("mlp.gate_proj.weight", vec![256, 256]),
        ("mlp.up_proj.weight", vec![256, 256]),
        ("mlp.down_proj.weight", vec![256, 256]),
    ] {
        shapes.push((Box::leak(format!("model.layers.0.{n}").into_boxed_str()), s));
    }
    for (n, s) in &shapes {
        tensors.push((
            n.to_string(),
            Tensor::randn(0f32, 1.0, s.as_slice(), &dev).unwrap(),
        ));
    }
    let orig: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    // Relative RMS error each type may show on N(0,1) data (2-bit is coarse by design).
    let types = [
        (GgmlDType::F32, 1e-7),
        (GgmlDType::F16, 1e-3),
        (GgmlDType::BF16, 1e-2),
        (GgmlDType::Q8_0, 0.01),
        (GgmlDType::Q5_0, 0.06),
        (GgmlDType::Q5_1, 0.06),
        (GgmlDType::Q4_0, 0.12),
        (GgmlDType::Q4_1, 0.12),
        (GgmlDType::Q6K, 0.03),
        (GgmlDType::Q5K, 0.06),
        (GgmlDType::Q4K, 0.12),
        (GgmlDType::Q3K, 0.25),
        (GgmlDType::Q2K, 0.45),
    ];
    for (ty, tol) in types {
        let path = tmp(&format!("quant-{ty:?}.gguf"));
        write_gguf(&path, &cfg, &tensors, ty, vec![]);
        let file = GgufFile::open(&path).unwrap();
        let (loaded, _) = file.tensors(&file.config().unwrap()).unwrap();
        for (n, want) in &orig {
            let got = &loaded[n];
            assert_eq!(got.dtype(), DType::F32);
            let rel = ((got - want)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                / want
                    .sqr()
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap())
            .sqrt();
            assert!(rel < tol as f32, "{ty:?} {n}: relative error {rel} > {tol}");
        }
        // ... and the whole thing loads as a trainable decoder.
        let m = load_gguf_decoder(&path, &LoadOptions::default()).unwrap();
        assert_eq!(m.vars().unwrap().len(), 12, "{ty:?}");
    }
}

#[test]
fn broken_gguf_files_are_typed_errors_naming_the_file() {
    let st = tiny_decoder("tiny-qwen2", DType::F32, WeightMode::Frozen);
    let good = tmp("good.gguf");
    write_gguf(
        &good,
        st.config(),
        st.named_parameters(),
        GgmlDType::Q8_0,
        vec![],
    );
    let bytes = std::fs::read(&good).unwrap();

    // Truncated: header intact, tensor data cut short.
    let trunc = tmp("truncated.gguf");
    std::fs::write(&trunc, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_gguf_decoder(&trunc, &frozen()).err().unwrap();
    assert!(matches!(e, ModelError::Gguf { .. }), "{e:?}");
    assert!(
        e.to_string().contains("truncated.gguf") && e.to_string().contains("tensor `"),
        "{e}"
    );

    // Not a GGUF at all.
    let junk = tmp("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file, just text").unwrap();
    let e = load_gguf_decoder(&junk, &frozen()).err().unwrap();
    assert!(
        matches!(e, ModelError::Gguf { .. }) && e.to_string().contains("junk.gguf"),
        "{e}"
    );

    // Missing file.
    let e = load_gguf_decoder(&tmp("absent.gguf"), &frozen())
        .err()
        .unwrap();
    assert!(
        matches!(e, ModelError::Io { .. }) && e.to_string().contains("absent.gguf"),
        "{e}"
    );

    // An unsupported quant type id (IQ2_XXS = 16): patch the first tensor's dtype field.
    let mut patched = bytes.clone();
    let first = st
        .named_parameters()
        .iter()
        .map(|(n, _)| gguf_name(n))
        .next()
        .unwrap();
    let pos = bytes
        .windows(first.len())
        .position(|w| w == first.as_bytes())
        .unwrap()
        + first.len();
    let n_dims = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
    let dtype_at = pos + 4 + 8 * n_dims;
    patched[dtype_at..dtype_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let unsup = tmp("unsupported-quant.gguf");
    std::fs::write(&unsup, &patched).unwrap();
    let e = load_gguf_decoder(&unsup, &frozen()).err().unwrap();
    let s = e.to_string();
    assert!(
        s.contains("unsupported-quant.gguf")
            && s.contains(&format!("`{first}`"))
            && s.contains("type 16"),
        "{s}"
    );

    // An architecture the decoder does not implement.
    let other = tmp("gemma.gguf");
    let meta = Value::String("gemma".into());
    let mut f = std::fs::File::create(&other).unwrap();
    gguf_file::write(&mut f, &[("general.architecture", &meta)], &[]).unwrap();
    let e = load_gguf_decoder(&other, &frozen()).err().unwrap();
    assert!(
        matches!(e, ModelError::UnsupportedArchitecture { .. }) && e.to_string().contains("gemma"),
        "{e}"
    );
}
