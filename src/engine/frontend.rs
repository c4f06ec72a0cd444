//! The device front end: batched log-Mel spectrograms (and training augmentation) on a
//! [`Device`], the same numbers as the CPU reference [`crate::features`] (within 1e-3 dB) and
//! [`crate::features::augment`] (identical Philox draws).
//!
//! Pipeline for a batch of B clips padded to `max_samples` (`pcm` is `[B][max_samples]`
//! row-major, clip b valid for `lengths[b]` samples), `T_max = max_b (1 + lengths[b] / hop)`:
//! 1. optional noise (`kernels/augment.cu`): `noise_std` (one block per clip: f64 signal power
//!    and the SNR draw) then `add_noise` into a copy;
//! 2. `stft_mel_power` (`kernels/stft.cu`): one block per frame, centre zero padding, Hann,
//!    real FFT in shared memory, |X|², Slaney Mel spans, written frame-major
//!    `[B][T_max][n_mels]`, plus each clip's max Mel power over its valid frames (atomic max);
//! 3. `mel_db` (`kernels/mel.cu`): dB against the clip's own max (amin 1e-10, top_db floor),
//!    optional SpecAugment masks, transposed to the model's layout `[B][n_mels][T_max]`;
//!    cells past a clip's frames are 0.
//!
//! So at most four launches per batch (two without noise); the power spectrum never leaves
//! shared memory. The unfused stages (`stft_power` + `mel_power`) are also exposed for tests
//! and for callers that want the linear spectrum.
//!
//! Layer: engine (beside train, below cli). May use `device`, `cpu` (the reference it is
//! checked against), `features`, `model` and the shared modules (`rng`, `isa`, `cache`,
//! `atomic_file`); never `train` or `cli`.

use anyhow::{bail, ensure, Context, Result};

use crate::device::{blocks_for, Device, DeviceBuffer};
use crate::features::augment::AugmentConfig;
use crate::features::stft::{hann_periodic, n_frames};
use crate::features::{MelConfig, MelFilterbank};

/// Augmentation request: (config, seed, step, each clip's position in the Philox streams).
pub type Augment<'a> = (&'a AugmentConfig, u64, u32, &'a [usize]);

/// Largest FFT the shared-memory kernel takes (4·(M + M/32 + 1) floats must fit in the 48 KiB
/// of shared memory every GPU gives without an opt-in).
pub const MAX_N_FFT: usize = 4096;

/// Longest clip the noise indexing supports (features::augment's 2^28 stride).
const NOISE_CLIP_STRIDE: usize = 1 << 28;

/// Cost of one kernel launch, for the benchmark: floating-point operations (or equivalent
/// integer work for Philox) and the bytes a perfect cache would move to or from DRAM.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCost {
    pub name: &'static str,
    pub flops: f64,
    pub bytes: f64,
}

/// Window, twiddles and filterbank for one (sample rate, [`MelConfig`]), uploaded once.
pub struct DeviceFrontEnd {
    sample_rate: u32,
    cfg: MelConfig,
    /// Periodic Hann, `n_fft` values (f64 rounded to f32).
    window: DeviceBuffer<f32>,
    /// `[2][n_fft]`: cos and sin of −2πk/n_fft, k < n_fft (computed in f64).
    twiddles: DeviceBuffer<f32>,
    /// `[n_mels][3]`: (first bin, bins, offset into `weights`) of each band's non-zero span.
    spans: DeviceBuffer<i32>,
    weights: DeviceBuffer<f32>,
    nnz: usize,
}

fn to_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).with_context(|| format!("{what} = {v} exceeds the kernels' i32 range"))
}

