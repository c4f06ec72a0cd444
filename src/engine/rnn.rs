//! The sequence half of ArabEmoNet on a [`Device`] (cuda or sim, same code): stacked BiLSTM
//! (dropout between layers), attention pooling, classifier, softmax cross-entropy, and the
//! optimiser (fused Adam, global-norm gradient clipping). Every launch shape of the kernels in
//! kernels/{lstm,attention,loss,adam}.cu is written here once; the CPU oracle is src/cpu
//! (same layouts, same formulas).
//!
//! Per BiLSTM layer: ONE GEMM projects all frames of both directions (`pre [N][8H] = x·W_stᵀ`,
//! N = B·T, W_st = both directions' W_ih stacked `[8H][din]`), then ONE persistent launch runs
//! the recurrence of every (clip, direction) pair (W_hh in registers, hidden state in shared
//! memory, each clip only over its own valid frames). Backward: one persistent launch for
//! backpropagation through time gives the pre-activation gate gradients dG `[N][8H]`; then
//! GEMMs give dW_ih = dGᵀx, dW_hh (diagonal blocks of dGᵀ·hp), the biases (ones·dG) and dx =
//! dG·W_st. Everything is deterministic (fixed-order reductions, no atomics).
//!
//! Parameters and gradients are the flat buffers of [`ParamLayout`] (PyTorch order);
//! [`RnnOffsets`] says where each tensor lives. Hidden size is limited to
//! [`MAX_HIDDEN`] (= 64, the paper's size) by the register-resident W_hh.
//!
//! Layer: engine (below train and cli). May use `backend` (it implements it), `device`, `cpu`
//! (the reference it is checked against), `features`, `model` and the shared modules (`rng`,
//! `isa`, `cache`, `atomic_file`); never `train` or `cli`.

use anyhow::{bail, ensure, Result};

use crate::backend::mixup::SoftTargets;
use crate::backend::LrGroup;
use crate::cpu::dropout::SITE_LSTM0;
use crate::device::{blocks_for, Device, DeviceBuffer, KernelArg, Transpose};
use crate::model::{lstm_names, ModelConfig, ParamLayout};

/// Largest LSTM hidden size the recurrent kernels support (`LSTM_MAX_H` in kernels/lstm.cu).
pub const MAX_HIDDEN: usize = 64;
/// Threads per block of 1D elementwise launches.
const BLOCK: u32 = 256;
/// Threads per block of the attention kernels (one block per clip).
pub const ATTN_BLOCK: u32 = 128;
/// Threads of the single-block loss kernel.
pub const LOSS_BLOCK: u32 = 128;
/// Most first-pass blocks of the gradient-norm reduction.
pub const NORM_MAX_BLOCKS: u32 = 1024;

/// A launch of `BLOCK`-thread blocks, one thread per item of `n`.
fn launch_1d(dev: &Device, name: &str, n: usize, args: &[KernelArg]) -> Result<()> {
    dev.launch(name, blocks_for(n, BLOCK), BLOCK, 0, args)
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow::anyhow!("{what} = {v} exceeds the kernels' i32 indexing"))
}

/// Shape of one BiLSTM layer (as `cpu::lstm::LstmShape`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LstmDims {
    pub batch: usize,
    pub t: usize,
    pub din: usize,
    pub h: usize,
}

impl LstmDims {
    /// Rows N = B·T of the per-frame matrices.
    pub fn rows(&self) -> usize {
        self.batch * self.t
    }
    /// Parameters of the layer (both directions).
    pub fn params(&self) -> usize {
        2 * (4 * self.h * self.din + 4 * self.h * self.h + 8 * self.h)
    }
    fn check(&self) -> Result<()> {
        ensure!(
            self.h >= 1 && self.h <= MAX_HIDDEN,
            "LSTM hidden size {} is outside 1..={MAX_HIDDEN} (the device kernels keep W_hh in registers)",
            self.h
        );
        ensure!(
            self.batch >= 1 && self.t >= 1 && self.din >= 1,
            "empty LSTM layer {self:?}"
        );
        i32_of(self.rows() * 8 * self.h, "LSTM rows × 8H")?;
        Ok(())
    }
}

/// Device buffers of one BiLSTM layer's forward pass (what backward reads).
pub struct LstmLayerWs {
    pub dims: LstmDims,
    /// both directions' W_ih stacked `[8H][din]`
    pub wst: DeviceBuffer<f32>,
    /// input projections `[N][8H]`
    pub pre: DeviceBuffer<f32>,
    /// output `[N][2H]` = [forward | reverse], zero at padded frames
    pub out: DeviceBuffer<f32>,
    /// hidden state before each frame in its direction `[N][2H]`
    pub hp: DeviceBuffer<f32>,
    /// activated gates `[N][8H]`
    pub gates: DeviceBuffer<f32>,
    /// cell state after each frame `[N][2H]`
    pub cst: DeviceBuffer<f32>,
}

impl LstmLayerWs {
    pub fn new(dev: &Device, dims: LstmDims) -> Result<Self> {
        dims.check()?;
        let (n, h) = (dims.rows(), dims.h);
        Ok(Self {
            dims,
            wst: dev.alloc_uninit(8 * h * dims.din)?,
            pre: dev.alloc_uninit(n * 8 * h)?,
            out: dev.alloc_uninit(n * 2 * h)?,
            hp: dev.alloc_uninit(n * 2 * h)?,
            gates: dev.alloc_uninit(n * 8 * h)?,
            cst: dev.alloc_uninit(n * 2 * h)?,
        })
    }
}

