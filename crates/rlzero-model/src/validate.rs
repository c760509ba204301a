//! Checks that run before anything trusts a value read from a model file.
//!
//! Every size a file declares is bounded here (or in [`crate::gguf_scan`] for GGUF headers)
//! before it sizes an allocation or an index: config dimensions have caps far above any real
//! checkpoint, token ids must be in the vocabulary and fit a `u32`, floats must be finite and
//! positive, and tensor shapes are compared with the ones their role needs before their data
//! is read. Where a dependency can still panic on malformed input, [`contain`] turns the panic
//! into an error at the call site that names the file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use serde_json::Value;

use crate::config::{Architecture, DecoderConfig, RopeScaling};
use crate::error::{ModelError, Result};

/// Upper bounds on config dimensions: far above any released model (Llama-3.1-405B has
/// hidden 16384, intermediate 53248, 126 layers, 128 heads, head_dim 128; Gemma-3 has a 262144
/// vocabulary), small enough that no product of two of them overflows and that a corrupted
/// value is rejected before it sizes an allocation (`Rotary::new` allocates `head_dim / 2`).
pub(crate) const MAX_VOCAB: usize = 1 << 22;
pub(crate) const MAX_WIDTH: usize = 1 << 20; // hidden_size, intermediate_size
pub(crate) const MAX_LAYERS: usize = 1 << 12;
pub(crate) const MAX_HEADS: usize = 1 << 12;
pub(crate) const MAX_HEAD_DIM: usize = 1 << 12;
pub(crate) const MAX_POSITIONS: usize = 1 << 26;
/// Tokenizer padding lengths (`padding.strategy.Fixed`, `pad_to_multiple_of`): encoding pads
/// every sequence to them, so a corrupted value would be an allocation of that many ids.
const MAX_PAD_LENGTH: u64 = 1 << 20;

fn invalid(file: &Path, field: &str, reason: String) -> ModelError {
    ModelError::InvalidField {
        file: file.to_path_buf(),
        field: field.to_string(),
        reason,
    }
}

/// A token id read as a u64, checked to fit a `u32` (ids are u32 everywhere downstream) and,
/// when the vocabulary size is known, to be inside it.
pub(crate) fn token_id(file: &Path, field: &str, id: u64, vocab: Option<usize>) -> Result<u32> {
    let v = u32::try_from(id)
        .map_err(|_| invalid(file, field, format!("token id {id} does not fit in a u32")))?;
    match vocab {
        Some(n) if v as usize >= n => Err(invalid(
            file,
            field,
            format!("token id {id} is outside the vocabulary of {n} tokens"),
        )),
        _ => Ok(v),
    }
}

fn positive_finite(file: &Path, field: &str, x: f64) -> Result<()> {
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(invalid(
            file,
            field,
            format!("{x} must be a finite positive number"),
        ))
    }
}

