//! The tokenizer rebuilt from GGUF metadata: each `tokenizer.ggml.pre` splits text the way its
//! family's published tokenizer does (checked on digits, where they differ), control tokens stay
//! whole, and unsupported tokenizers are typed errors naming the field.

mod common;

use candle_core::quantized::gguf_file::{self, Value};
use common::mutate::gguf::byte_char;
use common::tmpdir::TempDir;
use rlzero::model::gguf::GgufFile;
use rlzero::model::gguf_tokenizer::tokenizer_from_gguf;
use rlzero::model::{ModelError, TextTokenizer};

/// 256 byte tokens, "12" (256), "123" (257), control `<|im_end|>` (258).
fn write(dir: &TempDir, pre: &str, model: &str) -> std::path::PathBuf {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    tokens.extend(["12".into(), "123".into(), "<|im_end|>".into()]);
    let mut types = vec![Value::I32(1); 258];
    types.push(Value::I32(3));
    let s = |x: &str| Value::String(x.into());
    let meta = [
        ("general.architecture", s("llama")),
        ("tokenizer.ggml.model", s(model)),
        ("tokenizer.ggml.pre", s(pre)),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        ),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            Value::Array(vec![s("1 2"), s("12 3")]),
        ),
        ("tokenizer.ggml.eos_token_id", Value::U32(258)),
        (
            "tokenizer.chat_template",
            s("{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}"),
        ),
    ];
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let path = dir.path().join(format!("{pre}-{model}.gguf"));
    gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &refs, &[]).unwrap();
    path
}

fn tokenizer(pre: &str) -> TextTokenizer {
    let dir = TempDir::new("gguf-tok");
    let file = GgufFile::open(&write(&dir, pre, "gpt2")).unwrap();
    tokenizer_from_gguf(&file).unwrap()
}

fn ids(t: &TextTokenizer, s: &str) -> Vec<u32> {
    t.encode(s, false).unwrap()
}

#[test]
fn each_pre_tokenizer_splits_digits_like_its_family() {
    let d = |c: char| c as u32; // byte tokens have the byte's id
                                // SmolLM2 and Qwen2 split every digit; merges never apply across digits.
    for pre in ["smollm", "qwen2"] {
        assert_eq!(
            ids(&tokenizer(pre), "12123"),
            vec![d('1'), d('2'), d('1'), d('2'), d('3')],
            "{pre}"
        );
    }
    // Llama-3 groups up to three digits: "121" + "23".
    assert_eq!(
        ids(&tokenizer("llama-bpe"), "12123"),
        vec![256, d('1'), d('2'), d('3')]
    );
    // GPT-2 keeps a digit run whole, so the merges apply across it: "12" + "123".
    assert_eq!(ids(&tokenizer("gpt2"), "12123"), vec![256, 257]);
}

#[test]
fn control_tokens_stay_whole_and_text_round_trips() {
    let t = tokenizer("smollm");
    assert_eq!(ids(&t, "a<|im_end|>b"), vec!['a' as u32, 258, 'b' as u32]);
    assert_eq!(
        t.decode(&ids(&t, "héllo 12 wörld\n"), false).unwrap(),
        "héllo 12 wörld\n"
    );
    assert_eq!(t.decode(&[b'a' as u32, 258], true).unwrap(), "a");
    assert_eq!(t.eos_token_ids, vec![258]);
    let prompt = t
        .apply_chat_template(&[rlzero::model::Message::user("hi")], false)
        .unwrap();
    assert_eq!(prompt, "hi<|im_end|>");
}

#[test]
fn unsupported_tokenizers_name_the_field() {
    let dir = TempDir::new("gguf-tok-bad");
    let e =
        tokenizer_from_gguf(&GgufFile::open(&write(&dir, "mystery", "gpt2")).unwrap()).unwrap_err();
    assert!(
        matches!(&e, ModelError::InvalidField { field, .. } if field == "tokenizer.ggml.pre"),
        "{e}"
    );
    assert!(e.to_string().contains("mystery"));
    let e =
        tokenizer_from_gguf(&GgufFile::open(&write(&dir, "smollm", "llama")).unwrap()).unwrap_err();
    assert!(
        matches!(&e, ModelError::InvalidField { field, .. } if field == "tokenizer.ggml.model"),
        "{e}"
    );
}
