//! CPU reference implementation of ArabEmoNet: every op forward and backward as a standalone
//! function on slices with documented layouts (the oracle for the device kernels), the model
//! forward/backward built from them, cross-entropy, Adam and gradient clipping. Generic over
//! [`Float`] (f32 for speed, f64 for gradient checks).
//!
//! Layout conventions: activations are row-major `[B][C][M][T]` (batch, channel, mel, time;
//! `T` is the padded time of the batch) for the conv stack and `[B][T][F]` per frame after it.
//! Every op takes the per-clip valid lengths and never reads or writes past a clip's end, so a
//! clip's result does not depend on the padding or on its batch mates.
//! Hot paths are GEMMs (the `gemm` crate, SIMD) parallelised over the batch with rayon.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `backend` (the CPU
//! backend, `backend.rs`, implements it), `model` and the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`).

pub mod adam;
pub mod alloc;
pub mod attention;
pub mod backend;
pub mod batchnorm;
pub mod bench;
pub mod bf16;
pub mod conv;
pub mod dropout;
pub mod gradcheck;
pub mod linear;
pub mod loss;
pub mod lstm;
pub mod memory;
pub mod model;
pub mod norm;
pub mod pool;
mod scratch;

pub use adam::{clip_grad_norm, Adam};
pub use loss::{cross_entropy, cross_entropy_soft};
pub use model::{CpuModel, Forward};

use std::fmt::Debug;

/// The scalar types the reference runs in: f32 and f64.
pub trait Float:
    num_traits::Float
    + rustfft::FftNum
    + Send
    + Sync
    + Copy
    + Default
    + Debug
    + std::iter::Sum
    + 'static
{
    fn cst(x: f64) -> Self;
    fn as_f64(self) -> f64;
}

impl Float for f32 {
    #[inline]
    fn cst(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    #[inline]
    fn cst(x: f64) -> Self {
        x
    }
    #[inline]
    fn as_f64(self) -> f64 {
        self
    }
}

/// A padded batch of log-Mel spectrograms.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a, T> {
    /// `[batch][n_mels][t_max]` row-major; frames at `t ≥ lengths[b]` are ignored.
    pub x: &'a [T],
    pub batch: usize,
    pub t_max: usize,
    /// Valid frames of each clip, `MIN_FRAMES ≤ lengths[b] ≤ t_max`.
    pub lengths: &'a [usize],
}

impl<T> Input<'_, T> {
    /// Checks shapes and lengths against a model with `n_mels` mel bins.
    pub fn validate(&self, n_mels: usize) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.batch == 0 {
            bail!("empty batch");
        }
        if self.lengths.len() != self.batch {
            bail!(
                "{} lengths for a batch of {}",
                self.lengths.len(),
                self.batch
            );
        }
        if self.x.len() != self.batch * n_mels * self.t_max {
            bail!(
                "input has {} values, expected batch {} × mels {} × frames {}",
                self.x.len(),
                self.batch,
                n_mels,
                self.t_max
            );
        }
        for (b, &l) in self.lengths.iter().enumerate() {
            if l < crate::model::MIN_FRAMES || l > self.t_max {
                bail!(
                    "clip {b} has {l} frames; need {} ≤ length ≤ {} (padded width)",
                    crate::model::MIN_FRAMES,
                    self.t_max
                );
            }
        }
        Ok(())
    }
}

/// Forward mode: Eval uses running BatchNorm statistics and no dropout; Train uses batch
/// statistics (and updates the running ones) and the dropout masks of (seed, step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Eval,
    Train { seed: u64, step: u32 },
}

/// `C = (acc ? C : 0) + A·B`, A m×k with strides (a_rs, a_cs), B k×n with (b_rs, b_cs), C m×n
/// row-major with row stride c_rs. `par` lets the gemm crate split the work over rayon threads
/// (use it only outside other parallel loops).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    c_rs: usize,
    acc: bool,
    a: &[T],
    a_rs: usize,
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    b_cs: usize,
    par: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * c_rs + n <= c.len(), "gemm: C too small");
    if k == 0 {
        if !acc {
            for i in 0..m {
                c[i * c_rs..i * c_rs + n].fill(T::zero());
            }
        }
        return;
    }
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "gemm: A too small"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "gemm: B too small"
    );
    let par = if par && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index the strides reach inside the slices, and C
    // does not alias A or B (distinct borrows). T is f32 or f64, both supported by gemm.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            acc,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

/// Dot product with four independent accumulators (lets the compiler vectorise).
#[inline]
pub fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut s = [T::zero(); 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        s[0] = s[0] + x[0] * y[0];
        s[1] = s[1] + x[1] * y[1];
        s[2] = s[2] + x[2] * y[2];
        s[3] = s[3] + x[3] * y[3];
    }
    let mut t = (s[0] + s[1]) + (s[2] + s[3]);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        t = t + *x * *y;
    }
    t
}

/// `y += a·x`.
#[inline]
pub fn axpy<T: Float>(a: T, x: &[T], y: &mut [T]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = *yi + a * *xi;
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use crate::rng::{Purpose, Stream};

    /// Deterministic test data in [-1, 1).
    pub fn rand(n: usize, salt: u32) -> Vec<f64> {
        let s = Stream::new(1234, Purpose::Test, salt);
        (0..n)
            .map(|i| 2.0 * s.uniform(i as u64) as f64 - 1.0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive_with_strides() {
        let (m, n, k) = (5, 7, 3);
        let a = testutil::rand(m * k, 1);
        let b = testutil::rand(k * n, 2);
        // A row-major, B given transposed (n×k row-major read as k×n with strides (1, k)).
        let mut bt = vec![0.0; n * k];
        for i in 0..k {
            for j in 0..n {
                bt[j * k + i] = b[i * n + j];
            }
        }
        let mut c = vec![1.0; m * n];
        gemm(m, n, k, &mut c, n, true, &a, k, 1, &bt, 1, k, false);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = 1.0 + (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum::<f64>();
                assert!((c[i * n + j] - want).abs() < 1e-12);
            }
        }
    }
}
