//! Seeded corruption of model files for `tests/loader_mutation.rs`: byte-level mutations,
//! structure-aware ones (GGUF header fields, the safetensors length prefix and JSON header),
//! JSON-aware ones, and a writer for the tiny GGUF files they start from.
//!
//! Every mutation is a pure function of the input bytes and the [`Rng`] state, so a
//! `(loader, seed)` pair names the same corrupted file on every run and machine.

use std::path::Path;

use serde_json::{json, Value as Json};

pub mod gguf;

/// SplitMix64: tiny, fast, and a stable stream across platforms and crate versions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// The values the fuzzing campaign found dangerous in 64-bit fields.
pub const EXTREMES: [u64; 10] = [
    0,
    1,
    3,
    1 << 32,
    1 << 62,
    1 << 63,
    u64::MAX,
    (1 << 63) + 125,
    (1 << 58) + 64,
    u32::MAX as u64,
];

pub(super) fn extreme(rng: &mut Rng) -> u64 {
    if rng.chance(85) {
        *rng.pick(&EXTREMES)
    } else {
        rng.next_u64() >> rng.below(64)
    }
}

/// Plain byte-level damage anywhere in `b`: bit flips, truncation, insertion, deletion, or an
/// extreme u64 written at a random offset.
pub fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>, lo: usize, hi: usize) -> String {
    let hi = hi.min(b.len());
    let lo = lo.min(hi);
    let at = |rng: &mut Rng| lo + rng.below((hi - lo).max(1));
    match rng.below(5) {
        0 if !b.is_empty() => {
            let n = 1 + rng.below(4);
            let mut at_list = vec![];
            for _ in 0..n {
                let i = at(rng).min(b.len() - 1);
                b[i] ^= 1 << rng.below(8);
                at_list.push(i);
            }
            format!("flip bits at {at_list:?}")
        }
        1 => {
            let n = at(rng);
            b.truncate(n);
            format!("truncate to {n} bytes")
        }
        2 => {
            let i = at(rng).min(b.len());
            let n = 1 + rng.below(16);
            let ins: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            b.splice(i..i, ins);
            format!("insert {n} bytes at {i}")
        }
        3 if !b.is_empty() => {
            let i = at(rng).min(b.len() - 1);
            let n = (1 + rng.below(16)).min(b.len() - i);
            b.drain(i..i + n);
            format!("delete {n} bytes at {i}")
        }
        _ if b.len() >= 8 => {
            let i = at(rng).min(b.len() - 8);
            let v = extreme(rng);
            b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            format!("write u64 {v} at {i}")
        }
        _ => {
            b.push(0);
            "append a zero byte".into()
        }
    }
}

/// A path to a node of a JSON document.
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Idx(usize),
}

fn paths(v: &Json, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(here.clone());
    match v {
        Json::Object(o) => {
            for (k, x) in o {
                here.push(Seg::Key(k.clone()));
                paths(x, here, out);
                here.pop();
            }
        }
        Json::Array(xs) => {
            for (i, x) in xs.iter().enumerate() {
                here.push(Seg::Idx(i));
                paths(x, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn node_ref<'a>(v: &'a Json, path: &[Seg]) -> Option<&'a Json> {
    path.iter().try_fold(v, |v, s| match s {
        Seg::Key(k) => v.get(k.as_str()),
        Seg::Idx(i) => v.get(*i),
    })
}

fn node<'a>(v: &'a mut Json, path: &[Seg]) -> Option<&'a mut Json> {
    path.iter().try_fold(v, |v, s| match s {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Idx(i) => v.get_mut(*i),
    })
}

/// Replacement values: extreme and wrong-typed. `RAW:` entries are spliced in as text (they are
/// not valid JSON values, or not representable by `serde_json::Value`).
const REPLACEMENTS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "4294967296",
    "9223372036854775933",
    "18446744073709551615",
    "-9223372036854775808",
    "1e300",
    "1e-300",
    "0.5",
    "-0.0",
    "\"NaN\"",
    "\"inf\"",
    "null",
    "true",
    "\"x\"",
    "[]",
    "{}",
    "[1,2]",
    "{\"type\":\"x\"}",
    "RAW:1e999",
    "RAW:-1e999",
    "RAW:18446744073709551616",
    "RAW:NaN",
    "RAW:Infinity",
    "RAW:-",
    "RAW:[[[[[[[[[[[[",
];

