//! In-memory dataset: every clip's waveform and log-Mel (computed once, in parallel), and the
//! length-bucketed batches the model sees.

use crate::audio::corpus::{load_corpus, Corpus, CorpusOptions};
use crate::audio::load_audio;
use crate::features::{try_log_mel, MelConfig};
use crate::rng::Purpose;
use crate::train::split::shuffle;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Three 2x2 pools need at least 8 frames to leave one.
pub const MIN_FRAMES: usize = 8;

/// One clip in memory.
#[derive(Clone, Debug)]
pub struct ClipData {
    pub path: PathBuf,
    pub label: usize,
    pub speaker: Option<String>,
    /// Mono waveform at the dataset's sample rate (kept for waveform noise augmentation).
    pub pcm: Vec<f32>,
    /// Log-Mel in dB, `[n_mels][frames]` row-major.
    pub mel: Vec<f32>,
    pub frames: usize,
}

/// A corpus decoded and turned into features.
pub struct Dataset {
    pub clips: Vec<ClipData>,
    pub labels: Vec<String>,
    pub sample_rate: u32,
    pub mel: MelConfig,
    /// Longest stretch of a clip the model sees, in frames (from `--max-seconds`): a longer
    /// clip is cropped, at a random place each step in training ([`Dataset::crop_start`]).
    pub max_frames: usize,
    /// Files that could not be decoded, with the reason; they are left out.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Frames of log-Mel in `seconds` of audio (librosa's centred framing: 1 + samples / hop).
pub fn frames_in(seconds: f64, sample_rate: u32, mel: &MelConfig) -> usize {
    let samples = (seconds * sample_rate as f64).floor() as usize;
    (1 + samples / mel.hop.max(1)).max(MIN_FRAMES)
}

/// The sample rate a corpus is read at: the requested one, or the corpus's single native
/// rate; mixed native rates take the most common one (and the caller says so).
pub fn choose_sample_rate(corpus: &Corpus, requested: Option<u32>) -> Result<(u32, bool)> {
    if let Some(r) = requested {
        return Ok((r, false));
    }
    let mut counts: std::collections::BTreeMap<u32, usize> = Default::default();
    for c in &corpus.clips {
        *counts.entry(c.sample_rate).or_default() += 1;
    }
    let Some((&rate, _)) = counts.iter().max_by_key(|(r, n)| (**n, **r)) else {
        bail!("{}: no readable audio clips", corpus.root.display());
    };
    Ok((rate, counts.len() > 1))
}

impl Dataset {
    /// Decodes every clip (resampled to `sample_rate`) and computes its log-Mel, in parallel.
    /// Broken files are skipped and listed in `skipped`.
    pub fn load(
        corpus: &Corpus,
        sample_rate: u32,
        mel: &MelConfig,
        max_seconds: f64,
        progress: bool,
    ) -> Result<Dataset> {
        let bar = if progress {
            let b = ProgressBar::new(corpus.clips.len() as u64);
            b.set_style(
                ProgressStyle::with_template("features {bar:30} {pos}/{len} clips {elapsed}")
                    .unwrap(),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        let results: Vec<Result<ClipData, (PathBuf, String)>> = corpus
            .clips
            .par_iter()
            .map(|clip| {
                let label = corpus.label_index(&clip.label).expect("label listed");
                let out = load_audio(&clip.path, Some(sample_rate))
                    .and_then(|audio| {
                        let lm = try_log_mel(&audio.samples, sample_rate, mel)?;
                        Ok(ClipData {
                            path: clip.path.clone(),
                            label,
                            speaker: clip.speaker.clone(),
                            pcm: audio.samples,
                            frames: lm.frames,
                            mel: lm.data,
                        })
                    })
                    .map_err(|e| (clip.path.clone(), format!("{e:#}")));
                bar.inc(1);
                out
            })
            .collect();
        bar.finish_and_clear();
        let mut clips = Vec::new();
        let mut skipped = corpus.unreadable.clone();
        for r in results {
            match r {
                Ok(c) => clips.push(c),
                Err(e) => skipped.push(e),
            }
        }
        if clips.is_empty() {
            bail!(
                "{}: none of the {} audio files could be read",
                corpus.root.display(),
                corpus.clips.len()
            );
        }
        Ok(Dataset {
            clips,
            labels: corpus.labels.clone(),
            sample_rate,
            mel: mel.clone(),
            max_frames: frames_in(max_seconds, sample_rate, mel),
            skipped,
        })
    }

    pub fn labels_of(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter().map(|&i| self.clips[i].label).collect()
    }

    /// Each clip's length as the model sees it (cropped to `max_frames`).
    pub fn model_frames(&self) -> Vec<usize> {
        self.clips
            .iter()
            .map(|c| c.frames.min(self.max_frames))
            .collect()
    }

    /// Each clip's length as training may see it with speed factors `speed` (the slowest
    /// factor's, `train::speed`), cropped to `max_frames`: what training batches are bucketed
    /// by and the memory check sizes (the model's frames without `speed`).
    pub fn train_frames(&self, speed: Option<&[f64]>) -> Vec<usize> {
        let Some(factors) = speed else {
            return self.model_frames();
        };
        self.clips
            .iter()
            .map(|c| {
                crate::train::speed::longest_frames(c.pcm.len(), factors, self.mel.hop)
                    .min(self.max_frames)
            })
            .collect()
    }

    /// First frame of the window of clip `i` the model sees: [`crop_start`] of its frames.
    pub fn crop_start(&self, i: usize, random: Option<f32>) -> usize {
        crop_start(self.clips[i].frames, self.max_frames, random)
    }

    /// Log-Mel of clip `i` from frame `start`, at most `max_frames` long: (`[n_mels][w]`, w).
    pub fn cropped_mel(&self, i: usize, start: usize) -> (Vec<f32>, usize) {
        let c = &self.clips[i];
        crop_mel(&c.mel, c.frames, self.mel.n_mels, start, self.max_frames)
    }
}

/// First frame of the window the model sees of a clip of `frames` frames: 0 for a clip within
/// `max_frames`; for a longer one, uniform over the clip given `random` in [0, 1) (training),
/// or its middle given None (validation, evaluation).
pub fn crop_start(frames: usize, max_frames: usize, random: Option<f32>) -> usize {
    let spare = frames.saturating_sub(max_frames);
    match random {
        _ if spare == 0 => 0,
        Some(u) => ((u as f64 * (spare + 1) as f64) as usize).min(spare),
        None => spare / 2,
    }
}

/// Log-Mel `mel` (`[n_mels][frames]`) from frame `start`, at most `max_frames` long:
/// (`[n_mels][w]`, w).
pub fn crop_mel(
    mel: &[f32],
    frames: usize,
    n_mels: usize,
    start: usize,
    max_frames: usize,
) -> (Vec<f32>, usize) {
    let w = frames.saturating_sub(start).min(max_frames);
    let mut out = Vec::with_capacity(n_mels * w);
    for m in 0..n_mels {
        out.extend_from_slice(&mel[m * frames + start..][..w]);
    }
    (out, w)
}

/// Length-bucketed batches: clips sorted by length (with a seeded shuffle among equal
/// lengths when `shuffle_seed` is given), cut into batches, and the batch order shuffled.
/// Padding is then at most the length spread within a batch.
pub fn bucketed_batches(
    frames: &[usize],
    idx: &[usize],
    batch_size: usize,
    shuffle_seed: Option<(u64, u32)>,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = idx.to_vec();
    if let Some((seed, epoch)) = shuffle_seed {
        shuffle(&mut order, seed, Purpose::Shuffle, 2 * epoch);
    }
    // Stable sort keeps the shuffled order among equal lengths.
    order.sort_by_key(|&i| frames[i]);
    let mut batches: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect();
    if let Some((seed, epoch)) = shuffle_seed {
        shuffle(&mut batches, seed, Purpose::Shuffle, 2 * epoch + 1);
    }
    batches
}

/// Caps the memory a batch may use, in MiB (for a machine shared with other work, and tests).
pub const MEMORY_LIMIT_ENV: &str = "SER_ENGINE_MEMORY_LIMIT_MIB";

/// Memory this process may use for a batch, bytes: the host's available memory
/// (`MemAvailable`), capped by $SER_ENGINE_MEMORY_LIMIT_MIB; None where neither tells.
pub fn available_memory() -> Option<u64> {
    let host = (|| {
        let s = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    })();
    let cap = std::env::var(MEMORY_LIMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|mib| mib << 20);
    match (host, cap) {
        (Some(h), Some(c)) => Some(h.min(c)),
        (h, c) => h.or(c),
    }
}

/// Checks, before the first step, that the largest training batch fits in `available`
/// bytes: `batch_size` clips (at most the training set) of the longest clip's frames (at the
/// slowest `--speed` factor, at most `max_frames`), with what one step takes on the backend
/// (`step_bytes(batch, t_max)`: [`crate::backend::Backend::step_memory_bytes`]). Returns the
/// bound; the error says what to lower.
pub fn check_batch_memory(
    step_bytes: &dyn Fn(usize, usize) -> u64,
    data: &Dataset,
    train_clips: usize,
    batch_size: usize,
    speed: Option<&[f64]>,
    available: Option<u64>,
) -> Result<u64> {
    let batch = batch_size.min(train_clips).max(1);
    let t_max = data
        .train_frames(speed)
        .into_iter()
        .max()
        .unwrap_or(MIN_FRAMES);
    let need = step_bytes(batch, t_max);
    let Some(available) = available else {
        return Ok(need);
    };
    if need > available {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        bail!(
            "a training batch of {batch} clip(s) x {t_max} frames ({:.1} s) needs up to {:.1} GiB \
             for one step, more than the {:.1} GiB available; lower --batch-size or \
             --max-seconds (or --n-mels / --channels / --threads)",
            (t_max - 1) as f64 * data.mel.hop as f64 / data.sample_rate as f64,
            gib(need),
            gib(available)
        );
    }
    Ok(need)
}

/// Loads the corpus named by the options (the demo corpus when none), checks it can be
/// trained on, and decodes it into features; warns about and lists files it skips.
pub fn load_dataset(
    data: &[PathBuf],
    corpus_options: &CorpusOptions,
    sample_rate: Option<u32>,
    mel: &MelConfig,
    max_seconds: f64,
    quiet: bool,
) -> Result<(Corpus, Dataset)> {
    load_datasets(
        data,
        None,
        corpus_options,
        sample_rate,
        mel,
        max_seconds,
        quiet,
    )
}

/// [`load_dataset`] of several corpora (`--data` repeated) as one, labels mapped by
/// `label_map` or merged by name (`audio::merge`).
pub fn load_datasets(
    data: &[PathBuf],
    label_map: Option<&Path>,
    corpus_options: &CorpusOptions,
    sample_rate: Option<u32>,
    mel: &MelConfig,
    max_seconds: f64,
    quiet: bool,
) -> Result<(Corpus, Dataset)> {
    let map = label_map
        .map(crate::audio::merge::LabelMap::load)
        .transpose()?;
    let roots = if data.is_empty() {
        let dir = crate::audio::synth::ensure_demo_corpus(!quiet)?;
        if !quiet {
            eprintln!(
                "no --data given: using the demo corpus in {}",
                dir.display()
            );
        }
        vec![dir]
    } else {
        data.to_vec()
    };
    let mut corpora = Vec::with_capacity(roots.len());
    for root in &roots {
        let c = load_corpus(root, corpus_options)?;
        if roots.len() > 1 && !quiet {
            eprintln!(
                "corpus {}: {} clips, {} classes ({}), format {:?}",
                root.display(),
                c.clips.len(),
                c.labels.len(),
                c.labels.join(", "),
                c.format
            );
        }
        corpora.push(c);
    }
    let corpus = if roots.len() == 1 && map.is_none() {
        corpora.pop().context("one corpus")?
    } else {
        let (merged, warnings) = crate::audio::merge::merge_corpora(corpora, map.as_ref())?;
        for w in warnings {
            eprintln!("{w}");
        }
        merged
    };
    let root = corpus.root.clone();
    if !quiet {
        eprintln!(
            "corpus {}: {} clips, {} classes, format {:?}",
            root.display(),
            corpus.clips.len(),
            corpus.labels.len(),
            corpus.format
        );
    }
    if corpus.clips.is_empty() {
        bail!("{}: the corpus has no readable audio clips", root.display());
    }
    if corpus.labels.len() < 2 {
        bail!(
            "{}: the corpus has only one class ({}); a classifier needs at least two",
            root.display(),
            corpus.labels.join(", ")
        );
    }
    let (rate, mixed) = choose_sample_rate(&corpus, sample_rate)?;
    if mixed && !quiet {
        eprintln!(
            "warning: the corpus mixes sample rates; resampling everything to {rate} Hz \
             (choose with --sample-rate)"
        );
    }
    mel.validate(rate).with_context(|| {
        format!(
            "{}: the feature settings do not fit {rate} Hz audio (resample with --sample-rate, \
             e.g. 16000)",
            root.display()
        )
    })?;
    let data = Dataset::load(&corpus, rate, mel, max_seconds, !quiet)?;
    let longer = data
        .clips
        .iter()
        .filter(|c| c.frames > data.max_frames)
        .count();
    if longer > 0 && !quiet {
        eprintln!(
            "note: {longer} clip(s) are longer than --max-seconds {max_seconds}: training sees a \
             random {max_seconds} s of each per epoch, validation and evaluation the middle one"
        );
    }
    if !data.skipped.is_empty() {
        eprintln!(
            "warning: skipped {} unreadable file(s):",
            data.skipped.len()
        );
        for (p, why) in &data.skipped {
            eprintln!("  {}: {why}", p.display());
        }
    }
    Ok((corpus, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_everything_once_and_group_lengths() {
        let frames: Vec<usize> = (0..50).map(|i| 10 + (i * 37) % 100).collect();
        let idx: Vec<usize> = (0..50).collect();
        let batches = bucketed_batches(&frames, &idx, 8, Some((1, 0)));
        let mut all: Vec<usize> = batches.concat();
        all.sort_unstable();
        assert_eq!(all, idx);
        // Sorted buckets: the length spread inside a batch is small.
        for b in &batches {
            let lens: Vec<usize> = b.iter().map(|&i| frames[i]).collect();
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 20);
        }
        assert_ne!(batches, bucketed_batches(&frames, &idx, 8, Some((1, 1))));
    }
}
