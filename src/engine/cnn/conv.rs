//! The convolution of one stage: im2col + `Device::gemm` over chunks of clips (or cuDNN, by
//! the [`ConvScratch`]'s [`ConvBackend`]), forward and backward, and the scratch they share.
//! Uses the device, [`crate::engine::cudnn`], `reduce.rs` and the launch helpers of
//! [`super`].

use super::reduce::row_sum_acc;
use super::{i32_of, launch_1d};
use crate::backend::memory::row_sum_chunks;
use crate::cpu::conv::ConvShape;
use crate::device::{AsView, AsViewMut, Device, DeviceBuffer, Transpose};
use crate::engine::cudnn::{ConvBackend, CudnnConv};
use anyhow::{bail, ensure, Result};

/// Shape integers of a conv launch.
pub(super) fn conv_dims(s: &ConvShape) -> Result<[i32; 5]> {
    Ok([
        i32_of(s.cin, "cin")?,
        i32_of(s.cout, "cout")?,
        i32_of(s.m, "mels")?,
        i32_of(s.t, "frames")?,
        i32_of(s.k, "kernel")?,
    ])
}

/// Clips per im2col chunk: as many as fit in `max_col` column elements (at least one).
pub(super) fn chunk_clips(s: &ConvShape, max_col: usize) -> usize {
    let per_clip = s.cin * s.k * s.k * s.m * s.t;
    (max_col / per_clip.max(1)).clamp(1, s.batch.max(1))
}

/// Reusable im2col scratch of the convolutions: `col` `[kk][ncol]` (also the data-gradient
/// columns in backward) and `g` `[cout][ncol]` (conv output chunk, or the gathered dy chunk),
/// each at least the largest chunk of the shapes it was reserved for. Grows, never shrinks:
/// one scratch serves every batch shape, so a seen shape allocates nothing. On cuda with cuDNN
/// it also holds the cuDNN plans (algorithms per shape), workspace and masked copies, and the
/// im2col buffers only for shapes cuDNN does not take. `default()` is [`ConvBackend::Auto`].
#[derive(Default)]
pub struct ConvScratch {
    col: Option<DeviceBuffer<f32>>,
    g: Option<DeviceBuffer<f32>>,
    /// the bias gradient's row-sum partials `[cout][chunks]` (pass 1 writes them all)
    partials: Option<DeviceBuffer<f32>>,
    cudnn: CudnnConv,
}

/// Column and output elements of the largest im2col chunk of `s`.
pub(super) fn chunk_elems(s: &ConvShape, max_col: usize) -> (usize, usize) {
    let ncol = chunk_clips(s, max_col) * s.m * s.t;
    (s.cin * s.k * s.k * ncol, s.cout * ncol)
}

/// Row-sum partials of the bias gradient of any im2col chunk of `s` (chunks grow with the
/// columns, so the largest chunk needs the most).
pub(super) fn chunk_partials(s: &ConvShape, max_col: usize) -> usize {
    let ncol = chunk_clips(s, max_col) * s.m * s.t;
    s.cout * row_sum_chunks(s.cout, ncol)
}

impl ConvScratch {
    /// An empty scratch whose convolutions run on `backend`.
    pub fn with_backend(backend: ConvBackend) -> Self {
        ConvScratch {
            cudnn: CudnnConv::new(backend),
            ..Default::default()
        }
    }

    /// Whether convolutions of shape `s` run through cuDNN (known after [`Self::reserve`]).
    pub fn uses_cudnn(&self, s: &ConvShape) -> bool {
        self.cudnn.covers(s)
    }

    /// Grows the buffers (allocating only if needed) to fit every shape of `shapes` (cuDNN:
    /// chooses the algorithms of each new shape once).
    pub fn reserve(&mut self, dev: &Device, shapes: &[ConvShape], max_col: usize) -> Result<()> {
        // the shapes left to our kernels need im2col buffers
        let shapes = self.cudnn.reserve(dev, shapes, max_col)?;
        let (mut nc, mut ng, mut np) = (0, 0, 0);
        for s in &shapes {
            let (c, g) = chunk_elems(s, max_col);
            nc = nc.max(c);
            ng = ng.max(g);
            np = np.max(chunk_partials(s, max_col));
        }
        if self.col.as_ref().is_none_or(|b| b.len() < nc) {
            self.col = None; // free the old one before allocating the larger one
            self.col = Some(dev.alloc_uninit(nc.max(1))?);
        }
        if self.g.as_ref().is_none_or(|b| b.len() < ng) {
            self.g = None;
            self.g = Some(dev.alloc_uninit(ng.max(1))?);
        }
        if self.partials.as_ref().is_none_or(|b| b.len() < np) {
            self.partials = None;
            // every word is written by pass 1 before pass 2 reads it (initcheck on sim)
            self.partials = Some(dev.alloc_uninit(np.max(1))?);
        }
        Ok(())
    }

