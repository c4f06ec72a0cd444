//! The seam between the training loop and a device: one training step, one evaluation pass,
//! and the state a checkpoint or a resumed run needs ([`Backend`]); the batch it is fed
//! ([`batch::Batch`]); and the memory model that says, before anything is allocated, how many
//! bytes one step of a batch shape holds ([`memory`]).
//!
//! Layer rule: this level sits below both implementations and their user, and may use `model`
//! only (besides std, anyhow and serde):
//!
//! ```text
//! cli ─→ train ─→ backend ←─ engine (DeviceBackend, cuda/sim)
//!          │         ↑
//!          │         └────── cpu (CpuBackend, the reference)
//!          └─→ train/devices.rs: the one place that names an implementation
//! ```
//!
//! The CPU reference (`cpu::backend`) and the device engine (`engine::step`) implement
//! [`Backend`]; `train` and `infer` drive a `dyn Backend` and never name an implementation,
//! except where the device is chosen (`train::devices`). Nothing here names `train`, `engine`
//! or `cpu`.

pub mod batch;
pub mod memory;
pub mod mixup;

use anyhow::Result;
use batch::Batch;

/// Loss and correct count of one batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepStats {
    /// Mean loss over the batch.
    pub loss: f64,
    pub correct: usize,
}

/// Everything needed to continue training exactly: parameters, BatchNorm running statistics,
/// and Adam's moments and step count.
#[derive(Clone, Debug, Default)]
pub struct TrainState {
    pub params: Vec<f32>,
    pub buffers: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    pub adam_t: u64,
    /// Exponential moving average of the parameters (`--ema`), same layout; empty when off.
    pub ema: Vec<f32>,
}

/// Decay of the parameter EMA applied after training step `step` (0-based): the configured
/// `decay`, but at most (1 + step) / (10 + step), so the average forgets the initial weights
/// within the first few dozen steps instead of keeping 0.999^steps of them (a 15-batch epoch
/// × 40 epochs would still hold 55% of the initialisation at 0.999).
pub fn ema_decay(decay: f64, step: u32) -> f32 {
    let warm = (1.0 + step as f64) / (10.0 + step as f64);
    decay.min(warm) as f32
}

/// One EMA update, ema ← d·ema + (1 − d)·params, written as fma(d, ema − params, params) in
/// f32: the CPU and the device kernel (kernels/ema.cu) round it identically.
pub fn ema_update(ema: &mut [f32], params: &[f32], decay: f32) {
    assert_eq!(
        ema.len(),
        params.len(),
        "EMA and parameters differ in length"
    );
    for (e, &p) in ema.iter_mut().zip(params) {
        *e = decay.mul_add(*e - p, p);
    }
}

/// Loss and optimizer settings a backend applies in `train_step`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct OptimConfig {
    pub lr: f64,
    pub weight_decay: f64,
    /// AdamW's decoupled weight decay instead of torch.optim.Adam's L2 term.
    pub decoupled_weight_decay: bool,
    /// Global gradient-norm clip; 0 disables.
    pub clip_grad_norm: f64,
    pub label_smoothing: f64,
    /// Per-class loss weights (inverse class frequency), or None for plain mean.
    pub class_weights: Option<Vec<f32>>,
    /// `--freeze cnn`: the conv stages and their BatchNorm (weights, biases, running
    /// statistics) stay as they are ([`OptimConfig::lr_groups`]). Configs written before it
    /// existed train everything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub freeze_cnn: bool,
    /// `--backbone-lr-scale`: every parameter but the classifier head trains at lr × this
    /// (0 < S ≤ 1; 1 = one learning rate for all).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub backbone_lr_scale: f64,
}

fn one() -> f64 {
    1.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

/// One learning-rate group of the flat parameters: `range` trains at lr × `scale`. Scale 0
/// is frozen: its gradients are multiplied by 0 before clipping (so they do not count in the
/// clip norm, as parameters without gradients in torch) and Adam leaves the parameters and
/// their moments m, v as they are (the step count t still counts the step, as torch's
/// per-optimizer step).
#[derive(Clone, Debug, PartialEq)]
pub struct LrGroup {
    pub range: std::ops::Range<usize>,
    pub scale: f32,
}

impl OptimConfig {
    /// The learning-rate groups of `cfg`'s flat parameters in `ParamLayout` order: the conv
    /// stages with their BatchNorm affine parameters (`conv*`, `bn*`: scale 0 under
    /// `freeze_cnn`, else `backbone_lr_scale`), the rest of the backbone (`fc`, `lstm`,
    /// `attention`: `backbone_lr_scale`) and the classifier head (`classifier.*`: 1). Empty
    /// when every parameter trains at lr (the plain one-group step).
    pub fn lr_groups(&self, cfg: &crate::model::ModelConfig) -> Vec<LrGroup> {
        if !self.freeze_cnn && self.backbone_lr_scale == 1.0 {
            return Vec::new();
        }
        let layout = crate::model::ParamLayout::new(cfg);
        let fc = layout.range("fc.weight").start;
        let head = layout.range("classifier.weight").start;
        let s = self.backbone_lr_scale as f32;
        vec![
            LrGroup {
                range: 0..fc,
                scale: if self.freeze_cnn { 0.0 } else { s },
            },
            LrGroup {
                range: fc..head,
                scale: s,
            },
            LrGroup {
                range: head..layout.total(),
                scale: 1.0,
            },
        ]
    }
}

pub trait Backend {
    /// Forward in training mode (dropout keyed by `step`), loss, backward, clip, Adam at `lr`.
    fn train_step(&mut self, batch: &Batch, step: u32, lr: f64) -> Result<StepStats>;
    /// Logits (batch, classes) row-major in evaluation mode.
    fn eval_logits(&mut self, batch: &Batch) -> Result<Vec<f32>>;
    /// Number of output classes.
    fn classes(&self) -> usize;
    /// Parameters, BN buffers and Adam moments (a device backend reads them back).
    fn state(&self) -> Result<TrainState>;
    fn set_state(&mut self, state: &TrainState) -> Result<()>;
    /// Which device runs the steps (`cpu`, `sim`, `cuda`), for logs and the run's config.
    fn device(&self) -> &'static str {
        "cpu"
    }
    /// The device in one line (GPU, GEMM and convolution paths on cuda).
    fn describe_device(&self) -> String {
        self.device().to_string()
    }
    /// On cuda without cuBLAS (or after it failed): why GEMMs run on our fallback kernels.
    fn gemm_fallback(&self) -> Option<String> {
        None
    }
    /// Keeps an exponential moving average of the parameters from now on (`--ema DECAY`):
    /// after every `train_step`, [`ema_update`] with [`ema_decay`]`(decay, step)`. It starts
    /// from the current parameters unless a state with an average was set.
    fn enable_ema(&mut self, decay: f64) -> Result<()>;
    /// Exchanges the parameters with their average (call again to swap back): validation
    /// and the best checkpoint use the average. An error when no average is kept.
    fn swap_ema(&mut self) -> Result<()>;
    /// Upper bound of the memory one training step of `batch` clips padded to `t_max` frames
    /// takes beyond what is already allocated (the host's on cpu and sim, the GPU's on cuda):
    /// what `train` checks against the available memory before it starts.
    fn step_memory_bytes(&self, batch: usize, t_max: usize) -> u64;
}

