//! Using a trained model: whole clips, recordings of any length window by window, and live
//! streams, at bounded memory.
//!
//! - [`Classifier`]: a run's model (or an [`ensemble`] of runs) and front end; class
//!   probabilities of clips, optionally averaged over crops ([`Views`], `--tta`).
//! - [`source`]: mono sample streams (WAV files block by block, WAV/raw PCM from a pipe,
//!   other formats decoded whole), resampled on the fly to the model's rate.
//! - [`window`]: cutting a stream into windows.
//! - [`run_windows`]: stream → windows → (silence check, front end, model) → one
//!   [`WindowResult`] per window, handed out as soon as it is known.
//! - [`timeline`]: the probabilities-over-time picture.
//!
//! Layer: infer (using a trained model; below cli). May use `train` (run folders), `backend`,
//! `cpu`, `features`, `model`, `audio`, `device` and the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); never `cli`.

pub mod ensemble;
pub mod file;
pub mod source;
pub mod timeline;
pub mod window;

use crate::backend::batch::Batch;
use crate::backend::{softmax, Backend};
use crate::features::{try_log_mel, LogMel};
use crate::model::MIN_FRAMES;
use crate::train::run::{load_run, RunConfig};
use anyhow::Result;
use source::SampleSource;
use std::path::Path;
use window::{rms_dbfs, Windower};

/// Most `--tta` crops per clip (eval, predict, serve's `tta=`).
pub const MAX_TTA: usize = 16;
/// Most audio per model call, seconds, where the caller does not bound it: `predict` lowers
/// its windows per call to fit, and `--tta` crops go this many seconds at a time.
pub const MAX_CALL_AUDIO_S: f64 = 64.0;

/// How a clip is shown to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Views {
    /// The whole clip in one piece (`predict` without `--tta`).
    Whole,
    /// Crops of at most `crop` frames (None: each member's training crop, its
    /// `--max-seconds`), placed by [`ensemble::crop_starts`]: one view of a clip that fits;
    /// of a longer one the middle crop for `n == 1` (eval's view), else `n` crops evenly
    /// spaced from start to end (`--tta n`). A clip's probabilities are the mean over its
    /// views.
    Crops { n: usize, crop: Option<usize> },
}

/// One run of a [`Classifier`].
struct Member {
    backend: Box<dyn Backend>,
    /// Its output index of each of the classifier's classes (label order of the first run).
    perm: Vec<usize>,
    /// Its training crop in frames (`--max-seconds`).
    crop: usize,
}

/// A trained model ready to classify audio at its own sample rate: one run, or several
/// (an ensemble) whose probabilities are averaged.
pub struct Classifier {
    /// The first run's config: sample rate, front end and label order of every result.
    pub cfg: RunConfig,
    members: Vec<Member>,
    /// How each clip is shown to each member ([`Views::Whole`] unless set).
    pub views: Views,
    /// Most crops per model call when clips give several views: bounds memory.
    pub crops_per_call: usize,
}

impl Classifier {
    /// Upper bound of the memory one of its members takes for a batch of `batch` clips of
    /// `t_max` frames (members run one after another): the training step's bound
    /// ([`Backend::step_memory_bytes`]), which covers the forward alone.
    pub fn step_memory_bytes(&self, batch: usize, t_max: usize) -> u64 {
        self.members
            .iter()
            .map(|m| m.backend.step_memory_bytes(batch, t_max))
            .max()
            .unwrap_or(0)
    }

    /// Loads a run folder's config and best weights onto `device`.
    pub fn load(dir: &Path, device: crate::device::DeviceChoice) -> Result<Self> {
        Self::load_ensemble(&[dir.to_path_buf()], device)
    }

