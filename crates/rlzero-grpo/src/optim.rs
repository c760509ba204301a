//! AdamW exactly as `torch.optim.AdamW` computes it, and gradient-norm clipping as
//! `torch.nn.utils.clip_grad_norm_`.
//!
//! For step `t` (1-based, counted per parameter like torch's `state["step"]`), each
//! parameter `p` with gradient `g` and moments `m`, `v` (zero-initialised) is updated as
//! torch's `_single_tensor_adam(..., decoupled_weight_decay=True)` does:
//!
//! ```text
//! p ← p · (1 − lr·wd)                       # skipped when wd == 0
//! m ← lerp(m, g, 1 − β1)                    # = β1·m + (1 − β1)·g
//! v ← v·β2 + (1 − β2)·g·g
//! bc1 = 1 − β1^t,  bc2 = 1 − β2^t           # f64, like Python floats
//! denom = √v / bc2^½ + ε
//! p ← p + (−lr / bc1) · m / denom
//! ```
//!
//! Scalars are computed in `f64` (torch computes them in Python) and rounded once to the
//! parameter's dtype, and each tensor operation is applied in torch's order. torch's CPU
//! kernels evaluate `lerp` and `addcmul` with fused multiply-adds; those are reproduced by
//! computing the multiply-add in `f64` (the product of two `f32`s is exact there), so `f32`
//! results match torch bit for bit except on a ~2⁻²⁸-rare double rounding, and `f64`
//! results (no FMA emulation) to an ulp.
//!
//! Two implementations share that arithmetic:
//! * **fused** (CPU, `f32`, contiguous parameter): one in-place pass per parameter through a
//!   candle custom op, moments held in host `Vec<f32>`s, large parameters split into chunks
//!   run by rayon;
//! * **tensor ops** (any other device or dtype): candle tensor operations and [`Var::set`],
//!   moments held as tensors of the parameter's dtype (as torch's `zeros_like(param)`).
//!
//! This is `torch.optim.AdamW(foreach=False, fused=False)`. transformers ≥ 5 with torch ≥ 2.8
//! defaults to `optim="adamw_torch_fused"`, whose CPU kernel is the same math but rounds a
//! few elements differently (torch 2.15: 1 ulp in ~0.2% of elements after 5 steps).
//!
//! Unlike candle-nn's optimizers, a parameter without a gradient is an error
//! ([`GrpoError::MissingGradient`]) unless it was marked frozen with [`AdamW::set_frozen`].
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use rlzero_grpo::optim::{AdamW, AdamWParams};
//!
//! # fn main() -> rlzero_grpo::Result<()> {
//! let w = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &Device::Cpu)?)?;
//! let mut opt = AdamW::new(vec![w.clone()], AdamWParams::default())?;
//! let loss = w.as_tensor().sqr()?.sum_all()?;
//! opt.step(&loss.backward()?, 0.1)?;
//! // The first Adam step moves every coordinate by lr·sign(g) (up to ε).
//! let after = w.as_tensor().to_vec1::<f32>()?;
//! assert!((after[0] - 0.9).abs() < 1e-6 && (after[1] + 1.9).abs() < 1e-6);
//! assert_eq!(opt.state()?.params[0].step, 1);
//! # Ok(())
//! # }
//! ```

mod clip;
mod fused;
mod params;
mod tensor_ops;

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{GrpoError, Result};
pub use clip::{clip_grad_norm, grad_norm};
use fused::{Coeffs, FusedAdamW};
pub use params::AdamWParams;
use tensor_ops::{tensor_step, TensorStep};

/// Which implementation [`AdamW`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdamWKernel {
    /// The fused in-place kernel for CPU `f32` contiguous parameters, tensor ops for the
    /// rest (default).
    #[default]
    Auto,
    /// Tensor ops for every parameter (for tests and debugging; same results, slower).
    TensorOps,
}

/// One parameter's optimizer state, as plain vectors (torch's `state[p]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamState {
    /// Steps taken by this parameter (torch's `state["step"]`); frozen steps don't count.
    pub step: u64,
    /// First moment `exp_avg`, row-major, one value per element.
    pub exp_avg: Vec<f32>,
    /// Second moment `exp_avg_sq`, row-major.
    pub exp_avg_sq: Vec<f32>,
}

/// The whole optimizer state, for checkpoints. Round-trips exactly through
/// [`AdamW::state`] / [`AdamW::load_state`] for `f32`, `bf16` and `f16` parameters (`f64`
/// moments are rounded to `f32`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWState {
    /// Number of [`AdamW::step`] calls.
    pub step: u64,
    /// Per-parameter state, in [`AdamW::vars`] order.
    pub params: Vec<ParamState>,
}

/// Moments in the representation of the path that updates them.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Tensors { m: Tensor, v: Tensor },
}

struct Slot {
    moments: Moments,
    step: u64,
    frozen: bool,
}

