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

use std::ops::Range;

use anyhow::{bail, ensure, Context, Result};

use crate::backend::memory::{
    bn_chunks, bn_scratch_len, fc_bias_chunks, fc_scratch_len, row_sum_chunks, Dims4, BLOCK,
};
use crate::cpu::conv::ConvShape;
use crate::cpu::dropout::{site_base, SITE_FC, SITE_POOL1};
use crate::cpu::Mode;
use crate::device::{
    blocks_for, AsView, AsViewMut, Device, DeviceBuffer, DeviceSlice, DeviceSliceMut, KernelArg,
    Transpose,
};
pub use crate::engine::cudnn::ConvBackend;
use crate::engine::cudnn::CudnnConv;
use crate::model::{BufferLayout, ModelConfig, ParamLayout, BN_EPS, BN_MOMENTUM};

/// Most blocks of a grid-stride launch (the kernels loop over the rest).
const MAX_BLOCKS: u32 = 1 << 16;

fn grid(n: usize) -> u32 {
    blocks_for(n, BLOCK).min(MAX_BLOCKS)
}

/// A grid-stride launch of `BLOCK`-thread blocks covering `n` items (the shape of most CNN
/// kernels).
fn launch_1d(dev: &Device, name: &str, n: usize, args: &[KernelArg]) -> Result<()> {
    dev.launch(name, grid(n), BLOCK, 0, args)
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).with_context(|| format!("{what} = {v} exceeds the kernels' i32 sizes"))
}

// ---- Per-channel reductions: a 2-D grid (channel × chunk) writes one partial per (channel,
// chunk), then one warp per channel adds them in a fixed order (kernels/batchnorm.cu,
// conv.cu cnn_row_sum_partial, fc.cu fc_bias_grad_partial, reduce.cu reduce_chunks_acc). ----

/// Pass 2 of the row reductions: out[r] += Σ_k partial[r·chunks + k] in a fixed order.
pub(crate) fn reduce_chunks_acc(
    dev: &Device,
    out: DeviceSlice<'_, f32>,
    partial: DeviceSlice<'_, f32>,
    rows: usize,
    chunks: usize,
) -> Result<()> {
    dev.launch(
        "reduce_chunks_acc",
        blocks_for(rows, BLOCK / 32),
        BLOCK,
        0,
        &[
            out.into(),
            partial.slice(0..rows * chunks)?.into(),
            i32_of(rows, "rows")?.into(),
            i32_of(chunks, "chunks")?.into(),
        ],
    )
}

/// out[r] += Σ_c a[r][c] over a `[rows][cols]` matrix in `chunks` chunks per row, `partial`
/// holding at least rows·chunks floats (the conv bias gradient; exposed for the checks).
pub fn row_sum_acc(
    dev: &Device,
    out: DeviceSlice<'_, f32>,
    a: &DeviceBuffer<f32>,
    rows: usize,
    cols: usize,
    partial: DeviceSlice<'_, f32>,
    chunks: usize,
) -> Result<()> {
    ensure!(
        chunks >= 1
            && out.len() == rows
            && a.len() >= rows * cols
            && partial.len() >= rows * chunks,
        "row sums: {rows}×{cols} in {chunks} chunks with {} outputs, {} inputs, {} partials",
        out.len(),
        a.len(),
        partial.len()
    );
    dev.launch(
        "cnn_row_sum_partial",
        (rows as u32, chunks as u32),
        BLOCK,
        0,
        &[
            partial.slice(0..rows * chunks)?.into(),
            a.slice(0..rows * cols)?.into(),
            i32_of(rows, "rows")?.into(),
            i32_of(cols, "columns")?.into(),
            i32_of(chunks, "chunks")?.into(),
        ],
    )?;
    reduce_chunks_acc(dev, out, partial, rows, chunks)
}

