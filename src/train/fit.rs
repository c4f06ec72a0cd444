//! The training loop, device-independent: batches, augmentation, the backend's step,
//! validation, reduce-on-plateau, early stopping, and an event per epoch for the caller to
//! record (metrics line, best checkpoint, resume state).
//!
//! Layer: train (below cli, above engine and cpu). May use `backend`, `cpu`, `features`,
//! `model`, `audio`, `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`);
//! never `cli`, and `engine` only in `devices.rs` (the one place a backend is chosen).

use crate::backend::batch::Batch;
use crate::backend::{eval_loss, Backend, TrainState};
use crate::features::augment::{add_noise, spec_augment, AugmentConfig};
use crate::features::log_mel;
use crate::rng::{Purpose, Stream};
use crate::train::data::{bucketed_batches, crop_mel, crop_start, Dataset};
use crate::train::metrics::{Confusion, Scores};
use crate::train::mixup::mix_batch;
use crate::train::schedule::{cosine_lr, EarlyStopping, ReduceOnPlateau, Schedule};
use crate::train::speed;
use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub plateau_factor: f64,
    pub plateau_patience: usize,
    /// Older run folders have no schedule: they trained with the plateau one.
    #[serde(default)]
    pub schedule: Schedule,
    pub early_stop_patience: usize,
    pub augment: AugmentConfig,
    /// Longest stretch of a clip the model sees (`--max-seconds`); older run folders have
    /// none and get the default.
    #[serde(default)]
    pub max_seconds: Option<f64>,
    pub seed: u64,
    /// `--ema DECAY`: validate, keep and save an exponential moving average of the weights
    /// (older run folders: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
    /// `--mixup ALPHA`: mix each training batch (`train::mixup`); older run folders: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixup: Option<f64>,
    /// `--speed`: the speed factors a training clip is resampled by, one drawn per clip and
    /// epoch (`train::speed`); older run folders: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<Vec<f64>>,
}

/// One line of metrics.jsonl.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_micro_f1: f64,
    pub val_macro_f1: f64,
    /// Unweighted accuracy (mean per-class recall); runs written before it existed lack it.
    #[serde(default)]
    pub val_unweighted_accuracy: f64,
    pub best: bool,
    /// This epoch's validation confusion counts, `[true][predicted]` (for `serve`'s per-epoch
    /// heat-map); runs written before it existed lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_confusion: Option<Vec<Vec<u64>>>,
}

impl EpochRecord {
    /// The one-line summary `train` prints per epoch (and `cv --verbose`).
    pub fn line(&self) -> String {
        format!(
            "epoch {:>3}  lr {:.1e}  train loss {:.4} acc {:5.1}%  val loss {:.4} acc {:5.1}% UA {:5.1}% macro-F1 {:5.1}%{}",
            self.epoch,
            self.lr,
            self.train_loss,
            100.0 * self.train_accuracy,
            self.val_loss,
            100.0 * self.val_accuracy,
            100.0 * self.val_unweighted_accuracy,
            100.0 * self.val_macro_f1,
            if self.best { "  *best" } else { "" }
        )
    }
}

/// Where the loop stands after an epoch: enough to resume exactly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FitProgress {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Training steps taken (the Philox step counter).
    pub step: u32,
    pub lr: f64,
    pub plateau: ReduceOnPlateau,
    pub early: EarlyStopping,
    pub history: Vec<EpochRecord>,
}

impl FitProgress {
    pub fn new(cfg: &FitConfig) -> Self {
        Self {
            epochs_done: 0,
            step: 0,
            lr: cfg.lr,
            plateau: ReduceOnPlateau::new(cfg.plateau_factor, cfg.plateau_patience),
            early: EarlyStopping::new(cfg.early_stop_patience),
            history: Vec::new(),
        }
    }
}

/// What the loop reports after each epoch.
pub struct EpochEvent<'a> {
    pub record: &'a EpochRecord,
    pub progress: &'a FitProgress,
    /// The state after this epoch (for the resume checkpoint).
    pub state: &'a TrainState,
    pub val_confusion: &'a Confusion,
}

/// What `evaluate` measures on a set of clips.
pub struct Evaluation {
    /// Mean plain cross-entropy.
    pub loss: f64,
    pub confusion: Confusion,
    /// Per clip, in the order asked for: predicted class and logits.
    pub predictions: Vec<(usize, Vec<f32>)>,
}

