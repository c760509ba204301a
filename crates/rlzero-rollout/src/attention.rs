//! Decode-time attention over per-sequence KV caches (no grad): each new row attends to its
//! own sequence's cache up to its position, `softmax(q·kᵀ/√d) v` per head.
//!
//! One parallel task per (row, k/v head): the `G = H / KV` query heads that share a k/v head
//! read each key and value once. Per task, three passes:
//! 1. scores `s[h, j] = (q_h · k_j) / √d`, each dot product as the decode kernels compute one
//!    (8 lanes of fused multiply-adds over the head dimension in order, a fixed reduction, the
//!    scalar tail);
//! 2. a softmax per head (max-subtracted, in f32, with the trainer's [`exp_f32`]);
//! 3. `o_h = Σ_j p[h, j] v_j`, each output element a chain of fused multiply-adds over `j` in
//!    order, kept in registers 64 elements at a time.
//!
//! Both passes are written once over 8 f32 lanes ([`crate::kernels::lanes`]) and compiled for
//! AVX2, NEON and plain Rust: the same operations in the same order (a test compares their bits),
//! and no output depends on the batch or the number of threads.

use rayon::prelude::*;
use rlzero_model::fused::exp_f32;

use crate::kernels::lanes::{on_path, CheckedPath, Lanes, LanesKernel, LANES};
use crate::kv_cache::KvCache;

/// Causal attention of each row over its sequence's cache up to (and including) its position.
/// `q` is `(rows, H, d)`; row `r` belongs to sequence `row_seq[r]` at position `row_pos[r]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    caches: &[&mut KvCache],
    row_seq: &[usize],
    row_pos: &[usize],
    layer: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    scale: f32,
) -> Vec<f32> {
    let path = CheckedPath::detect();
    let group = nh / nkv;
    let mut out = vec![0f32; q.len()];
    // Chunk i = (row r, k/v head g): the `group` query heads g·group .. (g+1)·group of row r.
    out.par_chunks_mut(group * hd)
        .enumerate()
        .for_each(|(i, og)| {
            let (r, g) = (i / nkv, i % nkv);
            let (s, len) = (row_seq[r], row_pos[r] + 1);
            let head = Head {
                keys: &caches[s].keys(layer, g)[..len * hd],
                values: &caches[s].values(layer, g)[..len * hd],
                len,
                hd,
            };
            head.attend(path, &q[i * group * hd..(i + 1) * group * hd], scale, og);
        });
    out
}

/// One k/v head's cache, `len` positions of `hd` values each.
struct Head<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    len: usize,
    hd: usize,
}

impl Head<'_> {
    /// `og (G, d) = softmax(qg kᵀ · scale) v` for the `G` query heads in `qg (G, d)`; `og` starts
    /// at zero.
    fn attend(&self, path: CheckedPath, qg: &[f32], scale: f32, og: &mut [f32]) {
        let (len, hd) = (self.len, self.hd);
        let group = qg.len() / hd;
        let mut p = vec![0f32; group * len]; // (G, len)
        self.scores(path, qg, scale, &mut p);
        for row in p.chunks_mut(len) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut z = 0f32;
            for x in row.iter_mut() {
                *x = exp_f32(*x - max); // the trainer's softmax exp, and vectorisable
                z += *x;
            }
            row.iter_mut().for_each(|x| *x /= z);
        }
        self.weighted_sum(path, &p, og);
    }

    /// `p[h, j] = (q_h · k_j) · scale`.
    fn scores(&self, path: CheckedPath, qg: &[f32], scale: f32, p: &mut [f32]) {
        let (keys, len, hd) = (self.keys, self.len, self.hd);
        on_path(
            path,
            Scores {
                qg,
                keys,
                len,
                hd,
                scale,
                p,
            },
        )
    }

    /// `og[h] += Σ_j p[h, j] v_j`, one fused multiply-add per element and key, keys in order.
    fn weighted_sum(&self, path: CheckedPath, p: &[f32], og: &mut [f32]) {
        let (values, len, hd) = (self.values, self.len, self.hd);
        on_path(
            path,
            WeightedSum {
                p,
                values,
                len,
                hd,
                og,
            },
        )
    }
}

/// [`Head::scores`] for one path's lanes: one dot product per (key, head), inlined, so the core
/// overlaps the independent FMA chains of neighbouring keys and heads.
struct Scores<'a> {
    qg: &'a [f32],
    keys: &'a [f32],
    len: usize,
    hd: usize,
    scale: f32,
    p: &'a mut [f32],
}

