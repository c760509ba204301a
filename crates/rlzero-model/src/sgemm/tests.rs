use super::*;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// `A B` in f64, element by element.
fn naive(a: &MatRef<'_>, b: &MatRef<'_>) -> Vec<f64> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a.at(i, p) as f64 * b.at(p, j) as f64).sum();
        }
    }
    c
}

fn kernels() -> Vec<SimdPath> {
    SimdPath::available_paths()
}

/// Sizes around every block edge: tiles (6 × 16), KC (256), MC (72), NC (3072).
const SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (5, 3, 17),
    (6, 16, 16),
    (7, 257, 33),
    (13, 40, 5),
    (73, 300, 70),
    (150, 513, 47),
    (8, 64, 3100),
    (2, 600, 1),
];

#[test]
fn matches_a_naive_product_with_every_kernel_and_layout() {
    for kernel in kernels() {
        for (m, k, n) in SHAPES {
            let (ad, bd) = (data(m * k, 1), data(k * n, 2));
            // A row-major or stored transposed; B row-major or stored transposed (as `Wᵀ`).
            let a_views = [
                MatRef::row_major(&ad, m, k).unwrap(),
                MatRef::row_major(&ad, k, m).unwrap().t(),
            ];
            let b_views = [
                MatRef::row_major(&bd, k, n).unwrap(),
                MatRef::row_major(&bd, n, k).unwrap().t(),
            ];
            for a in a_views {
                for b in b_views {
                    let want = naive(&a, &b);
                    let mut c = vec![f32::NAN; m * n];
                    sgemm_with(kernel, a, b, &mut c, false).unwrap();
                    for (i, (got, want)) in c.iter().zip(&want).enumerate() {
                        let tol = 1e-6 * k as f64 + 1e-6 * want.abs();
                        assert!(
                            (*got as f64 - want).abs() <= tol,
                            "{kernel:?} ({m}, {k}, {n}) strides a {:?} b {:?} at {i}: {got} vs {want}",
                            (a.rs, a.cs),
                            (b.rs, b.cs)
                        );
                    }
                    // Accumulating adds the product to what C holds.
                    let mut acc = vec![1.5f32; m * n];
                    sgemm_with(kernel, a, b, &mut acc, true).unwrap();
                    for (x, y) in acc.iter().zip(&c) {
                        assert!((x - (y + 1.5)).abs() <= 1e-5 * (1.0 + y.abs()));
                    }
                }
            }
        }
    }
}

#[test]
fn every_kernel_and_thread_count_gives_the_same_bits() {
    let (m, k, n) = (77, 530, 3100);
    let (ad, bd) = (data(m * k, 3), data(n * k, 4));
    let a = MatRef::row_major(&ad, m, k).unwrap();
    let b = MatRef::row_major(&bd, n, k).unwrap().t();
    let run = |kernel: SimdPath, threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut c = vec![0f32; m * n];
        pool.install(|| sgemm_with(kernel, a, b, &mut c, false))
            .unwrap();
        c
    };
    let reference = run(SimdPath::Portable, 1);
    for kernel in kernels() {
        for threads in [1, 2, 3] {
            assert!(
                run(kernel, threads) == reference,
                "{kernel:?} on {threads} threads"
            );
        }
    }
    // A row's values do not depend on the other rows in the product.
    let mut one = vec![0f32; n];
    let row = MatRef::row_major(&ad[5 * k..6 * k], 1, k).unwrap();
    sgemm(row, b, &mut one, false).unwrap();
    assert!(one == reference[5 * n..6 * n]);
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let d = [0f32; 6];
    assert!(MatRef::new(&d, 2, 3, 3, 1).is_ok());
    assert!(MatRef::new(&d, 2, 4, 4, 1).is_err());
    assert!(MatRef::new(&d, 3, 3, 3, 1).is_err());
    assert!(MatRef::new(&d, usize::MAX, 2, usize::MAX, 1).is_err());
    let a = MatRef::row_major(&d, 2, 3).unwrap();
    let mut c = [0f32; 4];
    assert!(sgemm(a, a, &mut c, false).is_err()); // inner dimensions 3 and 2
    assert!(sgemm(a, a.t(), &mut c[..3], false).is_err()); // C too small
    sgemm(a, a.t(), &mut c, false).unwrap();
    // Zero strides let one value stand for a huge matrix; m · n overflowing is refused.
    let one = [0f32];
    let tall = MatRef::new(&one, 1 << 32, 1, 0, 0).unwrap();
    let wide = MatRef::new(&one, 1, 1 << 32, 0, 0).unwrap();
    assert!(sgemm(tall, wide, &mut [], false).is_err());
    // Empty products: k = 0 clears C, or leaves it when accumulating.
    let e = MatRef::row_major(&[], 2, 0).unwrap();
    let mut c = [7f32; 4];
    sgemm(e, e.t(), &mut c, true).unwrap();
    assert_eq!(c, [7.0; 4]);
    sgemm(e, e.t(), &mut c, false).unwrap();
    assert_eq!(c, [0.0; 4]);
}
