//! `C = A·B` on the CPU into a fresh buffer, through the `gemm` crate as candle's CPU matmul
//! calls it (same kernels, parameters and thread count, hence the same bits), without candle's
//! first step: zero-filling `C` on the calling thread while the other cores wait.
//!
//! With `read_dst = false` gemm never reads `C` (it writes `β·A·B`, or zeros when `k = 0`), so
//! the buffer can start uninitialised. For the training forward's linear maps that fill was
//! serial work of the size of every activation: perf put a fifth of the main thread's samples in
//! `memset` under `MatMul::f`. Crate-private: the custom ops' forward and backward passes
//! use it; the tests check it against candle's matmul bit for bit.

use candle_core::{CpuStorage, Layout, Storage, Tensor};

use crate::fused::Real;

/// A matrix operand: its values, and the row and column strides of element `(i, j)` at
/// `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Operand<'a, T> {
    /// The 2-D view a candle layout describes (`None` unless rank 2).
    pub fn from_layout(data: &'a [T], layout: &Layout) -> Option<Self> {
        match layout.stride() {
            [rs, cs] => Some(Self {
                data: data.get(layout.start_offset()..)?,
                rs: *rs,
                cs: *cs,
            }),
            _ => None,
        }
    }

    /// Whether every element of a `rows × cols` view lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.rs)
            .zip((cols - 1).checked_mul(self.cs))
            .and_then(|(a, b)| a.checked_add(b));
        matches!(last, Some(l) if l < self.data.len())
    }
}

/// `A (m × k) · B (k × n)` → a new row-major `m × n` buffer; `None` if an operand's view reaches
/// outside its data.
pub(crate) fn matmul_new<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: Operand<'_, T>,
    b: Operand<'_, T>,
) -> Option<Vec<T>> {
    let len = m.checked_mul(n)?;
    if !(a.fits(m, k) && b.fits(k, n)) {
        return None;
    }
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut c: Vec<T> = Vec::with_capacity(len);
    // SAFETY: both operands' views were checked to lie inside their slices; `c` has room for
    // `m × n` values with row stride `n`. With `read_dst = false` gemm does not read `c` and
    // writes each of its `m × n` values (zeros when `k = 0`; nothing when `m` or `n` is 0),
    // so all of them are initialised before `set_len`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
        c.set_len(len);
    }
    Some(c)
}

/// `A (m × k) · B (k × n)` for 2-D tensors of any strides: [`matmul_new`] for f32/f64 on the
/// CPU, candle's `matmul` otherwise (other devices and dtypes, mismatched inputs, whose error it
/// reports). The CPU result records no autograd op: for backward passes and no-grad code.
pub(crate) fn matmul_2d(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if let (Ok((m, k)), Ok((kb, n))) = (a.dims2(), b.dims2()) {
        if k == kb && a.device().is_cpu() && b.device().is_cpu() {
            let (sa, la) = a.storage_and_layout();
            let (sb, lb) = b.storage_and_layout();
            let c = match (&*sa, &*sb) {
                (Storage::Cpu(CpuStorage::F32(x)), Storage::Cpu(CpuStorage::F32(y))) => {
                    product(m, n, k, x, la, y, lb).map(|c| Tensor::from_vec(c, (m, n), a.device()))
                }
                (Storage::Cpu(CpuStorage::F64(x)), Storage::Cpu(CpuStorage::F64(y))) => {
                    product(m, n, k, x, la, y, lb).map(|c| Tensor::from_vec(c, (m, n), a.device()))
                }
                _ => None,
            };
            if let Some(c) = c {
                return c;
            }
        }
    }
    a.matmul(b)
}

fn product<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
) -> Option<Vec<T>> {
    let a = Operand::from_layout(a, la)?;
    let b = Operand::from_layout(b, lb)?;
    matmul_new(m, n, k, a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::test_util::f32_bits;
    use candle_core::{DType, Device};

    #[test]
    fn equals_candles_matmul_bit_for_bit_for_every_layout() {
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1, 1, 1),
            (3, 0, 4),
            (5, 7, 1),
            (1, 9, 6),
            (37, 70, 29),
            (130, 65, 140),
        ] {
            let a = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
            let at = a.t().unwrap().contiguous().unwrap().t().unwrap(); // column-major view
            let bt = b.t().unwrap().contiguous().unwrap().t().unwrap();
            for (x, y) in [(&a, &b), (&at, &b), (&a, &bt), (&at, &bt)] {
                let want = x.matmul(y).unwrap();
                let got = matmul_2d(x, y).unwrap();
                assert_eq!(got.dims(), [m, n]);
                assert_eq!(f32_bits(&got), f32_bits(&want), "({m}, {k}, {n})");
            }
            let a64 = a.to_dtype(DType::F64).unwrap();
            let b64 = b.to_dtype(DType::F64).unwrap();
            let d = (matmul_2d(&a64, &b64).unwrap() - a64.matmul(&b64).unwrap()).unwrap();
            assert_eq!(
                d.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap(),
                0.0
            );
        }
    }

    #[test]
    fn a_view_outside_its_data_is_refused() {
        let data = [1f32; 6];
        let a = Operand {
            data: &data,
            rs: 3,
            cs: 1,
        };
        assert!(matmul_new(2, 2, 3, a, a).is_none()); // B would be 3 × 2 at stride 3: index 7
        assert!(matmul_new(
            2,
            2,
            3,
            a,
            Operand {
                data: &data,
                rs: 2,
                cs: 1
            }
        )
        .is_some());
    }

    #[test]
    fn mismatched_shapes_get_candles_error() {
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(matmul_2d(&a, &a).is_err());
    }
}
