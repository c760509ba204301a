//! Loading HF directories end to end (tokenizer, chat template, generation config, shards,
//! bf16), and a typed error naming the file and the tensor or field for each kind of bad input.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use common::tmpdir::copy_fixture;
use common::{fixtures, max_abs_diff, reference};
use rlzero::model::{
    load, LoadOptions, LoadedModel, LogitsToKeep, Message, ModelError, ModelSource, WeightMode,
};

fn opts() -> LoadOptions {
    LoadOptions {
        mode: WeightMode::Frozen,
        ..LoadOptions::default()
    }
}

fn load_dir(dir: &Path) -> Result<LoadedModel, ModelError> {
    load(&ModelSource::Dir(dir.to_path_buf()), &opts())
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    rlzero::model::safetensors_io::read_safetensors(&dir.join("model.safetensors")).unwrap()
}

fn save(dir: &Path, file: &str, t: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(t, dir.join(file)).unwrap();
}

#[test]
fn a_directory_loads_with_tokenizer_template_and_generation_config() {
    let m = load_dir(&fixtures().join("tiny-llama")).unwrap();
    assert_eq!(m.generation.eos_token_ids, vec![2]);
    let prompt = m
        .tokenizer
        .apply_chat_template(&[Message::user("w7 w8")], true)
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>user\nw7 w8<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(m.tokenizer.encode("w7 w8", false).unwrap(), vec![7, 8]);
    assert_eq!(
        ModelSource::parse(fixtures().join("tiny-llama").to_str().unwrap()),
        ModelSource::Dir(fixtures().join("tiny-llama"))
    );
    assert_eq!(
        ModelSource::parse("HuggingFaceTB/SmolLM2-135M-Instruct@v1"),
        ModelSource::Hub {
            repo_id: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            revision: "v1".into()
        }
    );
}

#[test]
fn sharded_checkpoints_load_like_a_single_file() {
    let d = copy_fixture(&fixtures().join("tiny-qwen2"), "shards");
    let all = weights(d.path());
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (n, t)) in all.into_iter().enumerate() {
        let file = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(n.clone(), file.into());
        if i % 2 == 0 {
            a.insert(n, t)
        } else {
            b.insert(n, t)
        };
    }
    save(d.path(), "model-00001-of-00002.safetensors", &a);
    save(d.path(), "model-00002-of-00002.safetensors", &b);
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": map}).to_string(),
    )
    .unwrap();
    let m = load_dir(d.path()).unwrap();
    let r = reference("tiny-qwen2");
    let got = m
        .decoder
        .forward(&r["input_ids"], &r["attention_mask"], LogitsToKeep::All)
        .unwrap();
    assert!(max_abs_diff(&got.get(0).unwrap(), &r["logits_batch"].get(0).unwrap()) < 1e-4);

    // An index naming a shard that is not there.
    std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_dir(d.path()).err().unwrap();
    assert!(
        e.to_string().contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
}

#[test]
fn bf16_weights_are_converted_to_f32() {
    let d = copy_fixture(&fixtures().join("tiny-qwen3"), "bf16");
    let bf: HashMap<String, Tensor> = weights(d.path())
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::BF16).unwrap()))
        .collect();
    save(d.path(), "model.safetensors", &bf);
    let m = load_dir(d.path()).unwrap();
    assert_eq!(m.decoder.dtype(), DType::F32);
    let r = reference("tiny-qwen3");
    let got = m
        .decoder
        .forward(&r["input_ids"], &r["attention_mask"], LogitsToKeep::All)
        .unwrap();
    let err = max_abs_diff(&got.get(0).unwrap(), &r["logits_batch"].get(0).unwrap());
    assert!(
        err > 0.0 && err < 0.2,
        "bf16-rounded weights should be close, not identical: {err}"
    );
}

/// Applies `edit` to a copy of tiny-llama and returns the load error's text.
fn load_err(edit: impl FnOnce(&Path)) -> (ModelError, String) {
    let d = copy_fixture(&fixtures().join("tiny-llama"), "bad");
    edit(d.path());
    let e = load_dir(d.path()).err().expect("loading must fail");
    let s = e.to_string();
    (e, s)
}

#[test]
fn missing_files_name_the_file() {
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        let (e, s) = load_err(|d| std::fs::remove_file(d.join(f)).unwrap());
        assert!(
            matches!(e, ModelError::Io { .. }) && s.contains(f),
            "{f}: {s}"
        );
    }
}

