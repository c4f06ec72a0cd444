//! The CNN half of the device model (MODEL_SPEC.md): three conv stages (conv → BatchNorm →
//! ReLU → 2×2 max pool → dropout → time mask), the stage-3 → frames reshape and the per-frame
//! FC + ReLU + dropout, forward and backward, on any [`Device`] (cuda or sim). Every launch
//! shape lives here once; the kernels are kernels/{conv,batchnorm,pool,dropout,fc}.cu.
//!
//! Each op matches its CPU reference in `crate::cpu` (same lengths semantics, same dropout
//! masks bit for bit); [`cnn_forward`] / [`cnn_backward`] compose them like
//! `cpu::model::CpuModel::{forward, backward}` up to the FC output.
//!
//! Convolution is im2col + `Device::gemm` (cuBLAS on cuda, the sgemm kernel on sim) over chunks
//! of clips whose column matrix stays under [`CnnOptions::max_col_elems`]; the data gradient is
//! GEMM + col2im (a gather, no atomics, deterministic). On cuda where libcudnn loads, the
//! convolutions run through cuDNN instead (`super::cudnn`, chosen by the [`ConvScratch`]'s
//! [`ConvBackend`]; same semantics, deterministic algorithms); pooling always runs here.
//! BatchNorm is fused with the following ReLU (one forward pass writes relu(bn(x)); the
//! backward folds the ReLU mask into its two passes). Dropout masks are never stored: the pool
//! and FC kernels regenerate them from (seed, step, site) in forward and backward.
//!
//! The composed passes write into a [`CnnWorkspace`] (every activation and backward buffer of
//! one (batch, t_max) shape, made once) and a [`ConvScratch`] (the im2col matrices, shared by
//! all shapes and grown to the largest chunk seen), so a repeated step of a seen shape makes
//! no device allocation. The single-op functions keep allocating variants for tests and
//! one-off use; their `_with` forms take the scratch.
//!
//! Gradients ACCUMULATE into a [`CnnParams`] (like the CPU backward). Its tensors are own
//! buffers or views of flat buffers ([`CnnParams::views`], [`CnnParams::views_mut`]): the
//! training step reads the weights from, and writes the gradients into, the flat parameter and
//! gradient buffers directly.
//!
//! Files, one op family each, all using the launch helpers here: `reduce.rs` (fixed-order
//! reductions), `dropout.rs`, `conv.rs`, `batchnorm.rs`, `pool.rs`, `fc.rs`; `params.rs` (the
//! parameters on the device), `workspace.rs` (the buffers of one shape) and `passes.rs` (the
//! composed forward and backward). The items are re-exported here, so callers name them
//! `engine::cnn::X`. May use `device`, `model`, `cpu` (shapes, dropout sites),
//! [`crate::backend::memory`] and [`crate::engine::cudnn`].

mod batchnorm;
mod conv;
mod dropout;
mod fc;
mod params;
mod passes;
mod pool;
mod reduce;
mod workspace;

pub use crate::engine::cudnn::ConvBackend;
pub use batchnorm::{bn_relu_backward, bn_relu_forward, bn_stats, bn_update_running};
pub use conv::{
    conv2d_backward, conv2d_backward_with, conv2d_forward, conv2d_forward_with, ConvScratch,
};
pub use dropout::{dropout_apply, dropout_mask, Dropout};
pub use fc::{fc_backward, fc_forward, frames_reshape};
pub use params::{cnn_names, cnn_ranges, BnRunning, CnnParams};
pub use passes::{cnn_backward, cnn_forward};
pub use pool::{maxpool_backward, maxpool_forward};
pub(crate) use reduce::reduce_chunks_acc;
pub use reduce::{fc_bias_grad, row_sum_acc};
pub use workspace::{CnnOptions, CnnWorkspace, StageWork};

use crate::backend::memory::{Dims4, BLOCK};
use crate::device::{blocks_for, Device, DeviceBuffer, KernelArg};
use anyhow::{Context, Result};

/// Most blocks of a grid-stride launch (the kernels loop over the rest).
const MAX_BLOCKS: u32 = 1 << 16;

pub(super) fn grid(n: usize) -> u32 {
    blocks_for(n, BLOCK).min(MAX_BLOCKS)
}

/// A grid-stride launch of `BLOCK`-thread blocks covering `n` items (the shape of most CNN
/// kernels).
pub(super) fn launch_1d(dev: &Device, name: &str, n: usize, args: &[KernelArg]) -> Result<()> {
    dev.launch(name, grid(n), BLOCK, 0, args)
}

pub(super) fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).with_context(|| format!("{what} = {v} exceeds the kernels' i32 sizes"))
}

/// The four sizes of `d` as kernel arguments.
pub(super) fn dims_args(d: &Dims4) -> Result<[KernelArg<'static>; 4]> {
    Ok([
        i32_of(d.batch, "batch")?.into(),
        i32_of(d.c, "channels")?.into(),
        i32_of(d.m, "mels")?.into(),
        i32_of(d.t, "frames")?.into(),
    ])
}

/// Per-clip lengths as the kernels take them.
pub fn upload_lens(dev: &Device, lens: &[usize]) -> Result<DeviceBuffer<i32>> {
    let v: Vec<i32> = lens
        .iter()
        .map(|&l| i32_of(l, "clip length"))
        .collect::<Result<_>>()?;
    dev.htod(&v)
}