/// Scratch of one BiLSTM layer's backward pass.
pub struct LstmGradWs {
    /// pre-activation gate gradients `[N][8H]`
    pub dg: DeviceBuffer<f32>,
    /// dG^T x `[8H][din]`
    pub dwih: DeviceBuffer<f32>,
    /// dG^T hp `[8H][2H]` (direction d's W_hh gradient is the block rows d·4H.., cols d·H..)
    pub dwhh: DeviceBuffer<f32>,
    /// column sums of dG `[8H]`
    pub dbias: DeviceBuffer<f32>,
    /// N ones (column sums as a GEMM)
    pub ones: DeviceBuffer<f32>,
}

impl LstmGradWs {
    pub fn new(dev: &Device, dims: LstmDims) -> Result<Self> {
        dims.check()?;
        let (n, h) = (dims.rows(), dims.h);
        Ok(Self {
            dg: dev.alloc_uninit(n * 8 * h)?,
            dwih: dev.alloc_uninit(8 * h * dims.din)?,
            dwhh: dev.alloc_uninit(16 * h * h)?,
            dbias: dev.alloc_uninit(8 * h)?,
            ones: dev.htod(&vec![1.0f32; n])?,
        })
    }
}

fn check_lens(dev_lens: &DeviceBuffer<i32>, batch: usize) -> Result<()> {
    ensure!(
        dev_lens.len() == batch,
        "lengths buffer holds {} values for a batch of {batch}",
        dev_lens.len()
    );
    Ok(())
}

/// Forward of one BiLSTM layer: x `[N][din]` → `ws.out` etc. Layer parameters start at
/// `p_off` of `params` (layout of cpu::lstm). `lens` `[B]` valid frames per clip (clamped to
/// 0..=T by the kernel).
pub fn lstm_layer_forward(
    dev: &Device,
    params: &DeviceBuffer<f32>,
    p_off: usize,
    x: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    ws: &mut LstmLayerWs,
) -> Result<()> {
    let s = ws.dims;
    check_lens(lens, s.batch)?;
    ensure!(
        x.len() == s.rows() * s.din,
        "LSTM input has {} values, expected {}×{}",
        x.len(),
        s.rows(),
        s.din
    );
    let (h, din) = (i32_of(s.h, "hidden")?, i32_of(s.din, "din")?);
    let poff = i32_of(p_off, "parameter offset")?;
    launch_1d(
        dev,
        "lstm_stack_wih",
        8 * s.h * s.din,
        &[
            (&ws.wst).into(),
            params.into(),
            poff.into(),
            din.into(),
            h.into(),
        ],
    )?;
    dev.gemm(
        Transpose::N,
        Transpose::T,
        s.rows(),
        8 * s.h,
        s.din,
        1.0,
        x,
        &ws.wst,
        0.0,
        &mut ws.pre,
    )?;
    let rows = i32_of(s.rows(), "rows")?;
    dev.launch(
        "lstm_forward_recurrent",
        (s.batch as u32, 2u32),
        4 * s.h as u32,
        0,
        &[
            (&ws.out).into(),
            (&ws.hp).into(),
            (&ws.gates).into(),
            (&ws.cst).into(),
            (&ws.pre).into(),
            params.into(),
            lens.into(),
            poff.into(),
            rows.into(),
            i32_of(s.batch, "batch")?.into(),
            i32_of(s.t, "frames")?.into(),
            din.into(),
            h.into(),
        ],
    )
}

/// Backward of one BiLSTM layer. `dout` `[N][2H]` is the gradient of `ws.out`; the layer's
/// parameter gradients ACCUMULATE into `grads` at `g_off`; `dx` `[N][din]` (overwritten) when
/// given. `x` is the forward input.
#[allow(clippy::too_many_arguments)]
pub fn lstm_layer_backward(
    dev: &Device,
    params: &DeviceBuffer<f32>,
    p_off: usize,
    x: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    ws: &LstmLayerWs,
    dout: &DeviceBuffer<f32>,
    grads: &mut DeviceBuffer<f32>,
    g_off: usize,
    dx: Option<&mut DeviceBuffer<f32>>,
    gw: &mut LstmGradWs,
) -> Result<()> {
    let s = ws.dims;
    check_lens(lens, s.batch)?;
    ensure!(
        dout.len() == s.rows() * 2 * s.h,
        "LSTM output gradient has {} values, expected {}",
        dout.len(),
        s.rows() * 2 * s.h
    );
    let (h, din) = (i32_of(s.h, "hidden")?, i32_of(s.din, "din")?);
    let n = s.rows();
    dev.launch(
        "lstm_backward_recurrent",
        (s.batch as u32, 2u32),
        4 * s.h as u32,
        0,
        &[
            (&gw.dg).into(),
            dout.into(),
            (&ws.gates).into(),
            (&ws.cst).into(),
            params.into(),
            lens.into(),
            i32_of(p_off, "parameter offset")?.into(),
            i32_of(n, "rows")?.into(),
            i32_of(s.batch, "batch")?.into(),
            i32_of(s.t, "frames")?.into(),
            din.into(),
            h.into(),
        ],
    )?;
    let g8 = 8 * s.h;
    dev.gemm(
        Transpose::T,
        Transpose::N,
        g8,
        s.din,
        n,
        1.0,
        &gw.dg,
        x,
        0.0,
        &mut gw.dwih,
    )?;
    dev.gemm(
        Transpose::T,
        Transpose::N,
        g8,
        2 * s.h,
        n,
        1.0,
        &gw.dg,
        &ws.hp,
        0.0,
        &mut gw.dwhh,
    )?;
    dev.gemm(
        Transpose::N,
        Transpose::N,
        1,
        g8,
        n,
        1.0,
        &gw.ones,
        &gw.dg,
        0.0,
        &mut gw.dbias,
    )?;
    let grads_ro: &DeviceBuffer<f32> = grads;
    launch_1d(
        dev,
        "lstm_scatter_grads",
        s.params(),
        &[
            grads_ro.into(),
            (&gw.dwih).into(),
            (&gw.dwhh).into(),
            (&gw.dbias).into(),
            i32_of(g_off, "gradient offset")?.into(),
            din.into(),
            h.into(),
        ],
    )?;
    if let Some(dx) = dx {
        dev.gemm(
            Transpose::N,
            Transpose::N,
            n,
            s.din,
            g8,
            1.0,
            &gw.dg,
            &ws.wst,
            0.0,
            dx,
        )?;
    }
    Ok(())
}