/// db[o] += Σ_r dz[r][o] over `[rows][dout]` in `chunks` row chunks, `partial` holding at least
/// dout·chunks floats (the FC bias gradient; exposed for the checks).
pub fn fc_bias_grad(
    dev: &Device,
    db: DeviceSlice<'_, f32>,
    dz: DeviceSlice<'_, f32>,
    rows: usize,
    dout: usize,
    partial: DeviceSlice<'_, f32>,
    chunks: usize,
) -> Result<()> {
    ensure!(
        chunks >= 1 && db.len() == dout && dz.len() == rows * dout && partial.len() >= dout * chunks,
        "FC bias gradient: {rows}×{dout} in {chunks} chunks with {} outputs, {} inputs, {} partials",
        db.len(),
        dz.len(),
        partial.len()
    );
    dev.launch(
        "fc_bias_grad_partial",
        (blocks_for(dout, BLOCK), chunks as u32),
        BLOCK,
        0,
        &[
            partial.slice(0..dout * chunks)?.into(),
            dz.into(),
            i32_of(rows, "rows")?.into(),
            i32_of(dout, "fc width")?.into(),
            i32_of(chunks, "chunks")?.into(),
        ],
    )?;
    reduce_chunks_acc(dev, db, partial, dout, chunks)
}

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
fn drop_args(d: Option<Dropout>) -> [KernelArg<'static>; 5] {
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

/// Per-clip lengths as the kernels take them.
pub fn upload_lens(dev: &Device, lens: &[usize]) -> Result<DeviceBuffer<i32>> {
    let v: Vec<i32> = lens
        .iter()
        .map(|&l| i32_of(l, "clip length"))
        .collect::<Result<_>>()?;
    dev.htod(&v)
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

/// Shape integers of a conv launch.
fn conv_dims(s: &ConvShape) -> Result<[i32; 5]> {
    Ok([
        i32_of(s.cin, "cin")?,
        i32_of(s.cout, "cout")?,
        i32_of(s.m, "mels")?,
        i32_of(s.t, "frames")?,
        i32_of(s.k, "kernel")?,
    ])
}

/// Clips per im2col chunk: as many as fit in `max_col` column elements (at least one).
fn chunk_clips(s: &ConvShape, max_col: usize) -> usize {
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
fn chunk_elems(s: &ConvShape, max_col: usize) -> (usize, usize) {
    let ncol = chunk_clips(s, max_col) * s.m * s.t;
    (s.cin * s.k * s.k * ncol, s.cout * ncol)
}

/// Row-sum partials of the bias gradient of any im2col chunk of `s` (chunks grow with the
/// columns, so the largest chunk needs the most).
fn chunk_partials(s: &ConvShape, max_col: usize) -> usize {
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

fn check_conv(s: &ConvShape, lens: &DeviceBuffer<i32>) -> Result<()> {
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
fn im2col(
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
/// overwritten (0 at t ≥ lens[b]); dy at t ≥ lens[b] is ignored.
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

/// The four sizes of `d` as kernel arguments.
fn dims_args(d: &Dims4) -> Result<[KernelArg<'static>; 4]> {
    Ok([
        i32_of(d.batch, "batch")?.into(),
        i32_of(d.c, "channels")?.into(),
        i32_of(d.m, "mels")?.into(),
        i32_of(d.t, "frames")?.into(),
    ])
}

/// Batch mean and biased variance per channel over the valid positions
/// (`cpu::batchnorm::batch_stats`), in `chunks` chunks per channel ([`bn_chunks`] in the
/// engine; any ≥ 1). `scratch` is caller-held scratch of at least 2·C + 3·C·chunks floats
/// ([`bn_scratch_len`] for `bn_chunks`; overwritten, may be uninitialised).
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
/// flows through the batch statistics. Sums in `chunks` chunks per channel ([`bn_chunks`] in the
/// engine; any ≥ 1); `scratch` is caller-held scratch of at least 2·C + 2·C·chunks floats
/// ([`bn_scratch_len`] covers `bn_chunks`; overwritten, may be uninitialised): its first 2·C hold
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

/// 2×2 max pool of x `[B][C][M][T]` into y, arg `[B][C][M/2][T/2]` with the time mask
/// (pooled frames ≥ lens_out[b] are 0) and the optional dropout applied to y
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

/// The CNN + FC parameters (or their gradients), one tensor each, in the shapes of
/// MODEL_SPEC.md. `bn_w`/`bn_b` are empty without BatchNorm. `V` is how a tensor is held: an
/// own buffer ([`CnnParams::upload`], [`CnnParams::zeros`]), or a view of a flat
/// `ParamLayout`-order buffer ([`CnnParams::views`] to read parameters, [`CnnParams::views_mut`]
/// to write gradients), which is what the training step uses: no per-tensor copies.
pub struct CnnParams<V = DeviceBuffer<f32>> {
    pub conv_w: Vec<V>,
    pub conv_b: Vec<V>,
    pub bn_w: Vec<V>,
    pub bn_b: Vec<V>,
    pub fc_w: V,
    pub fc_b: V,
}

/// Names of the CNN + FC tensors in the flat parameter layout, in [`CnnParams`] field order
/// (conv w/b per stage, then BN w/b per stage, then fc).
pub fn cnn_names(cfg: &ModelConfig) -> Vec<String> {
    let mut v = Vec::new();
    for s in 1..=3 {
        v.push(format!("conv{s}.weight"));
        v.push(format!("conv{s}.bias"));
    }
    if cfg.batchnorm {
        for s in 1..=3 {
            v.push(format!("bn{s}.weight"));
            v.push(format!("bn{s}.bias"));
        }
    }
    v.push("fc.weight".into());
    v.push("fc.bias".into());
    v
}

/// Ranges of the CNN + FC tensors in the flat parameter layout, in [`CnnParams`] field order.
pub fn cnn_ranges(cfg: &ModelConfig) -> Vec<Range<usize>> {
    let layout = ParamLayout::new(cfg);
    cnn_names(cfg).iter().map(|n| layout.range(n)).collect()
}

impl CnnParams {
    /// Uploads the CNN + FC tensors of a flat parameter vector (`ParamLayout` order).
    pub fn upload(dev: &Device, cfg: &ModelConfig, params: &[f32]) -> Result<Self> {
        let layout = ParamLayout::new(cfg);
        ensure!(
            params.len() == layout.total(),
            "{} parameters, the model has {}",
            params.len(),
            layout.total()
        );
        let mut bufs = Vec::new();
        for n in cnn_names(cfg) {
            bufs.push(dev.htod(&params[layout.range(&n)])?);
        }
        Self::from_vec(cfg, bufs)
    }

    /// Zero-filled tensors (a gradient accumulator).
    pub fn zeros(dev: &Device, cfg: &ModelConfig) -> Result<Self> {
        let mut bufs = Vec::new();
        for r in cnn_ranges(cfg) {
            bufs.push(dev.alloc_zeros(r.len())?);
        }
        Self::from_vec(cfg, bufs)
    }

    /// Copies the tensors into their ranges of a flat parameter-layout vector.
    pub fn download_into(&self, dev: &Device, cfg: &ModelConfig, out: &mut [f32]) -> Result<()> {
        let layout = ParamLayout::new(cfg);
        ensure!(out.len() == layout.total(), "download_into: layout size");
        for (r, b) in cnn_ranges(cfg).into_iter().zip(self.in_order()) {
            out[r].copy_from_slice(&dev.dtoh(b)?);
        }
        Ok(())
    }
}

impl<'a> CnnParams<DeviceSlice<'a, f32>> {
    /// Views of the tensors at `ranges` ([`cnn_ranges`]) of the flat buffer `flat`.
    pub fn views(
        cfg: &ModelConfig,
        flat: &'a DeviceBuffer<f32>,
        ranges: &[Range<usize>],
    ) -> Result<Self> {
        let v = ranges
            .iter()
            .map(|r| flat.slice(r.clone()))
            .collect::<Result<Vec<_>>>()?;
        Self::from_vec(cfg, v)
    }
}

impl<'a> CnnParams<DeviceSliceMut<'a, f32>> {
    /// Mutable views of the tensors at `ranges` ([`cnn_ranges`]) of the flat buffer `flat`
    /// (e.g. the gradient buffer, which the backward then accumulates into).
    pub fn views_mut(
        cfg: &ModelConfig,
        flat: &'a mut DeviceBuffer<f32>,
        ranges: &[Range<usize>],
    ) -> Result<Self> {
        let v = flat.split_mut(ranges)?;
        Self::from_vec(cfg, v)
    }
}

impl<V> CnnParams<V> {
    fn from_vec(cfg: &ModelConfig, tensors: Vec<V>) -> Result<Self> {
        let want = 8 + if cfg.batchnorm { 6 } else { 0 };
        ensure!(
            tensors.len() == want,
            "{} CNN tensors, this model has {want}",
            tensors.len()
        );
        let mut it = tensors.into_iter();
        let mut next = || it.next().expect("length checked");
        let (mut conv_w, mut conv_b, mut bn_w, mut bn_b) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            conv_w.push(next());
            conv_b.push(next());
        }
        if cfg.batchnorm {
            for _ in 0..3 {
                bn_w.push(next());
                bn_b.push(next());
            }
        }
        let fc_w = next();
        let fc_b = next();
        Ok(CnnParams {
            conv_w,
            conv_b,
            bn_w,
            bn_b,
            fc_w,
            fc_b,
        })
    }

    fn in_order(&self) -> Vec<&V> {
        let mut v = Vec::new();
        for s in 0..3 {
            v.push(&self.conv_w[s]);
            v.push(&self.conv_b[s]);
        }
        for s in 0..self.bn_w.len() {
            v.push(&self.bn_w[s]);
            v.push(&self.bn_b[s]);
        }
        v.push(&self.fc_w);
        v.push(&self.fc_b);
        v
    }
}

/// BatchNorm running statistics on the device (empty vectors without BatchNorm).
pub struct BnRunning {
    pub mean: Vec<DeviceBuffer<f32>>,
    pub var: Vec<DeviceBuffer<f32>>,
    /// num_batches_tracked of each stage (host counters).
    pub batches_tracked: Vec<f32>,
}

impl BnRunning {
    /// From a flat buffer vector (`BufferLayout` order).
    pub fn upload(dev: &Device, cfg: &ModelConfig, buffers: &[f32]) -> Result<Self> {
        let bl = BufferLayout::new(cfg);
        ensure!(buffers.len() == bl.total(), "buffer vector size");
        let mut r = BnRunning {
            mean: Vec::new(),
            var: Vec::new(),
            batches_tracked: Vec::new(),
        };
        if cfg.batchnorm {
            for s in 1..=3 {
                r.mean
                    .push(dev.htod(&buffers[bl.range(&format!("bn{s}.running_mean"))])?);
                r.var
                    .push(dev.htod(&buffers[bl.range(&format!("bn{s}.running_var"))])?);
                r.batches_tracked
                    .push(buffers[bl.range(&format!("bn{s}.num_batches_tracked")).start]);
            }
        }
        Ok(r)
    }

    /// Back into a flat buffer vector.
    pub fn download_into(&self, dev: &Device, cfg: &ModelConfig, out: &mut [f32]) -> Result<()> {
        let bl = BufferLayout::new(cfg);
        ensure!(out.len() == bl.total(), "buffer vector size");
        for s in 0..self.mean.len() {
            let n = s + 1;
            out[bl.range(&format!("bn{n}.running_mean"))]
                .copy_from_slice(&dev.dtoh(&self.mean[s])?);
            out[bl.range(&format!("bn{n}.running_var"))].copy_from_slice(&dev.dtoh(&self.var[s])?);
            out[bl.range(&format!("bn{n}.num_batches_tracked")).start] = self.batches_tracked[s];
        }
        Ok(())
    }
}

/// Options of the composed forward/backward.
#[derive(Clone, Copy, Debug)]
pub struct CnnOptions {
    /// Most elements of one im2col matrix (clips are processed in chunks that fit).
    pub max_col_elems: usize,
    /// In eval mode with BatchNorm, copy the running statistics into the workspace (one copy
    /// launch per statistic and stage) so that [`cnn_backward`] can differentiate the forward
    /// even if a training step changes them in between. Off: the forward reads the running
    /// statistics in place and such a backward is an error (`DeviceModel` never differentiates
    /// an eval forward, so it turns this off).
    pub eval_stats_snapshot: bool,
}
impl Default for CnnOptions {
    fn default() -> Self {
        // 256 Mi floats = 1 GiB of column matrix (plus as much again in backward).
        CnnOptions {
            max_col_elems: 1 << 28,
            eval_stats_snapshot: true,
        }
    }
}

/// Saved activations of one conv stage, and its backward buffers.
pub struct StageWork {
    /// conv input `[B][cin][M][T]` (stage 0: the model input, filled by the caller; stage
    /// s > 0: the previous stage's pooled output)
    pub input: DeviceBuffer<f32>,
    /// conv output (pre-BN) `[B][cout][M][T]`
    pub conv: DeviceBuffer<f32>,
    /// statistics used (batch in training, a copy of the running ones in eval when
    /// [`CnnOptions::eval_stats_snapshot`]), `[cout]`; None without BN
    pub mean: Option<DeviceBuffer<f32>>,
    pub var: Option<DeviceBuffer<f32>>,
    /// ReLU output `[B][cout][M][T]`
    pub relu: DeviceBuffer<f32>,
    /// pool winners 0..3 `[B][cout][M/2][T/2]`
    pub arg: DeviceBuffer<i32>,
    pub shape: ConvShape,
    /// backward: gradient of the pool output `[B][cout][M/2][T/2]`, of the ReLU output and of
    /// the conv output `[B][cout][M][T]`
    dpool: DeviceBuffer<f32>,
    drelu: DeviceBuffer<f32>,
    dconv: DeviceBuffer<f32>,
    /// BN scratch of [`bn_scratch_len`] (the backward's sums, the reductions' partials);
    /// None without BN
    bn_sums: Option<DeviceBuffer<f32>>,
}

/// Every buffer of the composed forward and backward for one (batch, t_max) shape, created
/// once by [`CnnWorkspace::new`] and overwritten by each [`cnn_forward`] / [`cnn_backward`]
/// (which allocate nothing, except the shared [`ConvScratch`] growing for a larger shape).
/// After [`cnn_forward`] it holds the forward's results.
pub struct CnnWorkspace {
    pub batch: usize,
    pub t_max: usize,
    /// Valid lengths after 0..=3 poolings (host) and the same on the device, `[B]` each.
    pub lens: [Vec<usize>; 4],
    pub lens_dev: Vec<DeviceBuffer<i32>>,
    pub train: bool,
    /// The forward was in eval mode without [`CnnOptions::eval_stats_snapshot`]: the BN
    /// statistics it used are not in the workspace, so it has no backward.
    stats_missing: bool,
    /// (seed, step, p) when dropout is active.
    pub drop: Option<(u64, u32, f32)>,
    pub stages: Vec<StageWork>,
    /// stage-3 output `[B][C3][M3][T3]`
    pub stage3: DeviceBuffer<f32>,
    /// `[B][T3][fc_in]`
    pub frames: DeviceBuffer<f32>,
    /// FC output after ReLU, before dropout `[B·T3][fc]`
    pub fc_relu: DeviceBuffer<f32>,
    /// FC output after dropout `[B][T3][fc]`: the LSTM input.
    pub out: DeviceBuffer<f32>,
    /// backward: gradient of `frames` `[B][T3][fc_in]` and the FC scratch dz `[B·T3][fc]`
    dframes: DeviceBuffer<f32>,
    fc_dz: DeviceBuffer<f32>,
}

impl CnnWorkspace {
    /// Buffers for batches of `batch` clips padded to `t_max` frames (t_max ≥ 8).
    pub fn new(dev: &Device, cfg: &ModelConfig, batch: usize, t_max: usize) -> Result<Self> {
        cfg.validate()?;
        ensure!(
            batch > 0 && t_max >= 8,
            "CNN workspace: batch {batch}, t_max {t_max} (need ≥ 1 clip, ≥ 8 frames)"
        );
        let lens_dev = (0..4)
            .map(|_| dev.alloc_uninit::<i32>(batch))
            .collect::<Result<Vec<_>>>()?;
        let (mut m, mut t) = (cfg.n_mels, t_max);
        let mut stages = Vec::with_capacity(3);
        let mut input = dev.alloc_uninit::<f32>(batch * cfg.n_mels * t_max)?;
        for s in 0..3 {
            let sh = ConvShape {
                batch,
                cin: cfg.stage_in(s),
                cout: cfg.channels[s],
                k: cfg.kernel,
                m,
                t,
            };
            let pooled = batch * sh.cout * (m / 2) * (t / 2);
            let d4 = Dims4 {
                batch,
                c: sh.cout,
                m,
                t,
            };
            let bn = |n: usize| -> Result<Option<DeviceBuffer<f32>>> {
                Ok(if cfg.batchnorm {
                    Some(dev.alloc_uninit(n)?)
                } else {
                    None
                })
            };
            stages.push(StageWork {
                input,
                conv: dev.alloc_uninit(sh.y_len())?,
                mean: bn(sh.cout)?,
                var: bn(sh.cout)?,
                relu: dev.alloc_uninit(sh.y_len())?,
                arg: dev.alloc_uninit(pooled)?,
                shape: sh,
                dpool: dev.alloc_uninit(pooled)?,
                drelu: dev.alloc_uninit(sh.y_len())?,
                dconv: dev.alloc_uninit(sh.y_len())?,
                // written by the reductions before each read (initcheck on sim checks that)
                bn_sums: if cfg.batchnorm {
                    Some(dev.alloc_uninit(bn_scratch_len(d4))?)
                } else {
                    None
                },
            });
            input = dev.alloc_uninit(pooled)?;
            m /= 2;
            t /= 2;
        }
        let rows = batch * t;
        let fin = cfg.fc_in();
        Ok(Self {
            batch,
            t_max,
            lens: Default::default(),
            lens_dev,
            train: false,
            stats_missing: false,
            drop: None,
            stages,
            stage3: input,
            frames: dev.alloc_uninit(rows * fin)?,
            fc_relu: dev.alloc_uninit(rows * cfg.fc)?,
            out: dev.alloc_uninit(rows * cfg.fc)?,
            dframes: dev.alloc_uninit(rows * fin)?,
            fc_dz: dev.alloc_uninit(fc_scratch_len(rows, cfg.fc))?,
        })
    }

    /// Bytes of device memory this workspace holds (sum of its buffers).
    pub fn bytes(&self) -> usize {
        let mut n = self.lens_dev.iter().map(|b| b.len()).sum::<usize>();
        for st in &self.stages {
            n += st.input.len() + st.conv.len() + st.relu.len() + st.arg.len();
            n += st.dpool.len() + st.drelu.len() + st.dconv.len();
            for b in [&st.mean, &st.var, &st.bn_sums].into_iter().flatten() {
                n += b.len();
            }
        }
        n += self.stage3.len() + self.frames.len() + self.fc_relu.len() + self.out.len();
        n += self.dframes.len() + self.fc_dz.len();
        4 * n
    }

    /// The model input `[B][n_mels][t_max]` that [`cnn_forward`] reads (fill it first, or
    /// replace it with a buffer of the same length).
    pub fn input_mut(&mut self) -> &mut DeviceBuffer<f32> {
        &mut self.stages[0].input
    }

    /// The conv shapes of the three stages.
    pub fn shapes(&self) -> [ConvShape; 3] {
        [
            self.stages[0].shape,
            self.stages[1].shape,
            self.stages[2].shape,
        ]
    }

    fn dropout(&self, site: u64) -> Option<Dropout> {
        self.drop.map(|(seed, step, p)| Dropout {
            seed,
            step,
            site,
            p,
        })
    }
}

/// Forward of the three conv stages and the FC for the input in `ws` (`ws.input_mut()`,
/// `[B][n_mels][t_max]`, kept for the backward) with per-clip `lengths`; results are written
/// into `ws`. Training mode uses batch statistics, updates `running` and applies the dropout
/// masks of (seed, step); eval uses `running`. `scratch` grows to this shape's im2col chunks
/// if it is smaller (the only allocation).
#[allow(clippy::too_many_arguments)]
pub fn cnn_forward(
    dev: &Device,
    cfg: &ModelConfig,
    params: &CnnParams<impl AsView<f32>>,
    running: &mut BnRunning,
    lengths: &[usize],
    mode: Mode,
    opts: &CnnOptions,
    ws: &mut CnnWorkspace,
    scratch: &mut ConvScratch,
) -> Result<()> {
    cfg.validate()?;
    let bsz = lengths.len();
    if bsz == 0 {
        bail!("empty batch");
    }
    let t_max = ws.t_max;
    ensure!(
        bsz == ws.batch,
        "{bsz} lengths for a workspace of batch {}",
        ws.batch
    );
    let x_len = ws.stages[0].input.len();
    ensure!(
        x_len == bsz * cfg.n_mels * t_max,
        "input has {x_len} values, expected batch {bsz} × mels {} × frames {t_max}",
        cfg.n_mels
    );
    if let Some((b, &l)) = lengths
        .iter()
        .enumerate()
        .find(|(_, &l)| !(8..=t_max).contains(&l))
    {
        bail!("clip {b} has length {l}; lengths must be in 8..={t_max}");
    }
    scratch.reserve(dev, &ws.shapes(), opts.max_col_elems)?;
    let train = matches!(mode, Mode::Train { .. });
    ws.train = train;
    ws.stats_missing = !train && cfg.batchnorm && !opts.eval_stats_snapshot;
    ws.drop = match mode {
        Mode::Train { seed, step } if cfg.dropout > 0.0 => Some((seed, step, cfg.dropout)),
        _ => None,
    };
    ws.lens[0] = lengths.to_vec();
    for s in 1..4 {
        ws.lens[s] = ws.lens[s - 1].iter().map(|&l| l / 2).collect();
    }
    for (l, d) in ws.lens.iter().zip(ws.lens_dev.iter_mut()) {
        let v: Vec<i32> = l
            .iter()
            .map(|&l| i32_of(l, "clip length"))
            .collect::<Result<_>>()?;
        dev.copy_htod(&v, d)?;
    }
    for s in 0..3 {
        let drop = ws.dropout(SITE_POOL1 + s as u64);
        let (head, tail) = ws.stages.split_at_mut(s + 1);
        let st = &mut head[s];
        // the pooled output is the next stage's input (stage 3: `stage3`)
        let pooled = match tail.first_mut() {
            Some(next) => &mut next.input,
            None => &mut ws.stage3,
        };
        let sh = st.shape;
        let d4 = Dims4 {
            batch: bsz,
            c: sh.cout,
            m: sh.m,
            t: sh.t,
        };
        let lens_in = &ws.lens_dev[s];
        conv2d_forward_with(
            dev,
            &st.input,
            &params.conv_w[s],
            &params.conv_b[s],
            lens_in,
            &sh,
            &mut st.conv,
            opts.max_col_elems,
            scratch,
        )?;
        match (&mut st.mean, &mut st.var, &st.bn_sums) {
            (Some(mean), Some(var), Some(bn_scratch)) => {
                if train {
                    bn_stats(
                        dev,
                        &st.conv,
                        lens_in,
                        d4,
                        mean,
                        var,
                        bn_scratch,
                        bn_chunks(d4),
                    )?;
                    let (rm, rv) = (&mut running.mean[s], &mut running.var[s]);
                    bn_update_running(dev, mean, var, d4.count(&ws.lens[s]), rm, rv)?;
                    running.batches_tracked[s] += 1.0;
                } else if opts.eval_stats_snapshot {
                    // a copy, so later training steps cannot change what backward sees
                    crate::engine::rnn::copy_slice(dev, mean, &running.mean[s], 0)?;
                    crate::engine::rnn::copy_slice(dev, var, &running.var[s], 0)?;
                }
                let (mean, var) = if train || opts.eval_stats_snapshot {
                    (&*mean, &*var)
                } else {
                    (&running.mean[s], &running.var[s])
                };
                bn_relu_forward(
                    dev,
                    &st.conv,
                    mean,
                    var,
                    &params.bn_w[s],
                    &params.bn_b[s],
                    lens_in,
                    d4,
                    &mut st.relu,
                )?;
            }
            _ => {
                // conv output is already 0 at invalid positions
                crate::device::ops::relu_forward(dev, &mut st.relu, &st.conv)?;
            }
        }
        maxpool_forward(
            dev,
            &st.relu,
            &ws.lens_dev[s + 1],
            d4,
            drop,
            pooled,
            &mut st.arg,
        )?;
    }
    let sh = ws.stages[2].shape;
    let (m, t) = (sh.m / 2, sh.t / 2);
    let d3 = Dims4 {
        batch: bsz,
        c: cfg.channels[2],
        m,
        t,
    };
    frames_reshape(dev, &ws.stage3, d3, false, &mut ws.frames)?;
    let rows = bsz * t;
    let drop = ws.dropout(SITE_FC);
    fc_forward(
        dev,
        &ws.frames,
        &params.fc_w,
        &params.fc_b,
        rows,
        cfg.fc_in(),
        cfg.fc,
        drop,
        &mut ws.fc_relu,
        &mut ws.out,
    )
}

/// Backward of [`cnn_forward`] (whose results `ws` holds) from `dout` (gradient of `ws.out`,
/// `[B][T3][fc]`); ACCUMULATES into `grads` (no gradient for the input). Allocates nothing.
#[allow(clippy::too_many_arguments)]
pub fn cnn_backward(
    dev: &Device,
    cfg: &ModelConfig,
    params: &CnnParams<impl AsView<f32>>,
    ws: &mut CnnWorkspace,
    dout: &DeviceBuffer<f32>,
    grads: &mut CnnParams<impl AsViewMut<f32>>,
    opts: &CnnOptions,
    scratch: &mut ConvScratch,
) -> Result<()> {
    ensure!(
        !ws.stats_missing,
        "cnn_backward: the eval-mode forward read the BatchNorm running statistics without a \
         snapshot (CnnOptions::eval_stats_snapshot is off), so it cannot be differentiated"
    );
    let bsz = ws.batch;
    let t3 = ws.t_max / 8;
    let rows = bsz * t3;
    ensure!(
        dout.len() == rows * cfg.fc,
        "cnn_backward: gradient has {} values, expected {}",
        dout.len(),
        rows * cfg.fc
    );
    let fin = cfg.fc_in();
    let drop = ws.dropout(SITE_FC);
    fc_backward(
        dev,
        &ws.frames,
        &params.fc_w,
        &ws.fc_relu,
        dout,
        rows,
        fin,
        cfg.fc,
        drop,
        Some(&mut ws.dframes),
        &mut grads.fc_w,
        &mut grads.fc_b,
        &mut ws.fc_dz,
    )?;
    let d3 = Dims4 {
        batch: bsz,
        c: cfg.channels[2],
        m: cfg.n_mels / 8,
        t: t3,
    };
    frames_reshape(dev, &ws.dframes, d3, true, &mut ws.stages[2].dpool)?;
    for s in (0..3).rev() {
        let drop = ws.dropout(SITE_POOL1 + s as u64);
        let (head, tail) = ws.stages.split_at_mut(s);
        let st = &mut tail[0];
        let sh = st.shape;
        let d4 = Dims4 {
            batch: bsz,
            c: sh.cout,
            m: sh.m,
            t: sh.t,
        };
        maxpool_backward(
            dev,
            &st.dpool,
            &st.arg,
            &ws.lens_dev[s + 1],
            d4,
            drop,
            &mut st.drelu,
        )?;
        match (&st.mean, &st.var, &mut st.bn_sums) {
            (Some(mean), Some(var), Some(sums)) => bn_relu_backward(
                dev,
                &st.drelu,
                &st.relu,
                &st.conv,
                mean,
                var,
                &params.bn_w[s],
                &ws.lens_dev[s],
                d4,
                ws.train,
                &mut st.dconv,
                &mut grads.bn_w[s],
                &mut grads.bn_b[s],
                sums,
                bn_chunks(d4),
            )?,
            _ => crate::device::ops::relu_backward(dev, &mut st.dconv, &st.drelu, &st.relu)?,
        }
        // the input gradient is the previous stage's pool-output gradient
        let dx = head.last_mut().map(|prev| &mut prev.dpool);
        conv2d_backward_with(
            dev,
            &st.input,
            &params.conv_w[s],
            &st.dconv,
            &ws.lens_dev[s],
            &sh,
            dx,
            &mut grads.conv_w[s],
            &mut grads.conv_b[s],
            opts.max_col_elems,
            scratch,
        )?;
    }
    Ok(())
}