#[test]
fn truncated_or_corrupt_safetensors_name_the_file() {
    let (e, s) = load_err(|d| {
        let b = std::fs::read(d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("model.safetensors"), &b[..b.len() / 2]).unwrap();
    });
    assert!(
        matches!(e, ModelError::Safetensors { .. }) && s.contains("model.safetensors"),
        "{s}"
    );
    let (e, s) = load_err(|d| {
        std::fs::write(d.join("model.safetensors"), b"\xff\xff\xff\xff garbage").unwrap()
    });
    assert!(
        matches!(e, ModelError::Safetensors { .. }) && s.contains("model.safetensors"),
        "{s}"
    );
}

#[test]
fn wrong_shape_missing_tensor_and_bad_dtype_name_the_tensor() {
    let q = "model.layers.1.self_attn.q_proj.weight";
    let (e, s) = load_err(|d| {
        let mut w = weights(d);
        w.insert(
            q.into(),
            Tensor::zeros((3, 64), DType::F32, &candle_core::Device::Cpu).unwrap(),
        );
        save(d, "model.safetensors", &w);
    });
    assert!(
        matches!(e, ModelError::ShapeMismatch { .. }) && s.contains(q) && s.contains("[3, 64]"),
        "{s}"
    );

    let (e, s) = load_err(|d| {
        let mut w = weights(d);
        w.remove("model.norm.weight");
        save(d, "model.safetensors", &w);
    });
    assert!(
        matches!(e, ModelError::MissingTensor { .. }) && s.contains("model.norm.weight"),
        "{s}"
    );

    let (e, s) = load_err(|d| {
        let mut w = weights(d);
        w.insert(
            "model.norm.weight".into(),
            Tensor::zeros(64, DType::I64, &candle_core::Device::Cpu).unwrap(),
        );
        save(d, "model.safetensors", &w);
    });
    assert!(
        matches!(e, ModelError::UnsupportedDtype { .. }) && s.contains("model.norm.weight"),
        "{s}"
    );
}

fn edit_config(d: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = d.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

#[test]
fn bad_config_json_names_the_field() {
    let (e, s) =
        load_err(|d| std::fs::write(d.join("config.json"), "{\"model_type\": \"llama\",").unwrap());
    assert!(
        matches!(e, ModelError::Json { .. }) && s.contains("config.json"),
        "{s}"
    );

    let (e, s) = load_err(|d| edit_config(d, |v| v["model_type"] = "gpt_neox".into()));
    assert!(
        matches!(e, ModelError::UnsupportedArchitecture { .. }) && s.contains("gpt_neox"),
        "{s}"
    );

    let (e, s) = load_err(|d| {
        edit_config(d, |v| {
            v.as_object_mut().unwrap().remove("hidden_size");
        })
    });
    assert!(
        matches!(e, ModelError::MissingField { .. })
            && s.contains("hidden_size")
            && s.contains("config.json"),
        "{s}"
    );

    let (e, s) = load_err(|d| edit_config(d, |v| v["num_hidden_layers"] = "two".into()));
    assert!(
        matches!(e, ModelError::InvalidField { .. }) && s.contains("num_hidden_layers"),
        "{s}"
    );

    let (e, s) = load_err(|d| edit_config(d, |v| v["num_key_value_heads"] = 3.into()));
    assert!(
        s.contains("num_key_value_heads") && s.contains("does not divide"),
        "{e:?}"
    );

    let (_, s) =
        load_err(|d| edit_config(d, |v| v["rope_parameters"]["rope_type"] = "yarn".into()));
    assert!(s.contains("rope_type") && s.contains("yarn"), "{s}");
}

#[test]
fn bad_tokenizer_or_chat_template_names_the_file() {
    let (e, s) = load_err(|d| std::fs::write(d.join("tokenizer.json"), "{\"model\": 5}").unwrap());
    assert!(
        matches!(e, ModelError::Tokenizer { .. }) && s.contains("tokenizer.json"),
        "{s}"
    );

    let (e, s) = load_err(|d| {
        std::fs::write(
            d.join("chat_template.jinja"),
            "{% for m in messages %}{{ m.content }",
        )
        .unwrap()
    });
    assert!(
        matches!(e, ModelError::ChatTemplate { .. }) && s.contains("line 1"),
        "{s}"
    );

    let (e, s) = load_err(|d| {
        std::fs::write(d.join("tokenizer_config.json"), "{\"chat_template\": 7}").unwrap()
    });
    assert!(
        matches!(e, ModelError::InvalidField { .. }) && s.contains("chat_template"),
        "{s}"
    );
}
