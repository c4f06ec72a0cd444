//! Decoding audio files to mono f32 samples.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// Mono audio: samples in [-1, 1] (16-bit PCM is sample/32768, as librosa) at `sample_rate` Hz.
#[derive(Clone, Debug)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

/// Reads an audio file as mono f32, resampled to `target_rate` when given (native rate when
/// `None`). Errors name the file and the reason.
pub fn load_audio(path: &Path, target_rate: Option<u32>) -> Result<Audio> {
    let mut reader =
        hound::WavReader::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        bail!(
            "{}: only 16-bit PCM WAV is supported so far",
            path.display()
        );
    }
    let ch = spec.channels as usize;
    let raw: Vec<i16> = reader
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: truncated or corrupt", path.display()))?;
    let samples = raw
        .chunks(ch)
        .map(|f| f.iter().map(|&s| s as f32 / 32768.0).sum::<f32>() / ch as f32)
        .collect();
    if target_rate.is_some_and(|r| r != spec.sample_rate) {
        bail!("{}: resampling is not written yet", path.display());
    }
    Ok(Audio {
        samples,
        sample_rate: spec.sample_rate,
    })
}
