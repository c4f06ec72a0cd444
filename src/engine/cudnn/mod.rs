//! cuDNN for the convolutions of the three conv stages on the `cuda` device (forward, data
//! gradient, filter gradient), through cudarc's raw cuDNN bindings (libcudnn loaded at run time).
//! Our kernels (im2col + GEMM, kernels/conv.cu) stay the path on `sim`, on `cuda` without
//! libcudnn, with `SER_NO_CUDNN=1`, and with [`ConvBackend::Kernels`].
//!
//! # Same semantics as our kernels and `cpu::conv`
//! cuDNN convolves the whole padded `[B][C][M][T]` tensor (NCHW, zero padding k/2 in both
//! dimensions, stride 1, cross-correlation as ours, no bias). The clip-length semantics (clip b
//! reads inputs only at frames t < len_b, has outputs only there, ignores dy past its end) are
//! restored around it by three small kernels (kernels/conv.cu), see [`masked_conv_forward`] and
//! [`masked_conv_backward`]:
//! - forward: xm = x masked to each clip's frames (so cuDNN reads zeros exactly where ours reads
//!   nothing), y = cuDNN(xm, w), then `cnn_bias_mask` adds the bias at valid frames and zeroes
//!   the rest;
//! - backward: xm as above and dym = dy masked; dw += cuDNN filter gradient(xm, dym) (β = 1,
//!   accumulates like ours: with both masked, the dense sum has only the valid terms);
//!   db += `cnn_bias_grad_partial` + `reduce_chunks_acc` (reads dy at valid frames); dx = cuDNN data gradient(w, dym),
//!   then masked (0 past each clip's end, as ours).
//!
//! These compositions are written once against [`DenseConv`]; [`KernelDenseConv`] implements it
//! with our kernels, so the masking is tested on `sim` (tests/cuda_cudnn.rs) even though cuDNN
//! itself only runs on a GPU.
//!
//! # Algorithms, workspace, determinism, precision
//! Per conv shape, once (then cached in the [`super::cnn::ConvScratch`] with one shared
//! workspace and the masked-copy buffers, all grow-only, so a repeated step of a seen shape
//! allocates nothing): the algorithms come from cuDNN's heuristics
//! (`cudnnGetConvolution{Forward,BackwardData,BackwardFilter}Algorithm_v7`, which run nothing,
//! unlike `cudnnFind*`, whose timing-based choice can change from run to run). We take the first
//! (best-ranked) result that succeeded, is `CUDNN_DETERMINISTIC`, does not use tensor-core math
//! (TF32 would cost ~1e-3 relative error) and whose workspace fits the budget
//! ([`super::cnn::CnnOptions::max_col_elems`] floats, the same bound as our im2col matrix).
//! Forward algorithms are all deterministic; this excludes the atomics-based backward ones
//! (`BWD_DATA_ALGO_0`, `BWD_FILTER_ALGO_0/3`), so `--seed` runs reproduce bit for bit on one GPU
//! and cuDNN version. The descriptor's math type is `CUDNN_FMA_MATH` (plain FP32). A shape for
//! which no algorithm qualifies runs on our kernels (also deterministic).
//!
//! # Max pooling stays on our kernels
//! cuDNN's max-pool backward gives a window's gradient to one of its maxima, which one being
//! unspecified (and not promised deterministic for `CUDNN_POOLING_MAX`); the CPU reference and
//! `pool_backward` give it to the FIRST maximum in row-major order. Ties are not rare here:
//! after ReLU, all-zero windows are common (harmless: the ReLU backward zeroes those gradients
//! anyway), but positive ties are real too, because `power_to_db`'s `top_db` clamp makes
//! silent stretches of the log-Mel exactly constant, so neighbouring conv outputs there are
//! bitwise equal. `CUDNN_POOLING_MAX_DETERMINISTIC` fixes the run-to-run order but does not
//! document which maximum wins. So cuDNN pooling could route gradients differently from the
//! CPU reference; `pool_forward` / `pool_backward` (one memory-bound pass each, with the length
//! mask and dropout fused, which cuDNN would need extra passes for) remain the pooling on cuda.
//!
//! Every cuDNN call's status is checked and becomes an error naming the call and the shape;
//! cudarc panics (a missing symbol) are caught and reported the same way.
//!
//! Files: `masked.rs` (the length semantics around a dense conv, and our kernels as one),
//! `plan.rs` (cuDNN's objects and the algorithm choice), `conv.rs` ([`CudnnConv`]) and
//! `dense.rs` (the cuDNN calls). May use the device (and its cuda libraries), `engine::cnn`
//! (our conv, which stays the fallback), `cpu::conv` (shapes) and [`crate::backend::memory`].

mod conv;
mod dense;
mod masked;
mod plan;

pub use conv::CudnnConv;
pub use masked::{masked_conv_backward, masked_conv_forward, xm_len, DenseConv, KernelDenseConv};

use anyhow::{Context, Result};

/// Which implementation runs the convolutions of a [`crate::engine::cnn::ConvScratch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvBackend {
    /// cuDNN on a cuda device where libcudnn loads and `SER_NO_CUDNN` is not set (a cuDNN
    /// that is present but fails to start gives a warning and our kernels); our kernels
    /// otherwise.
    #[default]
    Auto,
    /// Always our kernels (im2col + GEMM).
    Kernels,
    /// cuDNN; an error on sim, without libcudnn, or when it fails to start.
    Cudnn,
}

pub(super) const BLOCK: u32 = 256;

pub(super) fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).with_context(|| format!("{what} = {v} exceeds i32"))
}

/// `[B][C][M][T]` as kernel arguments.
pub(super) fn dims(batch: usize, c: usize, m: usize, t: usize) -> Result<[i32; 4]> {
    Ok([
        i32_of(batch, "batch")?,
        i32_of(c, "channels")?,
        i32_of(m, "mels")?,
        i32_of(t, "frames")?,
    ])
}
