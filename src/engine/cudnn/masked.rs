//! The clip-length semantics around a dense convolution: [`masked_conv_forward`] and
//! [`masked_conv_backward`], written once against [`DenseConv`], and [`KernelDenseConv`],
//! which implements it with our kernels (so the masking is tested on sim). Uses the device,
//! `engine::cnn` (our conv and reductions) and the chunking of [`crate::backend::memory`].

use super::{dims, i32_of, ConvBackend, BLOCK};
use crate::backend::memory::bias_grad_chunks;
use crate::cpu::conv::ConvShape;
use crate::device::{blocks_for, AsView, Device, DeviceBuffer, DeviceSlice, DeviceSliceMut};
use crate::engine::cnn::{
    conv2d_backward_with, conv2d_forward_with, reduce_chunks_acc, ConvScratch,
};
use anyhow::{ensure, Result};

/// dst = src at each clip's frames t < lens[b], 0 elsewhere, over `[B][c][M][T]` (the first
/// B·c·M·T elements of `dst`; `dst` may be `src`).
pub(super) fn time_mask(
    dev: &Device,
    dst: &DeviceBuffer<f32>,
    src: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    batch: usize,
    c: usize,
    s: &ConvShape,
) -> Result<()> {
    let [b, c, m, t] = dims(batch, c, s.m, s.t)?;
    let n = batch * c as usize * s.m * s.t;
    dev.launch(
        "cnn_time_mask",
        blocks_for(n, BLOCK).min(1 << 16),
        BLOCK,
        0,
        &[
            dst.into(),
            src.into(),
            lens.into(),
            b.into(),
            c.into(),
            m.into(),
            t.into(),
        ],
    )
}

/// The three length-unaware convolutions over whole NCHW tensors that cuDNN provides: zero
/// padding k/2 in both dimensions, stride 1, cross-correlation, no bias. x `[B][cin][M][T]`,
/// w `[cout][cin][k][k]`, y `[B][cout][M][T]` of shape `s` (buffers may be longer; the first
/// elements are used).
pub trait DenseConv {
    /// y = conv(x, w).
    fn forward(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        w: DeviceSlice<'_, f32>,
        y: &mut DeviceBuffer<f32>,
    ) -> Result<()>;
    /// dw += ∂/∂w of Σ dy ⊙ conv(x, w).
    fn backward_filter_acc(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
        dw: &mut DeviceSliceMut<'_, f32>,
    ) -> Result<()>;
    /// dx = ∂/∂x of Σ dy ⊙ conv(x, w) (overwritten).
    fn backward_data(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        w: DeviceSlice<'_, f32>,
        dy: &DeviceBuffer<f32>,
        dx: &mut DeviceBuffer<f32>,
    ) -> Result<()>;
}

/// Length-aware conv forward (`cpu::conv::conv2d_forward`, as `cnn::conv2d_forward`) from a
/// dense conv: y `[B][cout][M][T]` = conv(x, w) + bias at each clip's valid frames, 0 elsewhere.
/// `xm` is scratch of at least `s.x_len()` floats.
#[allow(clippy::too_many_arguments)]
pub fn masked_conv_forward(
    dev: &Device,
    dense: &mut dyn DenseConv,
    x: &DeviceBuffer<f32>,
    w: DeviceSlice<'_, f32>,
    bias: DeviceSlice<'_, f32>,
    lens: &DeviceBuffer<i32>,
    s: &ConvShape,
    y: &mut DeviceBuffer<f32>,
    xm: &mut DeviceBuffer<f32>,
) -> Result<()> {
    ensure!(
        x.len() == s.x_len()
            && y.len() == s.y_len()
            && w.len() == s.w_len()
            && bias.len() == s.cout
            && lens.len() == s.batch
            && xm.len() >= s.x_len(),
        "masked conv forward: buffer sizes do not match {s:?}"
    );
    // zeros past each clip's end: the dense conv then reads exactly what ours reads
    time_mask(dev, xm, x, lens, s.batch, s.cin, s)?;
    dense.forward(dev, s, xm, w, y)?;
    let [b, c, m, t] = dims(s.batch, s.cout, s.m, s.t)?;
    let yr: &DeviceBuffer<f32> = y;
    dev.launch(
        "cnn_bias_mask",
        blocks_for(s.y_len(), BLOCK).min(1 << 16),
        BLOCK,
        0,
        &[
            yr.into(),
            bias.into(),
            lens.into(),
            b.into(),
            c.into(),
            m.into(),
            t.into(),
        ],
    )
}

/// Floats of [`masked_conv_backward`]'s `xm` scratch for `s`: the masked x, or the bias
/// gradient's `[cout][chunks]` partials when those are more.
pub fn xm_len(s: &ConvShape) -> usize {
    s.x_len()
        .max(s.cout * bias_grad_chunks(s.batch, s.cout, s.m, s.t))
}

