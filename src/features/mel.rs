//! The Slaney mel filterbank, computed the way librosa 0.11 computes `librosa.filters.mel`
//! (`htk=False`, `norm='slaney'`, `dtype=float32`): frequencies and triangles in f64, each
//! weight rounded to f32, then the area normalisation multiplied in f64 and rounded to f32
//! again (numpy's `weights *= enorm` on a float32 array). Only each band's non-zero span of
//! FFT bins is kept, so applying the bank costs about two multiply-adds per bin, not `n_mels`.

/// Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above
/// (librosa `hz_to_mel(htk=False)`).
pub fn hz_to_mel(hz: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= MIN_LOG_HZ {
        min_log_mel + (hz / MIN_LOG_HZ).ln() / logstep
    } else {
        hz / F_SP
    }
}

/// Inverse of [`hz_to_mel`] (librosa `mel_to_hz(htk=False)`).
pub fn mel_to_hz(mel: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        MIN_LOG_HZ * (logstep * (mel - min_log_mel)).exp()
    } else {
        F_SP * mel
    }
}

/// numpy `linspace(start, stop, n)` with its exact arithmetic: `i * step + start`, the last
/// point set to `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// `n` band edges equally spaced on the mel scale from `fmin` to `fmax`, in Hz
/// (librosa `mel_frequencies`).
pub fn mel_frequencies(n: usize, fmin: f64, fmax: f64) -> Vec<f64> {
    linspace(hz_to_mel(fmin), hz_to_mel(fmax), n)
        .into_iter()
        .map(mel_to_hz)
        .collect()
}

/// Centre frequency of each rfft bin, `n_fft / 2 + 1` of them (numpy `rfftfreq(n_fft, 1/sr)`).
pub fn fft_frequencies(sample_rate: u32, n_fft: usize) -> Vec<f64> {
    let d = 1.0 / sample_rate as f64;
    let val = 1.0 / (n_fft as f64 * d);
    (0..=n_fft / 2).map(|k| k as f64 * val).collect()
}

/// One band: weights for bins `start .. start + weights.len()`; all other bins weigh 0.
#[derive(Clone, Debug)]
struct Band {
    start: usize,
    weights: Vec<f32>,
}

/// The mel filterbank as per-band spans of non-zero weights.
#[derive(Clone, Debug)]
pub struct MelFilterbank {
    bands: Vec<Band>,
    n_bins: usize,
}

impl MelFilterbank {
    /// Builds librosa's `filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm='slaney')`.
    /// The caller has validated the parameters (see `MelConfig::validate`).
    pub fn new(sample_rate: u32, n_fft: usize, n_mels: usize, fmin: f64, fmax: f64) -> Self {
        let fftfreqs = fft_frequencies(sample_rate, n_fft);
        let mel_f = mel_frequencies(n_mels + 2, fmin, fmax);
        let fdiff: Vec<f64> = mel_f.windows(2).map(|w| w[1] - w[0]).collect();
        let bands = (0..n_mels)
            .map(|i| {
                let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
                let w: Vec<f32> = fftfreqs
                    .iter()
                    .map(|&f| {
                        // ramps[i] = mel_f[i] - f
                        let lower = -(mel_f[i] - f) / fdiff[i];
                        let upper = (mel_f[i + 2] - f) / fdiff[i + 1];
                        let tri = lower.min(upper).max(0.0) as f32;
                        (tri as f64 * enorm) as f32
                    })
                    .collect();
                match w.iter().position(|&x| x != 0.0) {
                    Some(first) => {
                        let last = w.iter().rposition(|&x| x != 0.0).unwrap_or(first);
                        Band {
                            start: first,
                            weights: w[first..=last].to_vec(),
                        }
                    }
                    // An empty band (too many mels for n_fft): librosa warns and keeps zeros.
                    None => Band {
                        start: 0,
                        weights: Vec::new(),
                    },
                }
            })
            .collect();
        MelFilterbank {
            bands,
            n_bins: fftfreqs.len(),
        }
    }

    /// Number of mel bands.
    pub fn n_mels(&self) -> usize {
        self.bands.len()
    }

    /// Number of FFT bins the bank expects (`n_fft / 2 + 1`).
    pub fn n_bins(&self) -> usize {
        self.n_bins
    }

