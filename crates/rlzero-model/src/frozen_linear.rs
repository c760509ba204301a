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
//!   `x.matmul(&w.t())` (hence bitwise the same values); on the CPU through
//!   `cpu_matmul`, the same gemm call without candle's serial zero fill of `y`;
//! * backward: `∂L/∂x = G W` `(N, in)`; nothing for `W`.
//!
//! [`linear_matmul`] is the same product with a trainable `W` as a second argument: one
//! autograd node instead of candle's four (`reshape`, `W.t()`, `matmul`, `reshape`). candle's
//! backward adds every node's gradient into a fresh zero tensor, so each of those nodes cost an
//! activation-sized zero fill and add, and `W.t()`'s a strided add of the weight's size; here
//! the backward returns `∂L/∂x = G W` in `x`'s shape and `∂L/∂W = Gᵀ x` directly in `W`'s
//! `(out, in)` layout.
//!
//! Both take `x` of any rank `(…, in)`, folded into `N` rows for one gemm, and return
//! `(…, out)`. The forward runs on every device candle is built for (CPU, and CUDA/Metal when
//! compiled in: the op calls the backend's own matmul); only the CPU path is tested here.
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
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, MetalStorage, Shape, Storage,
    Tensor,
};

use crate::cpu_matmul::{matmul_2d, matmul_new, Operand};
use crate::error::{ModelError, Result};
use crate::sgemm::{sgemm, MatRef};

/// A gemm's `(b, m, n, k)`, the layouts of `x` as `(N, in)` and of `W`ᵀ, and the output shape.
type Plan = ((usize, usize, usize, usize), Layout, Layout, Shape);

/// Checks `x` `(…, in)` (contiguous) against `W` `(out, in)` and plans `(N, in) · Wᵀ`.
fn plan(x: &Layout, w: &Layout) -> candle_core::Result<Plan> {
    let dims = x.shape().dims();
    let (out_dim, w_in) = w.shape().dims2()?;
    let Some((&in_dim, lead)) = dims.split_last() else {
        candle_core::bail!("linear: x is a scalar")
    };
    if in_dim != w_in {
        candle_core::bail!("linear: x has {in_dim} columns, W {:?}", w.shape());
    }
    let Some(offset) = x.contiguous_offsets().map(|(start, _)| start) else {
        candle_core::bail!("linear: x must be contiguous")
    };
    let rows: usize = lead.iter().product();
    let x2 = Layout::contiguous_with_offset((rows, in_dim), offset); // (N, in)
    let wt = w.transpose(0, 1)?; // (in, out)
    let mut out = lead.to_vec();
    out.push(out_dim);
    Ok(((1, rows, out_dim, in_dim), x2, wt, Shape::from(out)))
}

/// The custom op: holds the frozen weight `W` `(out, in)`; its argument is `x` `(…, in)`.
struct FrozenMatmul {
    w: Tensor,
}

