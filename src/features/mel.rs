//! The Slaney mel filterbank, computed the way librosa 0.11 computes `librosa.filters.mel`
//! (`htk=False`, `norm='slaney'`, `dtype=float32`): frequencies and triangles in f64, each
//! weight rounded to f32, then the area normalisation multiplied in f64 and rounded to f32
//! again (numpy's `weights *= enorm` on a float32 array). Only each band's non-zero span of
//! FFT bins is kept, so applying the bank costs about two multiply-adds per bin, not `n_mels`.
//!
//! Layer: features (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

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

/// One band: weights `weights[off .. off + len]` for bins `start .. start + len`; all other
/// bins weigh 0. `len` is padded with zero weights to a multiple of [`LANES`] where the bins
/// allow it, so the product runs in whole vectors (a zero weight adds exactly 0).
#[derive(Clone, Debug)]
struct Band {
    start: usize,
    off: usize,
    len: usize,
}

use crate::features::lanefft::{Lane, MAX_LANES};

/// Whether this CPU runs the AVX2 kernels (x86-64 with AVX2; never elsewhere).
pub(crate) fn simd_available() -> bool {
    crate::isa::active() >= crate::isa::Isa::Avx2
}

/// Weights per vector step of [`dot`] (four f64 in an AVX2 register).
const LANES: usize = 4;

/// The mel filterbank as per-band spans of non-zero weights, stored back to back.
#[derive(Clone, Debug)]
pub struct MelFilterbank {
    bands: Vec<Band>,
    weights: Vec<f32>,
    n_bins: usize,
    /// One past the highest bin with a non-zero weight.
    bins_used: usize,
    /// Non-zero weights (before padding).
    nnz: usize,
    /// One past the highest bin a padded span reads.
    bins_read: usize,
    /// Use the AVX2 form of [`MelFilterbank::apply`] (the CPU has it).
    simd: bool,
}

