//! The device training step, written once for `cuda` and `sim`: upload the batch → CNN + FC
//! forward ([`super::cnn`]) → BiLSTM, attention, classifier and loss ([`super::rnn`]) → the
//! backward of both halves → optional global-norm clipping → fused Adam. Everything stays on
//! the device between steps; per step the host sends the input `[B][M][T]`, the lengths and
//! the labels, and reads back the loss and correct count (8 bytes) plus, when clipping, the
//! gradient norm (8 bytes).
//!
//! Parameters and gradients live in flat buffers in `ParamLayout` order (the CPU's order), so
//! Adam and clipping are one launch each over all tensors and `state()` is one copy. Both
//! halves work on those flat buffers directly: the CNN gets views of its tensors' ranges
//! ([`CnnParams::views`] for the weights, [`CnnParams::views_mut`] for the gradients, which its
//! backward accumulates into the zeroed flat gradient), the sequence half takes offsets or
//! views; no tensor is copied between the flat buffers and per-tensor ones. An eval forward
//! reads the BatchNorm running statistics in place too (`CnnOptions::eval_stats_snapshot`
//! off: the model never differentiates an eval forward).
//!
//! Dropout masks and BatchNorm follow MODEL_SPEC.md exactly as the CPU reference does (same
//! Philox keys: seed, Purpose::Dropout, step, site), so a device step equals a CPU step up to
//! f32 rounding; tests/sim_engine.rs checks it.
//!
//! Each part of a step runs under a [`profile::phase`] label (`cnn fwd`, `rnn fwd`, `rnn bwd`,
//! `cnn bwd`, `optim`), so a profile (`ser-engine bench train --profile`) splits its table by
//! part; setting the label is a thread-local store, free when profiling is off.

use std::collections::HashMap;
use std::ops::Range;

use anyhow::{bail, ensure, Context, Result};

use crate::backend::batch::Batch;
use crate::backend::mixup::SoftTargets;
use crate::backend::{ema_decay, Backend, LrGroup, OptimConfig, StepStats, TrainState};
use crate::cpu::Mode;
use crate::device::{profile, Device, DeviceBuffer};
use crate::engine::cnn::{
    cnn_backward, cnn_forward, cnn_ranges, BnRunning, CnnOptions, CnnParams, CnnWorkspace,
    ConvScratch,
};
use crate::engine::norm::utterance_norm;
use crate::engine::rnn::{
    clip_grad_norm_with, rnn_backward, rnn_forward, ClipScratch, DeviceAdam, LossConfig, LossOut,
    RnnDims, RnnOffsets, RnnWorkspace,
};
use crate::model::{
    init_buffers, init_params, BufferLayout, InputNorm, ModelConfig, ParamLayout,
    UTTERANCE_NORM_EPS,
};

/// Most (batch, t_max) shapes whose workspaces are kept; batches are bucketed by length, so a
/// run sees few shapes. Past this the cache is emptied (a bound on memory, not a cost per step).
const MAX_SHAPES: usize = 32;
/// Default bound on the CNN workspaces' device memory kept across shapes (they dominate: the
/// stage-1 activations are B·32·n_mels·T floats each, ~1.8 GiB for B 32, 128 mels, T 500).
pub const DEFAULT_CACHE_BYTES: usize = 4 << 30;

/// Buffers reused by every step of one (batch, t_max) shape.
struct ShapeWork {
    rnn: RnnWorkspace,
    /// CNN + FC activations and backward buffers (the input `[B][M][T]` included).
    cnn: CnnWorkspace,
    /// Gradient of the FC output `[B][T3][fc]`.
    dframes: DeviceBuffer<f32>,
}

/// Result of one training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOut {
    /// Mean loss of the batch (before the update).
    pub loss: f32,
    pub correct: usize,
    /// Global gradient norm before clipping (None when clipping is off: not computed).
    pub grad_norm: Option<f32>,
}

