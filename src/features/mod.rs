//! The CPU front end: log-Mel spectrograms that match librosa 0.11 to within 1e-3 dB.
//!
//! `log_mel` is `librosa.feature.melspectrogram(y, sr, n_fft, hop_length, window='hann',
//! center=True, pad_mode='constant', power=2.0, n_mels, fmin, fmax)` (Slaney mel scale, Slaney
//! area normalisation) followed by `librosa.power_to_db(S, ref=np.max, amin=1e-10, top_db)`.
//! It is the reference the CUDA front end is checked against and what `train`, `predict` and
//! `ser-engine features` use on the CPU.
//!
//! Speed: plans, Hann window and span-compressed filterbank per (rate, config), cached per
//! thread; scratch buffers reused across frames (no allocation per frame); power computed only
//! for the bins below fmax. Frames that lie wholly inside the signal go through the lane path
//! (`lanefft`): 8 consecutive frames at once with AVX-512 (4 with AVX2), one frame per SIMD
//! lane, so the f64 FFT is pure vertical arithmetic with shared twiddles; the windowing is
//! fused into its first stage, its stages run depth first in L1, and the split step, |X|² and
//! the mel product work on lane vectors too (the same operations per value as the
//! single-frame path). Edge frames (zero padding), ragged runs, sizes that are not powers
//! of two ≥ 16 and CPUs without AVX2+FMA use the single-frame path: a rustfft complex FFT of
//! half size plus an AVX2 split step. Frames are split into chunks that rayon spreads over the current pool, each
//! written from a per-thread tile straight into the mel-major result.
//!
//! Precision: window × signal and the FFT in f64 as librosa does (numpy multiplies float32
//! frames by a float64 window), mel sums in f64, dB in f32. The two FFT paths differ only in
//! rounding (≲ 1e-15 of a frame's energy; tested), far below f32 output precision. Measured
//! against librosa 0.11: max |diff| 1.5e-5 dB (2 f32 ulps at 80 dB) on the fixtures and on 12
//! EYASE clips.
//!
//! Submodules: `stft` (framing and power spectrum), `lanefft` (the lane FFT), `mel`
//! (filterbank), `long` (recordings of any length at bounded memory), `npy` (numpy files), `png` (spectrogram pictures), `augment` (training-time
//! augmentation).
//!
//! Layer: features (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

pub mod augment;
pub(crate) mod lanefft;
pub mod long;
pub mod mel;
pub mod npy;
pub mod png;
pub mod stft;

pub use mel::MelFilterbank;
pub use stft::{n_frames, power_spectrogram, Spectrogram, Stft, StftScratch};

use anyhow::{bail, Result};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// Front-end parameters. Defaults are the paper's (and the design's) librosa call.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MelConfig {
    /// FFT size and Hann window length (even).
    pub n_fft: usize,
    /// Hop between frames, in samples.
    pub hop: usize,
    /// Number of mel bands.
    pub n_mels: usize,
    /// Lowest band edge, Hz.
    pub fmin: f32,
    /// Highest band edge, Hz (at most half the sample rate).
    pub fmax: f32,
    /// Dynamic range kept below the loudest value, dB.
    pub top_db: f32,
}

impl Default for MelConfig {
    fn default() -> Self {
        MelConfig {
            n_fft: 2048,
            hop: 256,
            n_mels: 128,
            fmin: 80.0,
            fmax: 7600.0,
            top_db: 80.0,
        }
    }
}

impl MelConfig {
    /// Checks the parameters for audio at `sample_rate` Hz; the error says which is wrong.
    pub fn validate(&self, sample_rate: u32) -> Result<()> {
        if sample_rate == 0 {
            bail!("sample rate must be positive");
        }
        if self.n_fft < 2 || !self.n_fft.is_multiple_of(2) {
            // Odd sizes change librosa's frame count; nobody uses them for speech.
            bail!("n_fft must be even and at least 2 (got {})", self.n_fft);
        }
        if self.hop == 0 {
            bail!("hop must be positive");
        }
        if self.n_mels == 0 {
            bail!("n_mels must be positive");
        }
        if !(self.fmin.is_finite() && self.fmin >= 0.0) {
            bail!("fmin must be a non-negative number (got {})", self.fmin);
        }
        if !self.fmax.is_finite() || self.fmin >= self.fmax {
            bail!(
                "fmin must be below fmax (got fmin {} fmax {})",
                self.fmin,
                self.fmax
            );
        }
        if self.fmax as f64 > sample_rate as f64 / 2.0 {
            bail!(
                "fmax {} Hz is above the Nyquist frequency {} Hz of {} Hz audio",
                self.fmax,
                sample_rate as f64 / 2.0,
                sample_rate
            );
        }
        if !(self.top_db.is_finite() && self.top_db >= 0.0) {
            bail!("top_db must be a non-negative number (got {})", self.top_db);
        }
        Ok(())
    }
}