/// Inverted dropout of `site` (MODEL_SPEC.md): y = x ⊙ mask; also the backward (dx = dy ⊙
/// mask). `y` and `x` have the same length.
pub fn dropout(
    dev: &Device,
    y: &mut DeviceBuffer<f32>,
    x: &DeviceBuffer<f32>,
    seed: u64,
    step: u32,
    site: u64,
    p: f32,
) -> Result<()> {
    ensure!(
        y.len() == x.len(),
        "dropout: x has {} values, y {}",
        x.len(),
        y.len()
    );
    ensure!(
        (0.0..1.0).contains(&p),
        "dropout probability {p} is outside [0, 1)"
    );
    let site = u32::try_from(site).map_err(|_| anyhow::anyhow!("dropout site {site} too large"))?;
    let n = i32_of(x.len(), "dropout elements")?;
    launch_1d(
        dev,
        "lstm_dropout",
        x.len(),
        &[
            (&*y).into(),
            x.into(),
            seed.into(),
            step.into(),
            site.into(),
            p.into(),
            n.into(),
        ],
    )
}

/// The same in place: x ⊙= mask.
pub fn dropout_in_place(
    dev: &Device,
    x: &mut DeviceBuffer<f32>,
    seed: u64,
    step: u32,
    site: u64,
    p: f32,
) -> Result<()> {
    ensure!(
        (0.0..1.0).contains(&p),
        "dropout probability {p} is outside [0, 1)"
    );
    let site = u32::try_from(site).map_err(|_| anyhow::anyhow!("dropout site {site} too large"))?;
    let n = i32_of(x.len(), "dropout elements")?;
    launch_1d(
        dev,
        "lstm_dropout",
        x.len(),
        &[
            (&*x).into(),
            (&*x).into(),
            seed.into(),
            step.into(),
            site.into(),
            p.into(),
            n.into(),
        ],
    )
}

/// Attention forward: h `[B][T][D]` → ctx `[B][D]`, e and alpha `[B][T]`. attention.weight
/// (D values) then attention.bias (1) start at `w_off` of `params`.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    dev: &Device,
    h: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    params: &DeviceBuffer<f32>,
    w_off: usize,
    batch: usize,
    t: usize,
    d: usize,
    ctx: &mut DeviceBuffer<f32>,
    e: &mut DeviceBuffer<f32>,
    alpha: &mut DeviceBuffer<f32>,
) -> Result<()> {
    check_lens(lens, batch)?;
    ensure!(
        h.len() == batch * t * d,
        "attention input has {} values, expected {batch}×{t}×{d}",
        h.len()
    );
    let (ctx, e, alpha): (&DeviceBuffer<f32>, &DeviceBuffer<f32>, &DeviceBuffer<f32>) =
        (ctx, e, alpha);
    dev.launch(
        "attn_forward",
        batch as u32,
        ATTN_BLOCK,
        0,
        &[
            ctx.into(),
            e.into(),
            alpha.into(),
            h.into(),
            params.into(),
            lens.into(),
            i32_of(w_off, "parameter offset")?.into(),
            i32_of(batch, "batch")?.into(),
            i32_of(t, "frames")?.into(),
            i32_of(d, "features")?.into(),
        ],
    )
}

/// Scratch of the attention backward pass.
pub struct AttnGradWs {
    /// per-clip [dw | db] `[B][D+1]`
    pub dwb: DeviceBuffer<f32>,
    /// `[B][T]`
    pub da: DeviceBuffer<f32>,
    /// B ones
    pub ones: DeviceBuffer<f32>,
}

impl AttnGradWs {
    pub fn new(dev: &Device, batch: usize, t: usize, d: usize) -> Result<Self> {
        Ok(Self {
            dwb: dev.alloc_uninit(batch * (d + 1))?,
            da: dev.alloc_uninit(batch * t)?,
            ones: dev.htod(&vec![1.0f32; batch])?,
        })
    }
}

