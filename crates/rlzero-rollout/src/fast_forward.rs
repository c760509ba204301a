//! The no-grad decode path: the same decoder as `rlzero_model::Decoder`, evaluated on plain f32
//! slices that borrow the decoder's own weight storage (no copy; an optimizer step on the
//! trainable weights is seen by the next rollout), with a per-sequence [`KvCache`].
//!
//! One call advances any set of sequences by any number of new tokens each: a prompt's prefill
//! is one sequence with `T` new tokens, a decode step is `N` sequences with one token each. Rows
//! of all sequences go through the linear maps together (see [`crate::kernels`]); attention runs
//! per row over that row's own cache.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rlzero_model::fused::exp_f32;
use rlzero_model::layers::Linear;
use rlzero_model::{Architecture, Decoder, DecoderConfig};

use crate::attention::attention;
use crate::backend::StepModel;
use crate::error::{Result, RolloutError};
use crate::kv_cache::KvCache;

mod weights;
use weights::{apply_all, ordered_tensors, Lin};
pub(crate) use weights::{WeightFormat, WeightGuards};

/// Seconds spent in each part of the batched decode steps, accumulated over a rollout.
#[derive(Debug, Clone, Default)]
pub struct StepProfile {
    /// q/k/v/o and MLP projections.
    pub linear_s: f64,
    /// Final norm and the vocabulary projection.
    pub lm_head_s: f64,
    /// Scores, softmax and weighted values over the cache.
    pub attention_s: f64,
    /// Embedding, norms, rotary, activations, residuals, cache appends.
    pub other_s: f64,
}

struct Layer<'a> {
    in_norm: &'a [f32],
    q: Lin<'a>,
    k: Lin<'a>,
    v: Lin<'a>,
    o: Lin<'a>,
    q_norm: Option<&'a [f32]>,
    k_norm: Option<&'a [f32]>,
    post_norm: &'a [f32],
    gate: Lin<'a>,
    up: Lin<'a>,
    down: Lin<'a>,
}

impl Layer<'_> {
    fn qkv(&self, x: &[f32], rows: usize) -> [Vec<f32>; 3] {
        apply_all([&self.q, &self.k, &self.v], x, rows)
    }

    fn gate_up(&self, x: &[f32], rows: usize) -> [Vec<f32>; 2] {
        apply_all([&self.gate, &self.up], x, rows)
    }
}

/// The decoder as slices, ready to run.
pub struct FastDecoder<'a> {
    cfg: DecoderConfig,
    embed: &'a [f32],
    layers: Vec<Layer<'a>>,
    norm: &'a [f32],
    lm_head: Lin<'a>,
    inv_freq: Vec<f32>,
}