/// Evaluates `idx` in evaluation mode.
pub fn evaluate(
    backend: &mut dyn Backend,
    data: &Dataset,
    idx: &[usize],
    batch_size: usize,
) -> Result<Evaluation> {
    let classes = backend.classes();
    let frames = data.model_frames();
    let mut confusion = Confusion::new(classes);
    let mut loss_sum = 0.0;
    let mut out: Vec<Option<(usize, Vec<f32>)>> = vec![None; data.clips.len()];
    for b in bucketed_batches(&frames, idx, batch_size, None) {
        let batch = plain_batch(data, &b);
        let logits = backend.eval_logits(&batch)?;
        let (loss, pred) = eval_loss(&logits, &batch.labels, classes);
        loss_sum += loss * b.len() as f64;
        for (k, &i) in b.iter().enumerate() {
            confusion.add(batch.labels[k], pred[k]);
            out[i] = Some((pred[k], logits[k * classes..(k + 1) * classes].to_vec()));
        }
    }
    let predictions = idx
        .iter()
        .map(|&i| out[i].take().expect("evaluated"))
        .collect();
    Ok(Evaluation {
        loss: loss_sum / idx.len().max(1) as f64,
        confusion,
        predictions,
    })
}

/// A batch of cached features, no augmentation; a clip longer than the dataset's
/// `max_frames` contributes its middle.
pub fn plain_batch(data: &Dataset, idx: &[usize]) -> Batch {
    let cropped: Vec<Option<(Vec<f32>, usize)>> = idx
        .iter()
        .map(|&i| {
            (data.clips[i].frames > data.max_frames)
                .then(|| data.cropped_mel(i, data.crop_start(i, None)))
        })
        .collect();
    let feats: Vec<(&[f32], usize)> = idx
        .iter()
        .zip(&cropped)
        .map(|(&i, c)| match c {
            Some((m, f)) => (m.as_slice(), *f),
            None => (data.clips[i].mel.as_slice(), data.clips[i].frames),
        })
        .collect();
    Batch::from_features(
        &feats,
        &data.labels_of(idx),
        idx,
        data.mel.n_mels,
        -data.mel.top_db,
    )
}

/// A training batch for `epoch` and `step`: each clip at its speed factor (`--speed`:
/// resampled and its features recomputed), a random window of each clip longer than
/// `max_frames`, waveform noise (features recomputed for the clips that draw it) and
/// SpecAugment, keyed by (seed, step, position in batch); then mixup (`--mixup`) of the whole
/// batch.
pub fn augmented_batch(
    data: &Dataset,
    idx: &[usize],
    cfg: &FitConfig,
    epoch: u32,
    step: u32,
) -> Result<Batch> {
    let (aug, seed) = (&cfg.augment, cfg.seed);
    let n_mels = data.mel.n_mels;
    let silence = -data.mel.top_db;
    let feats: Vec<(Vec<f32>, usize)> = idx
        .par_iter()
        .enumerate()
        .map(|(c, &i)| -> Result<(Vec<f32>, usize)> {
            let clip = &data.clips[i];
            // the clip as this epoch plays it: at its speed factor, or as loaded
            let factor = cfg
                .speed
                .as_deref()
                .map_or(1.0, |f| speed::draw(f, seed, epoch, i));
            let perturbed = if factor != 1.0 {
                let pcm = speed::perturb(&clip.pcm, factor)?;
                let lm = log_mel(&pcm, data.sample_rate, &data.mel);
                Some((pcm, lm.data, lm.frames))
            } else {
                None
            };
            let (clip_pcm, clip_mel, clip_frames) = match &perturbed {
                Some((p, m, f)) => (p.as_slice(), m.as_slice(), *f),
                None => (clip.pcm.as_slice(), clip.mel.as_slice(), clip.frames),
            };
            let (start, frames) = if clip_frames > data.max_frames {
                let u = Stream::new(seed, Purpose::Crop, step).uniform(c as u64);
                (
                    crop_start(clip_frames, data.max_frames, Some(u)),
                    data.max_frames,
                )
            } else {
                (0, clip_frames)
            };
            let cached = || {
                if frames == clip_frames {
                    clip_mel.to_vec()
                } else {
                    crop_mel(clip_mel, clip_frames, n_mels, start, data.max_frames).0
                }
            };
            let mut mel = if aug.noise_prob > 0.0 {
                // The samples behind the window's frames (frame t is centred on t * hop).
                let hop = data.mel.hop;
                let s0 = (start * hop).min(clip_pcm.len());
                let s1 = ((start + frames - 1) * hop).min(clip_pcm.len()).max(s0);
                let mut pcm = if frames == clip_frames {
                    clip_pcm.to_vec()
                } else {
                    clip_pcm[s0..s1].to_vec()
                };
                match add_noise(&mut pcm, aug, seed, step, c) {
                    Some(_) => {
                        let lm = log_mel(&pcm, data.sample_rate, &data.mel);
                        // Same frame count as the window by construction; guard anyway.
                        if lm.frames == frames {
                            lm.data
                        } else {
                            cached()
                        }
                    }
                    None => cached(),
                }
            } else {
                cached()
            };
            spec_augment(
                &mut mel, n_mels, frames, frames, silence, aug, seed, step, c,
            );
            Ok((mel, frames))
        })
        .collect::<Result<_>>()?;
    let views: Vec<(&[f32], usize)> = feats.iter().map(|(m, f)| (m.as_slice(), *f)).collect();
    let mut batch = Batch::from_features(&views, &data.labels_of(idx), idx, n_mels, silence);
    if let Some(alpha) = cfg.mixup {
        mix_batch(&mut batch, alpha, seed, step);
    }
    Ok(batch)
}

