//! Short-time power spectrum exactly as librosa 0.11 `stft(center=True, pad_mode='constant',
//! window='hann')` followed by `abs(.)**2`.
//!
//! librosa multiplies float32 frames by a float64 periodic Hann window, so the product and the
//! rfft are float64 (then stored as complex64). We do the same in f64 (a rustfft complex FFT
//! of half the size plus the real-input split step) and keep the power in f64 until the mel
//! product; the difference from librosa's complex64 rounding is ~1e-7 relative, far below the
//! 1e-3 dB the tests demand.
//!
//! Two paths compute the same values: [`Stft::frame_power_upto`] one frame at a time (any
//! even size, zero-padded edge frames), and `Stft::frames_power_lanes` for runs of frames
//! wholly inside the signal, several frames per SIMD vector (see `lanefft`; sizes that are
//! powers of two ≥ 16). They differ only in the FFT's rounding.
//!
//! Layer: features (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

use crate::features::lanefft::{Lane, LanePlan, MAX_LANES};
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
    /// The same twiddles for bins 1.., split into real and imaginary parts, each group of
    /// four bins k..k+4 stored in the lane order (k, k+2, k+1, k+3) that the AVX2 split step
    /// produces when it de-interleaves complex values (see [`Stft::split_power_avx2`]).
    tw_re: Vec<f64>,
    tw_im: Vec<f64>,
    /// Run the AVX2 split step (the CPU has AVX2).
    simd: bool,
    /// The several-frames-per-vector FFT ([`Stft::frames_power_lanes`]); `None` for sizes it
    /// does not support (not a power of two, or below 16), which use [`Stft::frame_power`].
    lanes: Option<LanePlan>,
}

/// Lane l of an AVX2 group holds bin k + LANE_BIN[l] (the order `unpacklo/hi_pd` leave).
const LANE_BIN: [usize; 4] = [0, 2, 1, 3];

/// Per-thread working memory for [`Stft::frame_power`]; allocate once, reuse for every frame.
pub struct StftScratch {
    /// The windowed frame as N/2 complex values (re = even sample, im = odd sample).
    buf: Vec<Complex<f64>>,
    fft: Vec<Complex<f64>>,
    /// Power of the last frame, `n_fft / 2 + 1` bins.
    pub power: Vec<f64>,
    /// Lane buffers of [`Stft::frames_power_lanes`] (empty without a lane plan): two of
    /// N/2 lane vectors (re, im) then the lane power,
    /// `n_fft / 2 + 1` lane vectors; each part starts 64-byte aligned at `lane_off`.
    lane: Vec<f64>,
    lane_off: usize,
}

impl StftScratch {
    /// The lane buffers (re, im, power) as f64 slices of lane vectors, `MAX_LANES` f64
    /// reserved per element so any lane count fits.
    fn lanes(&mut self, m: usize) -> [&mut [f64]; 3] {
        let stride = m * MAX_LANES;
        let all = &mut self.lane[self.lane_off..];
        assert!(all.len() >= 3 * stride + MAX_LANES);
        let (re, rest) = all.split_at_mut(stride);
        let (im, p) = rest.split_at_mut(stride);
        [re, im, p]
    }