/// The whole model on a device: parameters, gradients, BatchNorm running statistics, Adam
/// state and per-shape workspaces.
pub struct DeviceModel {
    pub dev: Device,
    pub cfg: ModelConfig,
    pub layout: ParamLayout,
    /// Flat parameters, `ParamLayout` order.
    pub params: DeviceBuffer<f32>,
    /// Flat gradients of the last `compute_grads`, same layout.
    pub grads: DeviceBuffer<f32>,
    /// Range of each CNN + FC tensor in the flat layout ([`cnn_ranges`], [`CnnParams`] order).
    cnn_ranges: Vec<Range<usize>>,
    rnn_offsets: RnnOffsets,
    pub running: BnRunning,
    pub adam: DeviceAdam,
    pub opts: CnnOptions,
    work: HashMap<(usize, usize), ShapeWork>,
    /// Bound on the bytes of cached CNN workspaces: a new shape that would pass it empties the
    /// cache first (one shape's workspace is always kept, however large).
    pub max_cache_bytes: usize,
    /// im2col scratch shared by every shape (grown to the largest seen).
    conv_scratch: ConvScratch,
    /// Scratch of gradient clipping (the flat gradient's length is fixed).
    clip_scratch: ClipScratch,
    /// Learning-rate groups of Adam (`OptimConfig::lr_groups`; empty: one group at lr).
    pub lr_groups: Vec<LrGroup>,
}

impl DeviceModel {
    /// Fresh model: `init_params(cfg, seed)` and initial buffers (the CPU model's init).
    pub fn new(dev: Device, cfg: &ModelConfig, seed: u64) -> Result<Self> {
        let p = init_params(cfg, seed);
        let b = init_buffers(cfg);
        Self::from_params(dev, cfg, &p, &b)
    }

    /// Model from flat parameters and buffers (layout order); Adam state zero.
    pub fn from_params(
        dev: Device,
        cfg: &ModelConfig,
        params: &[f32],
        buffers: &[f32],
    ) -> Result<Self> {
        cfg.validate()?;
        let layout = ParamLayout::new(cfg);
        let bl = BufferLayout::new(cfg);
        ensure!(
            params.len() == layout.total() && buffers.len() == bl.total(),
            "got {} parameters and {} buffer values; this model needs {} and {}",
            params.len(),
            buffers.len(),
            layout.total(),
            bl.total()
        );
        let rnn_offsets = RnnOffsets::new(cfg, &layout)?;
        Ok(Self {
            params: dev.htod(params)?,
            grads: dev.alloc_zeros(params.len())?,
            cnn_ranges: cnn_ranges(cfg),
            rnn_offsets,
            running: BnRunning::upload(&dev, cfg, buffers)?,
            adam: DeviceAdam::new(&dev, params.len(), 1e-3, 0.0)?,
            // an eval forward is never differentiated here: BN reads the running statistics
            // in place instead of snapshotting them
            opts: CnnOptions {
                eval_stats_snapshot: false,
                ..CnnOptions::default()
            },
            work: HashMap::new(),
            max_cache_bytes: DEFAULT_CACHE_BYTES,
            conv_scratch: ConvScratch::default(),
            clip_scratch: ClipScratch::new(&dev, params.len())?,
            cfg: cfg.clone(),
            layout,
            dev,
            lr_groups: Vec::new(),
        })
    }

    fn check_input(&self, x_len: usize, lengths: &[usize], t_max: usize) -> Result<()> {
        let b = lengths.len();
        if b == 0 {
            bail!("empty batch");
        }
        ensure!(
            x_len == b * self.cfg.n_mels * t_max,
            "input has {x_len} values, expected batch {b} × mels {} × frames {t_max}",
            self.cfg.n_mels
        );
        if let Some((i, &l)) = lengths
            .iter()
            .enumerate()
            .find(|(_, &l)| !(crate::model::MIN_FRAMES..=t_max).contains(&l))
        {
            bail!(
                "clip {i} has length {l}; lengths must be in {}..={t_max}",
                crate::model::MIN_FRAMES
            );
        }
        Ok(())
    }

    /// The workspace of shape (batch, t_max), created on first use.
    fn take_work(&mut self, batch: usize, t_max: usize) -> Result<ShapeWork> {
        if let Some(w) = self.work.remove(&(batch, t_max)) {
            return Ok(w);
        }
        let cached: usize = self.work.values().map(|w| w.cnn.bytes()).sum();
        let new = crate::backend::memory::workspace_bytes(&self.cfg, batch, t_max);
        if self.work.len() >= MAX_SHAPES || cached + new > self.max_cache_bytes {
            // dropped before the new workspace is allocated, so both never coexist
            self.work.clear();
        }
        let t3 = ModelConfig::frames_out(t_max);
        let dims = RnnDims::new(&self.cfg, batch, t3);
        Ok(ShapeWork {
            rnn: RnnWorkspace::new(&self.dev, dims)?,
            cnn: CnnWorkspace::new(&self.dev, &self.cfg, batch, t_max)?,
            dframes: self.dev.alloc_uninit(batch * t3 * self.cfg.fc)?,
        })
    }

