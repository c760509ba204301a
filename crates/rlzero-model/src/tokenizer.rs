//! Text ↔ token ids, plus the chat template and end-of-sequence ids a model was trained with.
//!
//! From an HF directory the `tokenizers` crate reads `tokenizer.json` as Python does. From a GGUF
//! file the tokenizer is rebuilt from llama.cpp's metadata (see [`crate::gguf_tokenizer`]).

use std::path::Path;

use serde_json::Value;

use crate::chat_template::{ChatTemplate, Message};
use crate::error::{read_file, read_json, ModelError, Result};

/// A tokenizer with its chat template and special tokens.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<ChatTemplate>,
    /// Token ids that end a completion (from `generation_config.json`, else the config/GGUF).
    pub eos_token_ids: Vec<u32>,
    /// Text of the beginning-of-sequence token (`tokenizer_config.json`'s `bos_token`, or the
    /// GGUF's `tokenizer.ggml.bos_token_id`), if any.
    pub bos_token: Option<String>,
    /// Text of the end-of-sequence token (`tokenizer_config.json`'s `eos_token`, or the GGUF's
    /// `tokenizer.ggml.eos_token_id`), if any.
    pub eos_token: Option<String>,
    /// Id of the padding token (`tokenizer_config.json`'s `pad_token`, or the GGUF's
    /// `tokenizer.ggml.padding_token_id`), if any.
    pub pad_token_id: Option<u32>,
    source_name: String,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("source_name", &self.source_name)
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("eos_token_ids", &self.eos_token_ids)
            .finish()
    }
}