/// `torch.optim.AdamW` (non-amsgrad, single-tensor) over a list of candle [`Var`]s.
pub struct AdamW {
    vars: Vec<Var>,
    slots: Vec<Slot>,
    params: AdamWParams,
    step: u64,
}

fn fused_eligible(var: &Var, kernel: AdamWKernel) -> bool {
    kernel == AdamWKernel::Auto
        && matches!(var.device(), Device::Cpu)
        && var.dtype() == DType::F32
        && var.layout().is_contiguous()
}

fn new_moments(var: &Var, kernel: AdamWKernel) -> Result<Moments> {
    Ok(if fused_eligible(var, kernel) {
        let n = var.elem_count();
        Moments::Host {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    } else {
        Moments::Tensors {
            m: var.zeros_like()?,
            v: var.zeros_like()?,
        }
    })
}

impl AdamW {
    /// An optimizer over `vars` with zeroed moments, using [`AdamWKernel::Auto`].
    ///
    /// # Errors
    /// [`GrpoError::Config`] if `params` fails [`AdamWParams::validate`]; a candle error if
    /// allocating the moments fails.
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> Result<Self> {
        Self::with_kernel(vars, params, AdamWKernel::Auto)
    }

    /// Like [`AdamW::new`] with an explicit implementation choice.
    ///
    /// # Errors
    /// As [`AdamW::new`].
    pub fn with_kernel(vars: Vec<Var>, params: AdamWParams, kernel: AdamWKernel) -> Result<Self> {
        params.validate()?;
        let slots = vars
            .iter()
            .map(|v| {
                Ok(Slot {
                    moments: new_moments(v, kernel)?,
                    step: 0,
                    frozen: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            slots,
            params,
            step: 0,
        })
    }

    /// The optimized variables, in construction order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The hyper-parameters.
    pub fn params(&self) -> &AdamWParams {
        &self.params
    }

    /// Sets the base learning rate used by [`AdamW::step_default_lr`].
    ///
    /// # Errors
    /// [`GrpoError::Config`] unless `lr` is finite and ≥ 0.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_lr(lr)?;
        self.params.lr = lr;
        Ok(())
    }

    /// Number of [`AdamW::step`] calls so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Marks var `index` frozen (or not). A frozen var is skipped by [`AdamW::step`] even if
    /// it has a gradient: no decay, no moment update, no step count, exactly like a torch
    /// parameter whose `.grad` is `None`.
    ///
    /// # Errors
    /// [`GrpoError::InvalidInput`] if `index` is out of range.
    pub fn set_frozen(&mut self, index: usize, frozen: bool) -> Result<()> {
        let n = self.slots.len();
        let slot = self.slots.get_mut(index).ok_or_else(|| {
            GrpoError::InvalidInput(format!("var index {index} out of range ({n} vars)"))
        })?;
        slot.frozen = frozen;
        Ok(())
    }

    /// Whether var `index` is frozen (`false` when out of range).
    pub fn is_frozen(&self, index: usize) -> bool {
        self.slots.get(index).is_some_and(|s| s.frozen)
    }

    /// One AdamW step at the base learning rate [`AdamWParams::lr`].
    ///
    /// # Errors
    /// As [`AdamW::step`].
    pub fn step_default_lr(&mut self, grads: &GradStore) -> Result<()> {
        self.step(grads, self.params.lr)
    }

    /// One AdamW step at learning rate `lr` (the scheduler's value for this step).
    ///
    /// Every gradient is checked before any parameter changes, so an error leaves the
    /// parameters and state untouched (unless a tensor operation itself fails midway).
    ///
    /// # Errors
    /// * [`GrpoError::Config`] unless `lr` is finite and ≥ 0;
    /// * [`GrpoError::MissingGradient`] for a non-frozen var with no gradient in `grads`;
    /// * [`GrpoError::InvalidInput`] for a gradient whose shape, dtype or device differs
    ///   from its var's;
    /// * candle errors from the update itself.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        check_lr(lr)?;
        let mut work = Vec::with_capacity(self.vars.len());
        for (i, (var, slot)) in self.vars.iter().zip(&self.slots).enumerate() {
            if slot.frozen {
                continue;
            }
            let g = grads
                .get(var.as_tensor())
                .ok_or_else(|| GrpoError::MissingGradient {
                    index: i,
                    shape: var.dims().to_vec(),
                })?;
            if g.dims() != var.dims()
                || g.dtype() != var.dtype()
                || !g.device().same_device(var.device())
            {
                return Err(GrpoError::InvalidInput(format!(
                    "gradient of var {i} is {:?} {:?} on {:?}, the var is {:?} {:?} on {:?}",
                    g.dims(),
                    g.dtype(),
                    g.device().location(),
                    var.dims(),
                    var.dtype(),
                    var.device().location()
                )));
            }
            work.push((i, g));
        }
        let p = self.params;
        for (i, g) in work {
            let (Some(var), Some(slot)) = (self.vars.get(i), self.slots.get_mut(i)) else {
                continue;
            };
            slot.step += 1;
            let t = slot.step as f64;
            // Python: `1 - beta1**step`, `lr / bias_correction1`, `bias_correction2**0.5`.
            let bc1 = 1.0 - p.beta1.powf(t);
            let bc2 = 1.0 - p.beta2.powf(t);
            let step_size = lr / bc1;
            let bc2_sqrt = bc2.powf(0.5);
            let decay = (p.weight_decay != 0.0).then_some(1.0 - lr * p.weight_decay);
            match &mut slot.moments {
                Moments::Host { m, v } => {
                    let coeffs = Coeffs {
                        decay: decay.map(|d| d as f32),
                        lerp_weight: (1.0 - p.beta1) as f32,
                        beta2: p.beta2 as f32,
                        one_minus_beta2: (1.0 - p.beta2) as f32,
                        bc2_sqrt: bc2_sqrt as f32,
                        eps: p.eps as f32,
                        neg_step_size: -step_size as f32,
                    };
                    let op = FusedAdamW {
                        m: RefCell::new(m.as_mut_slice()),
                        v: RefCell::new(v.as_mut_slice()),
                        coeffs,
                    };
                    let g = g.contiguous()?;
                    var.as_tensor().inplace_op2(&g, &op)?;
                }
                Moments::Tensors { m, v } => {
                    let args = TensorStep {
                        decay,
                        lerp_weight: 1.0 - p.beta1,
                        beta2: p.beta2,
                        one_minus_beta2: 1.0 - p.beta2,
                        bc2_sqrt,
                        eps: p.eps,
                        neg_step_size: -step_size,
                    };
                    let (new_m, new_v) = tensor_step(var, g, m, v, &args)?;
                    *m = new_m;
                    *v = new_v;
                }
            }
        }
        self.step += 1;
        Ok(())
    }

    /// A copy of the optimizer state as plain `f32` vectors.
    ///
    /// # Errors
    /// A candle error if reading tensor moments fails.
    pub fn state(&self) -> Result<AdamWState> {
        let params = self
            .slots
            .iter()
            .map(|s| {
                let (exp_avg, exp_avg_sq) = match &s.moments {
                    Moments::Host { m, v } => (m.clone(), v.clone()),
                    Moments::Tensors { m, v } => (to_vec_f32(m)?, to_vec_f32(v)?),
                };
                Ok(ParamState {
                    step: s.step,
                    exp_avg,
                    exp_avg_sq,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamWState {
            step: self.step,
            params,
        })
    }

    /// Restores a state produced by [`AdamW::state`] (possibly of another process). Frozen
    /// flags are not part of the state and are kept.
    ///
    /// # Errors
    /// [`GrpoError::InvalidInput`] if the number of parameters or any vector length differs
    /// from the vars' (checked before anything changes); a candle error if building tensor
    /// moments fails.
    pub fn load_state(&mut self, state: &AdamWState) -> Result<()> {
        if state.params.len() != self.vars.len() {
            return Err(GrpoError::InvalidInput(format!(
                "optimizer state has {} parameters, the optimizer has {}",
                state.params.len(),
                self.vars.len()
            )));
        }
        for (i, (ps, var)) in state.params.iter().zip(&self.vars).enumerate() {
            let n = var.elem_count();
            if ps.exp_avg.len() != n || ps.exp_avg_sq.len() != n {
                return Err(GrpoError::InvalidInput(format!(
                    "optimizer state of var {i} has {} / {} moment values, the var {:?} has {n}",
                    ps.exp_avg.len(),
                    ps.exp_avg_sq.len(),
                    var.dims()
                )));
            }
        }
        let mut restored = Vec::with_capacity(self.slots.len());
        for ((ps, var), slot) in state.params.iter().zip(&self.vars).zip(&self.slots) {
            let moments = match &slot.moments {
                Moments::Host { .. } => Moments::Host {
                    m: ps.exp_avg.clone(),
                    v: ps.exp_avg_sq.clone(),
                },
                Moments::Tensors { .. } => {
                    let mk = |x: &[f32]| -> Result<Tensor> {
                        Ok(Tensor::from_slice(x, var.dims(), var.device())?
                            .to_dtype(var.dtype())?)
                    };
                    Moments::Tensors {
                        m: mk(&ps.exp_avg)?,
                        v: mk(&ps.exp_avg_sq)?,
                    }
                }
            };
            restored.push(moments);
        }
        for ((slot, moments), ps) in self.slots.iter_mut().zip(restored).zip(&state.params) {
            slot.moments = moments;
            slot.step = ps.step;
        }
        self.step = state.step;
        Ok(())
    }
}

fn check_lr(lr: f64) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(GrpoError::config(
            "learning_rate",
            format!("must be finite and ≥ 0, got {lr}"),
        ))
    }
}

fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}