impl<'a> FastDecoder<'a> {
    /// The decode path over `guards` (the locked weights of `d`), streaming the linear maps in
    /// `format`. Errors with [`RolloutError::AdaptersNotMerged`] if `d` carries LoRA adapters.
    pub(crate) fn new(
        d: &Decoder,
        guards: &'a WeightGuards<'_>,
        format: WeightFormat,
    ) -> Result<Self> {
        if d.has_adapters() {
            return Err(RolloutError::AdaptersNotMerged);
        }
        let cfg = d.config().clone();
        let (h, kv, hd, inter) = (
            cfg.hidden_size,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        );
        let nq = cfg.num_attention_heads * hd;
        let slices = guards.slices()?;
        // `ordered_tensors` and this function walk the same module tree, so the count matches
        // unless the decoder changed between `lock` and `new`; check once instead of panicking.
        let expected = ordered_tensors(d).len();
        if slices.len() != expected {
            return Err(RolloutError::UnsupportedModel(format!(
                "{} locked weights for a decoder with {expected}",
                slices.len()
            )));
        }
        let mut it = slices.into_iter();
        let mut next = || it.next().unwrap_or(&[]);
        // A linear map's weight, then its bias if it has one (the order of `ordered_tensors`).
        fn lin<'s>(
            next: &mut impl FnMut() -> &'s [f32],
            p: &Linear,
            out: usize,
            inp: usize,
            format: WeightFormat,
        ) -> Lin<'s> {
            let w = next();
            let b = p.bias.as_ref().map(|_| next());
            Lin::new(w, b, out, inp, format)
        }
        let embed = next();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in d.layers() {
            let a = &l.self_attn;
            let in_norm = next();
            let q = lin(&mut next, &a.q_proj, nq, h, format);
            let k = lin(&mut next, &a.k_proj, kv * hd, h, format);
            let v = lin(&mut next, &a.v_proj, kv * hd, h, format);
            let o = lin(&mut next, &a.o_proj, h, nq, format);
            let q_norm = a.q_norm.as_ref().map(|_| next());
            let k_norm = a.k_norm.as_ref().map(|_| next());
            let post_norm = next();
            let gate = lin(&mut next, &l.mlp.gate_proj, inter, h, format);
            let up = lin(&mut next, &l.mlp.up_proj, inter, h, format);
            let down = lin(&mut next, &l.mlp.down_proj, h, inter, format);
            layers.push(Layer {
                in_norm,
                q,
                k,
                v,
                o,
                q_norm,
                k_norm,
                post_norm,
                gate,
                up,
                down,
            });
        }
        let norm = next();
        let head = if d.has_tied_embeddings() {
            embed
        } else {
            next()
        };
        let lm_head = Lin::new(head, None, cfg.vocab_size, h, format);
        debug_assert!(matches!(
            cfg.architecture,
            Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3
        ));
        Ok(Self {
            inv_freq: d.rotary().inv_freq().to_vec(),
            cfg,
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// A cache sized for this model, with room for `initial` tokens.
    pub fn new_cache(&self, initial: usize) -> KvCache {
        let c = &self.cfg;
        KvCache::new(
            c.num_hidden_layers,
            c.num_key_value_heads,
            c.head_dim,
            initial,
            64,
        )
    }

    /// Appends `tokens[s]` to sequence `s` (whose cache is `caches[s]`) and returns the logits
    /// `(S, V)` after each sequence's last new token.
    pub fn step(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[&[u32]],
        prof: &mut StepProfile,
    ) -> Vec<f32> {
        let t_start = Instant::now();
        let mut t_lin = 0.0;
        let mut t_att = 0.0;
        let c = &self.cfg;
        let (h, nh, nkv, hd) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        );
        // Row r belongs to sequence row_seq[r] at position row_pos[r].
        let mut row_seq = vec![];
        let mut row_pos = vec![];
        for (s, toks) in tokens.iter().enumerate() {
            caches[s].reserve(toks.len());
            for j in 0..toks.len() {
                row_seq.push(s);
                row_pos.push(caches[s].len + j);
            }
        }
        let rows = row_seq.len();
        let mut x = Vec::with_capacity(rows * h);
        for toks in tokens {
            for &t in *toks {
                x.extend_from_slice(&self.embed[t as usize * h..(t as usize + 1) * h]);
            }
        }
        let (cos, sin) = self.rope_tables(&row_pos);
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, l) in self.layers.iter().enumerate() {
            let hn = rms_norm(&x, l.in_norm, h, c.rms_norm_eps);
            let t = Instant::now();
            let [mut q, mut k, v] = l.qkv(&hn, rows);
            t_lin += t.elapsed().as_secs_f64();
            if let (Some(qn), Some(kn)) = (l.q_norm, l.k_norm) {
                q = rms_norm(&q, qn, hd, c.rms_norm_eps);
                k = rms_norm(&k, kn, hd, c.rms_norm_eps);
            }
            rope(&mut q, &cos, &sin, nh, hd);
            rope(&mut k, &cos, &sin, nkv, hd);
            // Append this step's keys/values, sequence by sequence (rows are grouped by sequence).
            let mut r0 = 0;
            for (s, toks) in tokens.iter().enumerate() {
                let n = toks.len();
                caches[s].push(
                    li,
                    &k[r0 * nkv * hd..(r0 + n) * nkv * hd],
                    &v[r0 * nkv * hd..(r0 + n) * nkv * hd],
                );
                r0 += n;
            }
            let t = Instant::now();
            let att = attention(&q, caches, &row_seq, &row_pos, li, nh, nkv, hd, scale);
            t_att += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let o = l.o.apply(&att, rows);
            t_lin += t.elapsed().as_secs_f64();
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let hn = rms_norm(&x, l.post_norm, h, c.rms_norm_eps);
            let t = Instant::now();
            let [g, u] = l.gate_up(&hn, rows);
            t_lin += t.elapsed().as_secs_f64();
            let a: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(&g, &u)| g / (1.0 + exp_f32(-g)) * u) // as the trainer's fused SwiGLU
                .collect();
            let t = Instant::now();
            let d = l.down.apply(&a, rows);
            t_lin += t.elapsed().as_secs_f64();
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        for (s, toks) in tokens.iter().enumerate() {
            caches[s].advance(toks.len());
        }
        let t_head = Instant::now();
        // Logits only for each sequence's last row.
        let mut last = Vec::with_capacity(tokens.len() * h);
        let mut r = 0;
        for toks in tokens {
            r += toks.len();
            last.extend_from_slice(&x[(r - 1) * h..r * h]);
        }
        let last = rms_norm(&last, self.norm, h, c.rms_norm_eps);
        let logits = self.lm_head.apply(&last, tokens.len());
        let head = t_head.elapsed().as_secs_f64();
        prof.lm_head_s += head;
        prof.linear_s += t_lin;
        prof.attention_s += t_att;
        prof.other_s += t_start.elapsed().as_secs_f64() - head - t_lin - t_att;
        logits
    }

    /// `cos`/`sin` `(rows, head_dim / 2)` for each row's position, computed as the trainable
    /// path computes them (f32 position × f32 frequency, then cos/sin in f32).
    fn rope_tables(&self, pos: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(pos.len() * half);
        let mut sin = Vec::with_capacity(pos.len() * half);
        for &p in pos {
            for &f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        (cos, sin)
    }
}

