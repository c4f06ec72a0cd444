//! 2-D convolution, square odd kernel k, stride 1, zero padding k/2 on both axes ("same"):
//! the entry points the model calls ([`conv2d_forward`], [`conv2d_forward_saving`],
//! [`conv2d_backward`]), which run the algorithm [`tune::conv_algo`] picks for the shape.
//!
//! The files form one stack, each using only those below it:
//! - this file: the dispatch;
//! - [`tune`]: which algorithm a shape gets (`SER_CPU_CONV`, the cost model, timing on this
//!   machine and its cache); runs both algorithms to time them;
//! - [`direct`] (im2col + GEMM) and [`fft`] (whole-plane FFTs): the two algorithms, same
//!   signatures and semantics (the FFT tests use the direct one as their oracle);
//! - [`shape`]: [`ConvShape`] and [`ConvAlgo`].
//!
//! Layouts: x `[B][cin][M][T]`, w `[cout][cin][k][k]` (PyTorch), bias `[cout]`,
//! y `[B][cout][M][T]`. Clip b is `lens[b]` frames long: inputs at t ≥ `lens[b]` are read as zero
//! and outputs at t ≥ `lens[b]` are written as zero (nothing downstream reads them: a 2×2 pool
//! only uses frames < 2·floor(len/2) ≤ len). This is what makes a clip's result independent of
//! the padding.

pub mod direct;
pub mod fft;
pub mod shape;
pub mod tune;

pub use shape::{ConvAlgo, ConvShape};

use super::Float;
use direct::{conv2d_backward_direct, conv2d_forward_direct};
use fft::FftSaved;
use tune::conv_algo;

/// y = conv(x, w) + bias on each clip's valid frames, zero elsewhere; dispatches on
/// [`tune::conv_algo`].
pub fn conv2d_forward<T: Float>(
    x: &[T],
    w: &[T],
    bias: &[T],
    lens: &[usize],
    s: &ConvShape,
    y: &mut [T],
) {
    // Bounded inference (predict, eval): the direct convolution, whose scratch is per clip and
    // in proportion to its length (so a call's memory follows the audio in it, not the thread
    // count); the FFT's weight spectrum grows with the clip and its timing would allocate the
    // training buffers too.
    let algo = if INFERENCE_BOUNDED.load(std::sync::atomic::Ordering::Relaxed) {
        ConvAlgo::Direct
    } else {
        conv_algo::<T>(s)
    };
    match algo {
        ConvAlgo::Direct => conv2d_forward_direct(x, w, bias, lens, s, y),
        ConvAlgo::Fft => fft::conv2d_forward_fft(x, w, bias, lens, s, y),
    }
}

/// Set by [`bound_inference_memory`].
static INFERENCE_BOUNDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on inference convolutions ([`conv2d_forward`]) use bounded memory at any clip
/// length and thread count, and [`end_inference_call`] frees the threads' kept scratch
/// (`predict`, `eval`; training keeps the tuner's choice and its buffers).
pub fn bound_inference_memory() {
    INFERENCE_BOUNDED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Most worker threads an inference command (`predict`, `eval`, `serve`) runs on: each thread
/// keeps GEMM packing buffers and an allocator arena, so without a cap the peak grows with the
/// thread count (measured 141 MiB at 2 threads, 424 MiB at 128, for 4-s windows); capped, a
/// machine with any number of cores stays at what the 32-thread test measures. A model call
/// holds at most 64 s of audio, so 32 threads already have work of at most 2 s each.
pub const INFERENCE_MAX_THREADS: usize = 32;

/// Threads of an inference command's pool: the requested `--threads` (else every core),
/// at most [`INFERENCE_MAX_THREADS`].
pub fn inference_threads(requested: Option<usize>, cores: usize) -> usize {
    requested.unwrap_or(cores).clamp(1, INFERENCE_MAX_THREADS)
}

/// Frees the threads' kept scratch after an inference call once memory is bounded (each
/// thread would otherwise keep buffers for the largest clip it ever handled); a no-op
/// otherwise.
pub fn end_inference_call() {
    if INFERENCE_BOUNDED.load(std::sync::atomic::Ordering::Relaxed) {
        crate::cpu::scratch::release_all_scratch();
        crate::cpu::alloc::return_freed_memory();
    }
}

/// [`conv2d_forward`] in a training step: also returns what the step's
/// [`conv2d_backward`] reuses (the FFT path's spectra; `None` on the direct path).
pub fn conv2d_forward_saving<T: Float>(
    x: &[T],
    w: &[T],
    bias: &[T],
    lens: &[usize],
    s: &ConvShape,
    y: &mut [T],
) -> Option<FftSaved<T>> {
    match conv_algo::<T>(s) {
        ConvAlgo::Direct => {
            conv2d_forward_direct(x, w, bias, lens, s, y);
            None
        }
        ConvAlgo::Fft => fft::conv2d_forward_fft_saving(x, w, bias, lens, s, y),
    }
}

/// Backward of [`conv2d_forward`]: dw and db ACCUMULATE; dx (if given) is overwritten (zero at
/// t ≥ `lens[b]`); dy at t ≥ `lens[b]` is ignored. Dispatches on [`tune::conv_algo`]. `saved`: what the
/// step's [`conv2d_forward_saving`] returned (`None` recomputes it).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Float>(
    saved: Option<&FftSaved<T>>,
    x: &[T],
    w: &[T],
    dy: &[T],
    lens: &[usize],
    s: &ConvShape,
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: &mut [T],
) {
    match conv_algo::<T>(s) {
        ConvAlgo::Direct => conv2d_backward_direct(x, w, dy, lens, s, dx, dw, db),
        ConvAlgo::Fft => fft::conv2d_backward_fft(saved, x, w, dy, lens, s, dx, dw, db),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_threads_are_capped_whatever_is_asked_or_present() {
        assert_eq!(inference_threads(Some(4), 256), 4);
        assert_eq!(inference_threads(None, 2), 2);
        assert_eq!(inference_threads(None, 256), INFERENCE_MAX_THREADS);
        assert_eq!(inference_threads(Some(1024), 2), INFERENCE_MAX_THREADS);
        assert_eq!(inference_threads(Some(0), 8), 1);
    }
}
