//! Fully connected layer y = x·Wᵀ + b on row-major matrices: x `[N][in]`, W `[out][in]`
//! (PyTorch), b `[out]`, y `[N][out]`. One GEMM each for forward, data- and weight-gradient.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::{gemm, Float};

/// y = x Wᵀ + b. `par`: let the GEMM use all rayon threads.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward<T: Float>(
    x: &[T],
    w: &[T],
    b: &[T],
    n: usize,
    din: usize,
    dout: usize,
    y: &mut [T],
    par: bool,
) {
    assert_eq!(x.len(), n * din);
    assert_eq!(w.len(), dout * din);
    assert_eq!(y.len(), n * dout);
    for row in y.chunks_mut(dout) {
        row.copy_from_slice(b);
    }
    gemm(n, dout, din, y, dout, true, x, din, 1, w, 1, din, par);
}

/// dW += dyᵀ x, db += Σ_rows dy, dx = dy W (overwritten, if given).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Float>(
    x: &[T],
    w: &[T],
    dy: &[T],
    n: usize,
    din: usize,
    dout: usize,
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: &mut [T],
    par: bool,
) {
    assert_eq!(dy.len(), n * dout);
    gemm(dout, din, n, dw, din, true, dy, 1, dout, x, din, 1, par);
    for row in dy.chunks(dout) {
        super::axpy(T::one(), row, db);
    }
    if let Some(dx) = dx {
        gemm(n, din, dout, dx, din, false, dy, dout, 1, w, din, 1, par);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::rand;
    use super::*;

    #[test]
    fn forward_and_backward_match_definitions() {
        let (n, di, dout) = (4, 3, 2);
        let x = rand(n * di, 1);
        let w = rand(dout * di, 2);
        let b = rand(dout, 3);
        let mut y = vec![0.0; n * dout];
        linear_forward(&x, &w, &b, n, di, dout, &mut y, false);
        for r in 0..n {
            for o in 0..dout {
                let want = b[o] + (0..di).map(|i| x[r * di + i] * w[o * di + i]).sum::<f64>();
                assert!((y[r * dout + o] - want).abs() < 1e-14);
            }
        }
        let dy = rand(n * dout, 4);
        let mut dx = vec![0.0; n * di];
        let mut dw = vec![1.0; dout * di]; // accumulates onto 1
        let mut db = vec![0.0; dout];
        linear_backward(
            &x,
            &w,
            &dy,
            n,
            di,
            dout,
            Some(&mut dx),
            &mut dw,
            &mut db,
            false,
        );
        for o in 0..dout {
            for i in 0..di {
                let want = 1.0
                    + (0..n)
                        .map(|r| dy[r * dout + o] * x[r * di + i])
                        .sum::<f64>();
                assert!((dw[o * di + i] - want).abs() < 1e-14);
            }
        }
        for r in 0..n {
            for i in 0..di {
                let want = (0..dout)
                    .map(|o| dy[r * dout + o] * w[o * di + i])
                    .sum::<f64>();
                assert!((dx[r * di + i] - want).abs() < 1e-14);
            }
        }
        assert!((db[1] - (0..n).map(|r| dy[r * dout + 1]).sum::<f64>()).abs() < 1e-14);
    }
}