impl DeviceFrontEnd {
    /// Uploads the tables. Errors if `cfg` is invalid for `sample_rate` or `n_fft` is not a
    /// power of two in 2..=[`MAX_N_FFT`].
    pub fn new(dev: &Device, sample_rate: u32, cfg: &MelConfig) -> Result<Self> {
        cfg.validate(sample_rate)?;
        ensure!(
            cfg.n_fft.is_power_of_two() && cfg.n_fft <= MAX_N_FFT,
            "device front end: n_fft must be a power of two up to {MAX_N_FFT} (got {})",
            cfg.n_fft
        );
        to_i32(cfg.hop, "hop")?;
        let n = cfg.n_fft;
        let window: Vec<f32> = hann_periodic(n).iter().map(|&w| w as f32).collect();
        let mut tw = vec![0.0f32; 2 * n];
        for k in 0..n {
            let a = -2.0 * std::f64::consts::PI * k as f64 / n as f64;
            tw[k] = a.cos() as f32;
            tw[n + k] = a.sin() as f32;
        }
        // The spans are recovered from the dense matrix: first to last non-zero weight of each
        // band, exactly the spans MelFilterbank keeps.
        let bank = MelFilterbank::new(sample_rate, n, cfg.n_mels, cfg.fmin as f64, cfg.fmax as f64);
        let n_bins = bank.n_bins();
        let dense = bank.to_dense();
        let mut spans = Vec::with_capacity(3 * cfg.n_mels);
        let mut weights = Vec::new();
        for row in dense.chunks_exact(n_bins) {
            match row.iter().position(|&w| w != 0.0) {
                Some(first) => {
                    let last = row.iter().rposition(|&w| w != 0.0).unwrap_or(first);
                    spans.extend([
                        to_i32(first, "span start")?,
                        to_i32(last + 1 - first, "span length")?,
                        to_i32(weights.len(), "span offset")?,
                    ]);
                    weights.extend_from_slice(&row[first..=last]);
                }
                None => spans.extend([0, 0, to_i32(weights.len(), "span offset")?]),
            }
        }
        let nnz = weights.len();
        if weights.is_empty() {
            weights.push(0.0); // a zero-length buffer cannot be uploaded everywhere
        }
        Ok(DeviceFrontEnd {
            sample_rate,
            cfg: cfg.clone(),
            window: dev.htod(&window)?,
            twiddles: dev.htod(&tw)?,
            spans: dev.htod(&spans)?,
            weights: dev.htod(&weights)?,
            nnz,
        })
    }