    /// (col, g), checked to hold the largest chunk of `s`.
    fn bufs(
        &mut self,
        s: &ConvShape,
        max_col: usize,
    ) -> Result<(&mut DeviceBuffer<f32>, &mut DeviceBuffer<f32>)> {
        let (c, g, _) = self.bufs3(s, max_col)?;
        Ok((c, g))
    }

    /// (col, g, row-sum partials), checked to hold the largest chunk of `s`.
    #[allow(clippy::type_complexity)]
    fn bufs3(
        &mut self,
        s: &ConvShape,
        max_col: usize,
    ) -> Result<(
        &mut DeviceBuffer<f32>,
        &mut DeviceBuffer<f32>,
        &mut DeviceBuffer<f32>,
    )> {
        let (nc, ng) = chunk_elems(s, max_col);
        let np = chunk_partials(s, max_col);
        match (self.col.as_mut(), self.g.as_mut(), self.partials.as_mut()) {
            (Some(c), Some(g), Some(p)) if c.len() >= nc && g.len() >= ng && p.len() >= np => {
                Ok((c, g, p))
            }
            _ => bail!("conv scratch not reserved for {s:?} (max_col {max_col})"),
        }
    }
}

pub(super) fn check_conv(s: &ConvShape, lens: &DeviceBuffer<i32>) -> Result<()> {
    ensure!(
        s.k % 2 == 1 && s.batch > 0 && s.cin > 0 && s.cout > 0 && s.m > 0 && s.t > 0,
        "conv: bad shape {s:?} (odd kernel, non-empty sizes)"
    );
    ensure!(
        lens.len() == s.batch,
        "conv: {} lengths for a batch of {}",
        lens.len(),
        s.batch
    );
    Ok(())
}

/// col `[cin·k·k][nb·M·T]` = the im2col columns of clips b0..b0+nb of x (0 past each clip's
/// length): the GEMM operand of a conv chunk, forward and backward.
pub(super) fn im2col(
    dev: &Device,
    col: &DeviceBuffer<f32>,
    x: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    b0: usize,
    nb: usize,
    s: &ConvShape,
) -> Result<()> {
    let [cin, _, m, t, k] = conv_dims(s)?;
    let kk = s.cin * s.k * s.k;
    launch_1d(
        dev,
        "cnn_im2col",
        kk * nb * s.m * s.t,
        &[
            col.into(),
            x.into(),
            lens.into(),
            i32_of(b0, "clip")?.into(),
            i32_of(nb, "clips")?.into(),
            cin.into(),
            m.into(),
            t.into(),
            k.into(),
        ],
    )
}

/// y `[B][cout][M][T]` = conv(x, w) + bias at each clip's valid frames, 0 elsewhere
/// (`cpu::conv::conv2d_forward`). x `[B][cin][M][T]`, w `[cout][cin][k][k]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward(
    dev: &Device,
    x: &DeviceBuffer<f32>,
    w: &impl AsView<f32>,
    bias: &impl AsView<f32>,
    lens: &DeviceBuffer<i32>,
    s: &ConvShape,
    y: &mut DeviceBuffer<f32>,
    max_col: usize,
) -> Result<()> {
    let mut scratch = ConvScratch::default();
    scratch.reserve(dev, &[*s], max_col)?;
    conv2d_forward_with(dev, x, w, bias, lens, s, y, max_col, &mut scratch)
}

/// [`conv2d_forward`] with caller-held column scratch (no allocation; `scratch` must have been
/// [`ConvScratch::reserve`]d for `s` and `max_col`).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_with(
    dev: &Device,
    x: &DeviceBuffer<f32>,
    w: &impl AsView<f32>,
    bias: &impl AsView<f32>,
    lens: &DeviceBuffer<i32>,
    s: &ConvShape,
    y: &mut DeviceBuffer<f32>,
    max_col: usize,
    scratch: &mut ConvScratch,
) -> Result<()> {
    check_conv(s, lens)?;
    ensure!(
        x.len() == s.x_len() && y.len() == s.y_len() && w.view().len() == s.w_len(),
        "conv2d_forward: buffer sizes do not match {s:?}"
    );
    if scratch.cudnn.covers(s) {
        return scratch
            .cudnn
            .forward(dev, x, w.view(), bias.view(), lens, s, y);
    }
    let [_, cout, m, t, _] = conv_dims(s)?;
    let kk = s.cin * s.k * s.k;
    let nbmax = chunk_clips(s, max_col);
    let (col, g) = scratch.bufs(s, max_col)?;
    let mut b0 = 0;
    while b0 < s.batch {
        let nb = nbmax.min(s.batch - b0);
        let ncol = nb * s.m * s.t;
        let (b0i, nbi) = (b0 as i32, nb as i32);
        im2col(dev, col, x, lens, b0, nb, s)?;
        // g [cout][ncol] = w [cout][kk] · col [kk][ncol]
        dev.gemm(
            Transpose::N,
            Transpose::N,
            s.cout,
            ncol,
            kk,
            1.0,
            w,
            col,
            0.0,
            g,
        )?;
        launch_1d(
            dev,
            "cnn_conv_out",
            s.cout * ncol,
            &[
                (&*y).into(),
                (&*g).into(),
                bias.view().into(),
                lens.into(),
                b0i.into(),
                nbi.into(),
                cout.into(),
                m.into(),
                t.into(),
            ],
        )?;
        b0 += nb;
    }
    Ok(())
}