/// A log-Mel spectrogram in dB relative to its loudest value: `data` is `[n_mels][frames]`
/// row-major (row 0 = lowest band), values in `[-top_db, 0]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LogMel {
    pub data: Vec<f32>,
    pub n_mels: usize,
    pub frames: usize,
}

/// Everything derived from (sample rate, config): plan, window, filterbank. Immutable.
pub struct Extractor {
    cfg: MelConfig,
    stft: Stft,
    bank: MelFilterbank,
    /// Power bins the bank reads (those above fmax, past its padding, are never computed).
    bins_read: usize,
}

/// Frames per parallel work item: large enough to amortise the scratch allocation and rayon
/// overhead (~64 FFTs), small enough to balance a few-second clip over several threads.
const CHUNK_FRAMES: usize = 64;

impl Extractor {
    /// Builds the plan and filterbank; errors if `cfg` is invalid for `sample_rate`.
    pub fn new(sample_rate: u32, cfg: &MelConfig) -> Result<Self> {
        cfg.validate(sample_rate)?;
        let bank = MelFilterbank::new(
            sample_rate,
            cfg.n_fft,
            cfg.n_mels,
            cfg.fmin as f64,
            cfg.fmax as f64,
        );
        Ok(Extractor {
            cfg: cfg.clone(),
            stft: Stft::new(cfg.n_fft, cfg.hop),
            bins_read: bank.bins_read(),
            bank,
        })
    }

    /// The filterbank in use.
    pub fn filterbank(&self) -> &MelFilterbank {
        &self.bank
    }

    /// Mel power spectrogram, frame-major `[frames][n_mels]` (each frame's bands contiguous,
    /// so chunks of frames are disjoint slices that threads can fill independently).
    pub fn mel_power_frame_major(&self, samples: &[f32]) -> (Vec<f32>, usize) {
        let (out, frames, _) = self.frames_parallel(samples, false);
        (out, frames)
    }

    /// Runs [`Self::chunk`] over all frames (in parallel when the pool has several threads).
    /// Returns frame-major values, the frame count and (max raw power, max of the values).
    fn frames_parallel(&self, samples: &[f32], db: bool) -> (Vec<f32>, usize, (f32, f32)) {
        let frames = n_frames(samples.len(), self.cfg.hop);
        let n_mels = self.cfg.n_mels;
        let mut out = vec![0.0f32; frames * n_mels];
        let size = CHUNK_FRAMES * n_mels;
        let work = |(c, chunk): (usize, &mut [f32])| {
            let mut s = self.stft.scratch();
            self.chunk(samples, c * CHUNK_FRAMES, chunk, &mut s, db)
        };
        let both = |a: (f32, f32), b: (f32, f32)| (a.0.max(b.0), a.1.max(b.1));
        let init = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        let maxes = if frames > CHUNK_FRAMES && rayon::current_num_threads() > 1 {
            out.par_chunks_mut(size)
                .enumerate()
                .map(work)
                .reduce(|| init, both)
        } else {
            out.chunks_mut(size).enumerate().map(work).fold(init, both)
        };
        (out, frames, maxes)
    }

