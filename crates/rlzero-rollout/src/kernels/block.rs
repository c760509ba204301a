//! The register block of the decode kernel, written once over [`Lanes`]: `acc[j][r] = w[j] · x[r]`
//! for up to [`BW`] weight rows and [`BX`] input rows, each weight chunk loaded once and used by
//! every input row. Each dot product is 8 lanes of fused multiply-adds over `k` in order, the
//! fixed lane tree, then the scalar tail: the same bits on every path and in every block shape.

use super::lanes::{Lanes, LanesKernel, LANES};
use super::{Acc, Weight, BW, BX, PREFETCH_BYTES};

/// One register block's inputs and results, to run with [`super::lanes::on_path`].
pub(crate) struct Block<'a, W> {
    /// Up to [`BW`] weight rows of at least `k` elements.
    pub w: &'a [&'a [W]],
    /// `nx` input rows of `k`, row-major.
    pub x: &'a [f32],
    pub k: usize,
    pub nx: usize,
    pub acc: &'a mut Acc,
}

impl<W: Weight> LanesKernel for Block<'_, W> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: Lanes>(self) {
        let Block { w, x, k, nx, acc } = self;
        assert!(w.len() <= BW && nx <= BX, "blocks are at most {BW} × {BX}");
        assert!(w.iter().all(|r| r.len() >= k) && x.len() >= nx * k);
        // One copy per shape, so the accumulators stay in registers.
        match (w.len(), nx) {
            (1, 1) => block::<V, W, 1, 1>(w, x, k, acc),
            (1, 2) => block::<V, W, 1, 2>(w, x, k, acc),
            (1, 3) => block::<V, W, 1, 3>(w, x, k, acc),
            (1, 4) => block::<V, W, 1, 4>(w, x, k, acc),
            (2, 1) => block::<V, W, 2, 1>(w, x, k, acc),
            (2, 2) => block::<V, W, 2, 2>(w, x, k, acc),
            (2, 3) => block::<V, W, 2, 3>(w, x, k, acc),
            (2, 4) => block::<V, W, 2, 4>(w, x, k, acc),
            (3, 1) => block::<V, W, 3, 1>(w, x, k, acc),
            (3, 2) => block::<V, W, 3, 2>(w, x, k, acc),
            (3, 3) => block::<V, W, 3, 3>(w, x, k, acc),
            (3, 4) => block::<V, W, 3, 4>(w, x, k, acc),
            _ => {} // an empty block: nothing to compute
        }
    }
}

/// `acc[j][r] = w[j] · x[r]` for `j < NW`, `r < NX`, asking for each weight row's cache line
/// [`PREFETCH_BYTES`] ahead once per 64 bytes read.
///
/// # Safety
/// `V`'s instructions must be available; `w[j]` and `x` hold at least `k` and `NX · k` values.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // register indices (j, r) read clearer than zipped iterators
unsafe fn block<V: Lanes, W: Weight, const NW: usize, const NX: usize>(
    w: &[&[W]],
    x: &[f32],
    k: usize,
    acc: &mut Acc,
) {
    // Chunks of 8 weights per 64-byte cache line.
    let line = (64 / (LANES * std::mem::size_of::<W>())).max(1);
    let chunks = k / LANES;
    let xp = x.as_ptr();
    let mut wp = [std::ptr::null::<W>(); NW];
    for j in 0..NW {
        wp[j] = w[j].as_ptr();
    }
    let mut a = [[V::zero(); NX]; NW];
    for c in 0..chunks {
        if c % line == 0 {
            for p in &wp {
                // `wrapping_add`: the address may lie past the slice (a prefetch never faults,
                // and the pointer is never read through).
                V::prefetch(p.add(c * LANES).cast::<u8>().wrapping_add(PREFETCH_BYTES));
            }
        }
        let mut wv = [V::zero(); NW];
        for j in 0..NW {
            wv[j] = W::load(wp[j].add(c * LANES));
        }
        for r in 0..NX {
            let xv = V::load(xp.add(r * k + c * LANES));
            for j in 0..NW {
                a[j][r] = a[j][r].fma(wv[j], xv);
            }
        }
    }
    for j in 0..NW {
        for r in 0..NX {
            let mut s = a[j][r].hsum();
            for i in chunks * LANES..k {
                s = w[j][i].to_f32().mul_add(x[r * k + i], s);
            }
            acc[j][r] = s;
        }
    }
}