    /// After [`Stft::frames_power_lanes`] with lane type `T`: bin `k` of lane frame `l` is at
    /// `[k * T::L + l]` (`n_fft / 2 + 1` bins, only those it was asked for are current).
    pub(crate) fn lane_power(&self, n_fft: usize) -> &[f64] {
        let m = n_fft / 2;
        &self.lane[self.lane_off + 2 * m * MAX_LANES..][..(m + 1) * MAX_LANES]
    }
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
            .collect::<Vec<Complex<f64>>>();
        let groups = half.saturating_sub(1) / 4;
        let perm = |part: fn(&Complex<f64>) -> f64| -> Vec<f64> {
            (0..4 * groups)
                .map(|i| part(&twiddles[1 + i / 4 * 4 + LANE_BIN[i % 4]]))
                .collect()
        };
        Stft {
            n_fft,
            hop,
            window: hann_periodic(n_fft),
            fft,
            tw_re: perm(|c| c.re),
            tw_im: perm(|c| c.im),
            twiddles,
            simd: crate::features::mel::simd_available(),
            lanes: LanePlan::new(n_fft),
        }
    }

    /// Whether `Self::frames_power_lanes` is available for this size.
    pub fn has_lanes(&self) -> bool {
        self.lanes.is_some()
    }

    /// Whether frame `t` lies wholly inside a signal of `len` samples (no zero padding): the
    /// frames `Self::frames_power_lanes` accepts.
    pub fn interior(&self, t: usize, len: usize) -> bool {
        let half = self.n_fft / 2;
        t * self.hop >= half && t * self.hop + half <= len
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
        let m = self.n_fft / 2;
        let lane = if self.lanes.is_some() {
            // + 8 f64 so the parts can start on a 64-byte boundary.
            vec![0.0; (3 * m + 1) * MAX_LANES + 8]
        } else {
            Vec::new()
        };
        let lane_off = (lane.as_ptr() as usize).wrapping_neg() % 64 / 8;
        StftScratch {
            buf: vec![zero; m],
            fft: vec![zero; self.fft.get_inplace_scratch_len()],
            power: vec![0.0; self.n_bins()],
            lane,
            lane_off,
        }
    }

    /// Power spectra of the `T::L` frames `t0 ..`, all [`Self::interior`], for bins `0..upto`
    /// and bin N/2: afterwards `scratch.lane_power(n_fft)[k * T::L + l]` is bin `k` of frame
    /// `t0 + l`. The same window, packing and split step as [`Self::frame_power_upto`] (the
    /// same operations per value); only the FFT differs, in rounding.
    /// Panics without a lane plan ([`Self::has_lanes`]) or if a frame is not interior.
    /// Inlined so that it compiles with the caller's target features (which `T` needs).
    #[inline(always)]
    pub(crate) fn frames_power_lanes<T: Lane>(
        &self,
        samples: &[f32],
        t0: usize,
        scratch: &mut StftScratch,
        upto: usize,
    ) {
        let plan = self.lanes.as_ref().expect("lane plan for this n_fft");
        let len = samples.len();
        assert!(T::L <= MAX_LANES && self.interior(t0, len) && self.interior(t0 + T::L - 1, len));
        let (n, m, l_n) = (self.n_fft, self.n_fft / 2, T::L);
        let [re, im, p] = scratch.lanes(m);
        let mut x = [samples.as_ptr(); MAX_LANES];
        for (l, xl) in x.iter_mut().enumerate().take(l_n) {
            // Interior: the frame's n samples start at (t0 + l)·hop − n/2 ≥ 0 and end ≤ len.
            *xl = samples[(t0 + l) * self.hop - m..][..n].as_ptr();
        }
        assert!(self.window.len() == n && re.len() >= m * l_n && im.len() >= m * l_n);
        // SAFETY: each frame pointer covers n samples (sliced above), the window n values.
        unsafe { plan.fft_windowed::<T>(&x, self.window.as_ptr(), re, im) };
        self.split_power_lanes::<T>(plan.pos(), re, im, p, upto);
    }

    /// [`Self::split_power`] on lane vectors: the same operations in the same order per lane.
    #[inline(always)]
    /// Bin k of the complex FFT is lane vector `pos[k]` of (zr, zi).
    fn split_power_lanes<T: Lane>(
        &self,
        pos: &[u32],
        zr: &[f64],
        zi: &[f64],
        p: &mut [f64],
        upto: usize,
    ) {
        let (half, l_n) = (self.n_fft / 2, T::L);
        assert!(zr.len() >= half * l_n && zi.len() >= half * l_n && p.len() > half * l_n);
        assert!(pos.len() == half);
        // pos is a permutation of 0..half by construction (tested in lanefft).
        debug_assert!(pos.iter().all(|&e| (e as usize) < half));
        assert!(self.twiddles.len() >= half);
        let end = upto.clamp(1, half);
        // SAFETY: all lane vectors touched are elements < half (+ bin half of p), inside the
        // slices (asserted above).
        unsafe {
            let (zr, zi, pp) = (zr.as_ptr(), zi.as_ptr(), p.as_mut_ptr());
            // Bin 0 is always element 0 (digit reversal of 0).
            let (r, i) = (T::load(zr), T::load(zi));
            r.add(i).mul(r.add(i)).store(pp);
            r.sub(i).mul(r.sub(i)).store(pp.add(half * l_n));
            let quarter = T::splat(0.25);
            for k in 1..end {
                let (ea, eb) = (
                    *pos.get_unchecked(k) as usize * l_n,
                    *pos.get_unchecked(half - k) as usize * l_n,
                );
                let (a_r, a_i) = (T::load(zr.add(ea)), T::load(zi.add(ea)));
                let (b_r, b_i) = (T::load(zr.add(eb)), T::load(zi.add(eb)));
                let w = self.twiddles[k];
                let (wr, wi) = (T::splat(w.re), T::splat(w.im));
                let (er, ei) = (a_r.add(b_r), a_i.sub(b_i));
                let (or, oi) = (a_i.add(b_i), b_r.sub(a_r));
                let xr = er.add(wr.mul(or).sub(wi.mul(oi)));
                let xi = ei.add(wr.mul(oi).add(wi.mul(or)));
                xr.mul(xr)
                    .add(xi.mul(xi))
                    .mul(quarter)
                    .store(pp.add(k * l_n));
            }
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
        self.split_power(scratch, upto);
    }

    /// Split step: with Z = FFT_{N/2}(even + i·odd), E_k = (Z_k + conj Z_{M−k})/2 and
    /// O_k = (Z_k − conj Z_{M−k})/(2i) are the FFTs of the even and odd samples, and
    /// X_k = E_k + e^{−2πik/N} O_k (M = N/2, Z_M = Z_0); then |X_k|² for k < `upto`.
    /// We form 2E_k and 2O_k (no halvings) and scale the power by ¼: exact, so the result is
    /// the same. Bins 1.. go four at a time through AVX2 when the CPU has it, with the same
    /// operations in the same order as the scalar loop, so the result is bit-identical.
    #[inline(always)]
    fn split_power(&self, scratch: &mut StftScratch, upto: usize) {
        let half = self.n_fft / 2;
        let z = &scratch.buf;
        let p = &mut scratch.power;
        p[0] = (z[0].re + z[0].im) * (z[0].re + z[0].im);
        p[half] = (z[0].re - z[0].im) * (z[0].re - z[0].im);
        let end = upto.clamp(1, half);
        let mut k = 1;
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: AVX2 is present (`simd`); the kernel stays inside bins 1..end.
            k = unsafe { self.split_power_avx2(z, p, end) };
        }
        // Zipped slices (z_k, z_{M−k}, w_k, p_k): no bounds checks.
        for (((a, b), w), pk) in z[k..end]
            .iter()
            .zip(z[1..=half - k].iter().rev())
            .zip(&self.twiddles[k..end])
            .zip(&mut p[k..end])
        {
            let (er, ei) = (a.re + b.re, a.im - b.im);
            let (or, oi) = (a.im + b.im, b.re - a.re);
            let xr = er + (w.re * or - w.im * oi);
            let xi = ei + (w.re * oi + w.im * or);
            *pk = (xr * xr + xi * xi) * 0.25;
        }
    }

    /// [`Self::split_power`] for bins 1 .. 1 + 4g, the whole groups of four below `end`;
    /// returns the first bin it did not do.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn split_power_avx2(&self, z: &[Complex<f64>], p: &mut [f64], end: usize) -> usize {
        use std::arch::x86_64::*;
        let half = self.n_fft / 2;
        let groups = (end - 1) / 4;
        debug_assert!(4 * groups <= self.tw_re.len() && end <= half);
        let zp = z.as_ptr() as *const f64;
        let quarter = _mm256_set1_pd(0.25);
        for g in 0..groups {
            let k = 1 + 4 * g;
            // a: Z_k .. Z_{k+3}; de-interleaved lanes hold bins (k, k+2, k+1, k+3).
            let a0 = _mm256_loadu_pd(zp.add(2 * k));
            let a1 = _mm256_loadu_pd(zp.add(2 * k + 4));
            let (ar, ai) = (_mm256_unpacklo_pd(a0, a1), _mm256_unpackhi_pd(a0, a1));
            // b: Z_{M−k−3} .. Z_{M−k}; de-interleaving gives bins (k+1, k+3, k, k+2), and
            // swapping the 128-bit halves puts them in the same order as a.
            let lo = _mm256_loadu_pd(zp.add(2 * (half - k - 3)));
            let hi = _mm256_loadu_pd(zp.add(2 * (half - k - 1)));
            let br = _mm256_permute4x64_pd(_mm256_unpacklo_pd(hi, lo), 0x4e);
            let bi = _mm256_permute4x64_pd(_mm256_unpackhi_pd(hi, lo), 0x4e);
            let wr = _mm256_loadu_pd(self.tw_re.as_ptr().add(4 * g));
            let wi = _mm256_loadu_pd(self.tw_im.as_ptr().add(4 * g));
            let er = _mm256_add_pd(ar, br);
            let ei = _mm256_sub_pd(ai, bi);
            let or = _mm256_add_pd(ai, bi);
            let oi = _mm256_sub_pd(br, ar);
            let xr = _mm256_add_pd(
                er,
                _mm256_sub_pd(_mm256_mul_pd(wr, or), _mm256_mul_pd(wi, oi)),
            );
            let xi = _mm256_add_pd(
                ei,
                _mm256_add_pd(_mm256_mul_pd(wr, oi), _mm256_mul_pd(wi, or)),
            );
            let pw = _mm256_mul_pd(
                _mm256_add_pd(_mm256_mul_pd(xr, xr), _mm256_mul_pd(xi, xi)),
                quarter,
            );
            // Lanes (k, k+2, k+1, k+3) -> (k, k+1, k+2, k+3).
            _mm256_storeu_pd(p.as_mut_ptr().add(k), _mm256_permute4x64_pd(pw, 0xd8));
        }
        1 + 4 * groups
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
    use crate::features::lanefft::Lane;

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
    fn simd_split_step_is_bit_identical_to_scalar() {
        if !crate::features::mel::simd_available() {
            eprintln!("skipping: no AVX2 on this CPU, only the scalar split step runs");
            return;
        }
        let samples: Vec<f32> = (0..9000)
            .map(|i| ((i as f32 * 0.013).sin() * 0.7 + ((i * 7919) % 211) as f32 * 1e-4) * 0.5)
            .collect();
        // Several sizes (group tails of 0..3 bins) and cut-offs, including odd ones.
        for n_fft in [8usize, 18, 64, 2048] {
            let simd = Stft::new(n_fft, 160);
            let mut scalar = Stft::new(n_fft, 160);
            scalar.simd = false;
            let nb = simd.n_bins();
            for upto in [1, 2, 5, nb / 2 + 1, nb - 1, nb] {
                let (mut a, mut b) = (simd.scratch(), scalar.scratch());
                for t in [0, 3, n_frames(samples.len(), 160) - 1] {
                    simd.frame_power_upto(&samples, t, &mut a, upto);
                    scalar.frame_power_upto(&samples, t, &mut b, upto);
                    for k in 0..upto.min(nb) {
                        assert_eq!(
                            a.power[k].to_bits(),
                            b.power[k].to_bits(),
                            "n_fft {n_fft} upto {upto} t {t} bin {k}"
                        );
                    }
                }
            }
        }
    }

    /// A noisy test signal (different content in every frame).
    fn noisy(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as f32 * 0.021).sin() * 0.6 + ((i * 7919) % 1013) as f32 / 1013.0 * 0.2 - 0.1)
                    * 0.5
            })
            .collect()
    }

    /// `frames_power_lanes::<T>` against the single-frame path (rustfft) for every lane frame
    /// of every interior run in a clip, bins 0..upto and N/2; returns the bits of the lane
    /// results so SIMD and plain builds can be compared.
    fn lanes_vs_single<T: Lane>(n_fft: usize, hop: usize, upto: usize) -> Vec<u64> {
        let stft = Stft::new(n_fft, hop);
        assert!(stft.has_lanes());
        let x = noisy(n_fft + 13 * hop + 5);
        let (mut a, mut b) = (stft.scratch(), stft.scratch());
        let (half, nb) = (n_fft / 2, stft.n_bins());
        let mut bits = Vec::new();
        let first = (0..).find(|&t| stft.interior(t, x.len())).unwrap();
        let mut t0 = first;
        while stft.interior(t0 + T::L - 1, x.len()) {
            stft.frames_power_lanes::<T>(&x, t0, &mut a, upto);
            let lp = a.lane_power(n_fft);
            for l in 0..T::L {
                stft.frame_power(&x, t0 + l, &mut b);
                let energy: f64 = b.power.iter().sum();
                for k in (0..upto.min(half)).chain([half]) {
                    let (got, want) = (lp[k * T::L + l], b.power[k]);
                    // Both FFTs are f64 with ~1e-16 relative rounding per operation; the
                    // power error is ≲ 1e-15 of the frame's energy Σ|X_k|². 1e-12 is loose
                    // yet catches any wrong sample, lane, twiddle or bin (≥ 1e-3).
                    assert!(
                        (got - want).abs() <= 1e-12 * energy,
                        "n_fft {n_fft} t {} bin {k}: {got} vs {want} (energy {energy})",
                        t0 + l
                    );
                    bits.push(got.to_bits());
                }
                assert_eq!(nb, b.power.len());
            }
            t0 += 3; // overlapping runs: every frame is lane 0 of one run and lane >0 of others
        }
        assert!(t0 > first, "clip too short for one run");
        bits
    }

    #[test]
    fn lane_power_matches_single_frame_path() {
        use crate::features::lanefft::{Scalar, Scalar4};
        for (n_fft, hop) in [
            (16usize, 5usize),
            (32, 7),
            (512, 100),
            (1024, 160),
            (2048, 256),
        ] {
            let nb = n_fft / 2 + 1;
            for upto in [1, nb / 3, nb - 1, nb] {
                lanes_vs_single::<Scalar4>(n_fft, hop, upto);
            }
            lanes_vs_single::<Scalar<1>>(n_fft, hop, nb);
            lanes_vs_single::<Scalar<8>>(n_fft, hop, nb);
        }
    }

    /// The SIMD lane types give exactly the plain builds' bits (same operations per lane).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_lane_power_is_bit_identical_to_plain() {
        use crate::features::lanefft::{Avx2, Avx512, Scalar};
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(n_fft: usize, hop: usize, upto: usize) -> Vec<u64> {
            lanes_vs_single::<Avx2>(n_fft, hop, upto)
        }
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512(n_fft: usize, hop: usize, upto: usize) -> Vec<u64> {
            lanes_vs_single::<Avx512>(n_fft, hop, upto)
        }
        let has = |f: &str| match f {
            "avx2" => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            _ => std::arch::is_x86_feature_detected!("avx512f"),
        };
        for (n_fft, hop) in [(16usize, 5usize), (1024, 160), (2048, 256), (4096, 512)] {
            let upto = n_fft / 4 + 3;
            if has("avx2") {
                let plain = lanes_vs_single::<Scalar<4>>(n_fft, hop, upto);
                assert_eq!(
                    unsafe { avx2(n_fft, hop, upto) },
                    plain,
                    "AVX2 n_fft {n_fft}"
                );
            } else {
                eprintln!("skipping: no AVX2/FMA");
            }
            if has("avx512") {
                let plain = lanes_vs_single::<Scalar<8>>(n_fft, hop, upto);
                assert_eq!(
                    unsafe { avx512(n_fft, hop, upto) },
                    plain,
                    "AVX-512 n_fft {n_fft}"
                );
            } else {
                eprintln!("skipping: no AVX-512F");
            }
        }
    }

    #[test]
    fn lane_power_matches_naive_dft() {
        // Independent of rustfft: the windowing fused into the first stage included.
        let (n_fft, hop) = (64, 24);
        let x = noisy(700);
        let stft = Stft::new(n_fft, hop);
        let mut a = stft.scratch();
        let t0 = 2; // frames 2..6 are interior: 2·24 ≥ 32 and 5·24 + 32 ≤ 700
        stft.frames_power_lanes::<crate::features::lanefft::Scalar4>(&x, t0, &mut a, stft.n_bins());
        let lp = a.lane_power(n_fft);
        for l in 0..4 {
            let want = naive_power(&x, n_fft, hop, t0 + l);
            let energy: f64 = want.iter().sum();
            for (k, &w) in want.iter().enumerate() {
                // The O(N²) reference evaluates cos/sin at angles up to 2π·k·i/N ≈ 6e3 rad
                // (absolute error ~1e-12): 1e-10 of the energy covers it.
                assert!(
                    (lp[k * 4 + l] - w).abs() <= 1e-10 * energy,
                    "t {} k {k}",
                    t0 + l
                );
            }
        }
    }

    #[test]
    fn lane_plan_only_for_powers_of_two_from_16() {
        for (n, want) in [
            (2048, true),
            (16, true),
            (4096, true),
            (8, false),
            (18, false),
            (1000, false),
            (2046, false),
        ] {
            assert_eq!(Stft::new(n, 100).has_lanes(), want, "n_fft {n}");
        }
        // Interior frames: the whole window inside the signal.
        let s = Stft::new(64, 24);
        assert!(!s.interior(1, 700) && s.interior(2, 700));
        assert!(s.interior(27, 700) && !s.interior(28, 700)); // 27·24 + 32 = 680, 28·24 + 32 = 704
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
