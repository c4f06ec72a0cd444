//! The memory model of a device training step: how many bytes the activations, gradients and
//! scratch of one `(batch, t_max)` shape hold ([`workspace_bytes`]), computed without a
//! device, so a caller can check that a batch fits before anything is allocated and the engine
//! can bound its cache of workspaces. The sizes depend on how the CNN kernels split their
//! reductions into chunks, so those rules (a pure function of the shapes, never of the GPU)
//! live here too and the engine's launches use them. Uses [`crate::model`] only.

use crate::model::ModelConfig;

/// Threads per block of every CNN kernel (reductions need a multiple of 32).
pub const BLOCK: u32 = 256;

/// Dimensions `[B][C][M][T]` of a BatchNorm / pool launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims4 {
    pub batch: usize,
    pub c: usize,
    pub m: usize,
    pub t: usize,
}
impl Dims4 {
    pub fn len(&self) -> usize {
        self.batch * self.c * self.m * self.t
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Valid values per channel: Σ_b min(`lens[b]`, T) · M.
    pub fn count(&self, lens: &[usize]) -> usize {
        lens.iter().map(|&l| l.min(self.t) * self.m).sum()
    }
}

// ---- Per-channel reductions: a 2-D grid (channel × chunk) writes one partial per (channel,
// chunk), then one warp per channel adds them in a fixed order (kernels/batchnorm.cu,
// conv.cu cnn_row_sum_partial, fc.cu fc_bias_grad_partial, reduce.cu reduce_chunks_acc). ----

/// Blocks a per-channel reduction's first pass aims at: 2 per SM of a 132-SM H100 (a fixed
/// number, not the GPU's, so the chunking and hence the result bits depend only on the shapes,
/// and sim reproduces the GPU's partition).
pub const REDUCE_TARGET_BLOCKS: usize = 264;
/// Fewest elements per chunk of the block-per-chunk passes (16 per thread of a 256-thread
/// block): smaller inputs get fewer chunks, tiny ones one.
pub const REDUCE_MIN_CHUNK: usize = 4096;
/// Fewest rows per chunk of `fc_bias_grad_partial` (one thread per column walks its rows).
pub const FC_BIAS_MIN_ROWS: usize = 16;

/// Chunks per group for `groups` blocks (or block columns) of `per_group` elements each:
/// enough for [`REDUCE_TARGET_BLOCKS`] in all, no chunk under `min_per_chunk` elements, at least 1.
pub fn reduce_chunks(groups: usize, per_group: usize, min_per_chunk: usize) -> usize {
    let want = REDUCE_TARGET_BLOCKS.div_ceil(groups.max(1));
    let useful = per_group.div_ceil(min_per_chunk.max(1));
    want.min(useful).max(1)
}

/// Chunks of the BatchNorm reductions of `d` (per channel: batch·M·T positions).
pub fn bn_chunks(d: Dims4) -> usize {
    reduce_chunks(d.c, d.batch * d.m * d.t, REDUCE_MIN_CHUNK)
}

/// Floats of the BatchNorm scratch of `d` that `engine::cnn::bn_stats` and `bn_relu_backward` take: the
/// backward's sums `[2·C]`, then the partials (`[3][C][chunks]` for the statistics, `[2][C][chunks]`
/// for the backward).
pub fn bn_scratch_len(d: Dims4) -> usize {
    2 * d.c + 3 * d.c * bn_chunks(d)
}

/// Chunks of the conv bias gradient's row sums of a `[rows][cols]` matrix.
pub fn row_sum_chunks(rows: usize, cols: usize) -> usize {
    reduce_chunks(rows, cols, REDUCE_MIN_CHUNK)
}

/// Chunks of the masked conv bias gradient over an NCHW `[batch][c][m][t]` dy (per channel:
/// batch·M·T positions; the cuDNN path's `cnn_bias_grad_partial`).
pub fn bias_grad_chunks(batch: usize, c: usize, m: usize, t: usize) -> usize {
    reduce_chunks(c, batch * m * t, REDUCE_MIN_CHUNK)
}

/// Chunks of the FC bias gradient over `rows` rows of `dout` columns.
pub fn fc_bias_chunks(rows: usize, dout: usize) -> usize {
    reduce_chunks(dout.div_ceil(BLOCK as usize), rows, FC_BIAS_MIN_ROWS)
}

/// Floats of the FC backward's scratch (`engine::cnn::fc_backward`): dz `[rows][dout]`, then the bias
/// partials `[dout][chunks]`.
pub fn fc_scratch_len(rows: usize, dout: usize) -> usize {
    rows * dout + dout * fc_bias_chunks(rows, dout)
}

/// Bytes of device memory a CNN workspace (`engine::cnn::CnnWorkspace`) of this shape holds
/// (what it allocates, computed without allocating).
pub fn workspace_bytes(cfg: &ModelConfig, batch: usize, t_max: usize) -> usize {
    let (mut m, mut t) = (cfg.n_mels, t_max);
    let mut n = 4 * batch + batch * m * t; // lengths (i32) and the input
    let bn = usize::from(cfg.batchnorm);
    for s in 0..3 {
        let (cout, y) = (cfg.channels[s], batch * cfg.channels[s] * m * t);
        let pooled = batch * cout * (m / 2) * (t / 2);
        let d4 = Dims4 {
            batch,
            c: cout,
            m,
            t,
        };
        // conv, relu, drelu, dconv; mean, var, BN scratch; arg, dpool, next input
        n += 4 * y + bn * (2 * cout + bn_scratch_len(d4)) + 3 * pooled;
        m /= 2;
        t /= 2;
    }
    let rows = batch * t;
    n += 2 * rows * cfg.fc_in() + 2 * rows * cfg.fc + fc_scratch_len(rows, cfg.fc);
    4 * n
}
