//! Using a trained model: whole clips, recordings of any length window by window, and live
//! streams, at bounded memory.
//!
//! - [`Classifier`]: a run's model and front end; class probabilities of clips.
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

/// A trained model ready to classify audio at its own sample rate.
pub struct Classifier {
    pub cfg: RunConfig,
    backend: Box<dyn Backend>,
}

impl Classifier {
    /// Loads a run folder's config and best weights onto `device`.
    pub fn load(dir: &Path, device: crate::device::DeviceChoice) -> Result<Self> {
        let (cfg, backend) = load_run(dir, device)?;
        Ok(Self { cfg, backend })
    }

    /// The log-Mel of samples at the model's rate (thread-safe: no model state).
    pub fn features(cfg: &RunConfig, samples: &[f32]) -> Result<LogMel> {
        try_log_mel(samples, cfg.sample_rate, &cfg.mel)
    }

    /// Class probabilities of each clip (one batch; clips may differ in length: the model
    /// masks each clip's padding, so every row equals that clip classified alone).
    pub fn probabilities(&mut self, feats: &[&LogMel]) -> Result<Vec<Vec<f64>>> {
        if feats.is_empty() {
            return Ok(Vec::new());
        }
        let f: Vec<(&[f32], usize)> = feats.iter().map(|m| (&m.data[..], m.frames)).collect();
        let zeros = vec![0; feats.len()];
        let batch = Batch::from_features(
            &f,
            &zeros,
            &zeros,
            self.cfg.mel.n_mels,
            -self.cfg.mel.top_db,
        );
        let logits = self.backend.eval_logits(&batch)?;
        crate::cpu::conv::end_inference_call();
        Ok(logits.chunks(self.backend.classes()).map(softmax).collect())
    }
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
