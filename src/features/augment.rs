//! Training augmentation, the CPU reference for `kernels/augment.cu`: Gaussian noise added to
//! the waveform at a random SNR, and SpecAugment frequency/time masks on the log-Mel.
//!
//! Random numbers come from Philox keyed by (seed, purpose, step) with the clip's position `c`
//! in the batch, so every device draws the same noise and masks:
//! - noise: `Stream(seed, Noise, step)`: uniform(2c) decides whether the clip gets noise
//!   (probability `noise_prob`), uniform(2c+1) picks the SNR in dB uniformly in
//!   [snr_min, snr_max]; sample i gets normal(NOISE_BASE + c * 2^28 + i).
//! - SpecAugment: `Stream(seed, SpecAugment, step)`: for mask m (frequency masks first, then
//!   time masks), width = below(16c + 2m, max_width + 1) and start = below(16c + 2m + 1,
//!   extent - width + 1). Masked cells get `fill` (the caller passes the value that means
//!   silence in its feature scale: -top_db dB for raw log-Mel).
//!
//! Layer: features (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

use crate::rng::{Purpose, Stream};
use serde::{Deserialize, Serialize};

/// Offset of the normal draws in the noise stream, clear of the per-clip uniforms.
const NOISE_BASE: u64 = 1 << 40;
/// Longest clip the noise indexing supports without overlap between clips (2^28 samples,
/// over an hour at 48 kHz).
const NOISE_CLIP_STRIDE: u64 = 1 << 28;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AugmentConfig {
    /// Probability that a clip gets Gaussian noise.
    pub noise_prob: f32,
    pub snr_min_db: f32,
    pub snr_max_db: f32,
    pub freq_masks: usize,
    /// Widest frequency mask, in Mel bins.
    pub freq_mask_max: usize,
    pub time_masks: usize,
    /// Widest time mask, as a fraction of the clip's frames.
    pub time_mask_max_frac: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            noise_prob: 0.5,
            snr_min_db: 10.0,
            snr_max_db: 30.0,
            freq_masks: 2,
            freq_mask_max: 15,
            time_masks: 2,
            time_mask_max_frac: 0.1,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            noise_prob: 0.0,
            freq_masks: 0,
            time_masks: 0,
            ..Self::default()
        }
    }
}

/// Adds noise to clip `c` of the batch in place. Returns the SNR used, or None when the clip
/// drew no noise (or is silent: an SNR against zero power is undefined, so it is left alone).
pub fn add_noise(
    samples: &mut [f32],
    cfg: &AugmentConfig,
    seed: u64,
    step: u32,
    c: usize,
) -> Option<f32> {
    assert!(
        (samples.len() as u64) < NOISE_CLIP_STRIDE,
        "clip too long for noise indexing"
    );
    let s = Stream::new(seed, Purpose::Noise, step);
    if s.uniform(2 * c as u64) >= cfg.noise_prob {
        return None;
    }
    let snr = cfg.snr_min_db + (cfg.snr_max_db - cfg.snr_min_db) * s.uniform(2 * c as u64 + 1);
    let power = samples
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        / samples.len().max(1) as f64;
    if power <= 0.0 {
        return None;
    }
    let std = (power / 10f64.powf(snr as f64 / 10.0)).sqrt() as f32;
    let base = NOISE_BASE + c as u64 * NOISE_CLIP_STRIDE;
    for (i, x) in samples.iter_mut().enumerate() {
        *x += std * s.normal(base + i as u64);
    }
    Some(snr)
}

/// One mask: [start, start + width) along an axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mask {
    pub start: usize,
    pub width: usize,
}

