//! A minimal walk over a GGUF header, used only to explain a header that candle rejected: it
//! finds the first tensor whose ggml type candle cannot read, so the error can name it.

use std::io::{BufReader, Read};
use std::path::Path;

/// ggml type ids candle 0.11 reads (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2K–Q8K, BF16).
const SUPPORTED: &[u32] = &[0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];

struct Walker<R> {
    r: R,
    wide: bool,
}

impl<R: Read> Walker<R> {
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).ok()?;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }
    fn len(&mut self) -> Option<u64> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }
    fn skip(&mut self, n: u64) -> Option<()> {
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink()).ok()?;
        (copied == n).then_some(())
    }
    fn string(&mut self) -> Option<String> {
        let n = self.len()?;
        if n > 1 << 20 {
            return None;
        }
        let mut v = vec![0u8; n as usize];
        self.r.read_exact(&mut v).ok()?;
        Some(String::from_utf8_lossy(&v).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Option<()> {
        match ty {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            8 => {
                let n = self.len()?;
                self.skip(n)
            }
            9 if depth < 4 => {
                let inner = self.u32()?;
                let n = self.len()?;
                for _ in 0..n {
                    self.value(inner, depth + 1)?;
                }
                Some(())
            }
            _ => None,
        }
    }
}

/// `(tensor name, ggml type id)` of the first tensor candle cannot read, if the header is
/// readable that far.
pub fn first_unsupported_tensor(path: &Path) -> Option<(String, u32)> {
    let f = std::fs::File::open(path).ok()?;
    let mut w = Walker {
        r: BufReader::new(f),
        wide: true,
    };
    if &w.bytes::<4>()? != b"GGUF" {
        return None;
    }
    w.wide = w.u32()? >= 2;
    let n_tensors = w.len()?;
    let n_kv = w.len()?;
    for _ in 0..n_kv {
        w.string()?;
        let ty = w.u32()?;
        w.value(ty, 0)?;
    }
    for _ in 0..n_tensors {
        let name = w.string()?;
        let dims = w.u32()?;
        for _ in 0..dims {
            w.len()?;
        }
        let ty = w.u32()?;
        w.u64()?;
        if !SUPPORTED.contains(&ty) {
            return Some((name, ty));
        }
    }
    None
}
