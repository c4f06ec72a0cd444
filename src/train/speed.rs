//! Speed perturbation (`--speed 0.9,1.0,1.1`, as Kaldi's and SpeechBrain's): a training clip
//! is resampled so that it plays `factor` times faster, tempo and pitch together (sox's
//! `speed`), and its log-Mel is recomputed. A factor f turns n samples into round(n / f)
//! (band-limited resampling, `audio::resample`, from round(1000·f) to 1000: the factor is used
//! to three decimals), so 0.9 makes a clip 1/0.9 longer, before the `--max-seconds` crop.
//!
//! One factor per clip and epoch, drawn uniformly from the list with Philox
//! (`Purpose::Speed`, step = epoch, index = the clip's dataset index) on the host: every
//! device trains on the same clips. A factor of exactly 1 leaves the clip untouched (its
//! cached features are used), so `--speed 1.0` trains exactly as no `--speed`.
//!
//! Layer: train (below cli, above engine and cpu). May use `backend`, `cpu`, `features`,
//! `model`, `audio`, `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`);
//! never `cli`, and `engine` only in `devices.rs` (the one place a backend is chosen).

use crate::audio::resample::resample;
use crate::features::stft::n_frames;
use crate::rng::{Purpose, Stream};
use anyhow::Result;

/// Allowed speed factors (inclusive).
pub const FACTOR_RANGE: (f64, f64) = (0.5, 2.0);
/// Most factors in a `--speed` list.
pub const MAX_FACTORS: usize = 8;

/// The resampler's (from, to) rates for `factor`: the clip is read as if recorded at
/// round(1000·factor) Hz and written at 1000 Hz (only the ratio matters).
fn rates(factor: f64) -> (u32, u32) {
    ((factor * 1000.0).round() as u32, 1000)
}

/// The factor clip `clip` plays at in `epoch`.
pub fn draw(factors: &[f64], seed: u64, epoch: u32, clip: usize) -> f64 {
    if factors.len() == 1 {
        return factors[0];
    }
    let k = Stream::new(seed, Purpose::Speed, epoch).below(clip as u64, factors.len() as u32);
    factors[k as usize]
}

/// Samples of an `n`-sample clip played at `factor` (the resampler's rounding).
pub fn perturbed_len(n: usize, factor: f64) -> usize {
    let (from, to) = rates(factor);
    ((n as u128 * to as u128 + from as u128 / 2) / from as u128) as usize
}

/// Log-Mel frames of an `n`-sample clip at the slowest of `factors` (the longest it can be).
pub fn longest_frames(n: usize, factors: &[f64], hop: usize) -> usize {
    factors
        .iter()
        .map(|&f| n_frames(perturbed_len(n, f), hop.max(1)))
        .max()
        .unwrap_or_else(|| n_frames(n, hop.max(1)))
}

/// The clip played at `factor`: [`perturbed_len`] samples.
pub fn perturb(pcm: &[f32], factor: f64) -> Result<Vec<f32>> {
    let (from, to) = rates(factor);
    resample(pcm, from, to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{log_mel, MelConfig};

    #[test]
    fn half_speed_doubles_the_frames_and_lengths_are_predicted() {
        let mel = MelConfig {
            n_mels: 16,
            ..MelConfig::default()
        };
        let sr = 16_000;
        // 0.5 s of a 440 Hz tone
        let pcm: Vec<f32> = (0..8000)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / sr as f32).sin() * 0.3)
            .collect();
        let base = log_mel(&pcm, sr, &mel).frames;
        for f in [0.5, 0.9, 1.0, 1.1, 1.37, 2.0] {
            let out = perturb(&pcm, f).unwrap();
            assert_eq!(out.len(), perturbed_len(pcm.len(), f), "factor {f}");
            let frames = log_mel(&out, sr, &mel).frames;
            assert_eq!(frames, 1 + out.len() / mel.hop, "factor {f}");
            if f == 0.5 {
                // 16000 samples: twice the samples, so 1 + 2n/hop = 2·frames − 1 frames
                assert_eq!(out.len(), 16_000);
                assert_eq!(frames, 2 * base - 1);
            }
        }
        assert_eq!(perturb(&pcm, 1.0).unwrap(), pcm);
        assert_eq!(
            longest_frames(8000, &[1.1, 0.9, 1.0], mel.hop),
            1 + 8889 / mel.hop
        );
    }

    #[test]
    fn half_speed_halves_the_pitch() {
        // a 1000 Hz tone played at 0.5 is a 500 Hz tone: count zero crossings
        let sr = 16_000.0;
        let pcm: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / sr).sin())
            .collect();
        let out = perturb(&pcm, 0.5).unwrap();
        // the middle second of the 2-s result, away from the edges
        let mid = &out[8000..24_000];
        let crossings = mid
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        // 500 Hz over one second: 1000 crossings (±2 for where the window starts)
        assert!((998..=1002).contains(&crossings), "{crossings}");
    }

    #[test]
    fn draws_are_per_clip_and_epoch_and_cover_the_list() {
        let f = [0.9, 1.0, 1.1];
        assert_eq!(draw(&f, 4, 2, 17), draw(&f, 4, 2, 17));
        let epoch0: Vec<f64> = (0..300).map(|c| draw(&f, 4, 0, c)).collect();
        let epoch1: Vec<f64> = (0..300).map(|c| draw(&f, 4, 1, c)).collect();
        assert_ne!(epoch0, epoch1);
        for v in f {
            // each factor about 100 of 300 times (binomial sd ≈ 8)
            let n = epoch0.iter().filter(|&&x| x == v).count();
            assert!((60..=140).contains(&n), "{v}: {n}");
        }
        assert_eq!(draw(&[1.0], 4, 0, 3), 1.0);
    }
}
