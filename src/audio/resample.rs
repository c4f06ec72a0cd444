//! Band-limited resampling of a whole mono clip (rubato's synchronous FFT resampler).
//!
//! Used when `--sample-rate` differs from a corpus's native rate, or a corpus mixes rates.
//! The output has exactly `round(n * to / from)` samples and no delay: rubato's filter delay
//! (`output_delay()` frames) is dropped from the front and the input is zero-padded at the end
//! until enough output exists, so sample k of the output is the band-limited signal at time
//! k/to, in phase with the input. Computation is in f64 and rounded to f32 once.
//!
//! Layer: audio (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

use anyhow::{bail, Result};
use rubato::{FftFixedIn, Resampler};

/// Input frames handed to rubato per call. rubato rounds the FFT block up to a whole number of
/// `from/gcd` frames; larger blocks give a longer anti-aliasing filter (sharper transition).
const CHUNK: usize = 4096;

/// Resamples `samples` from `from` Hz to `to` Hz. Output length is `round(n * to / from)`
/// (halves round up). Equal rates return the input unchanged.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == 0 || to == 0 {
        bail!("cannot resample from {from} Hz to {to} Hz: rates must be positive");
    }
    if from == to {
        return Ok(samples.to_vec());
    }
    let n = samples.len();
    let (from_u, to_u) = (from as u128, to as u128);
    let n_out = ((n as u128 * to_u + from_u / 2) / from_u) as usize;
    if n_out == 0 {
        return Ok(Vec::new());
    }
    let mut r = FftFixedIn::<f64>::new(from as usize, to as usize, CHUNK, 1, 1)
        .map_err(|e| anyhow::anyhow!("cannot resample from {from} Hz to {to} Hz: {e}"))?;
    let delay = r.output_delay();
    let need = delay + n_out;
    let mut out: Vec<f64> = Vec::with_capacity(need + r.output_frames_max());
    let mut inbuf = vec![vec![0f64; CHUNK]];
    let mut outbuf = r.output_buffer_allocate(true);
    let mut pos = 0usize;
    while out.len() < need {
        // Past the end of the input the chunks are zeros: they flush the filter's tail.
        let take = n.saturating_sub(pos).min(CHUNK);
        for (i, x) in inbuf[0].iter_mut().enumerate() {
            *x = if i < take {
                samples[pos + i] as f64
            } else {
                0.0
            };
        }
        pos += CHUNK;
        let (_, written) = r
            .process_into_buffer(&inbuf, &mut outbuf, None)
            .map_err(|e| anyhow::anyhow!("resampling {from} Hz -> {to} Hz failed: {e}"))?;
        out.extend_from_slice(&outbuf[0][..written]);
    }
    Ok(out[delay..need].iter().map(|&x| x as f32).collect())
}

/// [`resample`] of a signal that arrives in pieces: the same chunking and delay handling,
/// so the concatenated output equals `resample(whole signal)` exactly, while only one
/// rubato block is held (bounded memory for recordings of any length or a live stream).
pub struct StreamResampler {
    r: FftFixedIn<f64>,
    from: u32,
    to: u32,
    /// Input not yet handed to rubato (< CHUNK samples).
    pending: Vec<f64>,
    /// Output samples still to drop (rubato's delay).
    skip: usize,
    inputs: u64,
    outputs: u64,
    outbuf: Vec<Vec<f64>>,
}

impl StreamResampler {
    pub fn new(from: u32, to: u32) -> Result<Self> {
        if from == 0 || to == 0 || from == to {
            bail!("cannot stream-resample from {from} Hz to {to} Hz");
        }
        let r = FftFixedIn::<f64>::new(from as usize, to as usize, CHUNK, 1, 1)
            .map_err(|e| anyhow::anyhow!("cannot resample from {from} Hz to {to} Hz: {e}"))?;
        let outbuf = r.output_buffer_allocate(true);
        Ok(Self {
            skip: r.output_delay(),
            r,
            from,
            to,
            pending: Vec::with_capacity(CHUNK),
            inputs: 0,
            outputs: 0,
            outbuf,
        })
    }

    fn block(&mut self, out: &mut Vec<f32>, limit: Option<u64>) -> Result<()> {
        self.pending.resize(CHUNK, 0.0);
        let (_, written) = self
            .r
            .process_into_buffer(&[&self.pending[..]], &mut self.outbuf, None)
            .map_err(|e| {
                anyhow::anyhow!("resampling {} Hz -> {} Hz failed: {e}", self.from, self.to)
            })?;
        self.pending.clear();
        let mut o = &self.outbuf[0][..written];
        let drop = self.skip.min(o.len());
        self.skip -= drop;
        o = &o[drop..];
        if let Some(lim) = limit {
            o = &o[..(lim.saturating_sub(self.outputs) as usize).min(o.len())];
        }
        self.outputs += o.len() as u64;
        out.extend(o.iter().map(|&x| x as f32));
        Ok(())
    }

