//! The device front end (kernels/stft.cu, mel.cu, augment.cu through engine::frontend) on the
//! `sim` device with shuffled thread order (or the GPU with SER_TEST_DEVICE=cuda), against the
//! CPU reference in `features`: each kernel alone with sizes that are not multiples of the
//! block or hop, the whole pipeline on random signals, short clips, silence and real speech,
//! and augmentation with the same Philox numbers as the CPU.
//!
//! Layer: engine (beside train, below cli). May use `device`, `cpu` (the reference it is
//! checked against), `features`, `model` and the shared modules (`rng`, `isa`, `cache`,
//! `atomic_file`); never `train` or `cli`.

use super::util::max_abs_diff;
use crate::device::Device;
use crate::engine::frontend::DeviceFrontEnd;
use crate::features::augment::{add_noise, spec_augment, AugmentConfig};
use crate::features::{self, log_mel, power_spectrogram, MelConfig};
use crate::rng::{Purpose, Stream};

fn device() -> Device {
    super::device(11)
}

/// Speech-like random signal: a few tones plus noise, varying loudness.
pub fn signal(seed: u64, n: usize, sr: f32) -> Vec<f32> {
    let s = Stream::new(seed, Purpose::Test, 0);
    (0..n)
        .map(|i| {
            let t = i as f32 / sr;
            let env = 0.2 + 0.8 * (6.0 * t).sin().abs();
            env * (0.3 * (2.0 * std::f32::consts::PI * 220.0 * t).sin()
                + 0.1 * (2.0 * std::f32::consts::PI * 1870.0 * t).sin()
                + 0.02 * s.normal(i as u64))
        })
        .collect()
}

/// `[B][max]` zero-padded batch.
pub fn pad_batch(clips: &[Vec<f32>]) -> (Vec<f32>, usize, Vec<usize>) {
    let max = clips.iter().map(|c| c.len()).max().unwrap_or(0);
    let mut pcm = vec![0.0f32; clips.len() * max];
    for (b, c) in clips.iter().enumerate() {
        pcm[b * max..b * max + c.len()].copy_from_slice(c);
    }
    (pcm, max, clips.iter().map(|c| c.len()).collect())
}

/// Checks the device log-Mel `[B][n_mels][T]` against the CPU's per clip (and zeros past each
/// clip's frames); returns the max abs error in dB.
pub fn compare_log_mel(
    got: &[f32],
    frames: &[usize],
    want: &[features::LogMel],
    n_mels: usize,
) -> f32 {
    let t_max = frames.iter().copied().max().unwrap_or(0);
    assert_eq!(got.len(), frames.len() * n_mels * t_max);
    let mut worst = 0.0f32;
    for (b, w) in want.iter().enumerate() {
        assert_eq!(frames[b], w.frames, "clip {b} frames");
        for m in 0..n_mels {
            let row = &got[(b * n_mels + m) * t_max..(b * n_mels + m + 1) * t_max];
            let d = max_abs_diff(&row[..w.frames], &w.data[m * w.frames..(m + 1) * w.frames]);
            worst = if d.is_nan() { f32::NAN } else { worst.max(d) };
            assert!(
                row[w.frames..].iter().all(|&x| x == 0.0),
                "clip {b} band {m}: padding not zero"
            );
        }
    }
    worst
}