/// A structure-aware mutation of a JSON document (falls back to bytes if `b` does not parse).
pub fn mutate_json(rng: &mut Rng, b: &mut Vec<u8>, is_tokenizer: bool) -> String {
    let Ok(mut doc) = serde_json::from_slice::<Json>(b) else {
        return mutate_bytes(rng, b, 0, usize::MAX);
    };
    if is_tokenizer && rng.chance(30) {
        let what = tokenizer_mutation(rng, &mut doc, b);
        if let Some(what) = what {
            return what;
        }
    }
    let mut all = vec![];
    paths(&doc, &mut vec![], &mut all);
    let numbers: Vec<&Vec<Seg>> = all
        .iter()
        .filter(|p| matches!(node_ref(&doc, p), Some(Json::Number(_))))
        .collect();
    let path = if !numbers.is_empty() && rng.chance(50) {
        (*rng.pick(&numbers)).clone()
    } else {
        rng.pick(&all).clone()
    };
    let mut raw = None;
    let what = match rng.below(4) {
        0 | 1 => {
            let r = *rng.pick(REPLACEMENTS);
            let Some(n) = node(&mut doc, &path) else {
                return "no-op".into();
            };
            match r.strip_prefix("RAW:") {
                Some(text) => {
                    *n = Json::String("\u{1}RAW\u{1}".into());
                    raw = Some(text);
                }
                None => *n = serde_json::from_str(r).unwrap_or(Json::Null),
            }
            format!("set {path:?} to {r}")
        }
        2 if !path.is_empty() => {
            let (last, parent) = path.split_last().unwrap();
            match (node(&mut doc, parent), last) {
                (Some(Json::Object(o)), Seg::Key(k)) => {
                    o.remove(k);
                }
                (Some(Json::Array(xs)), Seg::Idx(i)) => {
                    xs.remove(*i);
                }
                _ => {}
            }
            format!("drop {path:?}")
        }
        _ => {
            let Some(n) = node(&mut doc, &path) else {
                return "no-op".into();
            };
            match n {
                Json::String(s) => {
                    let cut = s.char_indices().map(|(i, _)| i).nth(rng.below(s.len() + 1));
                    s.truncate(cut.unwrap_or(s.len()));
                    let tails = ["", "{{", "{% for", "\u{0}", "é", "<|im_end|>"];
                    let tail = *rng.pick(&tails);
                    s.push_str(tail);
                }
                Json::Number(_) => *n = json!(rng.next_u64() >> rng.below(64)),
                other => *other = json!("x"),
            }
            format!("edit {path:?}")
        }
    };
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    if let Some(raw) = raw {
        text = text.replacen("\"\\u0001RAW\\u0001\"", raw, 1);
    }
    *b = text.into_bytes();
    what
}

