//! Fixed-order per-channel reductions: the second pass that adds a reduction's partials
//! (`reduce_chunks_acc`), the conv bias gradient's row sums and the FC bias gradient. Chunk
//! counts come from [`crate::backend::memory`]; uses the device and the launch helpers of
//! [`super`].

use super::i32_of;
use crate::backend::memory::BLOCK;
use crate::device::{blocks_for, Device, DeviceBuffer, DeviceSlice};
use anyhow::{ensure, Result};

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

/// `out[r]` += Σ_c `a[r][c]` over a `[rows][cols]` matrix in `chunks` chunks per row, `partial`
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

/// `db[o]` += Σ_r `dz[r][o]` over `[rows][dout]` in `chunks` row chunks, `partial` holding at least
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
