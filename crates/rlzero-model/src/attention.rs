//! Grouped-query causal self-attention (Ainslie et al. 2023), differentiable end to end.
//!
//! `Attn(Q, K, V) = softmax(Q Kᵀ / √d + M) V` per head, where `M` is the additive mask from
//! [`crate::mask::MaskInfo::bias`]. With `H` query heads and `KV` k/v heads, query heads
//! `g·(H/KV) .. (g+1)·(H/KV)` share k/v head `g` (transformers' `repeat_kv` order). Instead of
//! copying k/v `H/KV` times, the query heads of one group are folded into the row dimension:
//! `(B, KV, G·T, d) @ (B, KV, d, T)`, so the weights of k/v are never duplicated in memory.

use candle_core::Tensor;

use crate::config::{Architecture, DecoderConfig};
use crate::error::Result;
use crate::fused;
use crate::layers::{Linear, RmsNorm};
use crate::weights::Vb;

/// Causal grouped-query self-attention with rotary positions (`self_attn` in HF checkpoints):
/// `num_attention_heads` query heads share `num_key_value_heads` key/value heads.
#[derive(Debug, Clone)]
pub struct Attention {
    /// Queries `(heads · head_dim, hidden)`.
    pub q_proj: Linear,
    /// Keys `(kv_heads · head_dim, hidden)`.
    pub k_proj: Linear,
    /// Values `(kv_heads · head_dim, hidden)`.
    pub v_proj: Linear,
    /// Output `(hidden, heads · head_dim)`.
    pub o_proj: Linear,
    /// Qwen3 normalises each head of q and k before the rotation.
    pub q_norm: Option<RmsNorm>,
    /// Qwen3's per-head key norm (see `q_norm`).
    pub k_norm: Option<RmsNorm>,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
}