    /// Upload `x` into the shape's input buffer (allocated once per shape).
    fn upload_input(&self, w: &mut ShapeWork, x: &[f32]) -> Result<()> {
        self.dev.copy_htod(x, w.cnn.input_mut())
    }

    /// Logits `[B][classes]` of host input `x` `[B][n_mels][t_max]` with per-clip `lengths`.
    /// Train mode uses batch BN statistics (updating the running ones) and dropout of
    /// (seed, step), like `CpuModel::forward`.
    pub fn forward(
        &mut self,
        x: &[f32],
        lengths: &[usize],
        t_max: usize,
        mode: Mode,
    ) -> Result<Vec<f32>> {
        self.check_input(x.len(), lengths, t_max)?;
        let mut w = self.take_work(lengths.len(), t_max)?;
        let r = self
            .upload_input(&mut w, x)
            .and_then(|_| self.forward_in(lengths, mode, &mut w));
        let logits = r.and_then(|_| self.dev.dtoh(&w.rnn.logits));
        self.work.insert((lengths.len(), t_max), w);
        logits
    }

    /// [`Self::forward`] of an input already on the device (e.g. `engine::frontend`'s
    /// log-Mel output, scaled), `[B][n_mels][t_max]`; the buffer is taken (it becomes the
    /// shape's input buffer).
    pub fn forward_device(
        &mut self,
        x: DeviceBuffer<f32>,
        lengths: &[usize],
        t_max: usize,
        mode: Mode,
    ) -> Result<Vec<f32>> {
        self.check_input(x.len(), lengths, t_max)?;
        let mut w = self.take_work(lengths.len(), t_max)?;
        // check_input made sure x has the workspace input's length
        *w.cnn.input_mut() = x;
        let r = self.forward_in(lengths, mode, &mut w);
        let logits = r.and_then(|_| self.dev.dtoh(&w.rnn.logits));
        self.work.insert((lengths.len(), t_max), w);
        logits
    }

    /// Forward of the input in `w`, labels all 0 (eval loss unused).
    fn forward_in(&mut self, lengths: &[usize], mode: Mode, w: &mut ShapeWork) -> Result<()> {
        let labels = vec![0usize; lengths.len()];
        self.forward_loss(lengths, &labels, &LossConfig::default(), mode, w)?;
        Ok(())
    }

    /// Forward of the input in `w.cnn` through the loss; activations stay in `w`.
    fn forward_loss(
        &mut self,
        lengths: &[usize],
        labels: &[usize],
        loss: &LossConfig,
        mode: Mode,
        w: &mut ShapeWork,
    ) -> Result<LossOut> {
        let phase = profile::phase("cnn fwd");
        if self.cfg.input_norm == InputNorm::Utterance {
            // every forward starts from a freshly uploaded (or handed over) input, so the
            // input is normalised exactly once; cnn_forward uploads the same lengths again
            let lens: Vec<i32> = lengths
                .iter()
                .map(|&l| i32::try_from(l).context("clip length exceeds i32"))
                .collect::<Result<_>>()?;
            let ws = &mut w.cnn;
            self.dev.copy_htod(&lens, &mut ws.lens_dev[0])?;
            utterance_norm(
                &self.dev,
                &mut ws.stages[0].input,
                &ws.lens_dev[0],
                self.cfg.n_mels,
                ws.t_max,
                UTTERANCE_NORM_EPS as f32,
            )?;
        }
        cnn_forward(
            &self.dev,
            &self.cfg,
            &CnnParams::views(&self.cfg, &self.params, &self.cnn_ranges)?,
            &mut self.running,
            lengths,
            mode,
            &self.opts,
            &mut w.cnn,
            &mut self.conv_scratch,
        )?;
        let train = match mode {
            Mode::Train { seed, step } => Some((seed, step)),
            Mode::Eval => None,
        };
        drop(phase);
        let _phase = profile::phase("rnn fwd");
        let out = rnn_forward(
            &self.dev,
            &self.params,
            &self.rnn_offsets,
            &w.cnn.out,
            &w.cnn.lens[3],
            labels,
            loss,
            train,
            &mut w.rnn,
        )?;
        Ok(out)
    }