impl MelFilterbank {
    /// Builds librosa's `filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm='slaney')`.
    /// The caller has validated the parameters (see `MelConfig::validate`).
    pub fn new(sample_rate: u32, n_fft: usize, n_mels: usize, fmin: f64, fmax: f64) -> Self {
        let fftfreqs = fft_frequencies(sample_rate, n_fft);
        let n_bins = fftfreqs.len();
        let mel_f = mel_frequencies(n_mels + 2, fmin, fmax);
        let fdiff: Vec<f64> = mel_f.windows(2).map(|w| w[1] - w[0]).collect();
        let mut weights = Vec::new();
        let (mut bins_used, mut nnz) = (0, 0);
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
                let off = weights.len();
                match w.iter().position(|&x| x != 0.0) {
                    Some(first) => {
                        let last = w.iter().rposition(|&x| x != 0.0).unwrap_or(first);
                        bins_used = bins_used.max(last + 1);
                        nnz += last + 1 - first;
                        // Pad to whole vectors: extend the span upwards, or downwards where
                        // it would run past the last bin (the padding weights are zeros).
                        let len = (last + 1 - first).next_multiple_of(LANES).min(n_bins);
                        let start = first.min(n_bins - len);
                        weights.extend_from_slice(&w[start..start + len]);
                        Band { start, off, len }
                    }
                    // An empty band (too many mels for n_fft): librosa warns and keeps zeros.
                    None => Band {
                        start: 0,
                        off,
                        len: 0,
                    },
                }
            })
            .collect::<Vec<Band>>();
        let bins_read = bands.iter().map(|b| b.start + b.len).max().unwrap_or(0);
        MelFilterbank {
            bins_read,
            bands,
            weights,
            n_bins,
            bins_used,
            nnz,
            simd: simd_available(),
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
            row[b.start..b.start + b.len].copy_from_slice(&self.weights[b.off..b.off + b.len]);
        }
        m
    }

    /// One past the highest bin any band uses: the bins the power spectrum must provide
    /// (to [`Self::apply`]; see [`Self::bins_read`]).
    pub fn bins_used(&self) -> usize {
        self.bins_used
    }

    /// One past the highest bin [`Self::apply`] reads: [`Self::bins_used`] plus the zero-weight
    /// padding (at most `n_bins`). Power bins from `bins_used` up to here must be finite.
    pub fn bins_read(&self) -> usize {
        self.bins_read
    }

    /// Total number of non-zero-span weights: the useful multiply-adds per frame.
    pub fn nnz(&self) -> usize {
        self.nnz
    }

    /// `out[m] = Σ_k W[m][k] · power[k]` over each band's span. `power` has `n_bins` values,
    /// finite (also the unused ones up to [`Self::bins_read`]: 0 × NaN would be NaN).
    /// Accumulates in f64 (librosa's float32 BLAS product is within ~1e-6 relative of it).
    /// Uses AVX2 when the CPU has it; the result is bit-identical either way.
    #[inline]
    pub fn apply(&self, power: &[f64], out: &mut [f32]) {
        assert!(power.len() >= self.bins_read && out.len() >= self.bands.len());
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: `simd` is only set when the CPU has AVX2; the spans lie inside `power`
            // (asserted above) and inside `weights` (by construction).
            unsafe { self.apply_avx2(power, out) };
            return;
        }
        self.apply_generic(power, out);
    }

    /// The portable form of [`Self::apply`]: the same operations in the same order.
    pub(crate) fn apply_generic(&self, power: &[f64], out: &mut [f32]) {
        for (b, o) in self.bands.iter().zip(out.iter_mut()) {
            let w = &self.weights[b.off..b.off + b.len];
            let p = &power[b.start..b.start + b.len];
            let mut acc = [0.0f64; LANES];
            let (wc, pc) = (w.chunks_exact(LANES), p.chunks_exact(LANES));
            let (wr, pr) = (wc.remainder(), pc.remainder());
            for (a, q) in wc.zip(pc) {
                for j in 0..LANES {
                    acc[j] += a[j] as f64 * q[j];
                }
            }
            let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
            // Only spans that could not be padded (fewer than LANES bins in all) get here.
            for (a, q) in wr.iter().zip(pr) {
                s += *a as f64 * q;
            }
            *o = s as f32;
        }
    }

    /// [`Self::apply_generic`] for `T::L` frames at once, their power spectra in lane
    /// vectors (`power[k * T::L + l]` = bin k of frame l): the same operations in the same
    /// order per lane, so each frame's result is bit-identical to [`Self::apply`] of that
    /// frame. `out` is frame-major: `out[l * n_mels + m]`. Inlined so the caller's target
    /// features (which `T` needs) apply.
    #[inline(always)]
    pub(crate) fn apply_lanes<T: Lane>(&self, power: &[f64], out: &mut [f32]) {
        let (n_mels, l_n) = (self.bands.len(), T::L);
        assert!(l_n <= MAX_LANES && power.len() >= self.bins_read * l_n);
        assert!(
            out.len() >= l_n * n_mels
                && self.weights.len() >= self.bands.last().map_or(0, |b| b.off + b.len)
        );
        for (m, b) in self.bands.iter().enumerate() {
            // SAFETY: bins start..start + len < bins_read lie in `power` (asserted above) and
            // weights off..off + len in `weights` (by construction, every band ends by the
            // last band's end).
            let s = unsafe {
                let w = self.weights.as_ptr().add(b.off);
                let p = power.as_ptr().add(b.start * l_n);
                let whole = b.len / LANES * LANES;
                let mut acc = [T::splat(0.0); LANES];
                let mut i = 0;
                while i < whole {
                    for (j, a) in acc.iter_mut().enumerate() {
                        let wj = T::splat(*w.add(i + j) as f64);
                        *a = a.add(wj.mul(T::load(p.add((i + j) * l_n))));
                    }
                    i += LANES;
                }
                let mut s = acc[0].add(acc[2]).add(acc[1].add(acc[3]));
                while i < b.len {
                    s = s.add(T::splat(*w.add(i) as f64).mul(T::load(p.add(i * l_n))));
                    i += 1;
                }
                s
            };
            let mut v = [0.0f64; MAX_LANES];
            // SAFETY: v holds MAX_LANES ≥ T::L values.
            unsafe { s.store(v.as_mut_ptr()) };
            for (l, x) in v[..l_n].iter().enumerate() {
                out[l * n_mels + m] = *x as f32;
            }
        }
    }

    /// [`Self::apply_generic`] in AVX2 (no FMA, so the rounding is the same): one vector of
    /// four f64 products per step, raw pointers so the short spans carry no loop overhead.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn apply_avx2(&self, power: &[f64], out: &mut [f32]) {
        use std::arch::x86_64::*;
        for (b, o) in self.bands.iter().zip(out.iter_mut()) {
            let w = self.weights.as_ptr().add(b.off);
            let p = power.as_ptr().add(b.start);
            let whole = b.len / LANES * LANES;
            let mut acc = _mm256_setzero_pd();
            let mut i = 0;
            while i < whole {
                let wv = _mm256_cvtps_pd(_mm_loadu_ps(w.add(i)));
                acc = _mm256_add_pd(acc, _mm256_mul_pd(wv, _mm256_loadu_pd(p.add(i))));
                i += LANES;
            }
            // (a0 + a2) + (a1 + a3), as in the generic form.
            let h = _mm_add_pd(_mm256_castpd256_pd128(acc), _mm256_extractf128_pd(acc, 1));
            let mut s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
            while i < b.len {
                s += *w.add(i) as f64 * *p.add(i);
                i += 1;
            }
            *o = s as f32;
        }
    }
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
    fn simd_apply_is_bit_identical_and_padding_is_zero() {
        for (sr, n_fft, n_mels, fmax) in [
            (22050, 2048, 128, 7600.0),
            (44100, 2048, 128, 7600.0),
            (16000, 512, 40, 8000.0),
            (8000, 16, 3, 4000.0),
        ] {
            let mut fb = MelFilterbank::new(sr, n_fft, n_mels, 0.0, fmax);
            let power: Vec<f64> = (0..fb.n_bins())
                .map(|k| ((k * 7919) % 101) as f64 * 1.37e-3 + 1e-9)
                .collect();
            let mut a = vec![0.0f32; n_mels];
            fb.apply(&power, &mut a);
            fb.simd = false;
            let mut b = vec![0.0f32; n_mels];
            fb.apply(&power, &mut b);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "sr {sr} n_fft {n_fft}");
            // Padding only adds zero weights: the stored spans hold exactly nnz non-zeros,
            // and bins_read stays within the spectrum.
            let dense = fb.to_dense();
            assert_eq!(dense.iter().filter(|&&w| w != 0.0).count(), fb.nnz());
            assert!(fb.bins_used() <= fb.bins_read() && fb.bins_read() <= fb.n_bins());
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
        // Every non-zero weight lies below bins_used(); fmax 8000 Hz is the last bin here.
        let used = fb.bins_used();
        assert!(used <= fb.n_bins());
        assert!(
            (0..64).all(|m| dense[m * fb.n_bins() + used..(m + 1) * fb.n_bins()]
                .iter()
                .all(|&w| w == 0.0))
        );
        let fb = MelFilterbank::new(44100, 2048, 128, 80.0, 7600.0);
        // 7600 Hz / 21.53 Hz per bin = bin 352.9, so the top band ends at bin 352.
        assert_eq!(fb.bins_used(), 353);
    }
}