    /// Appends the output that `input` completes to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<()> {
        self.inputs += input.len() as u64;
        for &x in input {
            self.pending.push(x as f64);
            if self.pending.len() == CHUNK {
                self.block(out, None)?;
            }
        }
        Ok(())
    }

    /// Flushes the filter's tail: afterwards exactly `round(n * to / from)` samples were output.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<()> {
        let (n, f, t) = (self.inputs as u128, self.from as u128, self.to as u128);
        let total = ((n * t + f / 2) / f) as u64;
        while self.outputs < total {
            self.block(out, Some(total))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn sine(freq: f64, rate: u32, n: usize, amp: f64, phase: f64) -> Vec<f32> {
        (0..n)
            .map(|i| (amp * (2.0 * PI * freq * i as f64 / rate as f64 + phase).sin()) as f32)
            .collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// The samples away from both ends, where the zero padding outside the clip does not
    /// reach (the filter spans well under 0.1 s at these rates).
    fn middle(x: &[f32], rate: u32) -> &[f32] {
        let m = (rate / 10) as usize;
        &x[m..x.len() - m]
    }

    #[test]
    fn streaming_equals_whole_clip_resampling() {
        let x = sine(440.0, 44_100, 30_011, 0.5, 0.3);
        let whole = resample(&x, 44_100, 16_000).unwrap();
        for piece in [1usize, 777, 4096, 10_000] {
            let mut r = StreamResampler::new(44_100, 16_000).unwrap();
            let mut out = Vec::new();
            for c in x.chunks(piece) {
                r.push(c, &mut out).unwrap();
            }
            r.finish(&mut out).unwrap();
            assert_eq!(out, whole, "pieces of {piece}");
        }
    }

    #[test]
    fn sine_keeps_amplitude_and_phase_44k1_to_16k() {
        let (from, to) = (44_100, 16_000);
        let x = sine(1000.0, from, from as usize, 0.5, 0.3);
        let y = resample(&x, from, to).unwrap();
        let want = sine(1000.0, to, y.len(), 0.5, 0.3);
        let err = middle(&y, to)
            .iter()
            .zip(middle(&want, to))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // 1 kHz is deep in the passband: what remains is passband ripple (the windowed sinc's
        // is far below 1e-6) and f32 rounding (3e-8 at 0.5). 1e-5 would catch a delay error of
        // 1e-4 samples (0.5 * 2π * 1e-4 / 16 ≈ 2e-5). Measured: 3e-8.
        eprintln!("44.1k->16k 1 kHz max error {err:e}");
        assert!(err <= 1e-5, "max error {err}");
    }

    #[test]
    fn upsampling_keeps_phase_16k_to_48k() {
        let (from, to) = (16_000, 48_000);
        let x = sine(440.0, from, 8000, 0.8, 1.0);
        let y = resample(&x, from, to).unwrap();
        assert_eq!(y.len(), 24_000);
        let want = sine(440.0, to, y.len(), 0.8, 1.0);
        let err = middle(&y, to)
            .iter()
            .zip(middle(&want, to))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Same reasoning as above.
        eprintln!("16k->48k 440 Hz max error {err:e}");
        assert!(err <= 1e-5, "max error {err}");
    }

    #[test]
    fn passband_kept_and_stopband_attenuated_48k_to_16k() {
        let (from, to) = (48_000, 16_000);
        let n = from as usize;
        // 7 kHz is below the new Nyquist (8 kHz): kept within 0.01 dB (gain 1 ± 1e-3).
        let x = sine(7000.0, from, n, 0.5, 0.0);
        let y = resample(&x, from, to).unwrap();
        let ratio = rms(middle(&y, to)) / rms(middle(&x, from));
        eprintln!("48k->16k 7 kHz gain {ratio}");
        assert!((ratio - 1.0).abs() <= 1e-3, "7 kHz gain {ratio}");
        // 10 kHz would alias to 6 kHz: it must be attenuated by more than 40 dB.
        let x = sine(10_000.0, from, n, 0.5, 0.0);
        let y = resample(&x, from, to).unwrap();
        let ratio = rms(middle(&y, to)) / rms(middle(&x, from));
        let db = 20.0 * ratio.log10();
        eprintln!("48k->16k 10 kHz gain {db} dB");
        assert!(db <= -40.0, "10 kHz attenuated only {db} dB");
    }

    #[test]
    fn length_is_rounded_ratio() {
        for &(n, from, to) in &[
            (44_100usize, 44_100u32, 16_000u32),
            (12_345, 44_100, 16_000),
            (1, 44_100, 16_000),
            (2, 48_000, 16_000), // 2/3 -> 1
            (7, 16_000, 44_100),
            (100_001, 48_000, 22_050),
            (999, 8_000, 11_025),
        ] {
            let x = vec![0.1f32; n];
            let y = resample(&x, from, to).unwrap();
            let want = (n as f64 * to as f64 / from as f64).round() as usize;
            assert_eq!(y.len(), want, "n {n} {from} -> {to}");
            assert!(y.iter().all(|v| v.is_finite()));
        }
        assert!(resample(&[], 44_100, 16_000).unwrap().is_empty());
    }

    #[test]
    fn equal_rates_are_identity() {
        let x = sine(123.0, 16_000, 1000, 0.9, 0.0);
        assert_eq!(resample(&x, 16_000, 16_000).unwrap(), x);
    }

    #[test]
    fn zero_rate_is_an_error() {
        assert!(resample(&[0.0; 10], 0, 16_000).is_err());
        assert!(resample(&[0.0; 10], 16_000, 0).is_err());
    }
}