    pub fn config(&self) -> &MelConfig {
        &self.cfg
    }
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }
    /// FFT bins, `n_fft / 2 + 1`.
    pub fn n_bins(&self) -> usize {
        self.cfg.n_fft / 2 + 1
    }

    /// Threads per block of the STFT kernels: a quarter of the complex FFT size (one radix-4
    /// butterfly each), between 64 and 256.
    fn stft_block(&self) -> u32 {
        ((self.cfg.n_fft / 8).clamp(64, 256)) as u32
    }
    /// Dynamic shared memory of the STFT kernels: two (re, im) ping-pong pairs of M + M/32 + 1
    /// floats (one padding float per 32 against bank conflicts).
    fn stft_shared_bytes(&self) -> u32 {
        let m = self.cfg.n_fft / 2;
        (4 * (m + m / 32 + 1) * 4) as u32
    }

    /// Checks a batch and returns (B, T_max, per-clip frames).
    fn geometry(
        &self,
        pcm: &DeviceBuffer<f32>,
        max_samples: usize,
        lengths: &[usize],
    ) -> Result<(usize, usize, Vec<usize>)> {
        let b = lengths.len();
        ensure!(
            pcm.len() == b * max_samples,
            "front end: pcm holds {} samples, expected {} clips x {} samples",
            pcm.len(),
            b,
            max_samples
        );
        ensure!(b <= 65_535, "front end: batch of {b} clips exceeds 65535");
        to_i32(max_samples, "max_samples")?;
        to_i32(b * max_samples, "batch samples")?;
        if let Some((i, &l)) = lengths.iter().enumerate().find(|(_, &l)| l > max_samples) {
            bail!("front end: clip {i} has {l} samples, more than max_samples {max_samples}");
        }
        let frames: Vec<usize> = lengths.iter().map(|&l| n_frames(l, self.cfg.hop)).collect();
        let t_max = frames.iter().copied().max().unwrap_or(0);
        let n = b * t_max * self.n_bins().max(self.cfg.n_mels);
        to_i32(n, "batch output elements")?;
        Ok((b, t_max, frames))
    }

    fn lengths_i32(lengths: &[usize]) -> Result<Vec<i32>> {
        lengths.iter().map(|&l| to_i32(l, "clip length")).collect()
    }

    /// `[B][T_max][n_bins]` power spectra (frames past a clip's end are zeros) and the frame
    /// counts; `stft_power` alone (the pipeline uses the fused `stft_mel_power`).
    pub fn stft_power(
        &self,
        dev: &Device,
        pcm: &DeviceBuffer<f32>,
        max_samples: usize,
        lengths: &[usize],
    ) -> Result<(DeviceBuffer<f32>, Vec<usize>)> {
        let (b, t_max, frames) = self.geometry(pcm, max_samples, lengths)?;
        let power = dev.alloc_uninit::<f32>(b * t_max * self.n_bins())?;
        if b == 0 {
            return Ok((power, frames));
        }
        let lens = dev.htod(&Self::lengths_i32(lengths)?)?;
        dev.launch(
            "stft_power",
            (t_max as u32, b as u32),
            self.stft_block(),
            self.stft_shared_bytes(),
            &[
                (&power).into(),
                pcm.into(),
                (&lens).into(),
                (&self.window).into(),
                (&self.twiddles).into(),
                (b as i32).into(),
                (max_samples as i32).into(),
                (t_max as i32).into(),
                (self.cfg.n_fft as i32).into(),
                (self.cfg.hop as i32).into(),
            ],
        )?;
        Ok((power, frames))
    }

    /// Mel power `[B][T_max][n_mels]` from `[B][T_max][n_bins]` power, and each clip's max
    /// over its `frames[b]` valid frames (`[B]`).
    pub fn mel_power(
        &self,
        dev: &Device,
        power: &DeviceBuffer<f32>,
        frames: &[usize],
        t_max: usize,
    ) -> Result<(DeviceBuffer<f32>, DeviceBuffer<f32>)> {
        let b = frames.len();
        let (n_bins, n_mels) = (self.n_bins(), self.cfg.n_mels);
        ensure!(
            power.len() == b * t_max * n_bins && frames.iter().all(|&f| f <= t_max),
            "mel_power: power has {} values, expected {b} x {t_max} x {n_bins}",
            power.len()
        );
        let mel = dev.alloc_uninit::<f32>(b * t_max * n_mels)?;
        // zeros: the kernel's atomic max starts from them (powers are >= 0)
        let clip_max = dev.alloc_zeros::<f32>(b.max(1))?;
        if b == 0 || t_max == 0 {
            return Ok((mel, clip_max));
        }
        let fr = dev.htod(&Self::lengths_i32(frames)?)?;
        dev.launch(
            "mel_power",
            (t_max as u32, b as u32),
            128u32,
            0,
            &[
                (&mel).into(),
                (&clip_max).into(),
                power.into(),
                (&fr).into(),
                (&self.spans).into(),
                (&self.weights).into(),
                (b as i32).into(),
                (t_max as i32).into(),
                (n_bins as i32).into(),
                (n_mels as i32).into(),
                (self.weights.len() as i32).into(),
            ],
        )?;
        Ok((mel, clip_max))
    }

    /// The fused STFT + Mel stage: (`[B][T_max][n_mels]` Mel power, `[B]` clip maxima,
    /// frames per clip).
    pub fn stft_mel_power(
        &self,
        dev: &Device,
        pcm: &DeviceBuffer<f32>,
        max_samples: usize,
        lengths: &[usize],
    ) -> Result<(DeviceBuffer<f32>, DeviceBuffer<f32>, Vec<usize>)> {
        let (b, t_max, frames) = self.geometry(pcm, max_samples, lengths)?;
        let n_mels = self.cfg.n_mels;
        let mel = dev.alloc_uninit::<f32>(b * t_max * n_mels)?;
        // zeros: the kernel's atomic max starts from them (powers are >= 0)
        let clip_max = dev.alloc_zeros::<f32>(b.max(1))?;
        if b == 0 {
            return Ok((mel, clip_max, frames));
        }
        let lens = dev.htod(&Self::lengths_i32(lengths)?)?;
        dev.launch(
            "stft_mel_power",
            (t_max as u32, b as u32),
            self.stft_block(),
            self.stft_shared_bytes(),
            &[
                (&mel).into(),
                (&clip_max).into(),
                pcm.into(),
                (&lens).into(),
                (&self.window).into(),
                (&self.twiddles).into(),
                (&self.spans).into(),
                (&self.weights).into(),
                (b as i32).into(),
                (max_samples as i32).into(),
                (t_max as i32).into(),
                (self.cfg.n_fft as i32).into(),
                (self.cfg.hop as i32).into(),
                (n_mels as i32).into(),
                (self.weights.len() as i32).into(),
            ],
        )?;
        Ok((mel, clip_max, frames))
    }

    /// dB (per-clip max as ref, amin 1e-10, top_db floor) of frame-major Mel power, with
    /// optional SpecAugment masks (fill −top_db, as `features::augment` documents for raw
    /// log-Mel), into the model layout `[B][n_mels][T_max]`; cells past a clip's frames are 0.
    pub fn mel_db(
        &self,
        dev: &Device,
        mel: &DeviceBuffer<f32>,
        clip_max: &DeviceBuffer<f32>,
        frames: &[usize],
        t_max: usize,
        masks: Option<Augment<'_>>,
    ) -> Result<DeviceBuffer<f32>> {
        let b = frames.len();
        let n_mels = self.cfg.n_mels;
        ensure!(
            mel.len() == b * t_max * n_mels && clip_max.len() >= b,
            "mel_db: mel has {} values, expected {b} x {t_max} x {n_mels}",
            mel.len()
        );
        let out = dev.alloc_uninit::<f32>(b * t_max * n_mels)?;
        if b == 0 || t_max == 0 {
            return Ok(out);
        }
        let fr = dev.htod(&Self::lengths_i32(frames)?)?;
        let (ids, seed, step, nf, fmax, nt, tfrac) = match masks {
            Some((cfg, seed, step, ids)) => {
                ensure!(
                    ids.len() == b,
                    "mel_db: {} clip ids for {b} clips",
                    ids.len()
                );
                ensure!(
                    cfg.freq_masks + cfg.time_masks <= 8,
                    "SpecAugment: at most 8 masks per clip (got {} + {})",
                    cfg.freq_masks,
                    cfg.time_masks
                );
                (
                    ids.iter()
                        .map(|&c| to_i32(c, "clip id"))
                        .collect::<Result<Vec<_>>>()?,
                    seed,
                    step,
                    cfg.freq_masks,
                    to_i32(cfg.freq_mask_max, "freq_mask_max")?,
                    cfg.time_masks,
                    cfg.time_mask_max_frac,
                )
            }
            None => (vec![0; b], 0, 0, 0, 0, 0, 0.0),
        };
        let ids = dev.htod(&ids)?;
        dev.launch(
            "mel_db",
            (blocks_for(t_max, 32), blocks_for(n_mels, 32), b as u32),
            (32u32, 8u32),
            0,
            &[
                (&out).into(),
                mel.into(),
                clip_max.into(),
                (&fr).into(),
                (&ids).into(),
                (b as i32).into(),
                (t_max as i32).into(),
                (n_mels as i32).into(),
                self.cfg.top_db.into(),
                seed.into(),
                step.into(),
                (nf as i32).into(),
                fmax.into(),
                (nt as i32).into(),
                tfrac.into(),
                (-self.cfg.top_db).into(),
            ],
        )?;
        Ok(out)
    }

    /// A noisy copy of the batch (`features::augment::add_noise` per clip, clip b at Philox
    /// position `clip_ids[b]`) and each clip's noise std (0: none).
    #[allow(clippy::too_many_arguments)]
    pub fn add_noise(
        &self,
        dev: &Device,
        pcm: &DeviceBuffer<f32>,
        max_samples: usize,
        lengths: &[usize],
        cfg: &AugmentConfig,
        seed: u64,
        step: u32,
        clip_ids: &[usize],
    ) -> Result<(DeviceBuffer<f32>, DeviceBuffer<f32>)> {
        let (b, _, _) = self.geometry(pcm, max_samples, lengths)?;
        ensure!(
            clip_ids.len() == b,
            "add_noise: {} clip ids for {b} clips",
            clip_ids.len()
        );
        ensure!(
            max_samples < NOISE_CLIP_STRIDE,
            "add_noise: clips of {max_samples} samples exceed the noise indexing (2^28)"
        );
        let out = dev.alloc_uninit::<f32>(pcm.len())?;
        // zeros: with no clips the one-element placeholder is returned unwritten
        let std = dev.alloc_zeros::<f32>(b.max(1))?;
        if b == 0 || max_samples == 0 {
            return Ok((out, std));
        }
        let lens = dev.htod(&Self::lengths_i32(lengths)?)?;
        let ids: Vec<i32> = clip_ids
            .iter()
            .map(|&c| to_i32(c, "clip id"))
            .collect::<Result<_>>()?;
        let ids = dev.htod(&ids)?;
        dev.launch(
            "noise_std",
            b as u32,
            256u32,
            0,
            &[
                (&std).into(),
                pcm.into(),
                (&lens).into(),
                (&ids).into(),
                (b as i32).into(),
                (max_samples as i32).into(),
                seed.into(),
                step.into(),
                cfg.noise_prob.into(),
                cfg.snr_min_db.into(),
                cfg.snr_max_db.into(),
            ],
        )?;
        dev.launch(
            "add_noise",
            (blocks_for(max_samples, 256), b as u32),
            256u32,
            0,
            &[
                (&out).into(),
                pcm.into(),
                (&std).into(),
                (&lens).into(),
                (&ids).into(),
                (b as i32).into(),
                (max_samples as i32).into(),
                seed.into(),
                step.into(),
            ],
        )?;
        Ok((out, std))
    }

    /// Log-Mel spectrograms of a batch: `[B][n_mels][T_max]` dB (each clip relative to its own
    /// max, cells past its frames 0) and each clip's frame count `1 + lengths[b] / hop`.
    /// `pcm` is `[B][max_samples]` with `max_samples = pcm.len() / lengths.len()`. With
    /// `augment`, noise is added to the waveform and SpecAugment masks applied to the dB, as
    /// the CPU's `add_noise` + `log_mel` + `spec_augment(fill = −top_db)` would for the same
    /// (seed, step, clip ids).
    pub fn log_mel_batch(
        &self,
        dev: &Device,
        pcm: &DeviceBuffer<f32>,
        lengths: &[usize],
        augment: Option<Augment<'_>>,
    ) -> Result<(DeviceBuffer<f32>, Vec<usize>)> {
        let b = lengths.len();
        ensure!(
            b > 0 || pcm.is_empty(),
            "log_mel_batch: samples but no lengths"
        );
        let max_samples = pcm.len().checked_div(b).unwrap_or(0);
        let noisy;
        let src = match augment {
            Some((cfg, seed, step, ids)) if cfg.noise_prob > 0.0 => {
                noisy = self
                    .add_noise(dev, pcm, max_samples, lengths, cfg, seed, step, ids)?
                    .0;
                &noisy
            }
            _ => pcm,
        };
        let (mel, clip_max, frames) = self.stft_mel_power(dev, src, max_samples, lengths)?;
        let t_max = frames.iter().copied().max().unwrap_or(0);
        let masks = augment.filter(|a| a.0.freq_masks + a.0.time_masks > 0);
        let out = self.mel_db(dev, &mel, &clip_max, &frames, t_max, masks)?;
        Ok((out, frames))
    }

    /// The work of one [`Self::log_mel_batch`] call per kernel, for a batch with these
    /// lengths: FLOPs and the DRAM bytes a perfect cache would move (each PCM sample read once
    /// although frames overlap n_fft/hop times; tables not counted).
    pub fn costs(&self, lengths: &[usize], noise: bool) -> Vec<KernelCost> {
        let b = lengths.len() as f64;
        let max_samples = lengths.iter().copied().max().unwrap_or(0) as f64;
        let samples: f64 = lengths.iter().map(|&l| l as f64).sum();
        let frames: f64 = lengths
            .iter()
            .map(|&l| n_frames(l, self.cfg.hop) as f64)
            .sum();
        let t_max = lengths
            .iter()
            .map(|&l| n_frames(l, self.cfg.hop))
            .max()
            .unwrap_or(0) as f64;
        let (n, m) = (self.cfg.n_fft as f64, self.cfg.n_fft as f64 / 2.0);
        let n_mels = self.cfg.n_mels as f64;
        let mut v = Vec::new();
        if noise {
            v.push(KernelCost {
                name: "noise_std",
                flops: 2.0 * samples,
                bytes: 4.0 * samples,
            });
            // Philox (10 rounds of 2 mul-hi/lo + xors) + Box-Muller, ~60 operations a sample.
            v.push(KernelCost {
                name: "add_noise",
                flops: 60.0 * samples,
                bytes: 4.0 * samples + 4.0 * b * max_samples,
            });
        }
        // window n, complex FFT 5 M log2 M, split ~ 14 per bin, power 3, Mel 2 per weight.
        let per_frame = n + 5.0 * m * m.log2().max(0.0) + 17.0 * (m + 1.0) + 2.0 * self.nnz as f64;
        v.push(KernelCost {
            name: "stft_mel_power",
            flops: per_frame * frames,
            bytes: 4.0 * samples + 4.0 * b * t_max * n_mels,
        });
        v.push(KernelCost {
            name: "mel_db",
            flops: 4.0 * frames * n_mels,
            bytes: 8.0 * b * t_max * n_mels,
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_configs_and_batches() {
        let dev = Device::sim();
        let bad = MelConfig {
            n_fft: 1000,
            ..MelConfig::default()
        };
        assert!(DeviceFrontEnd::new(&dev, 16000, &bad).is_err());
        let cfg = MelConfig {
            n_fft: 256,
            hop: 64,
            n_mels: 16,
            ..MelConfig::default()
        };
        let fe = DeviceFrontEnd::new(&dev, 16000, &cfg).unwrap();
        let pcm = dev.htod(&[0.0f32; 10]).unwrap();
        // 10 samples are not 3 clips of any whole length
        assert!(fe.log_mel_batch(&dev, &pcm, &[3, 3, 3], None).is_err());
        // a length past max_samples
        let e = fe.log_mel_batch(&dev, &pcm, &[11, 1], None).err().unwrap();
        assert!(format!("{e:#}").contains("more than max_samples"), "{e:#}");
        let cfg_aug = AugmentConfig::default();
        assert!(fe
            .log_mel_batch(&dev, &pcm, &[5, 5], Some((&cfg_aug, 1, 0, &[0])))
            .is_err());
        // an empty batch is empty, not an error
        let empty = dev.alloc_zeros::<f32>(0).unwrap();
        let (out, frames) = fe.log_mel_batch(&dev, &empty, &[], None).unwrap();
        assert!(out.is_empty() && frames.is_empty());
    }
}