/// Attention backward: dh `[B][T][D]` overwritten; d(attention.weight, attention.bias)
/// ACCUMULATE into `grads` at `w_off`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dev: &Device,
    h: &DeviceBuffer<f32>,
    lens: &DeviceBuffer<i32>,
    params: &DeviceBuffer<f32>,
    w_off: usize,
    batch: usize,
    t: usize,
    d: usize,
    e: &DeviceBuffer<f32>,
    alpha: &DeviceBuffer<f32>,
    dctx: &DeviceBuffer<f32>,
    dh: &mut DeviceBuffer<f32>,
    grads: &mut DeviceBuffer<f32>,
    gw: &mut AttnGradWs,
) -> Result<()> {
    check_lens(lens, batch)?;
    let woff = i32_of(w_off, "parameter offset")?;
    dev.launch(
        "attn_backward",
        batch as u32,
        ATTN_BLOCK,
        0,
        &[
            (&*dh).into(),
            (&gw.dwb).into(),
            (&gw.da).into(),
            h.into(),
            params.into(),
            e.into(),
            alpha.into(),
            dctx.into(),
            lens.into(),
            woff.into(),
            i32_of(batch, "batch")?.into(),
            i32_of(t, "frames")?.into(),
            i32_of(d, "features")?.into(),
        ],
    )?;
    // [dw | db] += ones · dwb, straight into their range of the flat gradient
    dev.gemm(
        Transpose::N,
        Transpose::N,
        1,
        d + 1,
        batch,
        1.0,
        &gw.ones,
        &gw.dwb,
        1.0,
        &mut grads.slice_mut(w_off..w_off + d + 1)?,
    )
}

/// dst[off..off+n] = src[..] (n = dst.len()).
pub fn copy_slice(
    dev: &Device,
    dst: &mut DeviceBuffer<f32>,
    src: &DeviceBuffer<f32>,
    off: usize,
) -> Result<()> {
    let n = i32_of(dst.len(), "slice length")?;
    launch_1d(
        dev,
        "loss_copy_slice",
        dst.len(),
        &[
            (&*dst).into(),
            src.into(),
            i32_of(off, "offset")?.into(),
            n.into(),
        ],
    )
}

/// y `[rows][cols]` += params[b_off..b_off+cols] per row.
pub fn add_bias_rows(
    dev: &Device,
    y: &mut DeviceBuffer<f32>,
    params: &DeviceBuffer<f32>,
    b_off: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    ensure!(
        y.len() == rows * cols,
        "bias rows: {} values for {rows}×{cols}",
        y.len()
    );
    launch_1d(
        dev,
        "loss_bias_rows",
        rows * cols,
        &[
            (&*y).into(),
            params.into(),
            i32_of(b_off, "offset")?.into(),
            i32_of(rows, "rows")?.into(),
            i32_of(cols, "cols")?.into(),
        ],
    )
}

/// Loss settings (torch.nn.CrossEntropyLoss).
#[derive(Clone, Debug, Default)]
pub struct LossConfig {
    /// One weight per class, or None.
    pub class_weights: Option<Vec<f32>>,
    pub label_smoothing: f32,
    /// A mixed batch's soft targets (`--mixup`): the loss is then [`cross_entropy_soft`]
    /// (which ignores `label_smoothing`: the targets are smoothed already).
    pub soft: Option<SoftTargets>,
}

/// Loss value and accuracy count of a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossOut {
    pub loss: f32,
    /// Clips whose argmax (first maximum) is the label.
    pub correct: usize,
}

/// Softmax cross-entropy of logits `[B][C]` with `labels` (device i32 `[B]`, all in 0..C —
/// callers check on the host); writes dlogits and returns loss and correct count.
/// `weights` (device `[C]`) when weighted.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    dev: &Device,
    logits: &DeviceBuffer<f32>,
    labels: &DeviceBuffer<i32>,
    weights: Option<&DeviceBuffer<f32>>,
    classes: usize,
    label_smoothing: f32,
    dlogits: &mut DeviceBuffer<f32>,
    out: &mut DeviceBuffer<f32>,
) -> Result<LossOut> {
    let batch = labels.len();
    ensure!(
        logits.len() == batch * classes && dlogits.len() == batch * classes && out.len() >= 2,
        "cross_entropy: logits {} / dlogits {} values for {batch}×{classes}",
        logits.len(),
        dlogits.len()
    );
    let (w, has_w) = match weights {
        Some(w) => {
            ensure!(
                w.len() == classes,
                "{} class weights for {classes} classes",
                w.len()
            );
            (w, 1i32)
        }
        None => (logits, 0i32),
    };
    let (dl, o): (&DeviceBuffer<f32>, &DeviceBuffer<f32>) = (dlogits, out);
    dev.launch(
        "loss_softmax_xent",
        1u32,
        LOSS_BLOCK,
        0,
        &[
            o.into(),
            dl.into(),
            logits.into(),
            labels.into(),
            w.into(),
            has_w.into(),
            i32_of(batch, "batch")?.into(),
            i32_of(classes, "classes")?.into(),
            label_smoothing.into(),
        ],
    )?;
    let v = dev.dtoh(out)?;
    Ok(LossOut {
        loss: v[0],
        correct: v[1] as usize,
    })
}