/// RMSNorm over consecutive groups of `dim` values.
fn rms_norm(x: &[f32], w: &[f32], dim: usize, eps: f64) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(dim) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ms + eps as f32).sqrt();
        y.extend(row.iter().zip(w).map(|(v, w)| v * inv * w));
    }
    y
}

/// Rotate-half RoPE in place on `(rows, heads, dim)`.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], heads: usize, dim: usize) {
    let half = dim / 2;
    for (r, row) in x.chunks_mut(heads * dim).enumerate() {
        let (c, s) = (
            &cos[r * half..(r + 1) * half],
            &sin[r * half..(r + 1) * half],
        );
        for head in row.chunks_mut(dim) {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * c[i] - b * s[i];
                head[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

/// Keeps a pool thread taking the step's parallel tasks the moment they appear, until `done`.
///
/// Between two parallel passes the step runs a few tens of microseconds of serial code; an idle
/// rayon worker goes to sleep after about as long, and waking it costs more again (about 150
/// hand-offs a step). This loop steals work through `rayon::yield_now` and spins while there is
/// none, as decode loops commonly do. On the step's own thread (`step_thread`) it returns at once:
/// there it would sit on top of the suspended step and never see `done`.
fn stay_awake(done: &AtomicBool, step_thread: Option<usize>) {
    if rayon::current_thread_index() == step_thread {
        return;
    }
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::hint::spin_loop();
        }
    }
}

impl StepModel for FastDecoder<'_> {
    type Cache = KvCache;

    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        Ok(FastDecoder::new_cache(self, capacity))
    }

    fn fork(&self, cache: &KvCache, extra: usize) -> Result<KvCache> {
        let mut c = cache.clone();
        c.reserve(extra);
        Ok(c)
    }

    fn step(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[&[u32]],
        prof: &mut StepProfile,
    ) -> Result<Vec<f32>> {
        // On a pool thread, with the other pool threads kept awake (`stay_awake`) for the step's
        // ~150 parallel passes, instead of the calling thread handing every pass to the pool
        // and sleeping on it.
        let done = AtomicBool::new(false);
        let done = &done;
        Ok(rayon::scope(|scope| {
            let me = rayon::current_thread_index();
            for _ in 1..rayon::current_num_threads() {
                scope.spawn(move |_| stay_awake(done, me));
            }
            let logits = FastDecoder::step(self, caches, tokens, prof);
            done.store(true, Ordering::Release);
            logits
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::weights::LinWeight;
    use super::*;
    use candle_core::{Storage, Tensor};
    use rlzero_model::{load, LoadOptions, ModelSource};

    fn fixture(name: &str) -> rlzero_model::LoadedModel {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        load(&ModelSource::Dir(dir.join(name)), &LoadOptions::default()).unwrap()
    }

    fn storage_ptr(t: &Tensor) -> *const f32 {
        let (s, l) = t.storage_and_layout();
        match &*s {
            Storage::Cpu(c) => c.as_slice::<f32>().unwrap()[l.start_offset()..].as_ptr(),
            _ => unreachable!("CPU fixtures"),
        }
    }

    #[test]
    fn every_weight_is_locked_once() {
        for (name, tied) in [("tiny-qwen3", true), ("tiny-llama", false)] {
            let m = fixture(name);
            assert_eq!(m.decoder.has_tied_embeddings(), tied);
            let ts = ordered_tensors(&m.decoder);
            let mut ptrs: Vec<_> = ts.iter().map(|t| storage_ptr(t)).collect();
            ptrs.sort();
            let n = ptrs.len();
            ptrs.dedup();
            assert_eq!(ptrs.len(), n, "{name}: a storage is locked twice");
            // And the fast decoder still finds its lm_head (the embedding, when tied).
            let guards = WeightGuards::lock(&m.decoder).unwrap();
            let fast = FastDecoder::new(&m.decoder, &guards, WeightFormat::F32).unwrap();
            let LinWeight::F32(head) = fast.lm_head.w else {
                panic!("f32 weights")
            };
            assert_eq!(head.len(), fast.embed.len());
            assert_eq!(std::ptr::eq(head, fast.embed), tied, "{name}");
        }
    }
}