    /// Fills `out` (`[frames][n_mels]`, frames from `first`) with mel power, or with
    /// `10·log10(max(amin, power))` when `db`. Returns (max power, max of what was written).
    ///
    /// Runs the lane kernel 8 frames wide with AVX-512, 4 wide with AVX2+FMA, and every frame
    /// through the single-frame path elsewhere: the lane code built without SIMD features
    /// (`Scalar4`, the tests' bit-exact twin of the AVX2 build) measured 2x slower than
    /// rustfft's own SIMD code, which the single-frame path uses on any CPU.
    fn chunk(
        &self,
        samples: &[f32],
        first: usize,
        out: &mut [f32],
        s: &mut StftScratch,
        db: bool,
    ) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::isa::{active, Isa};
            match active() {
                // SAFETY: `active()` is at most what the CPU supports (AVX-512F + AVX2 + FMA).
                Isa::Avx512 => return unsafe { self.chunk_avx512(samples, first, out, s, db) },
                // SAFETY: likewise, AVX2 + FMA.
                Isa::Avx2 => return unsafe { self.chunk_avx2(samples, first, out, s, db) },
                Isa::Baseline => {}
            }
        }
        self.chunk_generic::<lanefft::Scalar<1>>(samples, first, out, s, db)
    }

    /// [`Self::chunk_generic`] compiled for AVX2+FMA, 4 frames per lane vector (one `ymm`).
    /// No FMA contraction happens (Rust never fuses `a * b + c`), so results equal the plain
    /// build's bit for bit; the rustfft calls pick their own AVX code at run time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chunk_avx2(
        &self,
        samples: &[f32],
        first: usize,
        out: &mut [f32],
        s: &mut StftScratch,
        db: bool,
    ) -> (f32, f32) {
        self.chunk_generic::<lanefft::Avx2>(samples, first, out, s, db)
    }

    /// [`Self::chunk_generic`] compiled for AVX-512, 8 frames per lane vector (one `zmm`).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn chunk_avx512(
        &self,
        samples: &[f32],
        first: usize,
        out: &mut [f32],
        s: &mut StftScratch,
        db: bool,
    ) -> (f32, f32) {
        self.chunk_generic::<lanefft::Avx512>(samples, first, out, s, db)
    }

    /// The per-chunk kernel: runs of `L` consecutive frames that lie wholly inside the signal
    /// go through the lane path ([`Stft::frames_power_lanes`] + [`MelFilterbank::apply_lanes`]),
    /// the rest (edge frames, the chunk's ragged end, sizes without a lane plan, and every
    /// frame when `T::L` is 1) through the single-frame path.
    #[inline(always)]
    fn chunk_generic<T: lanefft::Lane>(
        &self,
        samples: &[f32],
        first: usize,
        out: &mut [f32],
        s: &mut StftScratch,
        db: bool,
    ) -> (f32, f32) {
        let n_mels = self.cfg.n_mels;
        let nf = out.len() / n_mels;
        let (len, l_n) = (samples.len(), T::L);
        let lanes = l_n > 1 && self.stft.has_lanes();
        let mut i = 0;
        while i < nf {
            let t = first + i;
            if lanes
                && i + l_n <= nf
                && self.stft.interior(t, len)
                && self.stft.interior(t + l_n - 1, len)
            {
                self.stft
                    .frames_power_lanes::<T>(samples, t, s, self.bins_read);
                self.bank.apply_lanes::<T>(
                    s.lane_power(self.cfg.n_fft),
                    &mut out[i * n_mels..(i + l_n) * n_mels],
                );
                i += l_n;
            } else {
                self.stft.frame_power_upto(samples, t, s, self.bins_read);
                self.bank
                    .apply(&s.power, &mut out[i * n_mels..(i + 1) * n_mels]);
                i += 1;
            }
        }
        // Separate passes: the element-wise log vectorises, the max reductions do not.
        let max_raw = out.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        if db {
            for x in out.iter_mut() {
                *x = db10(x.max(AMIN));
            }
        }
        let max_out = out.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        (max_raw, max_out)
    }

    /// The log-Mel spectrogram of `samples` (see the module doc for the exact definition).
    ///
    /// Each chunk of frames is computed frame-major into a small per-thread tile, converted
    /// to dB there, and transposed straight into its columns of the `[n_mels][frames]` result;
    /// a last in-place pass subtracts the reference and applies the floor. (One output buffer,
    /// no frame-major intermediate.)
    pub fn log_mel(&self, samples: &[f32]) -> LogMel {
        let frames = n_frames(samples.len(), self.cfg.hop);
        let n_mels = self.cfg.n_mels;
        let mut data = vec![0.0f32; n_mels * frames];
        let dst = SyncPtr(data.as_mut_ptr());
        let init = || (self.stft.scratch(), vec![0.0f32; CHUNK_FRAMES * n_mels]);
        let work = |(s, tile): &mut (StftScratch, Vec<f32>), c: usize| {
            let first = c * CHUNK_FRAMES;
            let nf = CHUNK_FRAMES.min(frames - first);
            let tile = &mut tile[..nf * n_mels];
            let maxes = self.chunk(samples, first, tile, s, true);
            for m in 0..n_mels {
                // SAFETY: chunk c alone writes columns first..first + nf of each row, all
                // inside `data` (m < n_mels, first + nf ≤ frames); `data` outlives the loop.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(dst.get().add(m * frames + first), nf)
                };
                for (d, t) in row.iter_mut().zip(tile[m..].iter().step_by(n_mels)) {
                    *d = *t;
                }
            }
            maxes
        };
        let chunks = frames.div_ceil(CHUNK_FRAMES);
        let both = |a: (f32, f32), b: (f32, f32)| (a.0.max(b.0), a.1.max(b.1));
        let none = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        // Maxima are exact whatever the order, so the result does not depend on the threads.
        let (max_raw, max_db) = if chunks > 1 && rayon::current_num_threads() > 1 {
            (0..chunks)
                .into_par_iter()
                .map_init(init, work)
                .reduce(|| none, both)
        } else {
            let mut st = init();
            (0..chunks).map(|c| work(&mut st, c)).fold(none, both)
        };
        // power_to_db: subtract 10·log10(max(amin, max S)) (the same db10, so the loudest
        // value is exactly 0 dB as in librosa), then floor at (max − top_db).
        let ref_db = db10(max_raw.max(AMIN));
        let floor = (max_db - ref_db) - self.cfg.top_db;
        for x in data.iter_mut() {
            *x = (*x - ref_db).max(floor);
        }
        LogMel {
            data,
            n_mels,
            frames,
        }
    }
}

