//! Dropout on the device: the mask of a (seed, step, site) and its application, equal bit for
//! bit to `cpu::dropout`. Uses the device, `cpu::dropout`'s site numbering and the launch
//! helpers of [`super`].

use super::{i32_of, launch_1d};
use crate::cpu::dropout::site_base;
use crate::device::{Device, DeviceBuffer, KernelArg};
use anyhow::{ensure, Result};

/// A dropout site of one training step: element n is kept iff
/// `Stream::new(seed, Purpose::Dropout, step).uniform(site_base(site) + n) >= p` (scale
/// 1/(1−p)), exactly `cpu::dropout::dropout_mask`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub seed: u64,
    pub step: u32,
    pub site: u64,
    pub p: f32,
}

/// The (seed, step, base, p, drop) kernel arguments of an optional dropout.
pub(super) fn drop_args(d: Option<Dropout>) -> [KernelArg<'static>; 5] {
    match d {
        Some(d) => [
            d.seed.into(),
            d.step.into(),
            site_base(d.site).into(),
            d.p.into(),
            1i32.into(),
        ],
        None => [
            0u64.into(),
            0u32.into(),
            0u64.into(),
            0f32.into(),
            0i32.into(),
        ],
    }
}

/// Multipliers (0 or 1/(1−p)) of `n` elements: `cpu::dropout::dropout_mask` on the device.
pub fn dropout_mask(dev: &Device, d: Dropout, n: usize) -> Result<DeviceBuffer<f32>> {
    let mask = dev.alloc_uninit::<f32>(n)?;
    let [seed, step, base, p, _] = drop_args(Some(d));
    launch_1d(
        dev,
        "dropout_mask_fill",
        n,
        &[(&mask).into(), seed, step, base, p, i32_of(n, "n")?.into()],
    )?;
    Ok(mask)
}

/// y = x ⊙ mask(d) (forward) or dx = dy ⊙ mask(d) (backward); `y` may not alias `x` in Rust,
/// the kernel itself allows it.
pub fn dropout_apply(
    dev: &Device,
    d: Dropout,
    x: &DeviceBuffer<f32>,
    y: &mut DeviceBuffer<f32>,
) -> Result<()> {
    ensure!(
        x.len() == y.len(),
        "dropout_apply: {} vs {}",
        x.len(),
        y.len()
    );
    let [seed, step, base, p, _] = drop_args(Some(d));
    launch_1d(
        dev,
        "dropout_apply",
        x.len(),
        &[
            (&*y).into(),
            x.into(),
            seed,
            step,
            base,
            p,
            i32_of(x.len(), "n")?.into(),
        ],
    )
}
