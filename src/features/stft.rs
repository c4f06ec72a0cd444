//! Short-time power spectrum exactly as librosa 0.11 `stft(center=True, pad_mode='constant',
//! window='hann')` followed by `abs(.)**2`.
//!
//! librosa multiplies float32 frames by a float64 periodic Hann window, so the product and the
//! rfft are float64 (then stored as complex64). We do the same in f64 with realfft's R2C plan
//! and keep the power in f64 until the mel product; the difference from librosa's complex64
//! rounding is ~1e-7 relative, far below the 1e-3 dB the tests demand.

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use std::sync::Arc;

/// Frames librosa produces with `center=True` for an even `n_fft`: `1 + n_samples / hop`.
pub fn n_frames(n_samples: usize, hop: usize) -> usize {
    1 + n_samples / hop
}

/// Periodic ("fftbins=True") Hann window of length `n`, in f64 as scipy returns it.
pub fn hann_periodic(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
        .collect()
}

/// An FFT plan, window and geometry; immutable, shared between threads.
pub struct Stft {
    n_fft: usize,
    hop: usize,
    window: Vec<f64>,
    fft: Arc<dyn RealToComplex<f64>>,
}

/// Per-thread working memory for [`Stft::frame_power`]; allocate once, reuse for every frame.
pub struct StftScratch {
    frame: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    fft: Vec<Complex<f64>>,
    /// Power of the last frame, `n_fft / 2 + 1` bins.
    pub power: Vec<f64>,
}

impl Stft {
    /// `n_fft` must be even and ≥ 2, `hop` ≥ 1 (checked by `MelConfig::validate`).
    pub fn new(n_fft: usize, hop: usize) -> Self {
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(n_fft);
        Stft {
            n_fft,
            hop,
            window: hann_periodic(n_fft),
            fft,
        }
    }

    /// FFT size.
    pub fn n_fft(&self) -> usize {
        self.n_fft
    }

    /// Hop between frames, in samples.
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// Number of frequency bins, `n_fft / 2 + 1`.
    pub fn n_bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Fresh scratch buffers sized for this plan.
    pub fn scratch(&self) -> StftScratch {
        StftScratch {
            frame: self.fft.make_input_vec(),
            spectrum: self.fft.make_output_vec(),
            fft: self.fft.make_scratch_vec(),
            power: vec![0.0; self.n_bins()],
        }
    }

    /// Power spectrum of frame `t` into `scratch.power`. Frame `t` is centred on sample
    /// `t * hop`; samples outside the signal are zeros (`pad_mode='constant'`).
    /// Inlined so that callers compiled for AVX2 get vectorised windowing and power loops.
    #[inline(always)]
    pub fn frame_power(&self, samples: &[f32], t: usize, scratch: &mut StftScratch) {
        let half = self.n_fft / 2;
        let centre = t * self.hop;
        // Signal range covered by this frame, and where it lands in the frame.
        let lo = centre.saturating_sub(half);
        let hi = (centre + half).min(samples.len());
        let off = lo + half - centre;
        let frame = &mut scratch.frame;
        if lo >= hi {
            frame.fill(0.0);
        } else {
            let n = hi - lo;
            frame[..off].fill(0.0);
            frame[off + n..].fill(0.0);
            for ((f, &x), &w) in frame[off..off + n]
                .iter_mut()
                .zip(&samples[lo..hi])
                .zip(&self.window[off..off + n])
            {
                *f = x as f64 * w;
            }
        }
        self.fft
            .process_with_scratch(frame, &mut scratch.spectrum, &mut scratch.fft)
            .expect("buffer sizes come from the plan");
        for (p, c) in scratch.power.iter_mut().zip(&scratch.spectrum) {
            *p = c.re * c.re + c.im * c.im;
        }
    }
}

/// A power spectrogram, `[n_bins][frames]` row-major (bin 0 = DC first).
#[derive(Clone, Debug, PartialEq)]
pub struct Spectrogram {
    pub data: Vec<f32>,
    pub n_bins: usize,
    pub frames: usize,
}