/// Conv backward (`cpu::conv::conv2d_backward`): dw, db ACCUMULATE; dx (if given) is
/// overwritten (0 at t ≥ `lens[b]`); dy at t ≥ `lens[b]` is ignored.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    dev: &Device,
    x: &DeviceBuffer<f32>,
    w: &impl AsView<f32>,
    dy: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    s: &ConvShape,
    dx: Option<&mut DeviceBuffer<f32>>,
    dw: &mut impl AsViewMut<f32>,
    db: &mut impl AsViewMut<f32>,
    max_col: usize,
) -> Result<()> {
    let mut scratch = ConvScratch::default();
    scratch.reserve(dev, &[*s], max_col)?;
    conv2d_backward_with(dev, x, w, dy, lens, s, dx, dw, db, max_col, &mut scratch)
}

/// [`conv2d_backward`] with caller-held column scratch (no allocation; `scratch` must have
/// been [`ConvScratch::reserve`]d for `s` and `max_col`).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_with(
    dev: &Device,
    x: &DeviceBuffer<f32>,
    w: &impl AsView<f32>,
    dy: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    s: &ConvShape,
    dx: Option<&mut DeviceBuffer<f32>>,
    dw: &mut impl AsViewMut<f32>,
    db: &mut impl AsViewMut<f32>,
    max_col: usize,
    scratch: &mut ConvScratch,
) -> Result<()> {
    check_conv(s, lens)?;
    ensure!(
        x.len() == s.x_len()
            && dy.len() == s.y_len()
            && w.view().len() == s.w_len()
            && dw.view().len() == s.w_len()
            && db.view().len() == s.cout
            && dx.as_ref().is_none_or(|d| d.len() == s.x_len()),
        "conv2d_backward: buffer sizes do not match {s:?}"
    );
    if scratch.cudnn.covers(s) {
        return scratch.cudnn.backward(
            dev,
            x,
            w.view(),
            dy,
            lens,
            s,
            dx,
            &mut dw.view_mut(),
            &mut db.view_mut(),
        );
    }
    let [cin, cout, m, t, k] = conv_dims(s)?;
    let kk = s.cin * s.k * s.k;
    let nbmax = chunk_clips(s, max_col);
    // the GEMM output buffer holds the gathered dy chunk here
    let (col, d, partials) = scratch.bufs3(s, max_col)?;
    let partials: &DeviceBuffer<f32> = partials;
    let dx: Option<&DeviceBuffer<f32>> = dx.map(|b| &*b);
    let mut b0 = 0;
    while b0 < s.batch {
        let nb = nbmax.min(s.batch - b0);
        let ncol = nb * s.m * s.t;
        let (b0i, nbi) = (b0 as i32, nb as i32);
        launch_1d(
            dev,
            "cnn_conv_dy_gather",
            s.cout * ncol,
            &[
                (&*d).into(),
                dy.into(),
                lens.into(),
                b0i.into(),
                nbi.into(),
                cout.into(),
                m.into(),
                t.into(),
            ],
        )?;
        row_sum_acc(
            dev,
            db.view(),
            d,
            s.cout,
            ncol,
            partials.view(),
            row_sum_chunks(s.cout, ncol),
        )?;
        im2col(dev, col, x, lens, b0, nb, s)?;
        // dw [cout][kk] += d [cout][ncol] · col [kk][ncol]ᵀ
        dev.gemm(
            Transpose::N,
            Transpose::T,
            s.cout,
            kk,
            ncol,
            1.0,
            d,
            col,
            1.0,
            dw,
        )?;
        if let Some(dx) = dx {
            // dcol [kk][ncol] = wᵀ · d, written over col (no longer needed for this chunk)
            dev.gemm(
                Transpose::T,
                Transpose::N,
                kk,
                ncol,
                s.cout,
                1.0,
                w,
                d,
                0.0,
                col,
            )?;
            launch_1d(
                dev,
                "cnn_col2im",
                nb * s.cin * s.m * s.t,
                &[
                    dx.into(),
                    (&*col).into(),
                    lens.into(),
                    b0i.into(),
                    nbi.into(),
                    cin.into(),
                    m.into(),
                    t.into(),
                    k.into(),
                ],
            )?;
        }
        b0 += nb;
    }
    Ok(())
}