/// Trains on `train_idx`, validating on `val_idx` after every epoch, from `progress` (fresh or
/// resumed). `on_epoch` records each epoch; the returned progress is the final one.
pub fn fit(
    backend: &mut dyn Backend,
    data: &Dataset,
    (train_idx, val_idx): (&[usize], &[usize]),
    cfg: &FitConfig,
    mut progress: FitProgress,
    show_progress: bool,
    on_epoch: &mut dyn FnMut(&EpochEvent) -> Result<()>,
) -> Result<FitProgress> {
    if train_idx.is_empty() {
        bail!("the training set is empty");
    }
    if val_idx.is_empty() {
        bail!("the validation set is empty (give --val-split > 0 or --val-data)");
    }
    if let Some(d) = cfg.ema {
        backend.enable_ema(d)?;
    }
    // bucketed by the longest each clip can be (its slowest --speed factor)
    let frames = data.train_frames(cfg.speed.as_deref());
    // The cosine schedule's horizon: every epoch has the same number of batches (the buckets
    // depend on the clips, not on the shuffle), so this counts each run's steps exactly.
    let steps_per_epoch = bucketed_batches(&frames, train_idx, cfg.batch_size, None).len();
    let total_steps = steps_per_epoch * cfg.epochs;
    // Every epoch takes the same number of steps, so a resumed state must have taken exactly
    // this many: anything else is another run's (or another data set's) state.
    if progress.step as usize != steps_per_epoch * progress.epochs_done {
        bail!(
            "resume/state.safetensors: {} training steps after {} epoch(s), but this training \
             set takes {} steps per epoch: the state belongs to another run or data set",
            progress.step,
            progress.epochs_done,
            steps_per_epoch
        );
    }
    while progress.epochs_done < cfg.epochs && !progress.early.should_stop() {
        let epoch = progress.epochs_done;
        let batches = bucketed_batches(
            &frames,
            train_idx,
            cfg.batch_size,
            Some((cfg.seed, epoch as u32)),
        );
        let bar = if show_progress {
            let b = ProgressBar::new(batches.len() as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix:>3} {bar:25} {pos}/{len} batches {elapsed} {msg}",
                )
                .unwrap(),
            );
            b.set_prefix(format!("{}", epoch + 1));
            b
        } else {
            ProgressBar::hidden()
        };
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for b in &batches {
            let batch = augmented_batch(data, b, cfg, epoch as u32, progress.step)?;
            if cfg.schedule == Schedule::Cosine {
                progress.lr =
                    cosine_lr(cfg.lr, progress.step as usize, steps_per_epoch, total_steps);
            }
            let s = backend.train_step(&batch, progress.step, progress.lr)?;
            if !s.loss.is_finite() {
                bail!(
                    "training diverged at epoch {} step {}: loss is {} (lower --lr or set \
                     --clip-grad)",
                    epoch + 1,
                    progress.step,
                    s.loss
                );
            }
            progress.step += 1;
            loss_sum += s.loss * b.len() as f64;
            correct += s.correct;
            seen += b.len();
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} acc {:.1}%",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64
            ));
        }
        bar.finish_and_clear();
        // with --ema, validation (and so the choice of the best epoch) sees the average
        if cfg.ema.is_some() {
            backend.swap_ema()?;
        }
        let evaluated = evaluate(backend, data, val_idx, cfg.batch_size);
        if cfg.ema.is_some() {
            backend.swap_ema()?;
        }
        let Evaluation {
            loss: val_loss,
            confusion,
            ..
        } = evaluated?;
        let scores: Scores = confusion.scores();
        let best = progress.early.observe(epoch, val_loss);
        let record = EpochRecord {
            epoch: epoch + 1,
            lr: progress.lr,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            val_loss,
            val_accuracy: scores.accuracy,
            val_micro_f1: scores.micro_f1,
            val_macro_f1: scores.macro_f1,
            val_unweighted_accuracy: scores.unweighted_accuracy,
            best,
            val_confusion: Some(confusion.counts.clone()),
        };
        if cfg.schedule == Schedule::Plateau {
            progress.lr = progress.plateau.step(val_loss, progress.lr);
        }
        progress.epochs_done += 1;
        progress.history.push(record.clone());
        let state = backend.state()?;
        on_epoch(&EpochEvent {
            record: &record,
            progress: &progress,
            state: &state,
            val_confusion: &confusion,
        })?;
    }
    Ok(progress)
}