impl Attention {
    /// Reads `q_proj`, `k_proj`, `v_proj`, `o_proj` (and Qwen3's `q_norm`/`k_norm`) under `vb`.
    pub fn new(cfg: &DecoderConfig, vb: Vb<'_>) -> Result<Self> {
        let (h, kv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let bias = cfg.attention_bias;
        let (q_norm, k_norm) = match cfg.architecture {
            Architecture::Qwen3 => (
                Some(RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("q_norm"))?),
                Some(RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("k_norm"))?),
            ),
            Architecture::Llama | Architecture::Qwen2 => (None, None),
        };
        Ok(Self {
            q_proj: Linear::new(cfg.hidden_size, h * d, bias, vb.pp("q_proj"))?,
            k_proj: Linear::new(cfg.hidden_size, kv * d, bias, vb.pp("k_proj"))?,
            v_proj: Linear::new(cfg.hidden_size, kv * d, bias, vb.pp("v_proj"))?,
            // o_proj never carries a bias in Qwen2/Qwen3; Llama ties it to `attention_bias`.
            o_proj: Linear::new(
                h * d,
                cfg.hidden_size,
                bias && cfg.architecture == Architecture::Llama,
                vb.pp("o_proj"),
            )?,
            q_norm,
            k_norm,
            n_heads: h,
            n_kv: kv,
            head_dim: d,
        })
    }

    /// Projects `x` `(B, T, hidden)` to rotated `q` `(B, H, T, d)` and `k`, `v` `(B, KV, T, d)`.
    pub fn qkv(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = self.qkv_grouped(x, cos, sin)?;
        let (b, t) = (k.dim(0)?, k.dim(2)?);
        Ok((q.reshape((b, self.n_heads, t, self.head_dim))?, k, v))
    }

    /// [`Attention::qkv`] with `q` in the grouped layout `(B, KV, G·T, d)` (the same values),
    /// as the training path attends: no reshape node between the projection and the product.
    fn qkv_grouped(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let d = self.head_dim;
        // One fused op per projection: (B, T, n·d) → rotated (B, n, T, d) ([`fused::heads`]).
        let heads = |proj: &Linear, n: usize, norm: &Option<RmsNorm>, tabs, groups| {
            let y = proj.forward(x)?; // (B, T, n·d)
            let y = match norm {
                // Qwen3 normalises each head before the rotation.
                Some(norm) => norm
                    .forward(&y.reshape((b, t, n, d))?)?
                    .reshape((b, t, n * d))?,
                None => y,
            };
            fused::split_heads(&y, n, tabs, groups)
        };
        let g = self.n_heads / self.n_kv;
        let q = heads(
            &self.q_proj,
            self.n_heads,
            &self.q_norm,
            Some((cos, sin)),
            g,
        )?; // (B, KV, G·T, d)
        let k = heads(&self.k_proj, self.n_kv, &self.k_norm, Some((cos, sin)), 1)?; // (B, KV, T, d)
        let v = heads(&self.v_proj, self.n_kv, &None, None, 1)?; // (B, KV, T, d)
        Ok((q, k, v))
    }

    /// Attends `q` `(B, H, Tq, d)` over `k`, `v` `(B, KV, Tk, d)` with additive `bias`
    /// `(B, 1, 1, Tq, Tk)`; returns the output projection `(B, Tq, hidden)`.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<Tensor> {
        self.o_proj.forward(&self.attend_heads(q, k, v, bias)?)
    }

    /// [`Attention::attend`] before the output projection: the heads' outputs concatenated,
    /// `(B, Tq, H · d)`. The rollout's KV-cache path attends sequence by sequence with this and
    /// projects all rows together.
    pub fn attend_heads(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
    ) -> Result<Tensor> {
        let (b, h, tq, d) = q.dims4()?;
        let q = q.reshape((b, self.n_kv, (h / self.n_kv) * tq, d))?; // (B, KV, G·Tq, d)
        self.attend_grouped(&q, k, v, bias)
    }

    /// [`Attention::attend_heads`] for `q` in the grouped layout `(B, KV, G·Tq, d)`.
    fn attend_grouped(&self, q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (_, _, gtq, d) = q.dims4()?;
        let tq = gtq / (self.n_heads / self.n_kv);
        let tk = k.dim(2)?;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = q.matmul(&k.t()?)?; // (B, KV, G·Tq, Tk)

        // bias (Bm, 1, 1, Tq, Tk) → (Bm, Tq, Tk), shared by every head. A broadcast bias (the
        // decode step's scalar zero, or one without the batch dims) is expanded first.
        let bm = if bias.rank() == 5 { bias.dim(0)? } else { 1 };
        let bias = bias
            .broadcast_as((bm, 1, 1, tq, tk))?
            .reshape((bm, tq, tk))?;
        let probs = fused::masked_softmax(&scores, &bias, scale)?; // (B, KV, G·Tq, Tk)
        let out = probs.matmul(v)?; // (B, KV, G·Tq, d), laid out as (B, H, Tq, d)
        fused::merge_heads(&out, self.n_heads) // (B, Tq, H·d)
    }

    /// Full-sequence attention (training and scoring path).
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.qkv_grouped(x, cos, sin)?;
        self.o_proj.forward(&self.attend_grouped(&q, &k, &v, bias)?)
    }

    /// Attention with shared prompts ([`crate::prefix`]): prompt rows `xp` `(n, P, hidden)`
    /// attend to themselves; completion rows `xr` `(B, C, hidden)` attend to
    /// `[prompt group[b] ; own]` keys `(B, KV, P + C, d)`. Each of `prompt`/`rows` is
    /// `(cos, sin, bias)`, the rows' bias `(B, 1, 1, C, P + C)`. Returns both outputs.
    pub(crate) fn forward_shared(
        &self,
        xp: &Tensor,
        xr: &Tensor,
        prompt: (&Tensor, &Tensor, &Tensor),
        rows: (&Tensor, &Tensor, &Tensor),
        group: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (qp, kp, vp) = self.qkv_grouped(xp, prompt.0, prompt.1)?; // (n, KV, G·P, d), (n, KV, P, d)
        let (qr, kr, vr) = self.qkv_grouped(xr, rows.0, rows.1)?; // (B, KV, G·C, d), (B, KV, C, d)
        let yp = self.attend_grouped(&qp, &kp, &vp, prompt.2)?; // (n, P, H·d)
        let yp = self.o_proj.forward(&yp)?;
        // yp: (n, P, hidden). index_select's backward sums the G rows' gradients into their
        // shared prompt.
        let k = Tensor::cat(&[&kp.index_select(group, 0)?, &kr], 2)?; // (B, KV, P + C, d)
        let v = Tensor::cat(&[&vp.index_select(group, 0)?, &vr], 2)?;
        let yr = self
            .o_proj
            .forward(&self.attend_grouped(&qr, &k, &v, rows.2)?)?; // (B, C, hidden)
        Ok((yp, yr))
    }
}