/// A raw pointer that rayon tasks may share; each task writes only its own elements.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only for disjoint writes (see `Extractor::log_mel`).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    /// A method (not field access) so closures capture the whole Sync wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// librosa's `amin`: powers below it count as it (-100 dB), so silence stays finite.
pub const AMIN: f32 = 1e-10;

/// `10·log10(x)` for positive normal `x`, as f32, computed in f64 without a libm call so the
/// loop around it vectorises: x = m·2^e with m in [√½, √2), ln m = 2·atanh(s), s = (m−1)/(m+1),
/// |s| ≤ 0.172, the series truncated after s¹⁹ (remainder < 1e-16 relative). The f32 result
/// is then librosa's float32 log10 to within 1 ulp.
#[inline(always)]
pub fn db10(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000) as f64;
    let big = m > std::f64::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += big as i32;
    let s = (m - 1.0) / (m + 1.0);
    let z = s * s;
    let poly = 1.0
        + z * (1.0 / 3.0
            + z * (1.0 / 5.0
                + z * (1.0 / 7.0
                    + z * (1.0 / 9.0
                        + z * (1.0 / 11.0
                            + z * (1.0 / 13.0
                                + z * (1.0 / 15.0 + z * (1.0 / 17.0 + z * (1.0 / 19.0)))))))));
    let ln = e as f64 * std::f64::consts::LN_2 + 2.0 * s * poly;
    (ln * (10.0 / std::f64::consts::LN_10)) as f32
}

/// librosa `power_to_db(S, ref=np.max, amin=1e-10, top_db)` in place:
/// `10·log10(max(amin, S)) − 10·log10(max(amin, max S))`, then floored at `max − top_db`.
/// All-zero input gives all 0 dB (both terms are −100 dB).
pub fn power_to_db_in_place(s: &mut [f32], top_db: f32) {
    let max = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let ref_db = db10(max.max(AMIN));
    let mut top = f32::NEG_INFINITY;
    for x in s.iter_mut() {
        *x = db10(x.max(AMIN)) - ref_db;
        top = top.max(*x);
    }
    let floor = top - top_db;
    for x in s.iter_mut() {
        *x = x.max(floor);
    }
}

thread_local! {
    /// Extractors already built on this thread, keyed by sample rate and config bits.
    static CACHE: RefCell<HashMap<CacheKey, Arc<Extractor>>> = RefCell::new(HashMap::new());
}

type CacheKey = (u32, usize, usize, usize, u32, u32, u32);