/// A special-token field of `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    pub(crate) fn from_parts(
        inner: tokenizers::Tokenizer,
        // The template's source text and the file it came from (named in its errors).
        chat_template_src: Option<(String, String)>,
        bos_token: Option<String>,
        eos_token: Option<String>,
        eos_token_ids: Vec<u32>,
        pad_token_id: Option<u32>,
        source_name: String,
    ) -> Result<Self> {
        let chat_template = chat_template_src
            .map(|(src, from)| ChatTemplate::new(&src, bos_token.clone(), eos_token.clone(), from))
            .transpose()?;
        Ok(Self {
            inner,
            chat_template,
            eos_token_ids,
            bos_token,
            eos_token,
            pad_token_id,
            source_name,
        })
    }

    /// Reads `tokenizer.json`, and `tokenizer_config.json` / `chat_template.jinja` when given.
    /// `eos_token_ids` come from the caller (generation_config.json has the final word).
    pub fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        chat_template_file: Option<&Path>,
        eos_token_ids: Vec<u32>,
    ) -> Result<Self> {
        let bytes = read_file(tokenizer_json)?;
        let tok_err = |reason: String| ModelError::Tokenizer {
            source_name: tokenizer_json.display().to_string(),
            reason,
        };
        // Parse and check the JSON ourselves first: `tokenizers` 0.23 `.expect()`s a malformed
        // `decoder` (decoders/mod.rs, "Helper") and a bad `precompiled_charsmap`
        // (normalizers/mod.rs, "Precompiled"), and sizes a Vec by the charsmap's trie header.
        let json: Value = serde_json::from_slice(&bytes).map_err(|source| ModelError::Json {
            path: tokenizer_json.to_path_buf(),
            source,
        })?;
        crate::validate::tokenizer_json(&json, tokenizer_json)?;
        drop(json);
        // Any panic left in its deserializers is contained here and named by file.
        let inner = crate::validate::contain(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(tok_err)?
            .map_err(|e| tok_err(e.to_string()))?;
        let cfg = match tokenizer_config {
            Some(p) => read_json(p)?,
            None => Value::Null,
        };
        let bos_token = token_string(cfg.get("bos_token"));
        let eos_token = token_string(cfg.get("eos_token"));
        let pad_token = token_string(cfg.get("pad_token"));
        let config_name = tokenizer_config
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // chat_template.jinja (transformers ≥ 4.43 saves it separately) wins over the config field.
        let template = match chat_template_file {
            Some(p) => Some((
                String::from_utf8(read_file(p)?).map_err(|e| ModelError::ChatTemplate {
                    source_name: p.display().to_string(),
                    reason: format!("not UTF-8: {e}"),
                })?,
                p.display().to_string(),
            )),
            None => match cfg.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some((s.clone(), config_name.clone())),
                // A list of named templates: take "default".
                Some(Value::Array(xs)) => xs
                    .iter()
                    .find(|x| x.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|x| x.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
                    .map(|t| (t, config_name.clone())),
                Some(other) => {
                    return Err(ModelError::InvalidField {
                        file: tokenizer_config.map(Path::to_path_buf).unwrap_or_default(),
                        field: "chat_template".into(),
                        reason: format!(
                            "expected a string or a list of named templates, got {other}"
                        ),
                    })
                }
            },
        };
        let mut eos_token_ids = eos_token_ids;
        if eos_token_ids.is_empty() {
            if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
                eos_token_ids.push(id);
            }
        }
        let pad_token_id = pad_token.as_deref().and_then(|t| inner.token_to_id(t));
        let source_name = tokenizer_json.display().to_string();
        Self::from_parts(
            inner,
            template,
            bos_token,
            eos_token,
            eos_token_ids,
            pad_token_id,
            source_name,
        )
    }

    /// Token ids of `text`; `add_special_tokens` applies the post-processor (e.g. a BOS).
    ///
    /// A panic inside `tokenizers` is returned as [`ModelError::Tokenizer`]: a corrupted
    /// `Precompiled` normalizer's trie is only walked here, and `spm_precompiled` indexes it
    /// without bounds checks.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = crate::validate::contain(|| self.inner.encode(text, add_special_tokens))
            .map_err(|e| self.err(e))?
            .map_err(|e| self.err(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special_tokens` drops control tokens such as `<|im_end|>`. A panic
    /// inside `tokenizers`' decoders (which slice strings built from the vocabulary) is returned
    /// as [`ModelError::Tokenizer`].
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        crate::validate::contain(|| self.inner.decode(ids, skip_special_tokens))
            .map_err(|e| self.err(e))?
            .map_err(|e| self.err(e.to_string()))
    }

    fn err(&self, reason: String) -> ModelError {
        ModelError::Tokenizer {
            source_name: self.source_name.clone(),
            reason,
        }
    }

    /// The id of a single token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The chat template, if the checkpoint has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Renders a conversation to the prompt string the model was trained on.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = self
            .chat_template
            .as_ref()
            .ok_or_else(|| ModelError::ChatTemplate {
                source_name: self.source_name.clone(),
                reason: "this tokenizer has no chat template".into(),
            })?;
        t.render(messages, add_generation_prompt)
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// `tokenizer.json` as the `tokenizers` library serialises it (what Python's
    /// `tokenizer.save()` writes), for export.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| self.err(format!("serialising tokenizer.json: {e}")))
    }

    /// `tokenizer_config.json` for export: special tokens, the chat template, and the fast
    /// tokenizer class transformers' `AutoTokenizer` instantiates for a `tokenizer.json`.
    pub fn tokenizer_config_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        if let Some(b) = &self.bos_token {
            m.insert("bos_token".into(), Value::String(b.clone()));
        }
        if let Some(e) = &self.eos_token {
            m.insert("eos_token".into(), Value::String(e.clone()));
        }
        if let Some(p) = self.pad_token_id.and_then(|id| self.inner.id_to_token(id)) {
            m.insert("pad_token".into(), Value::String(p));
        }
        if let Some(t) = &self.chat_template {
            m.insert(
                "chat_template".into(),
                Value::String(t.source().to_string()),
            );
        }
        m.insert("clean_up_tokenization_spaces".into(), Value::Bool(false));
        m.insert(
            "tokenizer_class".into(),
            Value::String("PreTrainedTokenizerFast".into()),
        );
        Value::Object(m)
    }
}
