//! Rebuilding a byte-level BPE tokenizer from GGUF metadata.
//!
//! A GGUF carries no `tokenizer.json`: llama.cpp stores the vocabulary (`tokenizer.ggml.tokens`),
//! merges, token types and the name of the pre-tokenizer (`tokenizer.ggml.pre`). We rebuild the
//! `tokenizer.json` the model was trained with and let the `tokenizers` crate load it, so encoding
//! runs through the same code as an HF directory. The pre-tokenizer must be the one the merges were
//! learned with, e.g. SmolLM2 (`smollm`) splits every digit before byte-level splitting, which
//! transformers' own GGUF loader does not do for that name (it falls back to GPT-2's regex).

use serde_json::{json, Value as Json};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::TextTokenizer;
use candle_core::quantized::gguf_file::Value;

/// Llama-3's split regex (tokenizer.json of meta-llama/Llama-3.x; llama.cpp `llama3`/`llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (transformers `models/qwen2/tokenization_qwen2.py` PRETOKENIZE_REGEX).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's byte → printable-character table (`bytes_to_unicode`).
fn byte_alphabet() -> Vec<char> {
    let mut table = vec!['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('?')
        };
    }
    table
}

fn pre_tokenizer(pre: &str, file: &GgufFile) -> Result<(Json, bool)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    // (pre-tokenizer, BPE ignore_merges) as in each family's published tokenizer.json.
    Ok(match pre {
        // SmolLM / SmolLM2: Digits(individual) then GPT-2 byte-level regex.
        "smollm" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" => (split(LLAMA3_SPLIT), true),
        "qwen2" | "deepseek-r1-qwen" => (split(QWEN2_SPLIT), false),
        "gpt2" | "gpt-2" | "default" => (byte_level(true), false),
        other => {
            return Err(ModelError::InvalidField {
                file: file.path.clone(),
                field: "tokenizer.ggml.pre".into(),
                reason: format!(
                "pre-tokenizer `{other}` is not supported (smollm, llama3, llama-bpe, qwen2, gpt2)"
            ),
            })
        }
    })
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let v = file.meta(key).ok_or_else(|| ModelError::MissingField {
        file: file.path.clone(),
        field: key.to_string(),
    })?;
    let bad = |reason: String| ModelError::InvalidField {
        file: file.path.clone(),
        field: key.to_string(),
        reason,
    };
    v.to_vec()
        .map_err(|e| bad(crate::validate::candle_msg(&e)))?
        .iter()
        .map(|x| {
            x.to_string()
                .map(|s| s.as_str())
                .map_err(|e| bad(crate::validate::candle_msg(&e)))
        })
        .collect()
}

fn token_types(file: &GgufFile, n: usize) -> Result<Vec<i64>> {
    let key = "tokenizer.ggml.token_type";
    let Some(v) = file.meta(key) else {
        return Ok(vec![1; n]);
    };
    let bad = |reason: String| ModelError::InvalidField {
        file: file.path.clone(),
        field: key.to_string(),
        reason,
    };
    v.to_vec()
        .map_err(|e| bad(crate::validate::candle_msg(&e)))?
        .iter()
        .map(|x| match x {
            Value::I32(t) => Ok(*t as i64),
            Value::U32(t) => Ok(*t as i64),
            Value::I8(t) => Ok(*t as i64),
            other => Err(bad(format!("expected integers, got {other:?}"))),
        })
        .collect()
}

/// Builds the tokenizer (with chat template and special tokens) described by `file`'s metadata.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<TextTokenizer> {
    let model = file.meta_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(ModelError::InvalidField {
            file: file.path.clone(),
            field: "tokenizer.ggml.model".into(),
            reason: format!(
                "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            ),
        });
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() || tokens.len() > crate::validate::MAX_VOCAB {
        return Err(ModelError::InvalidField {
            file: file.path.clone(),
            field: "tokenizer.ggml.tokens".into(),
            reason: format!(
                "{} tokens, expected 1 to {}",
                tokens.len(),
                crate::validate::MAX_VOCAB
            ),
        });
    }
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types = token_types(file, tokens.len())?;
    if types.len() != tokens.len() {
        return Err(ModelError::InvalidField {
            file: file.path.clone(),
            field: "tokenizer.ggml.token_type".into(),
            reason: format!("{} entries for {} tokens", types.len(), tokens.len()),
        });
    }
    let pre = match file.meta("tokenizer.ggml.pre") {
        Some(_) => file.meta_str("tokenizer.ggml.pre")?,
        None => "default",
    };
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre, file)?;

    let alphabet = byte_alphabet();
    // A set, not a scan of the 256-entry table: this runs over every char of ~50K tokens.
    let alphabet_set: std::collections::HashSet<char> = alphabet.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet_set.contains(&c));
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
        // Tokens are stored in GPT-2's byte alphabet; one that is not (a mislabelled special)
        // is respelled byte by byte, as transformers does.
        let spelled = if in_alphabet(tok) {
            tok.to_string()
        } else {
            tok.bytes().map(|b| alphabet[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
        // llama.cpp token types: 3 = control (special), 4 = user-defined (added, not special).
        if (*ty == 3 && in_alphabet(tok)) || *ty == 4 {
            added.push(
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *ty == 3}),
            );
        }
    }
    // Special-token ids must name a token of this vocabulary (and fit a u32).
    let id_of = |key: &str| -> Result<Option<u32>> {
        file.meta_u64(key)?
            .map(|n| crate::validate::token_id(&file.path, key, n, Some(tokens.len())))
            .transpose()
    };
    let token_at = |id: Option<u32>| {
        id.and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let bos_id = id_of("tokenizer.ggml.bos_token_id")?;
    let eos_id = id_of("tokenizer.ggml.eos_token_id")?;
    let pad_id = id_of("tokenizer.ggml.padding_token_id")?;
    let add_bos = matches!(
        file.meta("tokenizer.ggml.add_bos_token"),
        Some(Value::Bool(true))
    );
    let post_processor = match (add_bos, token_at(bos_id)) {
        (true, Some(bos)) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [bos_id], "tokens": [bos]}}}),
        _ => Json::Null,
    };
    let tokenizer_json = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    });
    let source_name = format!("{} (tokenizer metadata)", file.path.display());
    let tok_err = |reason: String| ModelError::Tokenizer {
        source_name: source_name.clone(),
        reason,
    };
    // The JSON is ours, but its vocabulary and merges come from the file: keep any panic in
    // `tokenizers`' deserializers an error naming it.
    let inner: tokenizers::Tokenizer =
        crate::validate::contain(|| serde_json::from_value(tokenizer_json))
            .map_err(tok_err)?
            .map_err(|e| tok_err(e.to_string()))?;
    let template = match file.meta("tokenizer.chat_template") {
        Some(_) => Some((
            file.meta_str("tokenizer.chat_template")?.to_string(),
            format!("{} (tokenizer.chat_template)", file.path.display()),
        )),
        None => None,
    };
    TextTokenizer::from_parts(
        inner,
        template,
        token_at(bos_id),
        token_at(eos_id),
        eos_id.into_iter().collect(),
        pad_id,
        source_name,
    )
}