/// Length-aware conv backward (`cpu::conv::conv2d_backward`, as `cnn::conv2d_backward`) from a
/// dense conv: dw, db ACCUMULATE; dx (if given) is overwritten (0 at t ≥ `lens[b]`); dy at
/// t ≥ `lens[b]` is ignored. `xm`, `dym`: scratch of at least [`xm_len`]`(s)` / `s.y_len()` floats
/// (xm holds the masked x, then, once the filter gradient has read it, the bias-gradient partials).
#[allow(clippy::too_many_arguments)]
pub fn masked_conv_backward(
    dev: &Device,
    dense: &mut dyn DenseConv,
    x: &DeviceBuffer<f32>,
    w: DeviceSlice<'_, f32>,
    dy: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    s: &ConvShape,
    dx: Option<&mut DeviceBuffer<f32>>,
    dw: &mut DeviceSliceMut<'_, f32>,
    db: &mut DeviceSliceMut<'_, f32>,
    xm: &mut DeviceBuffer<f32>,
    dym: &mut DeviceBuffer<f32>,
) -> Result<()> {
    ensure!(
        x.len() == s.x_len()
            && dy.len() == s.y_len()
            && w.len() == s.w_len()
            && dw.len() == s.w_len()
            && db.len() == s.cout
            && lens.len() == s.batch
            && dx.as_ref().is_none_or(|d| d.len() == s.x_len())
            && xm.len() >= xm_len(s)
            && dym.len() >= s.y_len(),
        "masked conv backward: buffer sizes do not match {s:?}"
    );
    time_mask(dev, xm, x, lens, s.batch, s.cin, s)?;
    time_mask(dev, dym, dy, lens, s.batch, s.cout, s)?;
    // with x and dy both zero past each end, the dense filter gradient sums only valid terms
    dense.backward_filter_acc(dev, s, xm, dym, dw)?;
    // db: a (channel x chunk) grid of partials in xm (free now), then a fixed-order pass 2
    let [b, c, m, t] = dims(s.batch, s.cout, s.m, s.t)?;
    let chunks = bias_grad_chunks(s.batch, s.cout, s.m, s.t);
    let partial = xm.slice(0..s.cout * chunks)?;
    dev.launch(
        "cnn_bias_grad_partial",
        (s.cout as u32, chunks as u32),
        BLOCK,
        0,
        &[
            partial.into(),
            dy.into(),
            lens.into(),
            b.into(),
            c.into(),
            m.into(),
            t.into(),
            i32::try_from(chunks)?.into(),
        ],
    )?;
    reduce_chunks_acc(dev, db.view(), partial, s.cout, chunks)?;
    if let Some(dx) = dx {
        // valid dx sums only valid outputs (dym is 0 elsewhere); then 0 past each end
        dense.backward_data(dev, s, w, dym, dx)?;
        let dxr: &DeviceBuffer<f32> = dx;
        time_mask(dev, dxr, dxr, lens, s.batch, s.cin, s)?;
    }
    Ok(())
}

/// Our kernels as a [`DenseConv`] (every clip at full length, zero bias): the stand-in for
/// cuDNN that lets the masking of [`masked_conv_forward`] / [`masked_conv_backward`] be tested
/// on `sim`. Allocates its own buffers (tests and one-off use).
pub struct KernelDenseConv {
    pub(super) s: ConvShape,
    pub(super) full: DeviceBuffer<i32>,
    pub(super) zero_bias: DeviceBuffer<f32>,
    pub(super) dummy_x: DeviceBuffer<f32>,
    pub(super) dummy_w: DeviceBuffer<f32>,
    pub(super) dummy_b: DeviceBuffer<f32>,
    pub(super) scratch: ConvScratch,
    pub(super) max_col: usize,
}

impl KernelDenseConv {
    /// For convolutions of shape `s`, im2col chunks of at most `max_col` elements.
    pub fn new(dev: &Device, s: &ConvShape, max_col: usize) -> Result<Self> {
        let full = dev.htod(&vec![i32_of(s.t, "frames")?; s.batch])?;
        let mut scratch = ConvScratch::with_backend(ConvBackend::Kernels);
        scratch.reserve(dev, &[*s], max_col)?;
        Ok(KernelDenseConv {
            s: *s,
            full,
            zero_bias: dev.alloc_zeros(s.cout)?,
            dummy_x: dev.alloc_zeros(s.x_len())?,
            dummy_w: dev.alloc_zeros(s.w_len())?,
            dummy_b: dev.alloc_zeros(s.cout)?,
            scratch,
            max_col,
        })
    }
    pub(super) fn check(&self, s: &ConvShape) -> Result<()> {
        ensure!(
            *s == self.s,
            "KernelDenseConv made for {:?}, called for {s:?}",
            self.s
        );
        Ok(())
    }
}

/// The first `n` elements of `b`, exactly (our kernels check exact sizes).
pub(super) fn exact(b: &DeviceBuffer<f32>, n: usize, what: &str) -> Result<()> {
    ensure!(
        b.len() == n,
        "KernelDenseConv: {what} has {} elements, the shape {n}",
        b.len()
    );
    Ok(())
}

impl DenseConv for KernelDenseConv {
    fn forward(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        w: DeviceSlice<'_, f32>,
        y: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        self.check(s)?;
        exact(x, s.x_len(), "x")?;
        conv2d_forward_with(
            dev,
            x,
            &w,
            &self.zero_bias,
            &self.full,
            s,
            y,
            self.max_col,
            &mut self.scratch,
        )
    }
    fn backward_filter_acc(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
        dw: &mut DeviceSliceMut<'_, f32>,
    ) -> Result<()> {
        self.check(s)?;
        exact(x, s.x_len(), "x")?;
        exact(dy, s.y_len(), "dy")?;
        conv2d_backward_with(
            dev,
            x,
            &self.dummy_w,
            dy,
            &self.full,
            s,
            None,
            dw,
            &mut self.dummy_b,
            self.max_col,
            &mut self.scratch,
        )
    }
    fn backward_data(
        &mut self,
        dev: &Device,
        s: &ConvShape,
        w: DeviceSlice<'_, f32>,
        dy: &DeviceBuffer<f32>,
        dx: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        self.check(s)?;
        exact(dy, s.y_len(), "dy")?;
        conv2d_backward_with(
            dev,
            &self.dummy_x,
            &w,
            dy,
            &self.full,
            s,
            Some(dx),
            &mut self.dummy_w,
            &mut self.dummy_b,
            self.max_col,
            &mut self.scratch,
        )
    }
}