/// The invariants [`DecoderConfig`] promises the decoder (see [`DecoderConfig::validate`]).
pub(crate) fn config(cfg: &DecoderConfig, file: &Path) -> Result<()> {
    for (name, v, cap) in [
        ("vocab_size", cfg.vocab_size, MAX_VOCAB),
        ("hidden_size", cfg.hidden_size, MAX_WIDTH),
        ("intermediate_size", cfg.intermediate_size, MAX_WIDTH),
        ("num_hidden_layers", cfg.num_hidden_layers, MAX_LAYERS),
        ("num_attention_heads", cfg.num_attention_heads, MAX_HEADS),
        ("num_key_value_heads", cfg.num_key_value_heads, MAX_HEADS),
        ("head_dim", cfg.head_dim, MAX_HEAD_DIM),
        (
            "max_position_embeddings",
            cfg.max_position_embeddings,
            MAX_POSITIONS,
        ),
    ] {
        if v == 0 {
            return Err(invalid(file, name, "must be positive".into()));
        }
        if v > cap {
            return Err(invalid(
                file,
                name,
                format!("{v} exceeds the limit of {cap}"),
            ));
        }
    }
    if !cfg
        .num_attention_heads
        .is_multiple_of(cfg.num_key_value_heads)
    {
        return Err(invalid(
            file,
            "num_key_value_heads",
            format!(
                "{} does not divide num_attention_heads = {}",
                cfg.num_key_value_heads, cfg.num_attention_heads
            ),
        ));
    }
    if !cfg.head_dim.is_multiple_of(2) {
        return Err(invalid(
            file,
            "head_dim",
            format!("{} must be even for rotary embeddings", cfg.head_dim),
        ));
    }
    positive_finite(file, "rms_norm_eps", cfg.rms_norm_eps)?;
    positive_finite(file, "rope_theta", cfg.rope_theta)?;
    match &cfg.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => positive_finite(file, "rope_scaling.factor", *factor)?,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            positive_finite(file, "rope_scaling.factor", *factor)?;
            positive_finite(file, "rope_scaling.low_freq_factor", *low_freq_factor)?;
            positive_finite(file, "rope_scaling.high_freq_factor", *high_freq_factor)?;
            positive_finite(
                file,
                "rope_scaling.original_max_position_embeddings",
                *original_max_position_embeddings,
            )?;
            // The interpolation band divides by `high - low`.
            if high_freq_factor <= low_freq_factor {
                return Err(invalid(
                    file,
                    "rope_scaling.high_freq_factor",
                    format!("{high_freq_factor} must exceed low_freq_factor = {low_freq_factor}"),
                ));
            }
        }
        RopeScaling::Divisors(d) => {
            if d.len() != cfg.head_dim / 2 {
                return Err(invalid(
                    file,
                    "rope_freqs.weight",
                    format!(
                        "{} entries, expected head_dim/2 = {}",
                        d.len(),
                        cfg.head_dim / 2
                    ),
                ));
            }
            if let Some(x) = d.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err(invalid(
                    file,
                    "rope_freqs.weight",
                    format!("divisor {x} must be a finite positive number"),
                ));
            }
        }
    }
    let ids = cfg.bos_token_id.iter().map(|i| ("bos_token_id", i));
    for (field, &id) in ids.chain(cfg.eos_token_ids.iter().map(|i| ("eos_token_id", i))) {
        token_id(file, field, u64::from(id), Some(cfg.vocab_size))?;
    }
    Ok(())
}