/// Soft-target cross-entropy of logits `[B][C]` (`--mixup`, [`crate::backend::mixup`]):
/// `targets` `[B][C]` and `row_w` `[B]` from [`SoftTargets`], `labels` the λ-dominant labels
/// (device i32 `[B]`, in 0..C) for the correct count; writes dlogits and returns loss and
/// correct count. `weights` (device `[C]`) when weighted.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_soft(
    dev: &Device,
    logits: &DeviceBuffer<f32>,
    targets: &DeviceBuffer<f32>,
    row_w: &DeviceBuffer<f32>,
    labels: &DeviceBuffer<i32>,
    weights: Option<&DeviceBuffer<f32>>,
    classes: usize,
    dlogits: &mut DeviceBuffer<f32>,
    out: &mut DeviceBuffer<f32>,
) -> Result<LossOut> {
    let batch = labels.len();
    ensure!(
        logits.len() == batch * classes
            && dlogits.len() == batch * classes
            && targets.len() == batch * classes
            && row_w.len() == batch
            && out.len() >= 2,
        "cross_entropy_soft: logits {} / dlogits {} / targets {} / row weights {} values for \
         {batch}×{classes}",
        logits.len(),
        dlogits.len(),
        targets.len(),
        row_w.len()
    );
    let (w, has_w) = match weights {
        Some(w) => {
            ensure!(
                w.len() == classes,
                "{} class weights for {classes} classes",
                w.len()
            );
            (w, 1i32)
        }
        None => (logits, 0i32),
    };
    let (dl, o): (&DeviceBuffer<f32>, &DeviceBuffer<f32>) = (dlogits, out);
    dev.launch(
        "loss_softmax_xent_soft",
        1u32,
        LOSS_BLOCK,
        0,
        &[
            o.into(),
            dl.into(),
            logits.into(),
            targets.into(),
            row_w.into(),
            labels.into(),
            w.into(),
            has_w.into(),
            i32_of(batch, "batch")?.into(),
            i32_of(classes, "classes")?.into(),
        ],
    )?;
    let v = dev.dtoh(out)?;
    Ok(LossOut {
        loss: v[0],
        correct: v[1] as usize,
    })
}

/// torch.optim.Adam (or AdamW with `decoupled`) over a flat parameter buffer, state on the
/// device; the CPU twin is `cpu::Adam`.
pub struct DeviceAdam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decoupled: bool,
    /// Steps taken.
    pub t: u64,
    pub m: DeviceBuffer<f32>,
    pub v: DeviceBuffer<f32>,
}

impl DeviceAdam {
    /// torch defaults: betas (0.9, 0.999), eps 1e-8.
    pub fn new(dev: &Device, n: usize, lr: f32, weight_decay: f32) -> Result<Self> {
        Ok(Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            decoupled: false,
            t: 0,
            m: dev.alloc_zeros(n)?,
            v: dev.alloc_zeros(n)?,
        })
    }

    /// One fused step: params updated in place from grads.
    pub fn step(
        &mut self,
        dev: &Device,
        params: &mut DeviceBuffer<f32>,
        grads: &DeviceBuffer<f32>,
    ) -> Result<()> {
        let n = params.len();
        self.step_groups(
            dev,
            params,
            grads,
            &[LrGroup {
                range: 0..n,
                scale: 1.0,
            }],
        )
    }

    /// One step in learning-rate groups (`backend::LrGroup`, as `cpu::Adam::step_groups`):
    /// one launch per group on its range, at lr × scale; a group of scale 0 is not launched
    /// (parameters and moments stay as they are). `t` counts the step once.
    pub fn step_groups(
        &mut self,
        dev: &Device,
        params: &mut DeviceBuffer<f32>,
        grads: &DeviceBuffer<f32>,
        groups: &[LrGroup],
    ) -> Result<()> {
        let n = params.len();
        ensure!(
            grads.len() == n && self.m.len() == n,
            "adam: {n} parameters, {} gradients, state for {}",
            grads.len(),
            self.m.len()
        );
        self.t += 1;
        let ti = i32::try_from(self.t).unwrap_or(i32::MAX);
        // Same f32 expressions as cpu::Adam::update.
        let bc1 = 1.0f32 - self.beta1.powi(ti);
        let bc2_sqrt = (1.0f32 - self.beta2.powi(ti)).sqrt();
        let p: &DeviceBuffer<f32> = params;
        for g in groups.iter().filter(|g| g.scale != 0.0) {
            // × 1.0 is exact: the one-group step is the plain step
            let lr = self.lr * g.scale;
            let step_size = lr / bc1;
            let r = g.range.clone();
            launch_1d(
                dev,
                "adam_step",
                r.len(),
                &[
                    p.slice(r.clone())?.into(),
                    self.m.slice(r.clone())?.into(),
                    self.v.slice(r.clone())?.into(),
                    grads.slice(r.clone())?.into(),
                    i32_of(r.len(), "parameters")?.into(),
                    lr.into(),
                    self.beta1.into(),
                    self.beta2.into(),
                    self.eps.into(),
                    self.weight_decay.into(),
                    (self.decoupled as i32).into(),
                    step_size.into(),
                    bc2_sqrt.into(),
                ],
            )?;
        }
        Ok(())
    }
}

/// torch.nn.utils.clip_grad_norm_: scales `grads` so the global L2 norm is at most
/// `max_norm` (coef = max/(norm+1e-6), applied only when < 1); returns the norm before
/// clipping. Two reduction passes and a scale launch that reads the coefficient on the device;
/// one 8-byte read back for the returned norm.
pub fn clip_grad_norm(dev: &Device, grads: &mut DeviceBuffer<f32>, max_norm: f32) -> Result<f32> {
    let mut scratch = ClipScratch::new(dev, grads.len())?;
    clip_grad_norm_with(dev, grads, max_norm, &mut scratch)
}