/// Mutations aimed at `tokenizers`' deserializers: `Precompiled` normalizers with odd
/// charsmaps, bogus decoders, padding and truncation parameters, malformed JSON inside
/// `"decoder"`.
fn tokenizer_mutation(rng: &mut Rng, doc: &mut Json, b: &mut Vec<u8>) -> Option<String> {
    let b64 = |bytes: &[u8]| {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in bytes.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for k in 0..=c.len() {
                s.push(A[(n >> (18 - 6 * k)) as usize & 63] as char);
            }
        }
        while !s.len().is_multiple_of(4) {
            s.push('=');
        }
        s
    };
    let what = match rng.below(5) {
        0 | 1 => {
            let trie: u32 = *rng.pick(&[0, 3, 4, 8, 16, 64, u32::MAX, 1 << 30]);
            let mut m = trie.to_le_bytes().to_vec();
            let n = rng.below(40);
            m.extend((0..n).map(|_| rng.next_u64() as u8));
            let charsmap = match rng.below(5) {
                0 => String::new(),
                1 => "!!not base64!!".into(),
                _ => b64(&m),
            };
            let p = json!({"type": "Precompiled", "precompiled_charsmap": charsmap});
            doc["normalizer"] = if rng.chance(50) {
                p
            } else {
                json!({"type": "Sequence", "normalizers": [{"type": "NFC"}, p]})
            };
            format!("Precompiled normalizer, trie {trie}, {n} bytes")
        }
        2 => {
            let choices = [
                json!({"type": "Bogus"}),
                json!(5),
                json!({"type": "ByteLevel", "add_prefix_space": "x"}),
                json!({"type": "Sequence", "decoders": [{"type": "Replace"}]}),
                json!({"type": "Metaspace", "replacement": "", "prepend_scheme": "always"}),
                json!({"type": "Strip", "content": " ", "start": u64::MAX, "stop": 0}),
                json!({"type": "ByteFallback"}),
            ];
            let d = rng.pick(&choices).clone();
            doc["decoder"] = d.clone();
            format!("decoder {d}")
        }
        3 => {
            let big = *rng.pick(&[0u64, 1, 1 << 16, 1 << 40, u64::MAX]);
            if rng.chance(50) {
                doc["padding"] = json!({"strategy": {"Fixed": big}, "direction": "Right",
                    "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<unk>"});
                format!("padding Fixed {big}")
            } else {
                doc["truncation"] = json!({"direction": "Right", "max_length": big,
                    "strategy": "LongestFirst", "stride": *rng.pick(&[0u64, 1, big])});
                format!("truncation max_length {big}")
            }
        }
        _ => {
            // Malformed JSON inside the decoder value (the file no longer parses).
            let text = String::from_utf8_lossy(b).into_owned();
            let at = text.find("\"decoder\"")? + "\"decoder\":".len() + 1;
            let junk = *rng.pick(&[
                "{",
                "{\"type\": tru",
                "[1,",
                "\"",
                "}",
                "{\"type\":\"ByteLevel\",",
            ]);
            let mut out = text;
            out.insert_str(at.min(out.len()), junk);
            *b = out.into_bytes();
            return Some(format!("insert {junk:?} inside \"decoder\""));
        }
    };
    *b = serde_json::to_vec_pretty(doc).ok()?;
    Some(what)
}

/// A safetensors file: mutate its 8-byte header length, its JSON header (re-framed so the
/// mutation reaches the parser), or its bytes.
pub fn mutate_safetensors(rng: &mut Rng, b: &mut Vec<u8>) -> String {
    let n = b
        .get(..8)
        .map(|x| u64::from_le_bytes(x.try_into().unwrap()) as usize)
        .unwrap_or(0);
    match rng.below(4) {
        0 => {
            let v = extreme(rng);
            b[..8].copy_from_slice(&v.to_le_bytes());
            format!("header length := {v}")
        }
        1 if n + 8 <= b.len() => {
            let mut header = b[8..8 + n].to_vec();
            let what = mutate_json(rng, &mut header, false);
            while !header.len().is_multiple_of(8) {
                header.push(b' ');
            }
            let data = b.split_off(8 + n);
            b.clear();
            b.extend((header.len() as u64).to_le_bytes());
            b.extend(header);
            b.extend(data);
            format!("header JSON: {what}")
        }
        2 => format!("header bytes: {}", mutate_bytes(rng, b, 0, n + 8)),
        _ => format!("bytes: {}", mutate_bytes(rng, b, 0, usize::MAX)),
    }
}

/// Splits a fixture's `model.safetensors` into two shards plus `model.safetensors.index.json`
/// in `dir` (which must already hold the fixture's other files, without `model.safetensors`).
pub fn write_shards(src: &Path, dir: &Path) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let half = names.len() / 2;
    let mut map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        let out = safetensors::serialize(views, None).unwrap();
        std::fs::write(dir.join(&file), out).unwrap();
        for n in part {
            map.insert(n.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": bytes.len()}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}
