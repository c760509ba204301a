//! A bounded walk over a GGUF header that validates it before candle's reader sees it.
//!
//! candle 0.11's `Content::read` divides by a `general.alignment` of 0, honours any other
//! alignment (so 1 or 3 read every tensor from a shifted offset), and its `TensorInfo::read`
//! multiplies dims without overflow checks. This walk enforces what llama.cpp's `gguf.cpp`
//! enforces, with checked arithmetic throughout:
//!
//! - every declared length (string, array, count) fits in the bytes left in the file;
//! - metadata arrays, which candle holds as 32-byte `Value`s per element, need at most
//!   8 × the file size in memory;
//! - `general.alignment` is an unsigned integer of at most 32 bits (what candle reads; llama.cpp
//!   requires u32) and a power of two;
//! - each tensor has at most 4 dims, none zero, a ggml type candle reads, a row length that is a
//!   multiple of the type's block, and a byte size that fits the file;
//! - tensors are laid out back to back in header order, each at the offset the previous ones
//!   imply (padded to the alignment), as llama.cpp requires: a tensor whose type or shape was
//!   changed no longer lines up with the next one, so its data cannot be misread silently;
//! - the padding after each tensor is zero (its first 64 bytes are read), as every writer
//!   leaves it: a tensor relabelled from F32 to F16 that still pads to the same length leaves
//!   its second half there;
//! - at most the last tensor's alignment padding follows the data, so a changed alignment that
//!   shifts the data section is caught too.
//!
//! Shapes in its messages are in ggml order (row length first), as the file stores them.
//!
//! What no header check can see: a type change between two types of the same size (F16 and
//! BF16), or one to a larger type on a tensor so small that its old data plus padding fills
//! the new size (at most 8 elements for F16 to F32).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::GgmlDType;

use crate::error::{ModelError, Result};

/// candle's default when `general.alignment` is absent (also llama.cpp's).
const DEFAULT_ALIGNMENT: u64 = 32;
/// candle's (and ggml's) limits on tensor rank and on nesting of metadata arrays.
const MAX_DIMS: u32 = 4;
const MAX_DEPTH: usize = 64;
/// How much of each tensor's alignment padding is checked to be zero.
const MAX_PAD_CHECK: u64 = 64;
/// `size_of::<candle_core::quantized::gguf_file::Value>()` on 64-bit targets.
const VALUE_BYTES: u64 = 32;

/// The ggml types candle 0.11 reads, by type id.
fn ggml_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

struct Walker<'a> {
    r: BufReader<File>,
    path: &'a Path,
    pos: u64,
    size: u64,
    wide: bool,
    /// Array elements seen so far (each becomes a 32-byte `Value` in candle).
    array_elems: u64,
}

impl Walker<'_> {
    fn err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            file: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }
    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|_| self.err(format!("file ends inside {what} at byte {}", self.pos)))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }
    fn len(&mut self, what: &str) -> Result<u64> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }
    /// Skips `n` bytes, which must all be in the file.
    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "{what} of {n} bytes at byte {} runs past the end of the file ({} bytes)",
                self.pos, self.size
            )));
        }
        let n_i64 = i64::try_from(n).map_err(|_| self.err(format!("{what} is too large")))?;
        self.r
            .seek_relative(n_i64)
            .map_err(|e| self.err(format!("{what}: {e}")))?;
        self.pos += n;
        Ok(())
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        if n > self.remaining() {
            return Err(self.err(format!(
                "{what} declares {n} bytes at byte {}, only {} remain in the file",
                self.pos,
                self.remaining()
            )));
        }
        let mut v = vec![0u8; n as usize];
        self.r
            .read_exact(&mut v)
            .map_err(|_| self.err(format!("file ends inside {what}")))?;
        self.pos += n;
        Ok(String::from_utf8_lossy(&v).into_owned())
    }
    /// Bytes a value of fixed-size type `ty` occupies, `None` for strings and arrays.
    fn fixed_size(ty: u32) -> Option<u64> {
        match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }
    fn skip_value(&mut self, ty: u32, depth: usize, key: &str) -> Result<()> {
        if let Some(n) = Self::fixed_size(ty) {
            return self.skip(n, &format!("metadata `{key}`"));
        }
        match ty {
            8 => {
                let n = self.len(&format!("metadata `{key}` string length"))?;
                self.skip(n, &format!("metadata `{key}` string"))
            }
            9 if depth < MAX_DEPTH => {
                let inner = self.u32(&format!("metadata `{key}` array type"))?;
                let n = self.len(&format!("metadata `{key}` array length"))?;
                // The smallest encoding of one element, as candle bounds it.
                let min = Self::fixed_size(inner).unwrap_or(if self.wide { 8 } else { 4 });
                if n.checked_mul(min).is_none_or(|b| b > self.remaining()) {
                    return Err(self.err(format!(
                        "metadata `{key}`: array of {n} elements does not fit in the {} bytes left",
                        self.remaining()
                    )));
                }
                self.array_elems = self.array_elems.saturating_add(n);
                if self.array_elems.saturating_mul(VALUE_BYTES) > self.size.saturating_mul(8) {
                    return Err(self.err(format!(
                        "metadata `{key}`: arrays hold {} elements in a {}-byte file, more than \
                         the 8 × file size bound on metadata memory",
                        self.array_elems, self.size
                    )));
                }
                match Self::fixed_size(inner) {
                    Some(sz) => self.skip(n * sz, &format!("metadata `{key}` array")),
                    None => (0..n).try_for_each(|_| self.skip_value(inner, depth + 1, key)),
                }
            }
            9 => Err(self.err(format!("metadata `{key}`: arrays nested too deeply"))),
            other => Err(self.err(format!("metadata `{key}`: unknown value type {other}"))),
        }
    }
}