    /// Forward in training mode (seed, step), loss, and backward: `self.grads` holds the
    /// gradient of the mean loss (overwritten, not accumulated). Parameters are unchanged;
    /// BN running statistics are updated as in any training forward.
    #[allow(clippy::too_many_arguments)]
    pub fn compute_grads(
        &mut self,
        x: &[f32],
        lengths: &[usize],
        t_max: usize,
        labels: &[usize],
        seed: u64,
        step: u32,
        loss: &LossConfig,
    ) -> Result<LossOut> {
        self.check_input(x.len(), lengths, t_max)?;
        ensure!(
            labels.len() == lengths.len(),
            "{} labels for {} clips",
            labels.len(),
            lengths.len()
        );
        let mut w = self.take_work(lengths.len(), t_max)?;
        let r = self.grads_in(x, lengths, labels, seed, step, loss, &mut w);
        self.work.insert((lengths.len(), t_max), w);
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn grads_in(
        &mut self,
        x: &[f32],
        lengths: &[usize],
        labels: &[usize],
        seed: u64,
        step: u32,
        loss: &LossConfig,
        w: &mut ShapeWork,
    ) -> Result<LossOut> {
        self.upload_input(w, x)?;
        let mode = Mode::Train { seed, step };
        let out = self.forward_loss(lengths, labels, loss, mode, w)?;
        self.dev.memset_zero(&mut self.grads)?;
        let phase = profile::phase("rnn bwd");
        rnn_backward(
            &self.dev,
            &self.params,
            &self.rnn_offsets,
            &w.cnn.out,
            &mut w.rnn,
            &mut self.grads,
            &mut w.dframes,
        )?;
        drop(phase);
        let _phase = profile::phase("cnn bwd");
        // the CNN ranges of the zeroed gradient are untouched by rnn_backward; the CNN
        // backward accumulates into them in place
        cnn_backward(
            &self.dev,
            &self.cfg,
            &CnnParams::views(&self.cfg, &self.params, &self.cnn_ranges)?,
            &mut w.cnn,
            &w.dframes,
            &mut CnnParams::views_mut(&self.cfg, &mut self.grads, &self.cnn_ranges)?,
            &self.opts,
            &mut self.conv_scratch,
        )?;
        Ok(out)
    }

    /// One training step: [`Self::compute_grads`], clip to `clip` (global L2 norm; 0 = off),
    /// Adam at `lr` (weight decay and betas from `self.adam`).
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(
        &mut self,
        x: &[f32],
        lengths: &[usize],
        t_max: usize,
        labels: &[usize],
        seed: u64,
        step: u32,
        lr: f32,
        clip: f32,
        loss: &LossConfig,
    ) -> Result<StepOut> {
        let out = self.compute_grads(x, lengths, t_max, labels, seed, step, loss)?;
        let _phase = profile::phase("optim");
        for g in self.lr_groups.iter().filter(|g| g.scale == 0.0) {
            // frozen: × 0 (the CPU's twin), so these gradients leave the clip norm
            let n = g.range.len();
            self.dev.launch(
                "scale",
                crate::device::blocks_for(n, 256),
                256u32,
                0,
                &[
                    self.grads.slice(g.range.clone())?.into(),
                    0.0f32.into(),
                    i32::try_from(n)?.into(),
                ],
            )?;
        }
        let grad_norm = if clip > 0.0 {
            Some(clip_grad_norm_with(
                &self.dev,
                &mut self.grads,
                clip,
                &mut self.clip_scratch,
            )?)
        } else {
            None
        };
        self.adam.lr = lr;
        if self.lr_groups.is_empty() {
            self.adam.step(&self.dev, &mut self.params, &self.grads)?;
        } else {
            self.adam
                .step_groups(&self.dev, &mut self.params, &self.grads, &self.lr_groups)?;
        }
        Ok(StepOut {
            loss: out.loss,
            correct: out.correct,
            grad_norm,
        })
    }

    /// Flat parameters on the host.
    pub fn params_host(&self) -> Result<Vec<f32>> {
        self.dev.dtoh(&self.params)
    }

    /// Flat gradients of the last `compute_grads` on the host.
    pub fn grads_host(&self) -> Result<Vec<f32>> {
        self.dev.dtoh(&self.grads)
    }

    /// Flat buffers (BN running statistics) on the host, `BufferLayout` order.
    pub fn buffers_host(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; BufferLayout::new(&self.cfg).total()];
        self.running.download_into(&self.dev, &self.cfg, &mut out)?;
        Ok(out)
    }