impl LanesKernel for Scores<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: Lanes>(self) {
        let Scores {
            qg,
            keys,
            len,
            hd,
            scale,
            p,
        } = self;
        let group = qg.len() / hd;
        assert!(keys.len() >= len * hd && p.len() >= group * len);
        let chunks = hd / LANES;
        for j in 0..len {
            let kp = keys.as_ptr().add(j * hd);
            for h in 0..group {
                let qp = qg.as_ptr().add(h * hd);
                let mut acc = V::zero();
                for c in 0..chunks {
                    acc = acc.fma(V::load(qp.add(c * LANES)), V::load(kp.add(c * LANES)));
                }
                let mut t = acc.hsum();
                for i in chunks * LANES..hd {
                    t = (*qp.add(i)).mul_add(*kp.add(i), t);
                }
                p[h * len + j] = t * scale;
            }
        }
    }
}

/// [`Head::weighted_sum`] for one path's lanes: 64 outputs of a head at a time stay in eight
/// vectors over all keys (eight independent FMA chains, enough to fill two FMA units).
struct WeightedSum<'a> {
    p: &'a [f32],
    values: &'a [f32],
    len: usize,
    hd: usize,
    og: &'a mut [f32],
}

impl LanesKernel for WeightedSum<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: Lanes>(self) {
        const U: usize = 8; // vectors per block: 64 outputs
        let WeightedSum {
            p,
            values,
            len,
            hd,
            og,
        } = self;
        let group = og.len() / hd;
        assert!(values.len() >= len * hd && p.len() >= group * len);
        let vp = values.as_ptr();
        for h in 0..group {
            let ph = &p[h * len..(h + 1) * len];
            let o = og[h * hd..(h + 1) * hd].as_mut_ptr();
            let mut c0 = 0;
            while c0 + U * LANES <= hd {
                let mut a = [V::zero(); U];
                for (u, a) in a.iter_mut().enumerate() {
                    *a = V::load(o.add(c0 + u * LANES));
                }
                for (j, &w) in ph.iter().enumerate() {
                    let w = V::splat(w);
                    let v = vp.add(j * hd + c0);
                    for (u, a) in a.iter_mut().enumerate() {
                        *a = a.fma(w, V::load(v.add(u * LANES)));
                    }
                }
                for (u, a) in a.iter().enumerate() {
                    a.store(o.add(c0 + u * LANES));
                }
                c0 += U * LANES;
            }
            while c0 + LANES <= hd {
                let mut a = V::load(o.add(c0));
                for (j, &w) in ph.iter().enumerate() {
                    a = a.fma(V::splat(w), V::load(vp.add(j * hd + c0)));
                }
                a.store(o.add(c0));
                c0 += LANES;
            }
            for i in c0..hd {
                let mut a = *o.add(i);
                for (j, &w) in ph.iter().enumerate() {
                    a = w.mul_add(*vp.add(j * hd + i), a);
                }
                *o.add(i) = a;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rlzero_model::simd::SimdPath;

    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// The attention in f64, from the definition.
    fn naive(q: &[f32], k: &[f32], v: &[f32], len: usize, hd: usize, scale: f32) -> Vec<f64> {
        let group = q.len() / hd;
        let mut out = vec![0f64; group * hd];
        for h in 0..group {
            let s: Vec<f64> = (0..len)
                .map(|j| {
                    (0..hd)
                        .map(|i| q[h * hd + i] as f64 * k[j * hd + i] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
            for j in 0..len {
                let pj = (s[j] - max).exp() / z;
                for i in 0..hd {
                    out[h * hd + i] += pj * v[j * hd + i] as f64;
                }
            }
        }
        out
    }

    /// Head sizes with and without a 64-wide block, an 8-wide step and a scalar tail; both
    /// paths this CPU runs give the same bits, and both match the definition.
    #[test]
    fn every_path_agrees_bit_for_bit_and_with_the_definition() {
        let paths = SimdPath::available_paths();
        for (group, len, hd) in [(3, 1, 64), (3, 37, 64), (1, 5, 128), (2, 9, 80), (4, 3, 13)] {
            let (keys, values) = (data(len * hd, 1), data(len * hd, 2));
            let q = data(group * hd, 3);
            let head = Head {
                keys: &keys,
                values: &values,
                len,
                hd,
            };
            let scale = 1.0 / (hd as f32).sqrt();
            let run = |path| {
                let mut og = vec![0f32; group * hd];
                head.attend(CheckedPath::new(path), &q, scale, &mut og);
                og
            };
            let reference = run(SimdPath::Portable);
            for &path in &paths {
                let got = run(path);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&reference),
                    "{path:?} ({group},{len},{hd})"
                );
            }
            let want = naive(&q, &keys, &values, len, hd, scale);
            for (i, (&g, &w)) in reference.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() < 1e-5,
                    "({group},{len},{hd})[{i}]: {g} vs {w}"
                );
            }
        }
    }
}
