//! Per-sequence key/value cache, grown in preallocated chunks.
//!
//! Layout per layer: token-major `(len, n_kv_heads, head_dim)` for keys and for values, so
//! appending a token writes one contiguous row at the end. Capacity grows `chunk` tokens at a
//! time (`Vec::reserve_exact`), never by re-concatenating the cache every token.

/// Keys and values of one sequence, all layers.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// `keys[layer]`: `len × row` floats, `row = n_kv_heads · head_dim`.
    pub keys: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
    /// Tokens stored.
    pub len: usize,
    row: usize,
    chunk: usize,
}

impl KvCache {
    /// An empty cache with room for `initial` tokens.
    pub fn new(layers: usize, row: usize, initial: usize, chunk: usize) -> Self {
        Self {
            keys: (0..layers)
                .map(|_| Vec::with_capacity(initial * row))
                .collect(),
            values: (0..layers)
                .map(|_| Vec::with_capacity(initial * row))
                .collect(),
            len: 0,
            row,
            chunk: chunk.max(1),
        }
    }

    /// Floats per token per layer.
    pub fn row(&self) -> usize {
        self.row
    }

    /// Tokens the cache can hold before its next growth.
    pub fn capacity(&self) -> usize {
        self.keys
            .first()
            .map(|k| k.capacity() / self.row.max(1))
            .unwrap_or(0)
    }

    /// Makes room for `extra` more tokens, growing by whole chunks.
    pub fn reserve(&mut self, extra: usize) {
        let need = self.len + extra;
        if need <= self.capacity() {
            return;
        }
        let new_cap = need.div_ceil(self.chunk) * self.chunk;
        for v in self.keys.iter_mut().chain(self.values.iter_mut()) {
            v.reserve_exact(new_cap * self.row - v.len());
        }
    }

    /// Appends `n` tokens' keys and values (`n × row` each) to `layer`. Call [`Self::reserve`]
    /// first and [`Self::advance`] after the last layer.
    pub fn push(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.keys[layer].extend_from_slice(k);
        self.values[layer].extend_from_slice(v);
    }

    /// Records that `n` tokens were appended to every layer.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.keys.iter().all(|k| k.len() == self.len * self.row));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_in_whole_chunks() {
        let mut c = KvCache::new(2, 4, 10, 64);
        assert!(c.capacity() >= 10);
        c.reserve(11);
        assert_eq!(c.capacity(), 64);
        for _ in 0..64 {
            for l in 0..2 {
                c.push(l, &[1.0; 4], &[2.0; 4]);
            }
            c.advance(1);
        }
        assert_eq!(c.capacity(), 64, "no growth while within the chunk");
        c.reserve(1);
        assert_eq!(c.capacity(), 128);
    }
}
