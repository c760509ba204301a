//! The decoder's weights as the decode path reads them: read locks on the tensors' storage
//! (held while a rollout runs) and each linear map as streamed, the f32 weights in place or a
//! bf16 copy.

use candle_core::{DType, Layout, Storage, StorageRef, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use rlzero_model::Decoder;

use crate::error::{Result, RolloutError};
use crate::kernels::{linear, linear_many, Bf16, Matrix, Weight};

/// Read locks on every weight tensor of a decoder, held while a rollout runs.
pub struct WeightGuards<'t> {
    guards: Vec<(StorageRef<'t>, &'t Layout)>,
}

/// The tensors in the fixed order [`FastDecoder::new`] consumes them. A tied `lm_head` is the
/// embedding's storage and is not listed again: read-locking one `RwLock` twice from one thread
/// can deadlock against a waiting writer.
pub(super) fn ordered_tensors(d: &Decoder) -> Vec<&Tensor> {
    let mut ts = vec![d.embed_tokens()];
    for l in d.layers() {
        let a = &l.self_attn;
        ts.push(&l.input_layernorm.weight);
        for p in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj] {
            ts.push(&p.weight);
            ts.extend(p.bias.iter());
        }
        ts.extend(a.q_norm.iter().map(|n| &n.weight));
        ts.extend(a.k_norm.iter().map(|n| &n.weight));
        ts.push(&l.post_attention_layernorm.weight);
        for p in [&l.mlp.gate_proj, &l.mlp.up_proj, &l.mlp.down_proj] {
            ts.push(&p.weight);
            ts.extend(p.bias.iter());
        }
    }
    ts.push(&d.norm().weight);
    if !d.has_tied_embeddings() {
        ts.push(&d.lm_head().weight);
    }
    ts
}

impl<'t> WeightGuards<'t> {
    /// Locks the weights of `d`; they must be contiguous f32 on the CPU, with no LoRA adapters
    /// (see [`RolloutError::AdaptersNotMerged`]).
    pub fn lock(d: &'t Decoder) -> Result<Self> {
        if d.has_adapters() {
            return Err(RolloutError::AdaptersNotMerged);
        }
        if d.dtype() != DType::F32 || !d.device().is_cpu() {
            return Err(RolloutError::UnsupportedModel(format!(
                "{:?} on {:?}",
                d.dtype(),
                d.device()
            )));
        }
        let guards = ordered_tensors(d)
            .into_iter()
            .map(|t| {
                if !t.is_contiguous() {
                    return Err(RolloutError::UnsupportedModel(
                        "a non-contiguous weight".into(),
                    ));
                }
                Ok(t.storage_and_layout())
            })
            .collect::<Result<_>>()?;
        Ok(Self { guards })
    }

    pub(super) fn slices(&self) -> Result<Vec<&[f32]>> {
        self.guards
            .iter()
            .map(|(g, l)| match &**g {
                Storage::Cpu(c) => {
                    let s = c.as_slice::<f32>()?;
                    Ok(&s[l.start_offset()..l.start_offset() + l.shape().elem_count()])
                }
                _ => Err(RolloutError::UnsupportedModel(
                    "weights not on the CPU".into(),
                )),
            })
            .collect()
    }
}

/// The precision the decode path streams the linear maps' weights in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightFormat {
    /// The f32 weights' own memory, no copy.
    F32,
    /// A bf16 copy (round to nearest even) made when the rollout starts, so it follows every
    /// optimizer step; the embedding lookup and the norms stay f32.
    Bf16,
}

/// A linear map's weight `(out, in)` as streamed.
pub(super) enum LinWeight<'a> {
    F32(&'a [f32]),
    Bf16(Vec<Bf16>),
}

/// A linear map's weight `(out, in)` and optional bias.
pub(super) struct Lin<'a> {
    pub(super) w: LinWeight<'a>,
    pub(super) b: Option<&'a [f32]>,
    pub(super) out: usize,
    pub(super) inp: usize,
}

impl<'a> Lin<'a> {
    pub(super) fn new(
        w: &'a [f32],
        b: Option<&'a [f32]>,
        out: usize,
        inp: usize,
        f: WeightFormat,
    ) -> Self {
        let w = match f {
            WeightFormat::F32 => LinWeight::F32(w),
            WeightFormat::Bf16 => {
                let mut v = vec![Bf16::default(); w.len()];
                v.par_chunks_mut(1 << 16)
                    .zip(w.par_chunks(1 << 16))
                    .for_each(|(d, s)| d.convert_from_f32_slice(s));
                LinWeight::Bf16(v)
            }
        };
        Self { w, b, out, inp }
    }

    pub(super) fn apply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        match &self.w {
            LinWeight::F32(w) => linear(x, rows, self.inp, w, self.out, self.b),
            LinWeight::Bf16(w) => linear(x, rows, self.inp, w, self.out, self.b),
        }
    }
}

/// The matrices of `lins` as kernel inputs, if every weight is in the format `pick` accepts.
fn matrices<'l, W: Weight>(
    lins: &[&'l Lin<'_>],
    pick: impl Fn(&'l LinWeight<'_>) -> Option<&'l [W]>,
) -> Option<Vec<Matrix<'l, W>>> {
    lins.iter()
        .map(|l| {
            pick(&l.w).map(|w| Matrix {
                w,
                bias: l.b,
                out: l.out,
            })
        })
        .collect()
}

/// Runs matrices that share their input as one parallel pass (each matrix alone if their
/// formats differ, which `FastDecoder::new` never does).
pub(super) fn apply_all<const N: usize>(
    lins: [&Lin<'_>; N],
    x: &[f32],
    rows: usize,
) -> [Vec<f32>; N] {
    let inp = lins[0].inp;
    let f32s = matrices(&lins, |w| match w {
        LinWeight::F32(w) => Some(*w),
        LinWeight::Bf16(_) => None,
    });
    let bf16s = matrices(&lins, |w| match w {
        LinWeight::Bf16(w) => Some(w.as_slice()),
        LinWeight::F32(_) => None,
    });
    let outs = match (f32s, bf16s) {
        (Some(m), _) => linear_many(x, rows, inp, &m),
        (_, Some(m)) => linear_many(x, rows, inp, &m),
        _ => lins.iter().map(|l| l.apply(x, rows)).collect(),
    };
    outs.try_into()
        .unwrap_or_else(|_| unreachable!("one output per matrix"))
}