    /// The dense matrix, `[n_mels][n_bins]` row-major, as librosa returns it.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut m = vec![0.0f32; self.bands.len() * self.n_bins];
        for (i, b) in self.bands.iter().enumerate() {
            let row = &mut m[i * self.n_bins..(i + 1) * self.n_bins];
            row[b.start..b.start + b.weights.len()].copy_from_slice(&b.weights);
        }
        m
    }

    /// Total number of stored (non-zero span) weights: the multiply-adds per frame.
    pub fn nnz(&self) -> usize {
        self.bands.iter().map(|b| b.weights.len()).sum()
    }

    /// `out[m] = Σ_k W[m][k] · power[k]` over each band's span. `power` has `n_bins` values.
    /// Accumulates in f64 (librosa's float32 BLAS product is within ~1e-6 relative of it).
    #[inline(always)]
    pub fn apply(&self, power: &[f64], out: &mut [f32]) {
        debug_assert_eq!(power.len(), self.n_bins);
        for (b, o) in self.bands.iter().zip(out.iter_mut()) {
            let p = &power[b.start..b.start + b.weights.len()];
            *o = dot(&b.weights, p) as f32;
        }
    }
}

/// Dot product with eight independent accumulators so the compiler can vectorise it.
#[inline(always)]
fn dot(w: &[f32], p: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let wc = w.chunks_exact(8);
    let pc = p.chunks_exact(8);
    let (wr, pr) = (wc.remainder(), pc.remainder());
    for (a, b) in wc.zip(pc) {
        for j in 0..8 {
            acc[j] += a[j] as f64 * b[j];
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (a, b) in wr.iter().zip(pr) {
        s += *a as f64 * b;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_known_points_and_inverse() {
        // Slaney scale: 1000 Hz is mel 15 by construction; 200/3 Hz per mel below it;
        // 6.4x in frequency is 27 mels above it.
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(200.0 / 3.0) - 1.0).abs() < 1e-12);
        assert!((hz_to_mel(6400.0) - 42.0).abs() < 1e-12);
        for &hz in &[0.0, 80.0, 999.0, 1000.0, 1234.5, 7600.0, 22050.0] {
            let back = mel_to_hz(hz_to_mel(hz));
            assert!((back - hz).abs() <= 1e-9 * hz.max(1.0), "{hz} -> {back}");
        }
    }

    #[test]
    fn fft_frequencies_are_bin_centres() {
        let f = fft_frequencies(16000, 512);
        assert_eq!(f.len(), 257);
        assert_eq!(f[0], 0.0);
        assert!((f[1] - 31.25).abs() < 1e-12);
        assert!((f[256] - 8000.0).abs() < 1e-9);
    }

    #[test]
    fn mel_frequencies_span_fmin_to_fmax() {
        let m = mel_frequencies(130, 80.0, 7600.0);
        assert_eq!(m.len(), 130);
        assert!((m[0] - 80.0).abs() < 1e-9);
        assert!((m[129] - 7600.0).abs() < 1e-9);
        assert!(m.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn slaney_bands_have_unit_area_in_hz() {
        // Slaney normalisation makes each triangle's area (weight × Hz) equal to 1; with
        // bins 10.77 Hz apart and triangles > 100 Hz wide, the Riemann sum is within 2%.
        let sr = 22050;
        let n_fft = 2048;
        let fb = MelFilterbank::new(sr, n_fft, 128, 80.0, 7600.0);
        let dense = fb.to_dense();
        let df = sr as f64 / n_fft as f64;
        for m in 100..128 {
            let area: f64 = dense[m * 1025..(m + 1) * 1025]
                .iter()
                .map(|&w| w as f64 * df)
                .sum();
            assert!((area - 1.0).abs() < 0.02, "band {m}: area {area}");
        }
    }

    #[test]
    fn apply_matches_dense_product() {
        let fb = MelFilterbank::new(16000, 1024, 64, 0.0, 8000.0);
        let power: Vec<f64> = (0..fb.n_bins())
            .map(|k| ((k * 7919) % 101) as f64 / 10.0)
            .collect();
        let mut out = vec![0.0f32; 64];
        fb.apply(&power, &mut out);
        let dense = fb.to_dense();
        for m in 0..64 {
            let want: f64 = (0..fb.n_bins())
                .map(|k| dense[m * fb.n_bins() + k] as f64 * power[k])
                .sum();
            // f32 rounding of the result only.
            assert!(((out[m] as f64) - want).abs() <= 1e-6 * want.abs().max(1e-12));
        }
        assert!(fb.nnz() < 3 * fb.n_bins());
    }
}