/// `|stft(samples)|²` with librosa's framing (`center=True`, zero padding, periodic Hann).
/// Panics if `n_fft` is odd or zero or `hop` is zero (programming errors, not input).
pub fn power_spectrogram(samples: &[f32], n_fft: usize, hop: usize) -> Spectrogram {
    assert!(
        n_fft >= 2 && n_fft.is_multiple_of(2) && hop > 0,
        "n_fft must be even, hop > 0"
    );
    let stft = Stft::new(n_fft, hop);
    let frames = n_frames(samples.len(), hop);
    let n_bins = stft.n_bins();
    let mut data = vec![0.0f32; n_bins * frames];
    let mut s = stft.scratch();
    for t in 0..frames {
        stft.frame_power(samples, t, &mut s);
        for (k, &p) in s.power.iter().enumerate() {
            data[k * frames + t] = p as f32;
        }
    }
    Spectrogram {
        data,
        n_bins,
        frames,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_is_librosa_center_true() {
        // librosa pads n_fft/2 each side: 1 + (len + n_fft - n_fft) / hop.
        assert_eq!(n_frames(0, 256), 1);
        assert_eq!(n_frames(255, 256), 1);
        assert_eq!(n_frames(256, 256), 2);
        assert_eq!(n_frames(69120, 256), 271);
    }

    #[test]
    fn hann_is_periodic() {
        let w = hann_periodic(8);
        assert_eq!(w[0], 0.0);
        assert!((w[4] - 1.0).abs() < 1e-15);
        assert!((w[2] - 0.5).abs() < 1e-15 && (w[6] - 0.5).abs() < 1e-15);
    }

    /// Direct O(N²) DFT of the windowed, zero-padded frame: an independent reference.
    fn naive_power(samples: &[f32], n_fft: usize, hop: usize, t: usize) -> Vec<f64> {
        let w = hann_periodic(n_fft);
        let frame: Vec<f64> = (0..n_fft)
            .map(|i| {
                let j = (t * hop + i) as isize - (n_fft / 2) as isize;
                let x = if j >= 0 && (j as usize) < samples.len() {
                    samples[j as usize] as f64
                } else {
                    0.0
                };
                x * w[i]
            })
            .collect();
        (0..=n_fft / 2)
            .map(|k| {
                let (mut re, mut im) = (0.0, 0.0);
                for (i, &x) in frame.iter().enumerate() {
                    let a = -2.0 * std::f64::consts::PI * (k * i) as f64 / n_fft as f64;
                    re += x * a.cos();
                    im += x * a.sin();
                }
                re * re + im * im
            })
            .collect()
    }

    #[test]
    fn power_matches_naive_dft_including_edges() {
        let samples: Vec<f32> = (0..700)
            .map(|i| ((i as f32 * 0.37).sin() + 0.3 * (i as f32 * 1.9).cos()) * 0.5)
            .collect();
        let (n_fft, hop) = (64, 24);
        let s = power_spectrogram(&samples, n_fft, hop);
        assert_eq!(s.frames, n_frames(700, hop));
        for t in [0, 1, 2, s.frames / 2, s.frames - 2, s.frames - 1] {
            let want = naive_power(&samples, n_fft, hop, t);
            let scale = want.iter().cloned().fold(0.0, f64::max);
            for k in 0..s.n_bins {
                let got = s.data[k * s.frames + t] as f64;
                // f32 storage (6e-8 relative) plus O(N²) DFT round-off, relative to the peak.
                assert!(
                    (got - want[k]).abs() <= 1e-6 * scale,
                    "t {t} k {k}: {got} vs {}",
                    want[k]
                );
            }
        }
    }

    #[test]
    fn clip_shorter_than_half_window_is_one_padded_frame() {
        let samples = [0.25f32; 10];
        let s = power_spectrogram(&samples, 64, 16);
        assert_eq!(s.frames, 1);
        let want = naive_power(&samples, 64, 16, 0);
        for k in 0..s.n_bins {
            assert!((s.data[k] as f64 - want[k]).abs() <= 1e-6 * want[0]);
        }
    }
}