    /// Parameters, buffers and Adam state on the host.
    pub fn state(&self) -> Result<TrainState> {
        Ok(TrainState {
            params: self.params_host()?,
            buffers: self.buffers_host()?,
            adam_m: self.dev.dtoh(&self.adam.m)?,
            adam_v: self.dev.dtoh(&self.adam.v)?,
            adam_t: self.adam.t,
            ema: Vec::new(),
        })
    }

    /// Loads parameters and buffers, and Adam's state when it has the parameters' size
    /// (otherwise Adam restarts from zero, as `CpuBackend` does).
    pub fn set_state(&mut self, s: &TrainState) -> Result<()> {
        let bl = BufferLayout::new(&self.cfg);
        if s.params.len() != self.layout.total() || s.buffers.len() != bl.total() {
            bail!(
                "saved state has {} parameters and {} buffers; this model has {} and {}",
                s.params.len(),
                s.buffers.len(),
                self.layout.total(),
                bl.total()
            );
        }
        self.dev.copy_htod(&s.params, &mut self.params)?;
        self.running = BnRunning::upload(&self.dev, &self.cfg, &s.buffers)?;
        if s.adam_m.len() == s.params.len() && s.adam_v.len() == s.params.len() {
            self.dev.copy_htod(&s.adam_m, &mut self.adam.m)?;
            self.dev.copy_htod(&s.adam_v, &mut self.adam.v)?;
            self.adam.t = s.adam_t;
        }
        Ok(())
    }

    /// Puts BatchNorm running statistics (`BufferLayout` order) into the existing device
    /// buffers.
    pub fn set_buffers(&mut self, buffers: &[f32]) -> Result<()> {
        let bl = BufferLayout::new(&self.cfg);
        ensure!(
            buffers.len() == bl.total(),
            "{} buffer values for a model with {}",
            buffers.len(),
            bl.total()
        );
        for s in 0..self.running.mean.len() {
            let n = s + 1;
            self.dev.copy_htod(
                &buffers[bl.range(&format!("bn{n}.running_mean"))],
                &mut self.running.mean[s],
            )?;
            self.dev.copy_htod(
                &buffers[bl.range(&format!("bn{n}.running_var"))],
                &mut self.running.var[s],
            )?;
            self.running.batches_tracked[s] =
                buffers[bl.range(&format!("bn{n}.num_batches_tracked")).start];
        }
        Ok(())
    }

    /// Number of (batch, t_max) shapes with a cached workspace.
    pub fn cached_shapes(&self) -> usize {
        self.work.len()
    }
}

/// [`DeviceModel`] as a training backend (`--device cuda|sim`).
pub struct DeviceBackend {
    pub model: DeviceModel,
    pub optim: OptimConfig,
    loss: LossConfig,
    /// Seed of the dropout masks.
    pub seed: u64,
    /// `--ema`: the decay, and the average (a second flat parameter buffer) once started.
    ema_decay: Option<f64>,
    ema: Option<DeviceBuffer<f32>>,
    /// `--freeze cnn`: the BatchNorm running statistics put back after every step, read
    /// once from the device at the first step after a state was set.
    frozen_stats: Option<Vec<f32>>,
}

impl DeviceBackend {
    /// Fresh model with `init_params(cfg, seed)` on `dev`, Adam configured from `optim`.
    pub fn new(dev: Device, cfg: &ModelConfig, optim: &OptimConfig, seed: u64) -> Result<Self> {
        let mut model = DeviceModel::new(dev, cfg, seed)?;
        model.adam.lr = optim.lr as f32;
        model.adam.weight_decay = optim.weight_decay as f32;
        model.adam.decoupled = optim.decoupled_weight_decay;
        model.lr_groups = optim.lr_groups(cfg);
        if let Some(w) = &optim.class_weights {
            ensure!(
                w.len() == cfg.classes,
                "{} class weights for {} classes",
                w.len(),
                cfg.classes
            );
        }
        Ok(Self {
            model,
            loss: LossConfig {
                class_weights: optim.class_weights.clone(),
                label_smoothing: optim.label_smoothing as f32,
                soft: None,
            },
            optim: optim.clone(),
            seed,
            ema_decay: None,
            ema: None,
            frozen_stats: None,
        })
    }
}