/// The frequency and time masks of clip `c` with `n_mels` bins and `frames` valid frames.
pub fn spec_augment_masks(
    cfg: &AugmentConfig,
    n_mels: usize,
    frames: usize,
    seed: u64,
    step: u32,
    c: usize,
) -> (Vec<Mask>, Vec<Mask>) {
    let s = Stream::new(seed, Purpose::SpecAugment, step);
    let draw = |m: usize, max_width: usize, extent: usize| {
        let max_width = max_width.min(extent);
        let k = 16 * c as u64 + 2 * m as u64;
        let width = s.below(k, max_width as u32 + 1) as usize;
        let start = s.below(k + 1, (extent - width + 1) as u32) as usize;
        Mask { start, width }
    };
    assert!(
        cfg.freq_masks + cfg.time_masks <= 8,
        "at most 8 masks per clip"
    );
    let freq = (0..cfg.freq_masks)
        .map(|m| draw(m, cfg.freq_mask_max, n_mels))
        .collect();
    let t_max = (cfg.time_mask_max_frac * frames as f32).floor() as usize;
    let time = (0..cfg.time_masks)
        .map(|m| draw(cfg.freq_masks + m, t_max, frames))
        .collect();
    (freq, time)
}

/// Applies clip `c`'s masks to its features `x` (`[n_mels][stride]` row-major, `frames` valid).
#[allow(clippy::too_many_arguments)]
pub fn spec_augment(
    x: &mut [f32],
    n_mels: usize,
    stride: usize,
    frames: usize,
    fill: f32,
    cfg: &AugmentConfig,
    seed: u64,
    step: u32,
    c: usize,
) {
    let (freq, time) = spec_augment_masks(cfg, n_mels, frames, seed, step, c);
    for m in freq {
        for row in m.start..m.start + m.width {
            x[row * stride..row * stride + frames].fill(fill);
        }
    }
    for m in time {
        for row in 0..n_mels {
            x[row * stride + m.start..row * stride + m.start + m.width].fill(fill);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_hits_the_requested_snr() {
        let cfg = AugmentConfig {
            noise_prob: 1.0,
            ..AugmentConfig::default()
        };
        let clean: Vec<f32> = (0..48_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let mut noisy = clean.clone();
        let snr = add_noise(&mut noisy, &cfg, 5, 1, 3).unwrap();
        assert!((10.0..=30.0).contains(&snr));
        let ps: f64 = clean.iter().map(|&x| (x * x) as f64).sum();
        let pn: f64 = clean
            .iter()
            .zip(&noisy)
            .map(|(&a, &b)| ((b - a) * (b - a)) as f64)
            .sum();
        let measured = 10.0 * (ps / pn).log10();
        // 48k Gaussian samples: the noise power's relative std is sqrt(2/48000) ~ 0.6%,
        // i.e. ~0.03 dB; allow 0.2 dB.
        assert!((measured - snr as f64).abs() < 0.2, "{measured} vs {snr}");
        // Same key, same noise; another clip position, other noise.
        let mut again = clean.clone();
        add_noise(&mut again, &cfg, 5, 1, 3);
        assert_eq!(again, noisy);
        let mut other = clean.clone();
        add_noise(&mut other, &cfg, 5, 1, 4);
        assert_ne!(other, noisy);
    }

    #[test]
    fn noise_probability_is_respected() {
        let cfg = AugmentConfig::default();
        let hits = (0..2000)
            .filter(|&c| add_noise(&mut [0.1f32, -0.1], &cfg, 9, 0, c).is_some())
            .count();
        // Binomial(2000, 0.5): std ~ 22; allow 5 std.
        assert!((hits as i64 - 1000).abs() < 110, "{hits}");
    }

    #[test]
    fn masks_stay_inside_and_within_width() {
        let cfg = AugmentConfig::default();
        for c in 0..200 {
            let frames = 20 + c;
            let (f, t) = spec_augment_masks(&cfg, 128, frames, 1, 2, c);
            assert_eq!((f.len(), t.len()), (2, 2));
            for m in f {
                assert!(m.width <= 15 && m.start + m.width <= 128);
            }
            for m in t {
                assert!(m.width <= frames / 10 && m.start + m.width <= frames);
            }
        }
        let mut x = vec![0.0f32; 8 * 12];
        let cfg = AugmentConfig {
            freq_mask_max: 3,
            time_mask_max_frac: 0.3,
            ..AugmentConfig::default()
        };
        spec_augment(&mut x, 8, 12, 10, -1.0, &cfg, 3, 0, 0);
        // Padding columns (10, 11) are never touched.
        for r in 0..8 {
            assert_eq!(&x[r * 12 + 10..r * 12 + 12], &[0.0, 0.0]);
        }
    }
}
