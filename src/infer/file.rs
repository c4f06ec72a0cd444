//! One audio file classified the way `predict` does it, as one result: the whole clip (a
//! clip longer than `max_clip_s` as the duration-weighted mean of windows that long) and,
//! when asked, every window. Used by `predict` (its pieces: [`decode_clip`], [`classify_long`])
//! and `serve`'s predict endpoint.

use super::source::{at_rate, open_file, SampleSource};
use super::timeline::Timeline;
use super::{mean_probabilities, run_windows, Classifier, WindowConfig, WindowResult};
use crate::audio::{load_audio, probe_audio};
use crate::features::LogMel;
use crate::train::run::RunConfig;
use anyhow::{Context, Result};
use std::path::Path;

/// `predict`'s default silence threshold (dBFS) for windows.
pub const SILENCE_DBFS: f64 = -50.0;
/// `predict`'s default `--max-clip` (seconds).
pub const MAX_CLIP_S: f64 = 30.0;

/// The result for a whole file.
#[derive(Clone, Debug)]
pub struct FileResult {
    pub duration_s: f64,
    /// Windows the clip's probabilities are the mean of (1: the clip in one piece).
    pub windows_averaged: usize,
    /// None when every window was silent.
    pub probabilities: Option<Vec<f64>>,
    /// Per window, when a window length was asked for.
    pub windows: Vec<WindowResult>,
    /// With windows: the waveform and windows that `predict --timeline-png` draws.
    pub timeline: Option<Timeline>,
}

/// A whole file's log-Mel at the model's rate and its duration (s), or None when it is longer
/// than `max_clip_s` (then [`classify_long`] takes it window by window). Thread-safe: `predict`
/// decodes files in parallel with it.
pub fn decode_clip(cfg: &RunConfig, path: &Path, max_clip_s: f64) -> Result<Option<(f64, LogMel)>> {
    let info = probe_audio(path)?;
    if info.duration_s > max_clip_s {
        return Ok(None);
    }
    let a = load_audio(path, Some(cfg.sample_rate))?;
    let lm = Classifier::features(cfg, &a.samples).with_context(|| path.display().to_string())?;
    Ok(Some((a.samples.len() as f64 / cfg.sample_rate as f64, lm)))
}

/// A recording too long to classify in one piece (or of unknown length): windows of
/// `max_clip_s`, their probabilities averaged weighted by length. Returns (duration in s,
/// windows averaged, probabilities; None when there was no window).
pub fn classify_long(
    clf: &mut Classifier,
    src: &mut dyn SampleSource,
    max_clip_s: f64,
) -> Result<(f64, usize, Option<Vec<f64>>)> {
    let wc = WindowConfig {
        window_s: max_clip_s,
        hop_s: max_clip_s,
        silence_dbfs: None,
        batch: 1,
    };
    let mut rows = Vec::new();
    let duration_s = run_windows(
        clf,
        src,
        &wc,
        |_| {},
        |r| {
            rows.push(r);
            Ok(())
        },
    )?;
    Ok((duration_s, rows.len(), mean_probabilities(&rows)))
}

/// Classifies `path`; with `window` = (window_s, hop_s) also every window (quiet windows
/// reported silent, as `predict --window` does).
pub fn classify_file(
    clf: &mut Classifier,
    path: &Path,
    window: Option<(f64, f64)>,
    max_clip_s: f64,
) -> Result<FileResult> {
    let rate = clf.cfg.sample_rate;
    let mut windows = Vec::new();
    let mut timeline = None;
    if let Some((window_s, hop_s)) = window {
        let wc = WindowConfig {
            window_s,
            hop_s,
            silence_dbfs: Some(SILENCE_DBFS),
            batch: 16,
        };
        let mut src = at_rate(open_file(path)?, rate)?;
        let t = std::cell::RefCell::new(Timeline::new(rate));
        run_windows(
            clf,
            src.as_mut(),
            &wc,
            |s| t.borrow_mut().add_samples(s),
            |r| {
                t.borrow_mut().add_window(&r);
                windows.push(r);
                Ok(())
            },
        )?;
        timeline = Some(t.into_inner());
    }
    if let Some((duration_s, lm)) = decode_clip(&clf.cfg, path, max_clip_s)? {
        let p = clf.probabilities(&[&lm])?.remove(0);
        return Ok(FileResult {
            duration_s,
            windows_averaged: 1,
            probabilities: Some(p),
            windows,
            timeline,
        });
    }
    let mut src = at_rate(open_file(path)?, rate)?;
    let (duration_s, windows_averaged, probabilities) =
        classify_long(clf, src.as_mut(), max_clip_s)?;
    Ok(FileResult {
        duration_s,
        windows_averaged,
        probabilities,
        windows,
        timeline,
    })
}