impl Backend for DeviceBackend {
    fn train_step(&mut self, batch: &Batch, step: u32, lr: f64) -> Result<StepStats> {
        if self.optim.freeze_cnn && self.frozen_stats.is_none() {
            self.frozen_stats = Some(self.model.buffers_host()?);
        }
        // a mixed batch (--mixup) trains on its soft targets, built on the host as the CPU does
        let mixed;
        let loss = match &batch.mix {
            None => &self.loss,
            Some(mix) => {
                mixed = LossConfig {
                    soft: Some(SoftTargets::new(
                        &batch.labels,
                        mix,
                        self.model.cfg.classes,
                        self.optim.label_smoothing,
                        self.optim.class_weights.as_deref(),
                    )),
                    ..self.loss.clone()
                };
                &mixed
            }
        };
        let o = self.model.train_step(
            &batch.x,
            &batch.lengths,
            batch.t_max,
            &batch.labels,
            self.seed,
            step,
            lr as f32,
            self.optim.clip_grad_norm as f32,
            loss,
        )?;
        if let Some(b) = &self.frozen_stats {
            self.model.set_buffers(b)?;
        }
        if let (Some(d), Some(ema)) = (self.ema_decay, self.ema.as_mut()) {
            let _phase = profile::phase("optim");
            crate::engine::ema::ema_update(
                &self.model.dev,
                ema,
                &self.model.params,
                ema_decay(d, step),
            )?;
        }
        Ok(StepStats {
            loss: o.loss as f64,
            correct: o.correct,
        })
    }

    fn eval_logits(&mut self, batch: &Batch) -> Result<Vec<f32>> {
        self.model
            .forward(&batch.x, &batch.lengths, batch.t_max, Mode::Eval)
    }

    fn classes(&self) -> usize {
        self.model.cfg.classes
    }

    fn state(&self) -> Result<TrainState> {
        let mut s = self
            .model
            .state()
            .context("reading the training state from the device")?;
        if let Some(ema) = &self.ema {
            s.ema = self
                .model
                .dev
                .dtoh(ema)
                .context("reading the EMA from the device")?;
        }
        Ok(s)
    }

    fn set_state(&mut self, state: &TrainState) -> Result<()> {
        self.model.set_state(state)?;
        self.frozen_stats = None;
        if !state.ema.is_empty() {
            ensure!(
                state.ema.len() == state.params.len(),
                "saved state has an EMA of {} values for {} parameters",
                state.ema.len(),
                state.params.len()
            );
            self.ema = Some(self.model.dev.htod(&state.ema)?);
        }
        Ok(())
    }

    fn enable_ema(&mut self, decay: f64) -> Result<()> {
        self.ema_decay = Some(decay);
        if self.ema.is_none() {
            // once per run: a round trip through the host is simplest
            self.ema = Some(self.model.dev.htod(&self.model.params_host()?)?);
        }
        Ok(())
    }

    fn step_memory_bytes(&self, batch: usize, t_max: usize) -> u64 {
        crate::backend::memory::workspace_bytes(&self.model.cfg, batch, t_max) as u64
    }

    fn swap_ema(&mut self) -> Result<()> {
        let Some(ema) = self.ema.as_mut() else {
            bail!("no EMA of the weights is kept (--ema not given)");
        };
        std::mem::swap(ema, &mut self.model.params);
        Ok(())
    }

    fn device(&self) -> &'static str {
        match self.model.dev {
            Device::Sim(_) => "sim",
            Device::Cuda(_) => "cuda",
        }
    }

    fn describe_device(&self) -> String {
        self.model.dev.describe()
    }

    fn gemm_fallback(&self) -> Option<String> {
        match &self.model.dev {
            Device::Cuda(c) if !c.has_cublas() => Some(c.gemm_description()),
            _ => None,
        }
    }
}