/// `x Wᵀ` on one backend: `$variant` is the `Storage` variant holding that backend's buffers.
macro_rules! fwd {
    ($self:ident, $x:ident, $layout:ident, $variant:ident) => {{
        let (w_storage, w_layout) = $self.w.storage_and_layout();
        let (bmnk, x2, wt, shape) = plan($layout, w_layout)?;
        match &*w_storage {
            Storage::$variant(w) => Ok(($x.matmul(w, bmnk, &x2, &wt)?, shape)),
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
        let (w_storage, w_layout) = self.w.storage_and_layout();
        match &*w_storage {
            Storage::Cpu(w) => cpu_linear(x, layout, w, w_layout),
            _ => candle_core::bail!("frozen_matmul: W is on {:?}, x on the CPU", self.w.device()),
        }
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

    /// `∂L/∂x = G W`: `(N, out) · (out, in)` → `(N, in)`, in `x`'s shape. `W` is a constant
    /// with no op, so this product is not itself recorded.
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (out_dim, _) = self.w.dims2()?;
        let g = grad.reshape(((), out_dim))?; // (N, out)
        Ok(Some(matmul_2d(&g, &self.w)?.reshape(x.shape())?))
    }
}

/// `x Wᵀ` on the CPU: f32/f64 through [`matmul_new`] (the same gemm call as candle's, without
/// its serial zero fill of the output), other dtypes through candle's matmul.
fn cpu_linear(
    x: &CpuStorage,
    xl: &Layout,
    w: &CpuStorage,
    wl: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let ((_, m, n, k), x2, wt, shape) = plan(xl, wl)?;
    let y = match (x, w) {
        (CpuStorage::F32(xv), CpuStorage::F32(wv)) => operands(xv, &x2, wv, &wt)
            .and_then(|(a, b)| matmul_new(m, n, k, a, b).map(CpuStorage::F32)),
        (CpuStorage::F64(xv), CpuStorage::F64(wv)) => operands(xv, &x2, wv, &wt)
            .and_then(|(a, b)| matmul_new(m, n, k, a, b).map(CpuStorage::F64)),
        _ => None,
    };
    match y {
        Some(y) => Ok((y, shape)),
        None => Ok((x.matmul(w, (1, m, n, k), &x2, &wt)?, shape)),
    }
}

fn operands<'a, T>(
    x: &'a [T],
    xl: &Layout,
    w: &'a [T],
    wl: &Layout,
) -> Option<(Operand<'a, T>, Operand<'a, T>)> {
    Some((Operand::from_layout(x, xl)?, Operand::from_layout(w, wl)?))
}

/// `x Wᵀ` with a trainable `W`: both are arguments, so autograd sees both.
struct LinearMatmul;

/// [`LinearMatmul`]'s forward on one backend.
macro_rules! fwd2 {
    ($x:ident, $xl:ident, $w:ident, $wl:ident) => {{
        let (bmnk, x2, wt, shape) = plan($xl, $wl)?;
        Ok(($x.matmul($w, bmnk, &x2, &wt)?, shape))
    }};
}

impl CustomOp2 for LinearMatmul {
    fn name(&self) -> &'static str {
        "linear-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_linear(x, xl, w, wl)
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        fwd2!(x, xl, w, wl)
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        xl: &Layout,
        w: &MetalStorage,
        wl: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        fwd2!(x, xl, w, wl)
    }

    /// `∂L/∂x = G W` in `x`'s shape and `∂L/∂W = Gᵀ x` `(out, in)`, computed from detached
    /// operands so that the backward itself records nothing.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (out_dim, in_dim) = w.dims2()?;
        let g = grad.reshape(((), out_dim))?; // (N, out)
        let w = w.detach();
        let x2 = x.detach().reshape(((), in_dim))?; // (N, in)
        let dx = matmul_2d(&g, &w)?.reshape(x.shape())?; // (…, in)
        let dw = match weight_grad_sgemm(&g, &x2)? {
            Some(dw) => dw,
            None => g.t()?.matmul(&x2)?, // (out, in)
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// `Gᵀ x` `(out, in)` with [`crate::sgemm`] where it is the faster product (f32 on an AVX2 CPU
/// without AVX-512, see [`crate::sgemm::preferred`]): `gemm` handles the transposed `Gᵀ` at
/// 136–154 GFLOP/s there, the packed kernel at 157–165 (`examples/matmul_bench.rs`). `None`
/// elsewhere, for candle's matmul.
fn weight_grad_sgemm(g: &Tensor, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let f32_cpu = g.device().is_cpu() && g.dtype() == DType::F32 && x.dtype() == DType::F32;
    if !(f32_cpu && crate::sgemm::preferred()) {
        return Ok(None);
    }
    let (g, x) = (g.contiguous()?, x.contiguous()?);
    let ((n, out), (_, inp)) = (g.dims2()?, x.dims2()?);
    let (gs, gl) = g.storage_and_layout();
    let (xs, xl) = x.storage_and_layout();
    let (Storage::Cpu(gs), Storage::Cpu(xs)) = (&*gs, &*xs) else {
        return Ok(None);
    };
    let gv = crate::fused::contiguous(gs.as_slice::<f32>()?, gl, "gradient")?;
    let xv = crate::fused::contiguous(xs.as_slice::<f32>()?, xl, "input")?;
    let sg = |e: ModelError| candle_core::Error::Msg(e.to_string());
    let a = MatRef::row_major(gv, n, out).map_err(sg)?.t(); // Gᵀ (out, N)
    let b = MatRef::row_major(xv, n, inp).map_err(sg)?; // x (N, in)
    let mut dw = crate::fused::zeros_par::<f32>(out * inp);
    sgemm(a, b, &mut dw, false).map_err(sg)?;
    Ok(Some(Tensor::from_vec(dw, (out, inp), g.device())?)) // (out, in)
}

/// `x Wᵀ` for `x` `(…, in)` and a frozen `W` `(out, in)` → `(…, out)`, differentiable in `x`
/// only. Errors if `W` tracks gradients (is a variable, or computed from one): its gradient would
/// be dropped silently, so use [`linear_matmul`] for a trainable weight.
pub fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.track_op() {
        return Err(ModelError::InvalidInput(
            "frozen_matmul: the weight tracks gradients; use linear_matmul to train it".into(),
        ));
    }
    let op = FrozenMatmul { w: w.clone() };
    Ok(x.contiguous()?.apply_op1(op)?) // (…, out)
}

/// `x Wᵀ` for `x` `(…, in)` and `W` `(out, in)` → `(…, out)`, differentiable in both, as one
/// autograd node (see the module doc). Same values as `x.matmul(&w.t()?)` on `(N, in)`.
pub fn linear_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(w, LinearMatmul)?) // (…, out)
}