    /// Loads several runs as one model (their probabilities averaged), after checking that
    /// they share the sample rate, the front end and the classes ([`ensemble::compatible`]).
    pub fn load_ensemble(
        dirs: &[std::path::PathBuf],
        device: crate::device::DeviceChoice,
    ) -> Result<Self> {
        // every config is checked against the first before any weights are loaded
        let mut cfgs = Vec::with_capacity(dirs.len());
        for d in dirs {
            let folder = match d.parent() {
                Some(p) if d.is_file() && p.join("config.json").is_file() => p,
                _ => d.as_path(),
            };
            cfgs.push(crate::train::run::RunDir::open(folder)?.config()?);
        }
        let with_dirs: Vec<(&Path, &RunConfig)> =
            dirs.iter().map(|d| d.as_path()).zip(&cfgs).collect();
        let perms = ensemble::compatible(&with_dirs)?;
        let mut members = Vec::with_capacity(dirs.len());
        for (d, perm) in dirs.iter().zip(perms) {
            let (c, backend) = load_run(d, device)?;
            members.push(Member {
                backend,
                perm,
                crop: training_crop(&c),
            });
        }
        let cfg = cfgs
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("--model: give at least one run folder"))?;
        Ok(Self {
            cfg,
            members,
            views: Views::Whole,
            crops_per_call: 16,
        })
    }

    /// `predict`'s `--tta n`: 1 classifies every clip whole; n > 1 as n crops of each run's
    /// training length (see [`Views::Crops`]), at most [`MAX_CALL_AUDIO_S`] of them per call.
    pub fn set_tta(&mut self, n: usize) {
        if n <= 1 {
            self.views = Views::Whole;
            return;
        }
        self.views = Views::Crops { n, crop: None };
        let crop_s =
            (self.longest_training_crop() * self.cfg.mel.hop) as f64 / self.cfg.sample_rate as f64;
        self.crops_per_call = ((MAX_CALL_AUDIO_S / crop_s.max(1e-9)) as usize).max(1);
    }

    /// Runs in the classifier.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// The longest crop any member takes, in frames (each member's `--max-seconds`).
    pub fn longest_training_crop(&self) -> usize {
        self.members.iter().map(|m| m.crop).max().unwrap_or(0)
    }

    /// The log-Mel of samples at the model's rate (thread-safe: no model state).
    pub fn features(cfg: &RunConfig, samples: &[f32]) -> Result<LogMel> {
        try_log_mel(samples, cfg.sample_rate, &cfg.mel)
    }

    /// Class probabilities of each clip: the mean over the members of each member's mean over
    /// the clip's [`Views`]. Clips may differ in length: the model masks each clip's padding,
    /// so every row equals that clip classified alone.
    pub fn probabilities(&mut self, feats: &[&LogMel]) -> Result<Vec<Vec<f64>>> {
        let f: Vec<(&[f32], usize)> = feats.iter().map(|m| (&m.data[..], m.frames)).collect();
        Ok(mean_over_members(self.member_probabilities(&f)?))
    }

    /// Each member's class probabilities of each clip (`[member][clip][class]`, classes in
    /// the classifier's order), each the mean over the clip's views. `feats` are
    /// `[n_mels][frames]` log-Mel dB with their frame counts.
    pub fn member_probabilities(
        &mut self,
        feats: &[(&[f32], usize)],
    ) -> Result<Vec<Vec<Vec<f64>>>> {
        let n_mels = self.cfg.mel.n_mels;
        let floor = -self.cfg.mel.top_db;
        let views = self.views;
        let per_call = self.crops_per_call.max(1);
        let mut out = Vec::with_capacity(self.members.len());
        for m in &mut self.members {
            let classes = m.backend.classes();
            // (clip, first frame, frames) of every view
            let mut all: Vec<(usize, usize, usize)> = Vec::new();
            for (i, &(_, frames)) in feats.iter().enumerate() {
                match views {
                    Views::Whole => all.push((i, 0, frames)),
                    Views::Crops { n, crop } => {
                        let crop = crop.unwrap_or(m.crop);
                        for s in ensemble::crop_starts(frames, crop, n) {
                            all.push((i, s, (frames - s).min(crop)));
                        }
                    }
                }
            }
            let mut sum: Vec<Option<Vec<f64>>> = vec![None; feats.len()];
            let mut count = vec![0usize; feats.len()];
            // the caller bounds whole clips; crops go `per_call` at a time
            let call = if views == Views::Whole {
                all.len().max(1)
            } else {
                per_call
            };
            for chunk in all.chunks(call) {
                let cropped: Vec<Option<Vec<f32>>> = chunk
                    .iter()
                    .map(|&(i, s, w)| {
                        let (data, frames) = feats[i];
                        (w != frames).then(|| {
                            (0..n_mels)
                                .flat_map(|b| data[b * frames + s..][..w].iter().copied())
                                .collect()
                        })
                    })
                    .collect();
                let f: Vec<(&[f32], usize)> = chunk
                    .iter()
                    .zip(&cropped)
                    .map(|(&(i, _, w), c)| (c.as_deref().unwrap_or(feats[i].0), w))
                    .collect();
                let zeros = vec![0; f.len()];
                let batch = Batch::from_features(&f, &zeros, &zeros, n_mels, floor);
                let logits = m.backend.eval_logits(&batch)?;
                crate::cpu::conv::end_inference_call();
                for (&(i, _, _), row) in chunk.iter().zip(logits.chunks(classes)) {
                    let p = softmax(row);
                    let p: Vec<f64> = m.perm.iter().map(|&k| p[k]).collect();
                    count[i] += 1;
                    match &mut sum[i] {
                        None => sum[i] = Some(p),
                        Some(acc) => acc.iter_mut().zip(&p).for_each(|(a, v)| *a += v),
                    }
                }
            }
            out.push(
                sum.into_iter()
                    .zip(count)
                    .map(|(s, c)| {
                        let s = s.expect("every clip has a view");
                        if c == 1 {
                            s
                        } else {
                            s.into_iter().map(|v| v / c as f64).collect()
                        }
                    })
                    .collect(),
            );
        }
        Ok(out)
    }
}

