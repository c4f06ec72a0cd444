//! Typed wrappers over the first kernels (elementwise, reductions): the launch shapes live here
//! once, for every caller and both devices.
//!
//! Layer: device, the lowest (used by engine and above). May use the shared modules (`rng`,
//! `isa`, `cache`, `atomic_file`) only.

use anyhow::{ensure, Result};

use super::{blocks_for, Device, DeviceBuffer};

/// Threads per block for 1D elementwise launches.
pub const BLOCK: u32 = 256;

fn n_i32(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| anyhow::anyhow!("{n} elements exceed the kernels' i32 indexing"))
}

/// x *= a.
pub fn scale(dev: &Device, x: &mut DeviceBuffer<f32>, a: f32) -> Result<()> {
    let n = n_i32(x.len())?;
    let x: &DeviceBuffer<f32> = x;
    dev.launch(
        "scale",
        blocks_for(x.len(), BLOCK),
        BLOCK,
        0,
        &[x.into(), a.into(), n.into()],
    )
}

/// y += a x.
pub fn axpy(dev: &Device, y: &mut DeviceBuffer<f32>, a: f32, x: &DeviceBuffer<f32>) -> Result<()> {
    ensure!(
        x.len() == y.len(),
        "axpy: x has {} elements, y {}",
        x.len(),
        y.len()
    );
    let n = n_i32(y.len())?;
    let y: &DeviceBuffer<f32> = y;
    dev.launch(
        "axpy",
        blocks_for(y.len(), BLOCK),
        BLOCK,
        0,
        &[y.into(), x.into(), a.into(), n.into()],
    )
}

/// y = relu(x).
pub fn relu_forward(dev: &Device, y: &mut DeviceBuffer<f32>, x: &DeviceBuffer<f32>) -> Result<()> {
    ensure!(
        x.len() == y.len(),
        "relu_forward: x has {} elements, y {}",
        x.len(),
        y.len()
    );
    let n = n_i32(y.len())?;
    let y: &DeviceBuffer<f32> = y;
    dev.launch(
        "relu_forward",
        blocks_for(y.len(), BLOCK),
        BLOCK,
        0,
        &[y.into(), x.into(), n.into()],
    )
}

/// dx = dy where x > 0, else 0.
pub fn relu_backward(
    dev: &Device,
    dx: &mut DeviceBuffer<f32>,
    dy: &DeviceBuffer<f32>,
    x: &DeviceBuffer<f32>,
) -> Result<()> {
    ensure!(
        x.len() == dx.len() && dy.len() == dx.len(),
        "relu_backward: lengths differ ({}, {}, {})",
        dx.len(),
        dy.len(),
        x.len()
    );
    let n = n_i32(dx.len())?;
    let dx: &DeviceBuffer<f32> = dx;
    dev.launch(
        "relu_backward",
        blocks_for(dx.len(), BLOCK),
        BLOCK,
        0,
        &[dx.into(), dy.into(), x.into(), n.into()],
    )
}

/// Most blocks a first reduction pass uses (so the second pass is one block of BLOCK threads
/// looping over at most this many partials).
pub const REDUCE_MAX_BLOCKS: u32 = 1024;

fn reduce(dev: &Device, kernel: &str, x: &DeviceBuffer<f32>) -> Result<f32> {
    let n = n_i32(x.len())?;
    let blocks = blocks_for(x.len(), BLOCK).min(REDUCE_MAX_BLOCKS);
    let partial = dev.alloc_uninit::<f32>(blocks as usize)?;
    dev.launch(
        kernel,
        blocks,
        BLOCK,
        0,
        &[(&partial).into(), x.into(), n.into()],
    )?;
    let out = if blocks > 1 {
        let total = dev.alloc_uninit::<f32>(1)?;
        dev.launch(
            kernel,
            1u32,
            BLOCK,
            0,
            &[(&total).into(), (&partial).into(), (blocks as i32).into()],
        )?;
        total
    } else {
        partial
    };
    Ok(dev.dtoh(&out)?[0])
}

/// Sum of all elements (two passes when more than one block is needed); 0 for an empty buffer.
pub fn reduce_sum(dev: &Device, x: &DeviceBuffer<f32>) -> Result<f32> {
    reduce(dev, "reduce_sum", x)
}

/// Maximum element; -inf for an empty buffer.
pub fn reduce_max(dev: &Device, x: &DeviceBuffer<f32>) -> Result<f32> {
    reduce(dev, "reduce_max", x)
}