pub fn stft_power_matches_cpu() {
    let dev = device();
    let s = Stream::new(3, Purpose::Test, 1);
    // n_fft 64, 128, 256: log2(n_fft/2) = 5, 6, 7 (odd ones end with a radix-2 stage);
    // hops that do not divide the lengths; one clip shorter than n_fft, one empty.
    for (trial, &(n_fft, hop)) in [(64usize, 24usize), (128, 37), (256, 100)]
        .iter()
        .enumerate()
    {
        let cfg = MelConfig {
            n_fft,
            hop,
            n_mels: 10,
            fmin: 0.0,
            fmax: 8000.0,
            top_db: 80.0,
        };
        let fe = DeviceFrontEnd::new(&dev, 16000, &cfg).unwrap();
        let long = 700 + s.below(trial as u64, 900) as usize;
        let clips = vec![
            signal(trial as u64, long, 16000.0),
            signal(9, n_fft / 2 + 3, 16000.0),
            vec![],
            signal(10 + trial as u64, long / 2 + 1, 16000.0),
        ];
        let (pcm, max, lengths) = pad_batch(&clips);
        let dpcm = dev.htod(&pcm).unwrap();
        let (power, frames) = fe.stft_power(&dev, &dpcm, max, &lengths).unwrap();
        let power = dev.dtoh(&power).unwrap();
        let t_max = *frames.iter().max().unwrap();
        let nb = n_fft / 2 + 1;
        for (b, c) in clips.iter().enumerate() {
            let want = power_spectrogram(c, n_fft, hop);
            assert_eq!(frames[b], want.frames);
            for t in 0..t_max {
                let got = &power[(b * t_max + t) * nb..(b * t_max + t + 1) * nb];
                if t >= want.frames {
                    assert!(got.iter().all(|&x| x == 0.0), "clip {b} frame {t} not zero");
                    continue;
                }
                let col: Vec<f32> = (0..nb).map(|k| want.data[k * want.frames + t]).collect();
                let peak = col.iter().cloned().fold(0.0f32, f32::max);
                // f32 FFT: amplitude error ~ eps * log2(M) * the frame's norm, so power error
                // ~1e-6 of the frame's peak; 1e-5 leaves margin and still fails for any wrong
                // bin, twiddle or stage (errors of O(peak)).
                let err = max_abs_diff(got, &col);
                assert!(
                    err <= 1e-5 * peak + 1e-30,
                    "n_fft {n_fft} clip {b} frame {t}: err {err} peak {peak}"
                );
            }
        }
    }
}

pub fn mel_power_and_db_match_cpu() {
    let dev = device();
    let cfg = MelConfig {
        n_fft: 512,
        hop: 128,
        n_mels: 37,
        fmin: 50.0,
        fmax: 7000.0,
        top_db: 60.0,
    };
    let fe = DeviceFrontEnd::new(&dev, 16000, &cfg).unwrap();
    let bank = features::MelFilterbank::new(16000, 512, 37, 50.0, 7000.0);
    let nb = fe.n_bins();
    let frames = vec![45usize, 1, 33];
    let t_max = 45;
    let s = Stream::new(5, Purpose::Test, 2);
    // Power spanning ~12 decades so the top_db floor bites; garbage past each clip's frames
    // must not leak into the output or the max.
    let power: Vec<f32> = (0..3 * t_max * nb)
        .map(|i| 10f32.powf(-12.0 * s.uniform(i as u64)) * 3.0)
        .collect();
    let dpow = dev.htod(&power).unwrap();
    let (mel, clip_max) = fe.mel_power(&dev, &dpow, &frames, t_max).unwrap();
    let mel_h = dev.dtoh(&mel).unwrap();
    let max_h = dev.dtoh(&clip_max).unwrap();
    let db = fe
        .mel_db(&dev, &mel, &clip_max, &frames, t_max, None)
        .unwrap();
    let db = dev.dtoh(&db).unwrap();
    for (b, &f) in frames.iter().enumerate() {
        let mut want = vec![0.0f32; f * 37];
        let mut row = vec![0.0f32; 37];
        for t in 0..f {
            let p: Vec<f64> = power[(b * t_max + t) * nb..(b * t_max + t + 1) * nb]
                .iter()
                .map(|&x| x as f64)
                .collect();
            bank.apply(&p, &mut row);
            let got = &mel_h[(b * t_max + t) * 37..(b * t_max + t + 1) * 37];
            for m in 0..37 {
                // f32 accumulation of <= ~40 positive terms vs f64: relative <= 40 * 2^-24.
                let tol = 3e-6 * row[m].abs();
                assert!(
                    (got[m] - row[m]).abs() <= tol,
                    "clip {b} t {t} m {m}: {} vs {}",
                    got[m],
                    row[m]
                );
                want[m * f + t] = row[m];
            }
        }
        for t in f..t_max {
            assert!(mel_h[(b * t_max + t) * 37..(b * t_max + t + 1) * 37]
                .iter()
                .all(|&x| x == 0.0));
        }
        let cpu_max = want.iter().cloned().fold(0.0f32, f32::max);
        assert!(
            (max_h[b] - cpu_max).abs() <= 3e-6 * cpu_max,
            "clip {b} max {} vs {cpu_max}",
            max_h[b]
        );
        features::power_to_db_in_place(&mut want, 60.0);
        let lm = features::LogMel {
            data: want,
            n_mels: 37,
            frames: f,
        };
        let one: Vec<f32> = (0..37)
            .flat_map(|m| db[(b * 37 + m) * t_max..(b * 37 + m) * t_max + f].to_vec())
            .collect();
        for m in 0..37 {
            assert!(db[(b * 37 + m) * t_max + f..(b * 37 + m + 1) * t_max]
                .iter()
                .all(|&x| x == 0.0));
        }
        // Inputs agree to 3e-6 relative = 1.3e-5 dB; f32 rounding of the logs adds ~1e-5.
        let err = compare_log_mel(&one, &[f], &[lm], 37);
        eprintln!("mel_db clip {b}: max abs error {err:.3e} dB");
        assert!(err <= 5e-5, "clip {b}: dB err {err}");
    }
}