/// The shape a checkpoint tensor must have for its role under HF naming, `None` for a name the
/// decoder has no slot for (or a layer index outside the config).
pub(crate) fn expected_shape(cfg: &DecoderConfig, name: &str) -> Option<Vec<usize>> {
    let (h, kv, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let (hid, inter) = (cfg.hidden_size, cfg.intermediate_size);
    match name {
        "model.embed_tokens.weight" | "lm_head.weight" => return Some(vec![cfg.vocab_size, hid]),
        "model.norm.weight" => return Some(vec![hid]),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.parse::<usize>().ok()? >= cfg.num_hidden_layers {
        return None;
    }
    let (module, param) = rest.rsplit_once('.')?;
    // (out, in) of each linear; norms have a single dimension.
    let (out, inp) = match module {
        "input_layernorm" | "post_attention_layernorm" if param == "weight" => {
            return Some(vec![hid])
        }
        "self_attn.q_norm" | "self_attn.k_norm"
            if param == "weight" && cfg.architecture == Architecture::Qwen3 =>
        {
            return Some(vec![d])
        }
        "self_attn.q_proj" => (h * d, hid),
        "self_attn.k_proj" | "self_attn.v_proj" => (kv * d, hid),
        "self_attn.o_proj" => (hid, h * d),
        "mlp.gate_proj" | "mlp.up_proj" => (inter, hid),
        "mlp.down_proj" => (hid, inter),
        _ => return None,
    };
    match param {
        "weight" => Some(vec![out, inp]),
        "bias" => Some(vec![out]),
        _ => None,
    }
}

/// Runs `f`, turning a panic inside it into `Err(message)`. For dependencies that panic on
/// malformed input instead of returning an error; each caller says which behaviour it guards.
pub(crate) fn contain<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("rejected by the parser (it panicked: {msg})")
    })
}

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` is set:
/// it would land in our error text, and formatting it symbolizes the whole binary (100+ MiB).
pub(crate) fn candle_msg(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_msg(inner),
        other => other.to_string(),
    }
}

/// Checks the parts of a parsed `tokenizer.json` that `tokenizers` 0.23 would turn into a panic
/// or an allocation sized by the file's contents rather than its length.
pub(crate) fn tokenizer_json(json: &Value, file: &Path) -> Result<()> {
    let bad = |field: &str, reason: String| ModelError::Tokenizer {
        source_name: file.display().to_string(),
        reason: format!("`{field}`: {reason}"),
    };
    if !json.is_object() {
        return Err(bad("<root>", "expected a JSON object".into()));
    }
    if let Some(n) = json.get("normalizer") {
        precompiled_maps(n, file, 0)?;
    }
    if let Some(p) = json.get("padding").filter(|p| !p.is_null()) {
        let fixed = p.get("strategy").and_then(|s| s.get("Fixed"));
        for (field, v) in [
            ("padding.strategy.Fixed", fixed),
            ("padding.pad_to_multiple_of", p.get("pad_to_multiple_of")),
        ] {
            if let Some(n) = v.and_then(Value::as_u64) {
                if n > MAX_PAD_LENGTH {
                    return Err(bad(
                        field,
                        format!("{n} exceeds the limit of {MAX_PAD_LENGTH}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Every `Precompiled` normalizer under `v` (also inside `Sequence`s) must carry a well-formed
/// `precompiled_charsmap`: `tokenizers` `.expect()`s it (normalizers/mod.rs, "Precompiled"),
/// and `spm_precompiled` reserves `trie_size / 4` words before checking the data is there, so a
/// 4-byte map can ask for 8 GiB.
fn precompiled_maps(v: &Value, file: &Path, depth: usize) -> Result<()> {
    let bad = |reason: String| ModelError::Tokenizer {
        source_name: file.display().to_string(),
        reason: format!("`normalizer.precompiled_charsmap`: {reason}"),
    };
    if depth > 32 {
        return Err(bad("normalizers nested too deeply".into()));
    }
    match v {
        Value::Array(xs) => xs
            .iter()
            .try_for_each(|x| precompiled_maps(x, file, depth + 1)),
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str) == Some("Precompiled") {
                let s = o
                    .get("precompiled_charsmap")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("missing, or not a base64 string".into()))?;
                let bytes = base64_decode(s).ok_or_else(|| bad("not valid base64".into()))?;
                let (head, rest) = bytes
                    .split_first_chunk::<4>()
                    .ok_or_else(|| bad(format!("{} bytes, too short for a trie", bytes.len())))?;
                let trie = u32::from_le_bytes(*head) as usize;
                if trie < 4 || trie > rest.len() {
                    return Err(bad(format!(
                        "trie of {trie} bytes declared, {} bytes present (need 4 to {})",
                        rest.len(),
                        rest.len()
                    )));
                }
                if std::str::from_utf8(&rest[trie - trie % 4..]).is_err() {
                    return Err(bad("normalized strings are not UTF-8".into()));
                }
            }
            o.values()
                .try_for_each(|x| precompiled_maps(x, file, depth + 1))
        }
        _ => Ok(()),
    }
}

/// Standard base64 with optional `=` padding (what `precompiled_charsmap` holds).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_the_alphabet() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            base64_decode("AAECAw==").as_deref(),
            Some(&[0u8, 1, 2, 3][..])
        );
        assert_eq!(base64_decode("a*b"), None);
    }

    #[test]
    fn contain_reports_the_panic() {
        let e = contain(|| -> u8 { panic!("boom") }).unwrap_err();
        assert!(e.contains("boom"), "{e}");
    }
}
