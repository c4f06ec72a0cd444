//! 2×2 max pooling with the following dropout and time mask, forward and backward. Uses the
//! device, `dropout.rs` and the launch helpers of [`super`].

use super::dropout::{drop_args, Dropout};
use super::{dims_args, launch_1d};
use crate::backend::memory::Dims4;
use crate::device::{Device, DeviceBuffer};
use anyhow::{ensure, Result};

/// 2×2 max pool of x `[B][C][M][T]` into y, arg `[B][C][M/2][T/2]` with the time mask
/// (pooled frames ≥ `lens_out[b]` are 0) and the optional dropout applied to y
/// (`maxpool2_forward` then `apply_mask`).
pub fn maxpool_forward(
    dev: &Device,
    x: &DeviceBuffer<f32>,
    lens_out: &DeviceBuffer<i32>,
    d: Dims4,
    drop: Option<Dropout>,
    y: &mut DeviceBuffer<f32>,
    arg: &mut DeviceBuffer<i32>,
) -> Result<()> {
    ensure!(
        lens_out.len() == d.batch,
        "maxpool_forward: lengths vs batch"
    );
    let [b, c, m, t] = dims_args(&d)?;
    let [seed, step, base, p, dr] = drop_args(drop);
    let n = d.batch * d.c * (d.m / 2) * (d.t / 2);
    launch_1d(
        dev,
        "pool_forward",
        n,
        &[
            (&*y).into(),
            (&*arg).into(),
            x.into(),
            lens_out.into(),
            b,
            c,
            m,
            t,
            seed,
            step,
            base,
            p,
            dr,
        ],
    )
}

/// Pool backward: dx `[B][C][M][T]` (overwritten) gets dy (⊙ dropout mask) at each valid
/// window's winner (`apply_mask` then `maxpool2_backward`).
pub fn maxpool_backward(
    dev: &Device,
    dy: &DeviceBuffer<f32>,
    arg: &DeviceBuffer<i32>,
    lens_out: &DeviceBuffer<i32>,
    d: Dims4,
    drop: Option<Dropout>,
    dx: &mut DeviceBuffer<f32>,
) -> Result<()> {
    ensure!(
        lens_out.len() == d.batch,
        "maxpool_backward: lengths vs batch"
    );
    let [b, c, m, t] = dims_args(&d)?;
    let [seed, step, base, p, dr] = drop_args(drop);
    launch_1d(
        dev,
        "pool_backward",
        d.len(),
        &[
            (&*dx).into(),
            dy.into(),
            arg.into(),
            lens_out.into(),
            b,
            c,
            m,
            t,
            seed,
            step,
            base,
            p,
            dr,
        ],
    )
}