/// A run's training crop in frames: its `--max-seconds` (the default for older runs).
pub fn training_crop(cfg: &RunConfig) -> usize {
    let s = cfg
        .fit
        .max_seconds
        .unwrap_or(crate::train::options::DEFAULT_MAX_SECONDS);
    crate::train::data::frames_in(s, cfg.sample_rate, &cfg.mel)
}

/// Index of the largest probability (first on ties); NaN never wins.
pub fn most_probable(p: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] || p[best].is_nan() {
            best = i;
        }
    }
    best
}

/// The arithmetic mean over members (`[member][clip][class]` → `[clip][class]`); one member's
/// rows unchanged.
pub fn mean_over_members(mut per_member: Vec<Vec<Vec<f64>>>) -> Vec<Vec<f64>> {
    if per_member.len() == 1 {
        return per_member.remove(0);
    }
    let k = per_member.len() as f64;
    let mut it = per_member.into_iter();
    let mut acc = it.next().unwrap_or_default();
    for m in it {
        for (a, row) in acc.iter_mut().zip(m) {
            a.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
    }
    for row in &mut acc {
        row.iter_mut().for_each(|v| *v /= k);
    }
    acc
}

/// Windowing settings, in seconds, and the silence threshold.
#[derive(Clone, Debug)]
pub struct WindowConfig {
    pub window_s: f64,
    pub hop_s: f64,
    /// Windows quieter than this RMS (dBFS) are reported silent and not classified.
    pub silence_dbfs: Option<f64>,
    /// Windows classified per model call (1 for live input: lowest latency).
    pub batch: usize,
}

/// The result for one window: position, loudness, and probabilities (None when silent).
#[derive(Clone, Debug)]
pub struct WindowResult {
    pub start_s: f64,
    pub end_s: f64,
    pub rms_dbfs: f64,
    pub probabilities: Option<Vec<f64>>,
}

/// Runs a stream window by window and calls `emit` for every window in order, as soon as its
/// batch is classified (immediately with `batch == 1`). `on_samples` sees every sample (for a
/// waveform picture). Returns the stream's duration in seconds.
pub fn run_windows(
    clf: &mut Classifier,
    src: &mut dyn SampleSource,
    wc: &WindowConfig,
    mut on_samples: impl FnMut(&[f32]),
    mut emit: impl FnMut(WindowResult) -> Result<()>,
) -> Result<f64> {
    let rate = clf.cfg.sample_rate;
    anyhow::ensure!(
        src.sample_rate() == rate,
        "the stream runs at {} Hz, the model at {rate} Hz",
        src.sample_rate()
    );
    let window = (wc.window_s * rate as f64).round() as usize;
    let hop = (wc.hop_s * rate as f64).round() as usize;
    anyhow::ensure!(
        window >= MIN_FRAMES * clf.cfg.mel.hop,
        "--window {} s is shorter than the model's shortest input ({} frames = {:.3} s)",
        wc.window_s,
        MIN_FRAMES,
        (MIN_FRAMES * clf.cfg.mel.hop) as f64 / rate as f64
    );
    anyhow::ensure!(hop > 0, "--hop must be positive (got {} s)", wc.hop_s);
    let mut win = Windower::new(window, hop);
    // Windows waiting for their batch: (start, len, rms, features if loud).
    let mut pending: Vec<(u64, usize, f64, Option<LogMel>)> = Vec::new();
    let flush = |clf: &mut Classifier,
                 pending: &mut Vec<(u64, usize, f64, Option<LogMel>)>,
                 emit: &mut dyn FnMut(WindowResult) -> Result<()>|
     -> Result<()> {
        let feats: Vec<&LogMel> = pending.iter().filter_map(|p| p.3.as_ref()).collect();
        let mut probs = clf.probabilities(&feats)?.into_iter();
        for (start, len, rms, f) in pending.drain(..) {
            emit(WindowResult {
                start_s: start as f64 / rate as f64,
                end_s: (start + len as u64) as f64 / rate as f64,
                rms_dbfs: rms,
                probabilities: f.map(|_| probs.next().expect("one row per loud window")),
            })?;
        }
        Ok(())
    };
    let take = |clf: &mut Classifier,
                pending: &mut Vec<(u64, usize, f64, Option<LogMel>)>,
                start: u64,
                samples: &[f32],
                emit: &mut dyn FnMut(WindowResult) -> Result<()>|
     -> Result<()> {
        let rms = rms_dbfs(samples);
        let silent = wc.silence_dbfs.is_some_and(|t| rms < t); // rms is never NaN
        let f = if silent {
            None
        } else {
            Some(Classifier::features(&clf.cfg, samples)?)
        };
        pending.push((start, samples.len(), rms, f));
        if pending.iter().filter(|p| p.3.is_some()).count() >= wc.batch.max(1) {
            flush(clf, pending, emit)?;
        }
        Ok(())
    };
    let mut buf = Vec::with_capacity(source::READ_FRAMES);
    loop {
        buf.clear();
        if src.read(&mut buf)? == 0 {
            break;
        }
        on_samples(&buf);
        win.push(&buf, |w| {
            take(clf, &mut pending, w.start, w.samples, &mut emit)
        })?;
    }
    let total = win.total();
    // The tail is classified when it reaches the model's minimum input length.
    if let Some(w) = win.finish() {
        if w.samples.len() >= MIN_FRAMES * clf.cfg.mel.hop || w.start == 0 {
            let (start, samples) = (w.start, w.samples.to_vec());
            take(clf, &mut pending, start, &samples, &mut emit)?;
        }
    }
    flush(clf, &mut pending, &mut emit)?;
    Ok(total as f64 / rate as f64)
}

/// Mean of the windows' probabilities weighted by their length (silent windows left out);
/// None when every window was silent.
pub fn mean_probabilities(rows: &[WindowResult]) -> Option<Vec<f64>> {
    let mut acc: Option<Vec<f64>> = None;
    let mut weight = 0.0;
    for r in rows {
        if let Some(p) = &r.probabilities {
            let w = r.end_s - r.start_s;
            let a = acc.get_or_insert_with(|| vec![0.0; p.len()]);
            for (a, v) in a.iter_mut().zip(p) {
                *a += w * v;
            }
            weight += w;
        }
    }
    acc.map(|a| a.into_iter().map(|v| v / weight).collect())
}
