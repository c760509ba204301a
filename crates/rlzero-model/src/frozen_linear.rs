//! `y = x Wᵀ` for a frozen weight `W`, with a backward pass for `x` only.
//!
//! candle's `Tensor::matmul` records both operands, and its backward computes both gradients
//! unconditionally: for `y = x Wᵀ` with `x` `(N, in)` and `W` `(out, in)` it evaluates
//! `∂L/∂x = G W` *and* `∂L/∂W = Gᵀ x` (`G = ∂L/∂y`, `(N, out)`), even when `W` is a plain constant
//! tensor. When only adapters train (LoRA), that second gemm — as large as the forward one, for
//! every projection of every layer — is pure waste, and its result sits in the `GradStore`.
//!
//! [`frozen_matmul`] wraps the product in a custom op whose only argument is `x`; `W` is held by
//! the op, so autograd never sees it:
//!
//! * forward: `y = x Wᵀ` through the same backend gemm, shapes and strides as
//!   `x.matmul(&w.t())` (hence bitwise the same values);
//! * backward: `∂L/∂x = G W` `(N, in)`; nothing for `W`.
//!
//! The forward runs on every device candle is built for (CPU, and CUDA/Metal when compiled in:
//! the op calls the backend's own matmul); only the CPU path is tested here.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use rlzero_model::frozen_linear::frozen_matmul;
//!
//! let w = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &Device::Cpu)?; // (out 3, in 2)
//! let x = Var::new(&[[1f32, -1.]], &Device::Cpu)?; // (N 1, in 2)
//! let y = frozen_matmul(x.as_tensor(), &w)?; // (1, 3)
//! assert_eq!(y.to_vec2::<f32>()?, vec![vec![-1f32, -1., -1.]]);
//! let grads = y.sum_all()?.backward()?;
//! assert_eq!(grads.get(&x).map(|g| g.to_vec2::<f32>()).transpose()?, Some(vec![vec![9f32, 12.]]));
//! assert!(grads.get(&w).is_none()); // no weight-gradient gemm was run
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Shape, Storage, Tensor,
};

use crate::error::{ModelError, Result};

/// A gemm's `(b, m, n, k)`, the layout of `W`ᵀ and the output shape.
type Plan = ((usize, usize, usize, usize), Layout, Shape);

/// The custom op: holds the frozen weight `W` `(out, in)`; its argument is `x` `(N, in)`.
struct FrozenMatmul {
    w: Tensor,
}

impl FrozenMatmul {
    /// Checks `x`'s layout against `W` and returns the gemm's `(b, m, n, k)`, `W`ᵀ's layout and
    /// the output shape `(N, out)`.
    fn plan(&self, x: &Layout) -> candle_core::Result<Plan> {
        let (rows, in_dim) = x.shape().dims2()?;
        let (out_dim, w_in) = self.w.dims2()?;
        if in_dim != w_in {
            candle_core::bail!(
                "frozen_matmul: x has {in_dim} columns, W {:?}",
                self.w.dims()
            );
        }
        let wt = self.w.layout().transpose(0, 1)?; // (in, out)
        Ok(((1, rows, out_dim, in_dim), wt, Shape::from((rows, out_dim))))
    }
}

/// `x Wᵀ` on one backend: `$variant` is the `Storage` variant holding that backend's buffers.
macro_rules! fwd {
    ($self:ident, $x:ident, $layout:ident, $variant:ident) => {{
        let (bmnk, wt, shape) = $self.plan($layout)?;
        let (w_storage, _) = $self.w.storage_and_layout();
        match &*w_storage {
            Storage::$variant(w) => Ok(($x.matmul(w, bmnk, $layout, &wt)?, shape)),
            _ => candle_core::bail!(
                "frozen_matmul: W is on {:?}, x on another device",
                $self.w.device()
            ),
        }
    }};
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fwd!(self, x, layout, Cpu)
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        fwd!(self, x, layout, Cuda)
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        layout: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        fwd!(self, x, layout, Metal)
    }

    /// `∂L/∂x = G W`: `(N, out) · (out, in)` → `(N, in)`. `W` is a constant with no op, so this
    /// product is not itself recorded.
    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// `x Wᵀ` for `x` `(N, in)` and a frozen `W` `(out, in)` → `(N, out)`, differentiable in `x`
/// only. Errors if `W` tracks gradients (is a variable, or computed from one): its gradient would
/// be dropped silently, so use `x.matmul(&w.t()?)` for a trainable weight.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.track_op() {
        return Err(ModelError::InvalidInput(
            "frozen_matmul: the weight tracks gradients; use a plain matmul to train it".into(),
        ));
    }
    let op = FrozenMatmul { w: w.clone() };
    Ok(x.apply_op1(op)?) // (N, out)
}