/// Scratch of [`clip_grad_norm_with`] for gradients of one length: per-block partial sums of
/// squares `[blocks]` and the (norm, coefficient) pair `[2]`.
pub struct ClipScratch {
    partial: DeviceBuffer<f32>,
    coef: DeviceBuffer<f32>,
}

impl ClipScratch {
    /// Scratch for gradient vectors of `n` elements.
    pub fn new(dev: &Device, n: usize) -> Result<Self> {
        let blocks = blocks_for(n, BLOCK).min(NORM_MAX_BLOCKS);
        Ok(Self {
            partial: dev.alloc_uninit(blocks as usize)?,
            coef: dev.alloc_uninit(2)?,
        })
    }
}

/// [`clip_grad_norm`] with caller-held scratch (made by `ClipScratch::new(dev, grads.len())`);
/// allocates nothing on the device.
pub fn clip_grad_norm_with(
    dev: &Device,
    grads: &mut DeviceBuffer<f32>,
    max_norm: f32,
    scratch: &mut ClipScratch,
) -> Result<f32> {
    let n = i32_of(grads.len(), "gradients")?;
    let blocks = blocks_for(grads.len(), BLOCK).min(NORM_MAX_BLOCKS);
    ensure!(
        scratch.partial.len() == blocks as usize,
        "clip scratch made for another gradient length"
    );
    let (partial, coef) = (&scratch.partial, &scratch.coef);
    let g: &DeviceBuffer<f32> = grads;
    dev.launch(
        "adam_sumsq_partial",
        blocks,
        BLOCK,
        0,
        &[partial.into(), g.into(), n.into()],
    )?;
    dev.launch(
        "adam_clip_coef",
        1u32,
        BLOCK,
        0,
        &[
            coef.into(),
            partial.into(),
            (blocks as i32).into(),
            max_norm.into(),
        ],
    )?;
    launch_1d(
        dev,
        "adam_clip_scale",
        grads.len(),
        &[g.into(), coef.into(), n.into()],
    )?;
    Ok(dev.dtoh(coef)?[0])
}

/// Sizes of the sequence half for one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RnnDims {
    pub batch: usize,
    /// Padded frames T3.
    pub t: usize,
    /// Width of the FC frames (LSTM layer 0 input).
    pub fc: usize,
    pub hidden: usize,
    pub layers: usize,
    pub classes: usize,
    /// Dropout probability between LSTM layers (training only).
    pub dropout: f32,
}

impl RnnDims {
    pub fn new(cfg: &ModelConfig, batch: usize, t3: usize) -> Self {
        Self {
            batch,
            t: t3,
            fc: cfg.fc,
            hidden: cfg.hidden,
            layers: cfg.lstm_layers,
            classes: cfg.classes,
            dropout: cfg.dropout,
        }
    }
    fn layer(&self, l: usize) -> LstmDims {
        LstmDims {
            batch: self.batch,
            t: self.t,
            din: if l == 0 { self.fc } else { 2 * self.hidden },
            h: self.hidden,
        }
    }
}

/// Where the sequence-half tensors live in the flat parameter (and gradient) buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RnnOffsets {
    /// Start of each LSTM layer (lstm.weight_ih_l{l}; both directions follow contiguously).
    pub lstm: Vec<usize>,
    /// attention.weight (attention.bias follows).
    pub attn: usize,
    pub cls_w: usize,
    pub cls_b: usize,
}

impl RnnOffsets {
    pub fn new(cfg: &ModelConfig, layout: &ParamLayout) -> Result<Self> {
        let off = |n: &str| -> Result<usize> {
            layout
                .get(n)
                .map(|e| e.offset)
                .ok_or_else(|| anyhow::anyhow!("parameter layout has no tensor {n}"))
        };
        let lstm = (0..cfg.lstm_layers)
            .map(|l| off(&lstm_names(l, false)[0]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            lstm,
            attn: off("attention.weight")?,
            cls_w: off("classifier.weight")?,
            cls_b: off("classifier.bias")?,
        })
    }
}

/// Every device buffer of one batch's sequence half, forward and backward.
pub struct RnnWorkspace {
    pub dims: RnnDims,
    /// `[B]` valid frames per clip
    pub lens: DeviceBuffer<i32>,
    /// `[B]`
    pub labels: DeviceBuffer<i32>,
    /// `[C]` (1 unused value without class weights)
    pub class_weights: DeviceBuffer<f32>,
    pub layers: Vec<LstmLayerWs>,
    /// Input of layer l+1 when dropout is active (layer l's output after dropout) `[N][2H]`;
    /// without dropout layer l+1 reads layer l's output directly.
    pub next_in: Vec<DeviceBuffer<f32>>,
    pub e: DeviceBuffer<f32>,
    pub alpha: DeviceBuffer<f32>,
    /// `[B][2H]`
    pub ctx: DeviceBuffer<f32>,
    /// `[B][C]`
    pub logits: DeviceBuffer<f32>,
    pub dlogits: DeviceBuffer<f32>,
    /// [loss, correct]
    pub loss_out: DeviceBuffer<f32>,
    /// `--mixup`: soft targets `[B][C]` and row weights `[B]`, allocated by the first mixed
    /// batch of this shape.
    pub soft: Option<(DeviceBuffer<f32>, DeviceBuffer<f32>)>,
    /// The dropout stream of the last forward (None: eval or p = 0).
    pub train: Option<(u64, u32)>,
    // backward scratch
    pub lgrad: Vec<LstmGradWs>,
    pub agrad: AttnGradWs,
    pub dctx: DeviceBuffer<f32>,
    /// gradient of the current layer's output `[N][2H]`, and of its input `[N][2H]`
    pub dout: DeviceBuffer<f32>,
    pub dmid: DeviceBuffer<f32>,
}

