//! GGUF: the tiny files the mutations start from, where their fields are, and mutations of them.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rlzero::model::gguf::permute_rows;
use rlzero::model::{Architecture, RopeScaling, WeightMode};

use super::{extreme, mutate_bytes, Rng};

/// Offsets of the fields of a (well-formed) GGUF file, for structure-aware mutation.
#[derive(Default, Debug, Clone)]
pub struct GgufFields {
    /// Counts, string and array lengths, tensor dims and offsets.
    pub u64s: Vec<(usize, String)>,
    /// Value types, array element types, tensor ranks and ggml types.
    pub u32s: Vec<(usize, String)>,
    /// Scalar metadata values: (offset, value type, key).
    pub scalars: Vec<(usize, u32, String)>,
    /// Tensor names in header order.
    pub tensors: Vec<String>,
    /// Where tensor infos start, where they end, and where tensor data starts.
    pub infos_at: usize,
    pub header_end: usize,
    pub data_at: usize,
}

impl GgufFields {
    /// The offset of the field described as `what` (e.g. "`token_embd.weight` dim 1").
    pub fn at(&self, what: &str) -> usize {
        let all = self.u64s.iter().chain(&self.u32s);
        let scalars = self.scalars.iter().map(|(p, _, k)| (p, k));
        all.map(|(p, w)| (p, w))
            .chain(scalars)
            .find(|(_, w)| w.as_str() == what)
            .map(|(p, _)| *p)
            .unwrap_or_else(|| panic!("no GGUF field {what}"))
    }
}

/// Walks a GGUF v2/v3 file written by [`write_tiny_gguf`].
pub fn gguf_fields(b: &[u8]) -> GgufFields {
    let mut f = GgufFields::default();
    let mut p = 8usize;
    let rd = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
    let rd32 = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let (n_t, n_kv) = (rd(8) as usize, rd(16) as usize);
    f.u64s.push((8, "tensor count".into()));
    f.u64s.push((16, "metadata count".into()));
    p += 16;
    fn size(t: u32) -> Option<usize> {
        match t {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }
    for _ in 0..n_kv {
        let klen = rd(p) as usize;
        let key = String::from_utf8_lossy(&b[p + 8..p + 8 + klen]).into_owned();
        f.u64s.push((p, format!("`{key}` key length")));
        p += 8 + klen;
        let ty = rd32(p);
        f.u32s.push((p, format!("`{key}` value type")));
        p += 4;
        match ty {
            8 => {
                f.u64s.push((p, format!("`{key}` string length")));
                p += 8 + rd(p) as usize;
            }
            9 => {
                let et = rd32(p);
                f.u32s.push((p, format!("`{key}` array type")));
                f.u64s.push((p + 4, format!("`{key}` array length")));
                let n = rd(p + 4) as usize;
                p += 12;
                for i in 0..n {
                    match size(et) {
                        Some(s) => p += s,
                        None => {
                            if i < 4 || i + 1 == n {
                                f.u64s.push((p, format!("`{key}`[{i}] length")));
                            }
                            p += 8 + rd(p) as usize;
                        }
                    }
                }
            }
            t => {
                f.scalars.push((p, t, key));
                p += size(t).unwrap();
            }
        }
    }
    f.infos_at = p;
    for _ in 0..n_t {
        let nlen = rd(p) as usize;
        let name = String::from_utf8_lossy(&b[p + 8..p + 8 + nlen]).into_owned();
        f.u64s.push((p, format!("`{name}` name length")));
        f.tensors.push(name.clone());
        p += 8 + nlen;
        let nd = rd32(p) as usize;
        f.u32s.push((p, format!("`{name}` rank")));
        p += 4;
        for d in 0..nd {
            f.u64s.push((p, format!("`{name}` dim {d}")));
            p += 8;
        }
        f.u32s.push((p, format!("`{name}` ggml type")));
        f.u64s.push((p + 4, format!("`{name}` offset")));
        p += 12;
    }
    f.header_end = p;
    f.data_at = p.div_ceil(32) * 32;
    f
}

/// A GGUF file: extreme values in header fields, other type ids, extreme scalar metadata, or
/// byte damage biased to one region (header and metadata, tensor infos, data).
pub fn mutate_gguf(rng: &mut Rng, b: &mut Vec<u8>, f: &GgufFields) -> String {
    match rng.below(7) {
        0 | 1 => {
            let (at, what) = rng.pick(&f.u64s);
            let v = extreme(rng);
            b[*at..at + 8].copy_from_slice(&v.to_le_bytes());
            format!("{what} := {v}")
        }
        2 => {
            let (at, what) = rng.pick(&f.u32s);
            // Neighbouring valid ids (F32 0 <-> F16 1 <-> BF16 30, quant types) and junk.
            let v: u32 = *rng.pick(&[0, 1, 2, 3, 4, 5, 8, 9, 10, 12, 14, 16, 30, 31, u32::MAX]);
            b[*at..at + 4].copy_from_slice(&v.to_le_bytes());
            format!("{what} := {v}")
        }
        3 => {
            // `general.alignment` a quarter of the time: candle divided by it.
            let align = f.scalars.iter().find(|s| s.2 == "general.alignment");
            let (at, ty, key) = match align {
                Some(a) if rng.chance(25) => a,
                _ => rng.pick(&f.scalars),
            };
            let (bytes, shown): (Vec<u8>, String) = match ty {
                6 => {
                    let x = *rng.pick(&[0f32, -1.0, f32::INFINITY, f32::NAN, 1e-45, 3e38]);
                    (x.to_le_bytes().to_vec(), format!("{x}"))
                }
                10..=12 => {
                    let x = extreme(rng);
                    (x.to_le_bytes().to_vec(), format!("{x}"))
                }
                4 | 5 => {
                    let x = *rng.pick(&[0u32, 1, 3, 31, 33, u32::MAX, 1 << 31, 1 << 16]);
                    (x.to_le_bytes().to_vec(), format!("{x}"))
                }
                _ => {
                    let x = rng.next_u64() as u8;
                    (vec![x], format!("{x}"))
                }
            };
            b[*at..at + bytes.len()].copy_from_slice(&bytes);
            format!("`{key}` := {shown}")
        }
        4 => format!("header: {}", mutate_bytes(rng, b, 0, f.infos_at)),
        5 => format!(
            "tensor infos: {}",
            mutate_bytes(rng, b, f.infos_at, f.data_at)
        ),
        _ => format!("data: {}", mutate_bytes(rng, b, f.data_at, usize::MAX)),
    }
}

/// llama.cpp's name for an HF tensor name.
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer tensor");
    let (layer, rest) = rest.split_once('.').expect("layer index");
    let (module, param) = rest.rsplit_once('.').expect("param");
    let m = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("unmapped {other}"),
    };
    format!("blk.{layer}.{m}.{param}")
}

