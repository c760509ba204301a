//! Per-sequence key/value cache, grown in preallocated chunks.
//!
//! Layout: one buffer per (layer, k/v head), each `(len, head_dim)`, so attention for a head
//! streams one contiguous block, and appending a token writes `head_dim` floats at the end of
//! each buffer. Capacity grows `chunk` tokens at a time (`Vec::reserve_exact`), never by
//! re-concatenating the cache every token.

/// Keys and values of one sequence, all layers.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// `keys[layer · heads + h]`: `len × head_dim` floats.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Tokens stored.
    pub len: usize,
    heads: usize,
    head_dim: usize,
    chunk: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers of `heads` k/v heads, with room for `initial` tokens.
    pub fn new(layers: usize, heads: usize, head_dim: usize, initial: usize, chunk: usize) -> Self {
        let bufs = || {
            (0..layers * heads)
                .map(|_| Vec::with_capacity(initial * head_dim))
                .collect()
        };
        Self {
            keys: bufs(),
            values: bufs(),
            len: 0,
            heads,
            head_dim,
            chunk: chunk.max(1),
        }
    }

    /// Tokens the cache can hold before its next growth.
    pub fn capacity(&self) -> usize {
        self.keys
            .first()
            .map(|k| k.capacity() / self.head_dim.max(1))
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
            v.reserve_exact(new_cap * self.head_dim - v.len());
        }
    }

    /// Appends tokens' keys and values to `layer`; `k` and `v` are token-major
    /// `n × (heads · head_dim)`. Call [`Self::reserve`] first and [`Self::advance`] after the
    /// last layer.
    pub fn push(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let (h, d) = (self.heads, self.head_dim);
        for (kt, vt) in k.chunks(h * d).zip(v.chunks(h * d)) {
            for g in 0..h {
                self.keys[layer * h + g].extend_from_slice(&kt[g * d..(g + 1) * d]);
                self.values[layer * h + g].extend_from_slice(&vt[g * d..(g + 1) * d]);
            }
        }
    }

    /// Records that `n` tokens were appended to every layer.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self
            .keys
            .iter()
            .all(|k| k.len() == self.len * self.head_dim));
    }

    /// Keys of k/v head `g` in `layer`, `(tokens so far, head_dim)` (a layer being appended to
    /// may already hold this step's tokens).
    pub fn keys(&self, layer: usize, g: usize) -> &[f32] {
        &self.keys[layer * self.heads + g]
    }

    /// Values of k/v head `g` in `layer`.
    pub fn values(&self, layer: usize, g: usize) -> &[f32] {
        &self.values[layer * self.heads + g]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_in_whole_chunks_and_splits_heads() {
        let mut c = KvCache::new(2, 2, 2, 10, 64);
        assert!(c.capacity() >= 10);
        c.reserve(11);
        assert_eq!(c.capacity(), 64);
        for t in 0..64 {
            let x = t as f32;
            for l in 0..2 {
                c.push(l, &[x, x, -x, -x], &[x + 0.5; 4]);
            }
            c.advance(1);
        }
        assert_eq!(c.capacity(), 64, "no growth while within the chunk");
        assert_eq!(&c.keys(1, 0)[..4], &[0.0, 0.0, 1.0, 1.0]);
        assert_eq!(&c.keys(1, 1)[..4], &[-0.0, -0.0, -1.0, -1.0]);
        c.reserve(1);
        assert_eq!(c.capacity(), 128);
    }
}
