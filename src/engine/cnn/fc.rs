//! The stage-3 → frames reshape and the per-frame FC + ReLU + dropout, forward and backward.
//! Uses the device, `dropout.rs`, `reduce.rs` and the launch helpers of [`super`].

use super::dropout::{drop_args, Dropout};
use super::reduce::fc_bias_grad;
use super::{dims_args, i32_of, launch_1d};
use crate::backend::memory::{fc_bias_chunks, fc_scratch_len, Dims4};
use crate::device::{AsView, AsViewMut, Device, DeviceBuffer, Transpose};
use anyhow::{ensure, Result};

/// h `[B][T][C·M]` from the stage-3 output x `[B][C][M][T]` (backward: `backward = true`
/// maps h-shaped `src` to x-shaped `dst`).
pub fn frames_reshape(
    dev: &Device,
    src: &DeviceBuffer<f32>,
    d: Dims4,
    backward: bool,
    dst: &mut DeviceBuffer<f32>,
) -> Result<()> {
    ensure!(
        src.len() == d.len() && dst.len() == d.len(),
        "frames_reshape: sizes"
    );
    let [b, c, m, t] = dims_args(&d)?;
    let name = if backward {
        "fc_frames_backward"
    } else {
        "fc_frames_forward"
    };
    launch_1d(
        dev,
        name,
        d.len(),
        &[(&*dst).into(), src.into(), b, c, m, t],
    )
}

/// FC forward over `rows` frames: r = relu(x Wᵀ + b) `[rows][dout]` (saved for backward),
/// h = r ⊙ dropout mask (or r).
#[allow(clippy::too_many_arguments)]
pub fn fc_forward(
    dev: &Device,
    x: &DeviceBuffer<f32>,
    w: &impl AsView<f32>,
    bias: &impl AsView<f32>,
    rows: usize,
    din: usize,
    dout: usize,
    drop: Option<Dropout>,
    r: &mut DeviceBuffer<f32>,
    h: &mut DeviceBuffer<f32>,
) -> Result<()> {
    ensure!(
        x.len() == rows * din
            && w.view().len() == dout * din
            && bias.view().len() == dout
            && r.len() == rows * dout
            && h.len() == rows * dout,
        "fc_forward: buffer sizes do not match rows {rows}, in {din}, out {dout}"
    );
    dev.gemm(
        Transpose::N,
        Transpose::T,
        rows,
        dout,
        din,
        1.0,
        x,
        w,
        0.0,
        r,
    )?;
    let [seed, step, base, p, dr] = drop_args(drop);
    launch_1d(
        dev,
        "fc_bias_relu_dropout",
        rows * dout,
        &[
            (&*h).into(),
            (&*r).into(),
            bias.view().into(),
            i32_of(rows, "rows")?.into(),
            i32_of(dout, "fc width")?.into(),
            seed,
            step,
            base,
            p,
            dr,
        ],
    )
}

/// FC backward from dh (gradient of h): dW += dzᵀ x, db += Σ dz, dx = dz W (if given), with
/// dz = dh ⊙ mask where r > 0.
/// `dz` is caller-held scratch of [`fc_scratch_len`] floats (overwritten; dz itself, then the
/// bias gradient's partials).
#[allow(clippy::too_many_arguments)]
pub fn fc_backward(
    dev: &Device,
    x: &DeviceBuffer<f32>,
    w: &impl AsView<f32>,
    r: &DeviceBuffer<f32>,
    dh: &DeviceBuffer<f32>,
    rows: usize,
    din: usize,
    dout: usize,
    drop: Option<Dropout>,
    dx: Option<&mut DeviceBuffer<f32>>,
    dw: &mut impl AsViewMut<f32>,
    db: &mut impl AsViewMut<f32>,
    dz: &mut DeviceBuffer<f32>,
) -> Result<()> {
    ensure!(
        dz.len() == fc_scratch_len(rows, dout)
            && x.len() == rows * din
            && w.view().len() == dout * din
            && r.len() == rows * dout
            && dh.len() == rows * dout
            && dw.view().len() == dout * din
            && db.view().len() == dout
            && dx.as_ref().is_none_or(|d| d.len() == rows * din),
        "fc_backward: buffer sizes do not match rows {rows}, in {din}, out {dout}"
    );
    let (ri, oi) = (i32_of(rows, "rows")?, i32_of(dout, "fc width")?);
    let [seed, step, base, p, dr] = drop_args(drop);
    let dz: &DeviceBuffer<f32> = dz;
    let (dz, partials) = (dz.slice(0..rows * dout)?, dz.slice(rows * dout..dz.len())?);
    launch_1d(
        dev,
        "fc_relu_dropout_backward",
        rows * dout,
        &[
            dz.into(),
            dh.into(),
            r.into(),
            ri.into(),
            oi.into(),
            seed,
            step,
            base,
            p,
            dr,
        ],
    )?;
    let chunks = fc_bias_chunks(rows, dout);
    fc_bias_grad(dev, db.view(), dz, rows, dout, partials, chunks)?;
    // dW [dout][din] += dzᵀ (dz stored rows × dout) · x [rows][din]
    dev.gemm(
        Transpose::T,
        Transpose::N,
        dout,
        din,
        rows,
        1.0,
        &dz,
        x,
        1.0,
        dw,
    )?;
    if let Some(dx) = dx {
        dev.gemm(
            Transpose::N,
            Transpose::N,
            rows,
            din,
            dout,
            1.0,
            &dz,
            w,
            0.0,
            dx,
        )?;
    }
    Ok(())
}