/// Validates the header of the GGUF file at `path` (see the module docs).
pub(crate) fn scan(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let size = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let mut w = Walker {
        r: BufReader::new(file),
        path,
        pos: 0,
        size,
        wide: true,
        array_elems: 0,
    };
    let magic = w.bytes::<4>("the magic number")?;
    // candle accepts the magic in either byte order.
    if &magic != b"GGUF" && &magic != b"FUGG" {
        return Err(w.err("not a GGUF file (bad magic number)"));
    }
    let version = w.u32("the version")?;
    if !(1..=3).contains(&version) {
        return Err(w.err(format!("unsupported GGUF version {version}")));
    }
    w.wide = version >= 2;
    let n_tensors = w.len("the tensor count")?;
    let n_kv = w.len("the metadata count")?;
    // Smallest possible entries: a key length, a type and one byte; a name length, a rank,
    // a type and an offset.
    let prefix = if w.wide { 8 } else { 4 };
    let needed = n_kv.checked_mul(prefix + 5).and_then(|a| {
        n_tensors
            .checked_mul(prefix + 16)
            .and_then(|b| a.checked_add(b))
    });
    if needed.is_none_or(|n| n > w.remaining()) {
        return Err(w.err(format!(
            "header declares {n_tensors} tensors and {n_kv} metadata entries, more than fit in \
             the file ({size} bytes)"
        )));
    }

    let mut alignment = DEFAULT_ALIGNMENT;
    let mut keys = HashSet::new();
    for _ in 0..n_kv {
        let key = w.string("a metadata key")?;
        let ty = w.u32(&format!("metadata `{key}` type"))?;
        if key == "general.alignment" {
            // What candle honours (and llama.cpp requires u32); any other type candle would
            // silently replace by 32.
            let a = match ty {
                0 => u64::from(w.bytes::<1>("general.alignment")?[0]),
                2 => u64::from(u16::from_le_bytes(w.bytes::<2>("general.alignment")?)),
                4 => u64::from(w.u32("general.alignment")?),
                _ => {
                    return Err(ModelError::InvalidField {
                        file: path.to_path_buf(),
                        field: key,
                        reason: format!("expected an unsigned integer, got value type {ty}"),
                    })
                }
            };
            if !a.is_power_of_two() {
                return Err(ModelError::InvalidField {
                    file: path.to_path_buf(),
                    field: key,
                    reason: format!("{a} is not a power of two"),
                });
            }
            alignment = a;
        } else {
            w.skip_value(ty, 0, &key)?;
        }
        if !keys.insert(key.clone()) {
            return Err(w.err(format!("metadata key `{key}` appears twice")));
        }
    }

    let mut raw = Vec::new();
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = w.string(&format!("the name of tensor {i}"))?;
        let n_dims = w.u32(&format!("tensor `{name}` rank"))?;
        if n_dims > MAX_DIMS {
            return Err(w.err(format!(
                "tensor `{name}` has {n_dims} dimensions, at most {MAX_DIMS} are allowed"
            )));
        }
        let dims = (0..n_dims)
            .map(|_| w.len(&format!("tensor `{name}` dims")))
            .collect::<Result<Vec<_>>>()?;
        let ty = w.u32(&format!("tensor `{name}` type"))?;
        let offset = w.u64(&format!("tensor `{name}` offset"))?;
        if !names.insert(name.clone()) {
            return Err(w.err(format!("tensor `{name}` appears twice")));
        }
        raw.push((name, dims, ty, offset));
    }
    // The data section starts at the first aligned position after the header.
    let data_start = w.pos.div_ceil(alignment).checked_mul(alignment);
    let data_start = data_start.ok_or_else(|| w.err("data section offset overflows"))?;

    let mut expected_offset = 0u64;
    let mut prev: Option<String> = None;
    let mut data_end = data_start;
    for (name, dims, ty, offset) in raw {
        let bad = |reason: String| ModelError::Gguf {
            file: path.to_path_buf(),
            reason: format!("tensor `{name}` {reason}"),
        };
        let dtype = ggml_type(ty).ok_or_else(|| {
            bad(format!(
                "has ggml type {ty}, which candle cannot read (unsupported quant type)"
            ))
        })?;
        if let Some(i) = dims.iter().position(|&d| d == 0) {
            return Err(bad(format!("has shape {dims:?}: dimension {i} is zero")));
        }
        let elems = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let elems = elems.ok_or_else(|| bad(format!("has shape {dims:?}: too many elements")))?;
        let (block, type_size) = (dtype.block_size() as u64, dtype.type_size() as u64);
        if dims.first().copied().unwrap_or(1) % block != 0 {
            return Err(bad(format!(
                "has rows of {} elements, not a multiple of the {dtype:?} block of {block}",
                dims.first().copied().unwrap_or(1)
            )));
        }
        let n_bytes = (elems / block)
            .checked_mul(type_size)
            .filter(|&n| n <= size)
            .ok_or_else(|| {
                bad(format!(
                    "has shape {dims:?} of type {dtype:?}, larger than the file ({size} bytes)"
                ))
            })?;
        if offset != expected_offset {
            return Err(bad(format!(
                "starts at data offset {offset}, but the tensors before it end at \
                 {expected_offset}{}: a tensor's shape or type does not match its data",
                prev.as_deref()
                    .map(|p| format!(" (the last, {p})"))
                    .unwrap_or_default()
            )));
        }
        prev = Some(format!("`{name}`, {dtype:?} {dims:?}: {n_bytes} bytes"));
        let start = data_start.checked_add(offset);
        let end = start
            .and_then(|s| s.checked_add(n_bytes))
            .filter(|&e| e <= size);
        data_end = end.ok_or_else(|| {
            bad(format!(
                "needs {n_bytes} bytes at byte {}, past the end of the file ({size} bytes)",
                start.unwrap_or(u64::MAX)
            ))
        })?;
        expected_offset = n_bytes
            .div_ceil(alignment)
            .checked_mul(alignment)
            .and_then(|padded| offset.checked_add(padded))
            .ok_or_else(|| bad("ends past any possible offset".into()))?;
        // Writers pad with zeros. Data there means the tensor is longer than its type and
        // shape say (e.g. F32 relabelled F16 on a tensor small enough to pad to the same size).
        let pad_end = data_start
            .saturating_add(expected_offset)
            .min(data_end.saturating_add(MAX_PAD_CHECK))
            .min(size);
        let mut pad = vec![0u8; (pad_end - data_end) as usize];
        w.r.seek(SeekFrom::Start(data_end))
            .and_then(|_| w.r.read_exact(&mut pad))
            .map_err(|e| bad(format!("padding: {e}")))?;
        if pad.iter().any(|&x| x != 0) {
            return Err(bad(format!(
                "is followed by non-zero padding: its data is longer than {n_bytes} bytes \
                 ({dtype:?} {dims:?}), so its type or shape is wrong"
            )));
        }
    }
    // Only the last tensor's padding may follow its data.
    if let Some(last) = prev.filter(|_| size - data_end >= alignment) {
        return Err(w.err(format!(
            "{} bytes follow the data of the last tensor ({last}), more than the \
             {alignment}-byte alignment padding: its type or shape is wrong, or the data \
             section does not start where the header says (wrong general.alignment?)",
            size - data_end
        )));
    }
    Ok(())
}