impl RnnWorkspace {
    pub fn new(dev: &Device, dims: RnnDims) -> Result<Self> {
        ensure!(
            dims.layers >= 1 && dims.classes >= 1,
            "bad sequence dims {dims:?}"
        );
        let (b, n, d) = (dims.batch, dims.batch * dims.t, 2 * dims.hidden);
        let layers = (0..dims.layers)
            .map(|l| LstmLayerWs::new(dev, dims.layer(l)))
            .collect::<Result<Vec<_>>>()?;
        let lgrad = (0..dims.layers)
            .map(|l| LstmGradWs::new(dev, dims.layer(l)))
            .collect::<Result<Vec<_>>>()?;
        let next_in = (1..dims.layers)
            .map(|_| dev.alloc_uninit(n * d))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dims,
            lens: dev.alloc_uninit(b)?,
            labels: dev.alloc_uninit(b)?,
            class_weights: dev.alloc_uninit(dims.classes)?,
            layers,
            next_in,
            e: dev.alloc_uninit(b * dims.t)?,
            alpha: dev.alloc_uninit(b * dims.t)?,
            ctx: dev.alloc_uninit(b * d)?,
            logits: dev.alloc_uninit(b * dims.classes)?,
            dlogits: dev.alloc_uninit(b * dims.classes)?,
            loss_out: dev.alloc_uninit(2)?,
            soft: None,
            train: None,
            lgrad,
            agrad: AttnGradWs::new(dev, b, dims.t, d)?,
            dctx: dev.alloc_uninit(b * d)?,
            dout: dev.alloc_uninit(n * d)?,
            dmid: dev.alloc_uninit(n * d)?,
        })
    }
}

/// Input of the LSTM layer after `prev`: its output after dropout (`next_in`) when dropout is
/// active, else the output itself (no copy).
fn layer_input<'a>(
    train: Option<(u64, u32)>,
    prev: &'a LstmLayerWs,
    next_in: &'a DeviceBuffer<f32>,
) -> &'a DeviceBuffer<f32> {
    if train.is_some() {
        next_in
    } else {
        &prev.out
    }
}

/// Forward of the sequence half: FC frames `[B][T3][fc]` (after the FC dropout) → BiLSTM
/// stack (dropout site 4+l on layer l's output when `train` = Some((seed, step)) and p > 0) →
/// attention → classifier → loss. `lens` are the clips' valid frames T3 (≤ T3, ≥ 1), `labels`
/// in 0..classes. Leaves everything backward needs in `ws`; logits stay in `ws.logits`.
#[allow(clippy::too_many_arguments)]
pub fn rnn_forward(
    dev: &Device,
    params: &DeviceBuffer<f32>,
    offs: &RnnOffsets,
    frames: &DeviceBuffer<f32>,
    lens: &[usize],
    labels: &[usize],
    loss: &LossConfig,
    train: Option<(u64, u32)>,
    ws: &mut RnnWorkspace,
) -> Result<LossOut> {
    let dims = ws.dims;
    let (b, t, c, d) = (dims.batch, dims.t, dims.classes, 2 * dims.hidden);
    ensure!(
        lens.len() == b && labels.len() == b,
        "{} lengths and {} labels for a batch of {b}",
        lens.len(),
        labels.len()
    );
    if let Some((i, &l)) = lens.iter().enumerate().find(|(_, &l)| l == 0 || l > t) {
        bail!("clip {i}: {l} valid frames, expected 1..={t}");
    }
    if let Some((i, &y)) = labels.iter().enumerate().find(|(_, &y)| y >= c) {
        bail!("clip {i}: label {y} is not a class index 0..{c}");
    }
    ensure!(
        offs.lstm.len() == dims.layers,
        "offsets for {} LSTM layers, model has {}",
        offs.lstm.len(),
        dims.layers
    );
    let lens_i: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
    dev.copy_htod(&lens_i, &mut ws.lens)?;
    // a mixed batch counts its λ-dominant labels as correct
    let labels = loss.soft.as_ref().map_or(labels, |t| &t.dominant[..]);
    ensure!(
        labels.len() == b,
        "{} soft-target labels for a batch of {b}",
        labels.len()
    );
    if let Some((i, &y)) = labels.iter().enumerate().find(|(_, &y)| y >= c) {
        bail!("clip {i}: label {y} is not a class index 0..{c}");
    }
    let labels_i: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
    dev.copy_htod(&labels_i, &mut ws.labels)?;
    let weighted = match &loss.class_weights {
        Some(w) => {
            ensure!(w.len() == c, "{} class weights for {c} classes", w.len());
            dev.copy_htod(w, &mut ws.class_weights)?;
            true
        }
        None => false,
    };
    ws.train = train.filter(|_| dims.dropout > 0.0);
    for l in 0..dims.layers {
        let (head, tail) = ws.layers.split_at_mut(l);
        let x = if l == 0 {
            frames
        } else {
            layer_input(ws.train, &head[l - 1], &ws.next_in[l - 1])
        };
        lstm_layer_forward(dev, params, offs.lstm[l], x, &ws.lens, &mut tail[0])?;
        if let (Some((seed, step)), true) = (ws.train, l + 1 < dims.layers) {
            dropout(
                dev,
                &mut ws.next_in[l],
                &ws.layers[l].out,
                seed,
                step,
                SITE_LSTM0 + l as u64,
                dims.dropout,
            )?;
        }
    }
    let last = &ws.layers[dims.layers - 1].out;
    attention_forward(
        dev,
        last,
        &ws.lens,
        params,
        offs.attn,
        b,
        t,
        d,
        &mut ws.ctx,
        &mut ws.e,
        &mut ws.alpha,
    )?;
    dev.gemm(
        Transpose::N,
        Transpose::T,
        b,
        c,
        d,
        1.0,
        &ws.ctx,
        &params.slice(offs.cls_w..offs.cls_w + c * d)?,
        0.0,
        &mut ws.logits,
    )?;
    add_bias_rows(dev, &mut ws.logits, params, offs.cls_b, b, c)?;
    let w = if weighted {
        Some(&ws.class_weights)
    } else {
        None
    };
    if let Some(t) = &loss.soft {
        ensure!(
            t.q.len() == b * c && t.row_weight.len() == b,
            "soft targets of {} values and {} row weights for {b}×{c}",
            t.q.len(),
            t.row_weight.len()
        );
        if ws.soft.is_none() {
            ws.soft = Some((dev.alloc_uninit(b * c)?, dev.alloc_uninit(b)?));
        }
        let (q, r) = ws.soft.as_mut().expect("allocated above");
        dev.copy_htod(&t.q, q)?;
        dev.copy_htod(&t.row_weight, r)?;
        return cross_entropy_soft(
            dev,
            &ws.logits,
            q,
            r,
            &ws.labels,
            w,
            c,
            &mut ws.dlogits,
            &mut ws.loss_out,
        );
    }
    cross_entropy(
        dev,
        &ws.logits,
        &ws.labels,
        w,
        c,
        loss.label_smoothing,
        &mut ws.dlogits,
        &mut ws.loss_out,
    )
}