/// The cached extractor for (`sample_rate`, `cfg`), built on first use on this thread.
pub fn extractor(sample_rate: u32, cfg: &MelConfig) -> Result<Arc<Extractor>> {
    let key = (
        sample_rate,
        cfg.n_fft,
        cfg.hop,
        cfg.n_mels,
        cfg.fmin.to_bits(),
        cfg.fmax.to_bits(),
        cfg.top_db.to_bits(),
    );
    if let Some(e) = CACHE.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(e);
    }
    let e = Arc::new(Extractor::new(sample_rate, cfg)?);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        // A handful of configs is the normal case; never let the cache grow without bound.
        if c.len() >= 16 {
            c.clear();
        }
        c.insert(key, e.clone());
    });
    Ok(e)
}

/// [`log_mel`] that reports an invalid config or non-finite samples as an error.
pub fn try_log_mel(samples: &[f32], sample_rate: u32, cfg: &MelConfig) -> Result<LogMel> {
    // Branch-free per block so it vectorises; find the culprit only on failure.
    let finite = samples
        .chunks(4096)
        .all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite()));
    if !finite {
        let i = samples.iter().position(|x| !x.is_finite()).unwrap_or(0);
        bail!("sample {i} is not a finite number ({})", samples[i]);
    }
    Ok(extractor(sample_rate, cfg)?.log_mel(samples))
}