pub fn pipeline_matches_cpu_on_random_signals_short_clips_and_silence() {
    let dev = device();
    let sr = 16000;
    let cfg = MelConfig {
        n_fft: 512,
        hop: 160,
        n_mels: 40,
        fmin: 60.0,
        fmax: 7600.0,
        top_db: 80.0,
    };
    let fe = DeviceFrontEnd::new(&dev, sr, &cfg).unwrap();
    let clips = vec![
        signal(1, 5_557, sr as f32),
        signal(2, 301, sr as f32), // shorter than n_fft
        vec![0.0; 2_000],          // silence: all 0 dB, finite
        signal(3, 3_999, sr as f32),
        vec![],
    ];
    let (pcm, _, lengths) = pad_batch(&clips);
    let dpcm = dev.htod(&pcm).unwrap();
    let (out, frames) = fe.log_mel_batch(&dev, &dpcm, &lengths, None).unwrap();
    let got = dev.dtoh(&out).unwrap();
    assert!(got.iter().all(|x| x.is_finite()));
    let want: Vec<_> = clips.iter().map(|c| log_mel(c, sr, &cfg)).collect();
    let err = compare_log_mel(&got, &frames, &want, 40);
    eprintln!("random signals: max abs error {err:.3e} dB");
    // the CPU reference matches librosa to 1e-3 dB; the device must match the CPU as closely
    assert!(err <= 1e-3, "max abs error {err} dB");

    // The unfused stages give exactly the fused result: the same f32 power, the same sums.
    let max = pcm.len() / lengths.len();
    let (power, frames2) = fe.stft_power(&dev, &dpcm, max, &lengths).unwrap();
    let t_max = *frames2.iter().max().unwrap();
    let (mel, cmax) = fe.mel_power(&dev, &power, &frames2, t_max).unwrap();
    let db = fe.mel_db(&dev, &mel, &cmax, &frames2, t_max, None).unwrap();
    assert_eq!(frames2, frames);
    assert_eq!(dev.dtoh(&db).unwrap(), got);
}