/// Backward of [`rnn_forward`] for its loss (dlogits in `ws.dlogits`): parameter gradients
/// ACCUMULATE into `grads` (flat, same layout as params); `dframes` `[B][T3][fc]` receives the
/// gradient of the frames (overwritten).
pub fn rnn_backward(
    dev: &Device,
    params: &DeviceBuffer<f32>,
    offs: &RnnOffsets,
    frames: &DeviceBuffer<f32>,
    ws: &mut RnnWorkspace,
    grads: &mut DeviceBuffer<f32>,
    dframes: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let dims = ws.dims;
    let (b, t, c, d) = (dims.batch, dims.t, dims.classes, 2 * dims.hidden);
    ensure!(
        grads.len() == params.len(),
        "{} gradients for {} parameters",
        grads.len(),
        params.len()
    );
    ensure!(
        dframes.len() == frames.len(),
        "frame gradient has {} values, frames {}",
        dframes.len(),
        frames.len()
    );
    // Classifier: dWc += dlogitsᵀ ctx, dbc += Σ rows (both straight into their ranges of the
    // flat gradient), dctx = dlogits Wc.
    dev.gemm(
        Transpose::T,
        Transpose::N,
        c,
        d,
        b,
        1.0,
        &ws.dlogits,
        &ws.ctx,
        1.0,
        &mut grads.slice_mut(offs.cls_w..offs.cls_w + c * d)?,
    )?;
    dev.gemm(
        Transpose::N,
        Transpose::N,
        1,
        c,
        b,
        1.0,
        &ws.agrad.ones,
        &ws.dlogits,
        1.0,
        &mut grads.slice_mut(offs.cls_b..offs.cls_b + c)?,
    )?;
    dev.gemm(
        Transpose::N,
        Transpose::N,
        b,
        d,
        c,
        1.0,
        &ws.dlogits,
        &params.slice(offs.cls_w..offs.cls_w + c * d)?,
        0.0,
        &mut ws.dctx,
    )?;
    let last = &ws.layers[dims.layers - 1].out;
    attention_backward(
        dev,
        last,
        &ws.lens,
        params,
        offs.attn,
        b,
        t,
        d,
        &ws.e,
        &ws.alpha,
        &ws.dctx,
        &mut ws.dout,
        grads,
        &mut ws.agrad,
    )?;
    for l in (0..dims.layers).rev() {
        let x = if l == 0 {
            frames
        } else {
            layer_input(ws.train, &ws.layers[l - 1], &ws.next_in[l - 1])
        };
        let dx = if l == 0 { &mut *dframes } else { &mut ws.dmid };
        lstm_layer_backward(
            dev,
            params,
            offs.lstm[l],
            x,
            &ws.lens,
            &ws.layers[l],
            &ws.dout,
            grads,
            offs.lstm[l],
            Some(dx),
            &mut ws.lgrad[l],
        )?;
        if l > 0 {
            if let Some((seed, step)) = ws.train {
                dropout_in_place(
                    dev,
                    &mut ws.dmid,
                    seed,
                    step,
                    SITE_LSTM0 + (l - 1) as u64,
                    dims.dropout,
                )?;
            }
            std::mem::swap(&mut ws.dout, &mut ws.dmid);
        }
    }
    Ok(())
}