/// GPT-2's byte → character table, so token `i < 256` is byte `i`.
pub fn byte_char(b: u8) -> char {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    if printable(b as u32) {
        return char::from_u32(b as u32).unwrap();
    }
    let n = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// Writes a tiny fixture (`tiny-llama`, …) as a GGUF the way llama.cpp lays it out: 2-D weights
/// as `dtype`, 1-D in F32, llama Q/K rows permuted, llama3 rope scaling as `rope_freqs.weight`,
/// an explicit `general.alignment` of 32, and a 128-token byte-level BPE tokenizer (ids 0–123
/// bytes, 124 = "ab", 125–127 control tokens) with a chat template.
pub fn write_tiny_gguf(path: &Path, fixture: &str, dtype: GgmlDType) {
    let d = super::super::tiny_decoder(fixture, DType::F32, WeightMode::Frozen);
    let cfg = d.config().clone();
    let arch = match cfg.architecture {
        Architecture::Llama => "llama",
        Architecture::Qwen2 => "qwen2",
        Architecture::Qwen3 => "qwen3",
    };
    let mut q: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in d.named_parameters() {
        let t = match cfg.architecture {
            Architecture::Llama if name.ends_with("q_proj.weight") => {
                permute_rows(t, cfg.num_attention_heads).unwrap()
            }
            Architecture::Llama if name.ends_with("k_proj.weight") => {
                permute_rows(t, cfg.num_key_value_heads).unwrap()
            }
            _ => t.clone(),
        };
        let ty = if t.rank() == 2 { dtype } else { GgmlDType::F32 };
        q.push((gguf_name(name), QTensor::quantize(&t, ty).unwrap()));
    }
    if !matches!(cfg.rope_scaling, RopeScaling::None) {
        // Divisor of each base frequency, as llama.cpp bakes llama3 scaling in.
        let hd = cfg.head_dim;
        let div: Vec<f32> = (0..hd / 2)
            .zip(d.rotary().inv_freq())
            .map(|(i, f)| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32) / f)
            .collect();
        let t = Tensor::new(div.as_slice(), &Device::Cpu).unwrap();
        q.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let u = |x: usize| Value::U32(x as u32);
    let s = |x: &str| Value::String(x.into());
    let mut tokens: Vec<String> = (0..=123u8).map(|b| byte_char(b).to_string()).collect();
    tokens.extend(["ab", "<|im_start|>", "<|im_end|>", "<s>"].map(String::from));
    let mut types = vec![Value::I32(1); 125];
    types.extend([Value::I32(3), Value::I32(3), Value::I32(3)]);
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(arch)),
        ("general.alignment".into(), Value::U32(32)),
        (format!("{arch}.embedding_length"), u(cfg.hidden_size)),
        (format!("{arch}.feed_forward_length"), u(cfg.intermediate_size)),
        (format!("{arch}.block_count"), u(cfg.num_hidden_layers)),
        (format!("{arch}.attention.head_count"), u(cfg.num_attention_heads)),
        (format!("{arch}.attention.head_count_kv"), u(cfg.num_key_value_heads)),
        (format!("{arch}.attention.key_length"), Value::U64(cfg.head_dim as u64)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (format!("{arch}.context_length"), u(cfg.max_position_embeddings)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![s("a b")])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(127)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U64(126)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        (
            "tokenizer.chat_template".into(),
            s("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}"),
        ),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &q_refs).unwrap();
}