pub fn augmentation_matches_cpu() {
    let dev = device();
    let sr = 16000;
    let cfg = MelConfig {
        n_fft: 256,
        hop: 100,
        n_mels: 32,
        fmin: 0.0,
        fmax: 8000.0,
        top_db: 80.0,
    };
    let fe = DeviceFrontEnd::new(&dev, sr, &cfg).unwrap();
    let aug = AugmentConfig {
        noise_prob: 0.6,
        snr_min_db: 5.0,
        snr_max_db: 25.0,
        freq_masks: 2,
        freq_mask_max: 6,
        time_masks: 3,
        time_mask_max_frac: 0.2,
    };
    let clips = vec![
        signal(21, 3_333, sr as f32),
        signal(22, 1_234, sr as f32),
        vec![0.0; 900], // silent: never gets noise
        signal(23, 2_501, sr as f32),
        signal(24, 777, sr as f32),
        signal(25, 2_000, sr as f32),
    ];
    let ids = [5usize, 0, 7, 12, 3, 40];
    let (seed, step) = (1234u64, 17u32);
    let (pcm, max, lengths) = pad_batch(&clips);
    let dpcm = dev.htod(&pcm).unwrap();

    // Noise alone.
    let (noisy, std) = fe
        .add_noise(&dev, &dpcm, max, &lengths, &aug, seed, step, &ids)
        .unwrap();
    let noisy = dev.dtoh(&noisy).unwrap();
    let std = dev.dtoh(&std).unwrap();
    let mut cpu_clips = clips.clone();
    let mut noised = 0;
    for (b, c) in cpu_clips.iter_mut().enumerate() {
        let snr = add_noise(c, &aug, seed, step, ids[b]);
        assert_eq!(snr.is_some(), std[b] > 0.0, "clip {b}: noise decision");
        noised += snr.is_some() as usize;
        let peak = c.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let got = &noisy[b * max..b * max + c.len()];
        // Same Philox words; the normals go through logf/sinf/cosf, which may differ by a few
        // ulp between libm and CUDA: relative 1e-6 of the clip's peak.
        let err = max_abs_diff(got, c);
        assert!(
            err <= 1e-6 * peak,
            "clip {b}: noise err {err} (peak {peak})"
        );
        assert!(noisy[b * max + c.len()..(b + 1) * max]
            .iter()
            .all(|&x| x == 0.0));
    }
    assert!(
        (1..5).contains(&noised),
        "want both paths exercised, got {noised} noisy clips"
    );

    // Masks alone, on the device's own Mel power: the masked cells are exactly the CPU's.
    let (mel, cmax, frames) = fe.stft_mel_power(&dev, &dpcm, max, &lengths).unwrap();
    let t_max = *frames.iter().max().unwrap();
    let plain = dev
        .dtoh(&fe.mel_db(&dev, &mel, &cmax, &frames, t_max, None).unwrap())
        .unwrap();
    let masked = dev
        .dtoh(
            &fe.mel_db(
                &dev,
                &mel,
                &cmax,
                &frames,
                t_max,
                Some((&aug, seed, step, &ids)),
            )
            .unwrap(),
        )
        .unwrap();
    let mut any_masked = 0;
    for (b, &f) in frames.iter().enumerate() {
        // the device's unmasked clip in [n_mels][frames], masked by the CPU
        let mut want: Vec<f32> = (0..32)
            .flat_map(|m| plain[(b * 32 + m) * t_max..(b * 32 + m) * t_max + f].to_vec())
            .collect();
        spec_augment(&mut want, 32, f, f, -80.0, &aug, seed, step, ids[b]);
        for m in 0..32 {
            let row = &masked[(b * 32 + m) * t_max..(b * 32 + m + 1) * t_max];
            assert_eq!(&row[..f], &want[m * f..(m + 1) * f], "clip {b} band {m}");
            assert!(row[f..].iter().all(|&x| x == 0.0));
            any_masked += row[..f]
                .iter()
                .zip(&plain[(b * 32 + m) * t_max..])
                .filter(|(a, p)| a != p)
                .count();
        }
    }
    assert!(any_masked > 0, "no cell was masked");

    // The whole augmented pipeline against the CPU's add_noise + log_mel + spec_augment.
    let (out, frames) = fe
        .log_mel_batch(&dev, &dpcm, &lengths, Some((&aug, seed, step, &ids)))
        .unwrap();
    let got = dev.dtoh(&out).unwrap();
    let want: Vec<_> = cpu_clips
        .iter()
        .enumerate()
        .map(|(b, c)| {
            let mut lm = log_mel(c, sr, &cfg);
            spec_augment(
                &mut lm.data,
                32,
                lm.frames,
                lm.frames,
                -80.0,
                &aug,
                seed,
                step,
                ids[b],
            );
            lm
        })
        .collect();
    let err = compare_log_mel(&got, &frames, &want, 32);
    eprintln!("augmented pipeline: max abs error {err:.3e} dB");
    assert!(err <= 1e-3, "augmented pipeline err {err} dB");
}
