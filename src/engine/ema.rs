//! The parameter EMA (`--ema`) on the device: one extra flat buffer beside the parameters,
//! updated by kernels/ema.cu after each step, bit for bit [`crate::backend::ema_update`].

use crate::device::{Device, DeviceBuffer};
use anyhow::{ensure, Context, Result};

const BLOCK: u32 = 256;

/// ema ← fma(decay, ema − params, params), elementwise.
pub fn ema_update(
    dev: &Device,
    ema: &mut DeviceBuffer<f32>,
    params: &DeviceBuffer<f32>,
    decay: f32,
) -> Result<()> {
    let n = params.len();
    ensure!(
        ema.len() == n,
        "EMA buffer of {} values for {n} parameters",
        ema.len()
    );
    let n_i = i32::try_from(n).context("parameter count exceeds i32")?;
    let grid = u32::try_from(n.div_ceil(BLOCK as usize).max(1)).context("grid too large")?;
    dev.launch(
        "ema_update",
        grid,
        BLOCK,
        0,
        &[(&*ema).into(), params.into(), decay.into(), n_i.into()],
    )
}
