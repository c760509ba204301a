//! GGUF files written by an independent writer: the `gguf` Python package (llama.cpp's own
//! writer), from the tiny HF fixtures, by `scripts/make_gguf_fixtures.py`. `gguf_loading.rs`
//! writes its GGUFs with candle's writer and our own Q/K permutation; these files share neither,
//! so a mistake made the same way twice (a permutation and its inverse both wrong, a metadata key
//! read as we wrote it) shows up here.

mod common;

use candle_core::DType;
use common::{fixtures, max_abs_diff, reference, tiny_decoder};
use rlzero::model::{load_gguf_decoder, LoadOptions, LogitsToKeep, WeightMode};

fn frozen() -> LoadOptions {
    LoadOptions {
        mode: WeightMode::Frozen,
        ..LoadOptions::default()
    }
}

#[test]
fn f32_files_from_the_gguf_package_give_the_safetensors_logits() {
    for name in ["tiny-llama", "tiny-qwen3"] {
        let path = fixtures().join("gguf").join(format!("{name}.f32.gguf"));
        let g = load_gguf_decoder(&path, &frozen()).unwrap();
        let st = tiny_decoder(name, DType::F32, WeightMode::Frozen);
        let (a, b) = (st.config(), g.config());
        assert_eq!(a.architecture, b.architecture, "{name}");
        assert_eq!(a.tie_word_embeddings, b.tie_word_embeddings, "{name}");
        assert_eq!(
            (a.num_attention_heads, a.num_key_value_heads, a.head_dim),
            (b.num_attention_heads, b.num_key_value_heads, b.head_dim),
            "{name}"
        );
        // llama3 scaling arrives as llama.cpp's `rope_freqs` divisors (RopeScaling::Divisors),
        // not as HF's parameters; the logits below check that the two agree.
        // The safetensors decoder's logits (equal to transformers', see parity_tiny.rs).
        let r = reference(name);
        let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
        let want = st.forward(ids, mask, LogitsToKeep::All).unwrap();
        let got = g.forward(ids, mask, LogitsToKeep::All).unwrap();
        let err = max_abs_diff(&got, &want);
        eprintln!("{name}: gguf-package file vs safetensors logits {err:e}");
        assert!(err < 1e-5, "{name}: {err}");
    }
}

#[test]
fn q8_0_file_from_the_gguf_package_dequantizes_within_the_format_error() {
    let path = fixtures().join("gguf/tiny-llama.q8_0.gguf");
    let g = load_gguf_decoder(&path, &frozen()).unwrap();
    let st = tiny_decoder("tiny-llama", DType::F32, WeightMode::Frozen);
    assert_eq!(g.named_parameters().len(), st.named_parameters().len());
    for ((n, q), (n2, w)) in g.named_parameters().iter().zip(st.named_parameters()) {
        assert_eq!(n, n2);
        assert_eq!(q.dims(), w.dims(), "{n}");
        let err = max_abs_diff(q, w);
        if w.rank() == 1 {
            assert_eq!(err, 0.0, "{n}: 1-D tensors are stored in F32");
        } else {
            // Q8_0 rounds each block of 32 to multiples of max|w_block| / 127: half a step at
            // most (plus the f16 scale's rounding), so max|w| / 127 bounds every element.
            let bound = w
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                / 127.0;
            assert!(
                err > 0.0 && err <= bound,
                "{n}: error {err} vs bound {bound}"
            );
        }
    }
}
