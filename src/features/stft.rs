//! Short-time power spectrum exactly as librosa 0.11 `stft(center=True, pad_mode='constant',
//! window='hann')` followed by `abs(.)**2`.
//!
//! librosa multiplies float32 frames by a float64 periodic Hann window, so the product and the
//! rfft are float64 (then stored as complex64). We do the same in f64 (a rustfft complex FFT
//! of half the size plus the real-input split step) and keep the power in f64 until the mel
//! product; the difference from librosa's complex64 rounding is ~1e-7 relative, far below the
//! 1e-3 dB the tests demand.

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
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
///
/// The real FFT of length N is done as a complex FFT of length N/2 over (even, odd) sample
/// pairs followed by the standard split step, fused here with |X|² so that it compiles to
/// vector code with the caller's target features (realfft's generic split step was ~18% of
/// the run time).
pub struct Stft {
    n_fft: usize,
    hop: usize,
    window: Vec<f64>,
    fft: Arc<dyn Fft<f64>>,
    /// e^{-2πik/N} for k in 0..N/2.
    twiddles: Vec<Complex<f64>>,
}

/// Per-thread working memory for [`Stft::frame_power`]; allocate once, reuse for every frame.
pub struct StftScratch {
    /// The windowed frame as N/2 complex values (re = even sample, im = odd sample).
    buf: Vec<Complex<f64>>,
    fft: Vec<Complex<f64>>,
    /// Power of the last frame, `n_fft / 2 + 1` bins.
    pub power: Vec<f64>,
}

impl Stft {
    /// `n_fft` must be even and ≥ 2, `hop` ≥ 1 (checked by `MelConfig::validate`).
    pub fn new(n_fft: usize, hop: usize) -> Self {
        let half = n_fft / 2;
        let fft = FftPlanner::<f64>::new().plan_fft_forward(half);
        let twiddles = (0..half)
            .map(|k| {
                let a = -2.0 * std::f64::consts::PI * k as f64 / n_fft as f64;
                Complex::new(a.cos(), a.sin())
            })
            .collect();
        Stft {
            n_fft,
            hop,
            window: hann_periodic(n_fft),
            fft,
            twiddles,
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
        let zero = Complex::new(0.0, 0.0);
        StftScratch {
            buf: vec![zero; self.n_fft / 2],
            fft: vec![zero; self.fft.get_inplace_scratch_len()],
            power: vec![0.0; self.n_bins()],
        }
    }

    /// Power spectrum of frame `t` into `scratch.power`. Frame `t` is centred on sample
    /// `t * hop`; samples outside the signal are zeros (`pad_mode='constant'`).
    /// Inlined so that callers compiled for AVX2 get vectorised windowing and power loops.
    #[inline(always)]
    pub fn frame_power(&self, samples: &[f32], t: usize, scratch: &mut StftScratch) {
        self.frame_power_upto(samples, t, scratch, self.n_bins());
    }

    /// [`Self::frame_power`] for bins `0..upto` only (the rest of `scratch.power` is stale):
    /// the mel bank ignores bins above fmax, about 2/3 of them at 44.1 kHz.
    #[inline(always)]
    pub fn frame_power_upto(
        &self,
        samples: &[f32],
        t: usize,
        scratch: &mut StftScratch,
        upto: usize,
    ) {
        let half = self.n_fft / 2;
        let centre = t * self.hop;
        // Signal range covered by this frame, and where it lands in the frame.
        let lo = centre.saturating_sub(half);
        let hi = (centre + half).min(samples.len());
        let off = lo + half - centre;
        // SAFETY: Complex<f64> is #[repr(C)] { re, im }, so N/2 of them are exactly N f64s
        // laid out as re0, im0, re1, im1, ... = frame[0], frame[1], frame[2], ...
        let frame: &mut [f64] = unsafe {
            std::slice::from_raw_parts_mut(scratch.buf.as_mut_ptr() as *mut f64, self.n_fft)
        };
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
            .process_with_scratch(&mut scratch.buf, &mut scratch.fft);
        // Split step: with Z = FFT_{N/2}(even + i·odd), E_k = (Z_k + conj Z_{M−k})/2 and
        // O_k = (Z_k − conj Z_{M−k})/(2i) are the FFTs of the even and odd samples, and
        // X_k = E_k + e^{−2πik/N} O_k (M = N/2, Z_M = Z_0).
        let z = &scratch.buf;
        let p = &mut scratch.power;
        p[0] = (z[0].re + z[0].im) * (z[0].re + z[0].im);
        p[half] = (z[0].re - z[0].im) * (z[0].re - z[0].im);
        // Zipped slices (z_k, z_{M−k}, w_k, p_k) for k = 1..M: no bounds checks, so the loop
        // vectorises.
        let end = upto.clamp(1, half);
        for (((a, b), w), pk) in z[1..end]
            .iter()
            .zip(z[1..half].iter().rev())
            .zip(&self.twiddles[1..end])
            .zip(&mut p[1..end])
        {
            let (er, ei) = ((a.re + b.re) * 0.5, (a.im - b.im) * 0.5);
            let (or, oi) = ((a.im + b.im) * 0.5, (b.re - a.re) * 0.5);
            let xr = er + w.re * or - w.im * oi;
            let xi = ei + w.re * oi + w.im * or;
            *pk = xr * xr + xi * xi;
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
            assert_eq!(want.len(), s.n_bins);
            for (k, &w) in want.iter().enumerate() {
                let got = s.data[k * s.frames + t] as f64;
                // f32 storage (6e-8 relative) plus O(N²) DFT round-off, relative to the peak.
                assert!((got - w).abs() <= 1e-6 * scale, "t {t} k {k}: {got} vs {w}");
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