/// The log-Mel spectrogram of mono `samples` at `sample_rate` Hz: `[n_mels][1 + len/hop]` dB.
///
/// Panics if `cfg` is invalid for `sample_rate` (call [`MelConfig::validate`] first) or a
/// sample is NaN/infinite (decoded audio never is); [`try_log_mel`] returns those as errors.
pub fn log_mel(samples: &[f32], sample_rate: u32, cfg: &MelConfig) -> LogMel {
    match try_log_mel(samples, sample_rate, cfg) {
        Ok(m) => m,
        Err(e) => panic!("log_mel: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_bad_configs() {
        let ok = MelConfig::default();
        assert!(ok.validate(16000).is_ok());
        assert!(ok.validate(44100).is_ok());
        // 7600 Hz is above 6000 Hz Nyquist at 12 kHz.
        assert!(ok.validate(12000).is_err());
        for bad in [
            MelConfig {
                n_fft: 0,
                ..ok.clone()
            },
            MelConfig {
                n_fft: 1023,
                ..ok.clone()
            },
            MelConfig {
                hop: 0,
                ..ok.clone()
            },
            MelConfig {
                n_mels: 0,
                ..ok.clone()
            },
            MelConfig {
                fmin: 8000.0,
                ..ok.clone()
            },
            MelConfig {
                fmin: -1.0,
                ..ok.clone()
            },
            MelConfig {
                fmax: f32::NAN,
                ..ok.clone()
            },
            MelConfig {
                top_db: -1.0,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate(16000).is_err(), "{bad:?}");
        }
        assert!(ok.validate(0).is_err());
    }

    #[test]
    fn silence_is_all_zero_db() {
        // librosa: S = 0 everywhere -> 10log10(1e-10) - 10log10(1e-10) = 0 dB.
        let m = log_mel(&vec![0.0; 5000], 16000, &MelConfig::default());
        assert_eq!(m.frames, n_frames(5000, 256));
        assert!(m.data.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn empty_and_short_clips_work() {
        let cfg = MelConfig::default();
        let m = log_mel(&[], 16000, &cfg);
        assert_eq!((m.n_mels, m.frames), (128, 1));
        let short: Vec<f32> = (0..700).map(|i| (i as f32 * 0.1).sin()).collect();
        let m = log_mel(&short, 16000, &cfg);
        assert_eq!(m.frames, 3);
        assert!(m
            .data
            .iter()
            .all(|x| x.is_finite() && *x <= 0.0 && *x >= -80.0));
        assert_eq!(m.data.iter().cloned().fold(f32::MIN, f32::max), 0.0);
    }

    #[test]
    fn db10_matches_std_log10() {
        // Against f64 log10 of the same f32 input: ≤ 1 f32 ulp of the result (+ a tiny
        // absolute slack at values near 0 dB where an ulp is tiny).
        let mut worst = 0.0f64;
        let mut x = 1e-10f32;
        while x < 1e6 {
            // Includes both sides of the √2 switch point of the mantissa reduction.
            let r2 = std::f32::consts::SQRT_2;
            for y in [
                x,
                x * 1.0001,
                x * 1.3,
                x * (r2 - 1e-5),
                x * (r2 + 1e-5),
                x * 1.9999,
            ] {
                let want = 10.0 * (y as f64).log10();
                let got = db10(y) as f64;
                let err = (got - want).abs();
                let tol = (want.abs() as f32 * f32::EPSILON) as f64 + 1e-12;
                assert!(err <= tol, "db10({y}) = {got}, want {want}");
                worst = worst.max(err);
            }
            x *= 1.7;
        }
        assert_eq!(db10(1.0), 0.0);
        assert!((db10(1e-10) + 100.0).abs() <= 1e-5);
    }

    #[test]
    fn power_to_db_matches_formula() {
        let mut s = vec![1.0f32, 0.1, 1e-3, 0.0, 1e-12];
        power_to_db_in_place(&mut s, 80.0);
        let want = [0.0, -10.0, -30.0, -80.0, -80.0];
        for (g, w) in s.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{s:?}");
        }
        let mut s = vec![4.0f32, 0.04];
        power_to_db_in_place(&mut s, 10.0);
        assert!((s[1] + 10.0).abs() < 1e-5);
    }

    #[test]
    fn log_mel_equals_dense_reference_and_is_thread_count_independent() {
        // Dense filterbank × naive power spectrogram, then dB: an independent composition.
        let sr = 22050;
        let cfg = MelConfig::default();
        let x: Vec<f32> = (0..40000)
            .map(|i| {
                let t = i as f32 / sr as f32;
                0.4 * (2.0 * std::f32::consts::PI * (200.0 + 3000.0 * t) * t).sin()
                    + 0.01 * ((i * 7919 % 1000) as f32 / 500.0 - 1.0)
            })
            .collect();
        let spec = power_spectrogram(&x, cfg.n_fft, cfg.hop);
        let fb = MelFilterbank::new(sr, cfg.n_fft, cfg.n_mels, 80.0, 7600.0);
        let dense = fb.to_dense();
        let nb = fb.n_bins();
        let mut mel = vec![0.0f32; cfg.n_mels * spec.frames];
        for m in 0..cfg.n_mels {
            for t in 0..spec.frames {
                mel[m * spec.frames + t] = (0..nb)
                    .map(|k| dense[m * nb + k] as f64 * spec.data[k * spec.frames + t] as f64)
                    .sum::<f64>() as f32;
            }
        }
        power_to_db_in_place(&mut mel, cfg.top_db);
        let pool1 = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let pool3 = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let a = pool1.install(|| log_mel(&x, sr, &cfg));
        let b = pool3.install(|| log_mel(&x, sr, &cfg));
        assert_eq!(a, b, "result depends on the thread count");
        let err = a
            .data
            .iter()
            .zip(&mel)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        // The reference rounds the power to f32 before the product: ≤ 1e-6 relative -> ~5e-6 dB.
        assert!(err <= 1e-4, "max |diff| {err} dB");
    }

    /// dB mel values of every frame through [`Extractor::chunk`]'s kernel with lane type `T`
    /// (`Scalar<1>`: every frame through the single-frame path), chunk by chunk as `log_mel`.
    fn all_chunks<T: lanefft::Lane>(e: &Extractor, x: &[f32]) -> Vec<f32> {
        let n_mels = e.cfg.n_mels;
        let mut out = vec![0.0f32; n_frames(x.len(), e.cfg.hop) * n_mels];
        let mut s = e.stft.scratch();
        for (c, tile) in out.chunks_mut(CHUNK_FRAMES * n_mels).enumerate() {
            e.chunk_generic::<T>(x, c * CHUNK_FRAMES, tile, &mut s, true);
        }
        out
    }

    /// The same through the run-time dispatch (`chunk`: AVX-512, AVX2 or plain).
    fn all_chunks_dispatch(e: &Extractor, x: &[f32]) -> Vec<f32> {
        let n_mels = e.cfg.n_mels;
        let mut out = vec![0.0f32; n_frames(x.len(), e.cfg.hop) * n_mels];
        let mut s = e.stft.scratch();
        for (c, tile) in out.chunks_mut(CHUNK_FRAMES * n_mels).enumerate() {
            e.chunk(x, c * CHUNK_FRAMES, tile, &mut s, true);
        }
        out
    }

    fn max_abs(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        // NaN anywhere makes the result NaN, which fails every `<=` check.
        a.iter().zip(b).fold(0.0f32, |m, (x, y)| {
            let d = (x - y).abs();
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
    }

    #[test]
    fn lane_path_equals_single_frame_path() {
        use lanefft::{Scalar, Scalar4};
        // Lengths: empty, shorter than n_fft (no interior frame), frame counts that leave
        // ragged runs of 1..7 frames at chunk ends and clip edges, several chunks.
        let lens = [
            0usize,
            700,
            2047,
            2048,
            2049,
            5000,
            9 * 256 + 3,
            23_000,
            40_000,
        ];
        let cfgs = [
            MelConfig::default(),
            MelConfig {
                n_fft: 1024,
                hop: 160,
                ..MelConfig::default()
            }, // radix-2 stage
            MelConfig {
                n_fft: 512,
                hop: 100,
                n_mels: 40,
                ..MelConfig::default()
            },
            MelConfig {
                n_fft: 1000,
                hop: 128,
                ..MelConfig::default()
            }, // no lane plan
        ];
        for cfg in &cfgs {
            let e = Extractor::new(22050, cfg).unwrap();
            for &n in &lens {
                let x: Vec<f32> = (0..n)
                    .map(|i| ((i as f32 * 0.05).sin() + ((i * 7919) % 997) as f32 * 1e-4) * 0.4)
                    .collect();
                let single = all_chunks::<Scalar<1>>(&e, &x);
                // f32 dB values of powers that differ by FFT rounding (≲ 1e-15 relative):
                // at most a few f32 ulps (7.6e-6 at |x| = 100 dB) after rounding; 3e-5 dB.
                let tol = 3e-5;
                for (name, got) in [
                    ("plain 4 lanes", all_chunks::<Scalar4>(&e, &x)),
                    ("plain 8 lanes", all_chunks::<Scalar<8>>(&e, &x)),
                    ("dispatch", all_chunks_dispatch(&e, &x)),
                ] {
                    let err = max_abs(&got, &single);
                    assert!(err <= tol, "n_fft {} len {n} {name}: {err} dB", cfg.n_fft);
                    if !e.stft.has_lanes() {
                        // The fallback is the single-frame path itself.
                        assert_eq!(got, single, "n_fft {} len {n} {name}", cfg.n_fft);
                    }
                }
            }
        }
        assert!(!Extractor::new(22050, &cfgs[3]).unwrap().stft.has_lanes());
    }

    #[test]
    fn lane_path_silence_is_exactly_amin() {
        // Zero frames through the lane FFT are exactly zero power -> db10(amin) everywhere.
        let e = Extractor::new(22050, &MelConfig::default()).unwrap();
        let x = vec![0.0f32; 30_000];
        let want = db10(AMIN);
        for got in [
            all_chunks::<lanefft::Scalar4>(&e, &x),
            all_chunks_dispatch(&e, &x),
        ] {
            assert!(got.iter().all(|&v| v == want));
        }
    }

    /// The SIMD builds equal their plain twins bit for bit (same lanes, same operations).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_chunks_are_bit_identical_to_plain() {
        let e = Extractor::new(44100, &MelConfig::default()).unwrap();
        let x: Vec<f32> = (0..50_000)
            .map(|i| ((i as f32 * 0.013).sin() * 0.3) + ((i * 31) % 17) as f32 * 1e-3)
            .collect();
        let run = |f: &dyn Fn(usize, &mut [f32], &mut StftScratch)| {
            let mut out = vec![0.0f32; n_frames(x.len(), 256) * 128];
            let mut s = e.stft.scratch();
            for (c, tile) in out.chunks_mut(CHUNK_FRAMES * 128).enumerate() {
                f(c * CHUNK_FRAMES, tile, &mut s);
            }
            out
        };
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            let simd = run(&|f, t, s| {
                unsafe { e.chunk_avx2(&x, f, t, s, true) };
            });
            assert_eq!(simd, all_chunks::<lanefft::Scalar4>(&e, &x));
        } else {
            eprintln!("skipping: no AVX2/FMA");
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            let simd = run(&|f, t, s| {
                unsafe { e.chunk_avx512(&x, f, t, s, true) };
            });
            assert_eq!(simd, all_chunks::<lanefft::Scalar<8>>(&e, &x));
        } else {
            eprintln!("skipping: no AVX-512F");
        }
    }

    #[test]
    fn try_log_mel_rejects_nan_and_bad_config() {
        let cfg = MelConfig::default();
        assert!(try_log_mel(&[0.0, f32::NAN], 16000, &cfg).is_err());
        assert!(try_log_mel(&[0.0; 10], 8000, &cfg).is_err());
    }
}