/// Puts `params` and BatchNorm `buffers` (e.g. a run's best weights) into `backend`, keeping
/// its optimizer state.
pub fn set_weights(backend: &mut dyn Backend, params: Vec<f32>, buffers: Vec<f32>) -> Result<()> {
    let mut state = backend.state()?;
    state.params = params;
    state.buffers = buffers;
    backend.set_state(&state)
}

/// Plain mean cross-entropy and argmax predictions of logits (batch, classes).
pub fn eval_loss(logits: &[f32], labels: &[usize], classes: usize) -> (f64, Vec<usize>) {
    let mut loss = 0.0f64;
    let mut pred = Vec::with_capacity(labels.len());
    for (row, &y) in logits.chunks(classes).zip(labels) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        loss += lse - row[y] as f64;
        pred.push(argmax(row));
    }
    (loss / labels.len().max(1) as f64, pred)
}

/// Index of the largest value (first on ties); NaN never wins.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Softmax probabilities of one logits row, in f64 for stability.
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_loss_matches_closed_form() {
        // Two classes, logits (0, ln 3): p = (1/4, 3/4).
        let logits = [0.0f32, 3f32.ln(), 2.0, 2.0];
        let (loss, pred) = eval_loss(&logits, &[1, 0], 2);
        let expected = (-(0.75f64).ln() - (0.5f64).ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-7, "{loss} vs {expected}");
        assert_eq!(pred, vec![1, 0]);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn lr_groups_split_the_layout_at_fc_and_the_head() {
        let cfg = crate::model::ModelConfig {
            channels: [2, 3, 4],
            fc: 5,
            hidden: 3,
            n_mels: 16,
            kernel: 3,
            ..Default::default()
        };
        let mut o = OptimConfig {
            lr: 1e-3,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            clip_grad_norm: 0.0,
            label_smoothing: 0.0,
            class_weights: None,
            freeze_cnn: false,
            backbone_lr_scale: 1.0,
        };
        assert!(o.lr_groups(&cfg).is_empty());
        o.freeze_cnn = true;
        o.backbone_lr_scale = 0.5;
        let l = crate::model::ParamLayout::new(&cfg);
        let g = o.lr_groups(&cfg);
        // conv1 starts the layout, bn3.bias ends the CNN, classifier.bias ends it all
        assert_eq!(g[0].range, 0..l.range("bn3.bias").end);
        assert_eq!(g[0].scale, 0.0);
        assert_eq!(g[1].range.start, l.range("fc.weight").start);
        assert_eq!(g[1].range.end, l.range("attention.bias").end);
        assert_eq!(g[1].scale, 0.5);
        assert_eq!(g[2].range, l.range("classifier.weight").start..l.total());
        assert_eq!(g[2].scale, 1.0);
        // old config.json files (no such fields) load with everything trained at lr
        let old: OptimConfig = serde_json::from_str(
            r#"{"lr":0.001,"weight_decay":0.0,"decoupled_weight_decay":false,"clip_grad_norm":0.0,"label_smoothing":0.0,"class_weights":null}"#,
        )
        .unwrap();
        assert!(!old.freeze_cnn);
        assert_eq!(old.backbone_lr_scale, 1.0);
    }

    #[test]
    fn ema_decay_warms_up_then_holds_and_the_update_mixes_as_documented() {
        // (1 + t) / (10 + t): 0.1 after the first step, 0.5 at t = 8, then the configured value
        assert_eq!(ema_decay(0.999, 0), 0.1);
        assert_eq!(ema_decay(0.999, 8), 0.5);
        assert_eq!(ema_decay(0.9, 80), 0.9); // 81/90 = 0.9 exactly: the minimum of equals
        assert_eq!(ema_decay(0.9, 1000), 0.9);
        assert!((ema_decay(0.999, 989) as f64 - 990.0 / 999.0).abs() < 1e-7);
        // 0.75·e + 0.25·p, exact in binary
        let mut e = vec![1.0f32, -2.0, 0.5];
        ema_update(&mut e, &[3.0, 2.0, 0.5], 0.75);
        assert_eq!(e, vec![1.5, -1.0, 0.5]);
    }
}
