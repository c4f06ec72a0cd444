//! BatchNorm fused with the following ReLU on the device: batch statistics, the running
//! update, the forward and the backward. Uses the device, the chunking of
//! [`crate::backend::memory`] and the launch helpers of [`super`].

use super::{dims_args, i32_of, launch_1d};
use crate::backend::memory::{Dims4, BLOCK};
use crate::device::{blocks_for, AsView, AsViewMut, Device, DeviceBuffer, KernelArg};
use crate::model::{BN_EPS, BN_MOMENTUM};
use anyhow::{ensure, Result};

/// Batch mean and biased variance per channel over the valid positions
/// (`cpu::batchnorm::batch_stats`), in `chunks` chunks per channel ([`crate::backend::memory::bn_chunks`] in the
/// engine; any ≥ 1). `scratch` is caller-held scratch of at least 2·C + 3·C·chunks floats
/// ([`crate::backend::memory::bn_scratch_len`] for `bn_chunks`; overwritten, may be uninitialised).
#[allow(clippy::too_many_arguments)]
pub fn bn_stats(
    dev: &Device,
    x: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    d: Dims4,
    mean: &mut DeviceBuffer<f32>,
    var: &mut DeviceBuffer<f32>,
    scratch: &DeviceBuffer<f32>,
    chunks: usize,
) -> Result<()> {
    ensure!(lens.len() == d.batch, "bn_stats: lengths vs batch");
    let np = 3 * d.c * chunks;
    ensure!(
        chunks >= 1 && scratch.len() >= 2 * d.c + np,
        "bn_stats: scratch of {} floats for {} chunks of {d:?}",
        scratch.len(),
        chunks
    );
    let partial = scratch.slice(2 * d.c..2 * d.c + np)?;
    let [b, c, m, t] = dims_args(&d)?;
    let k: KernelArg = i32_of(chunks, "chunks")?.into();
    dev.launch(
        "bn_stats_partial",
        (d.c as u32, chunks as u32),
        BLOCK,
        0,
        &[partial.into(), x.into(), lens.into(), b, c, m, t, k],
    )?;
    dev.launch(
        "bn_stats_merge",
        blocks_for(d.c, BLOCK / 32),
        BLOCK,
        0,
        &[(&*mean).into(), (&*var).into(), partial.into(), c, k],
    )
}

/// Running statistics update (`cpu::batchnorm::bn_update_running` without the counter).
pub fn bn_update_running(
    dev: &Device,
    mean: &DeviceBuffer<f32>,
    var: &DeviceBuffer<f32>,
    count: usize,
    rm: &mut DeviceBuffer<f32>,
    rv: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let c = rm.len();
    ensure!(
        rv.len() == c && mean.len() == c && var.len() == c,
        "bn_update_running: channel counts differ"
    );
    let n = count as f64;
    let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
    launch_1d(
        dev,
        "bn_update_running",
        c,
        &[
            (&*rm).into(),
            (&*rv).into(),
            mean.into(),
            var.into(),
            i32_of(c, "channels")?.into(),
            (BN_MOMENTUM as f32).into(),
            (unbias as f32).into(),
        ],
    )
}

/// y = relu(bn(x)) at valid positions, 0 elsewhere (`bn_apply` then `relu_forward`).
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_forward(
    dev: &Device,
    x: &DeviceBuffer<f32>,
    mean: &DeviceBuffer<f32>,
    var: &DeviceBuffer<f32>,
    gamma: &impl AsView<f32>,
    beta: &impl AsView<f32>,
    lens: &DeviceBuffer<i32>,
    d: Dims4,
    y: &mut DeviceBuffer<f32>,
) -> Result<()> {
    ensure!(lens.len() == d.batch, "bn_relu_forward: lengths vs batch");
    let [b, c, m, t] = dims_args(&d)?;
    launch_1d(
        dev,
        "bn_relu_forward",
        d.len(),
        &[
            (&*y).into(),
            x.into(),
            mean.into(),
            var.into(),
            gamma.view().into(),
            beta.view().into(),
            lens.into(),
            b,
            c,
            m,
            t,
            (BN_EPS as f32).into(),
        ],
    )
}

/// Backward of relu(bn(x)) given the ReLU output y (`relu_backward` then `bn_backward`):
/// dgamma, dbeta ACCUMULATE; dx is overwritten (0 at invalid positions). `train`: the gradient
/// flows through the batch statistics. Sums in `chunks` chunks per channel ([`crate::backend::memory::bn_chunks`] in the
/// engine; any ≥ 1); `scratch` is caller-held scratch of at least 2·C + 2·C·chunks floats
/// ([`crate::backend::memory::bn_scratch_len`] covers `bn_chunks`; overwritten, may be uninitialised): its first 2·C hold
/// the sums the dx pass reads.
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_backward(
    dev: &Device,
    dy: &DeviceBuffer<f32>,
    y: &DeviceBuffer<f32>,
    x: &DeviceBuffer<f32>,
    mean: &DeviceBuffer<f32>,
    var: &DeviceBuffer<f32>,
    gamma: &impl AsView<f32>,
    lens: &DeviceBuffer<i32>,
    d: Dims4,
    train: bool,
    dx: &mut DeviceBuffer<f32>,
    dgamma: &mut impl AsViewMut<f32>,
    dbeta: &mut impl AsViewMut<f32>,
    scratch: &mut DeviceBuffer<f32>,
    chunks: usize,
) -> Result<()> {
    ensure!(lens.len() == d.batch, "bn_relu_backward: lengths vs batch");
    let np = 2 * d.c * chunks;
    ensure!(
        chunks >= 1 && scratch.len() >= 2 * d.c + np,
        "bn_relu_backward: scratch of {} floats for {} chunks of {d:?}",
        scratch.len(),
        chunks
    );
    let scratch: &DeviceBuffer<f32> = scratch;
    let sums = scratch.slice(0..2 * d.c)?;
    let partial = scratch.slice(2 * d.c..2 * d.c + np)?;
    let [b, c, m, t] = dims_args(&d)?;
    let eps: KernelArg = (BN_EPS as f32).into();
    let k: KernelArg = i32_of(chunks, "chunks")?.into();
    dev.launch(
        "bn_relu_backward_partial",
        (d.c as u32, chunks as u32),
        BLOCK,
        0,
        &[
            partial.into(),
            dy.into(),
            y.into(),
            x.into(),
            mean.into(),
            var.into(),
            lens.into(),
            b,
            c,
            m,
            t,
            eps,
            k,
        ],
    )?;
    dev.launch(
        "bn_relu_backward_merge",
        blocks_for(d.c, BLOCK / 32),
        BLOCK,
        0,
        &[
            sums.into(),
            dgamma.view().into(),
            dbeta.view().into(),
            partial.into(),
            c,
            k,
        ],
    )?;
    launch_1d(
        dev,
        "bn_relu_backward_dx",
        d.len(),
        &[
            (&*dx).into(),
            dy.into(),
            y.into(),
            x.into(),
            mean.into(),
            var.into(),
            gamma.view().into(),
            sums.into(),
            lens.into(),
            b,
            c,
            m,
            t,
            eps,
            (train as i32).into(),
        ],
    )
}
