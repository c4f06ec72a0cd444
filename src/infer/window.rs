//! Cutting a sample stream into analysis windows at bounded memory.
//!
//! Windows start at 0, hop, 2·hop, ... and are `window` samples long. Each is classified as a
//! clip of its own (its own log-Mel with librosa's `ref=max` over the window, exactly as a
//! training clip of that length), so a window's result does not depend on what came before.
//! When the stream ends, one last shorter window covers the tail that no full window reached
//! (or the whole stream when it is shorter than one window). The buffer never holds more than
//! one window plus one read block.
//!
//! Layer: infer (using a trained model; below cli). May use `train` (run folders), `cpu`,
//! `features`, `model`, `audio`, `device` and the shared modules (`rng`, `isa`, `cache`,
//! `atomic_file`); never `cli`.

/// One window's samples and position (in samples from the start of the stream).
pub struct WindowRef<'a> {
    pub start: u64,
    pub samples: &'a [f32],
}

pub struct Windower {
    window: usize,
    hop: usize,
    /// Samples from absolute position `buf_start` on.
    buf: Vec<f32>,
    buf_start: u64,
    /// Start of the next window.
    next: u64,
    /// End of the last window emitted.
    covered: u64,
    total: u64,
}

impl Windower {
    /// `window` and `hop` in samples, both ≥ 1.
    pub fn new(window: usize, hop: usize) -> Self {
        assert!(window > 0 && hop > 0, "window and hop must be positive");
        Self {
            window,
            hop,
            buf: Vec::with_capacity(window + super::source::READ_FRAMES),
            buf_start: 0,
            next: 0,
            covered: 0,
            total: 0,
        }
    }

    /// Samples pushed so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Appends samples and calls `f` for each window they complete.
    pub fn push<E>(
        &mut self,
        samples: &[f32],
        mut f: impl FnMut(WindowRef) -> Result<(), E>,
    ) -> Result<(), E> {
        self.total += samples.len() as u64;
        // Samples before the next window's start are never needed (hop > window).
        let mut s = samples;
        let end_before = self.buf_start + self.buf.len() as u64;
        if self.buf.is_empty() && self.next > end_before {
            let skip = ((self.next - end_before) as usize).min(s.len());
            s = &s[skip..];
            self.buf_start += skip as u64;
        }
        self.buf.extend_from_slice(s);
        while self.next + self.window as u64 <= self.buf_start + self.buf.len() as u64 {
            let off = (self.next - self.buf_start) as usize;
            f(WindowRef {
                start: self.next,
                samples: &self.buf[off..off + self.window],
            })?;
            self.covered = self.next + self.window as u64;
            self.next += self.hop as u64;
        }
        let drop = ((self.next.saturating_sub(self.buf_start)) as usize).min(self.buf.len());
        self.buf.drain(..drop);
        self.buf_start += drop as u64;
        Ok(())
    }

    /// The last, shorter window over the tail no full window covered, if any.
    pub fn finish(&mut self) -> Option<WindowRef<'_>> {
        if self.total <= self.covered || self.total == 0 {
            return None;
        }
        // The tail window starts at the next window start (or the first sample not yet
        // dropped when hop > window left a gap past the end).
        let start = self.next.max(self.buf_start).min(self.total);
        let off = (start - self.buf_start) as usize;
        if off >= self.buf.len() {
            return None;
        }
        self.covered = self.total;
        Some(WindowRef {
            start,
            samples: &self.buf[off..],
        })
    }

    /// Values held (for tests of the memory bound).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Loudness of a window: RMS in dB relative to full scale (−inf for digital silence).
pub fn rms_dbfs(samples: &[f32]) -> f64 {
    let e: f64 = samples.iter().map(|&x| (x as f64) * (x as f64)).sum();
    10.0 * (e / samples.len().max(1) as f64).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(n: usize, window: usize, hop: usize, piece: usize) -> Vec<(u64, Vec<f32>)> {
        let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut w = Windower::new(window, hop);
        let mut got = Vec::new();
        for c in x.chunks(piece) {
            w.push::<()>(c, |r| {
                got.push((r.start, r.samples.to_vec()));
                Ok(())
            })
            .unwrap();
            assert!(w.buffered() <= window + piece, "{}", w.buffered());
        }
        if let Some(r) = w.finish() {
            got.push((r.start, r.samples.to_vec()));
        }
        got
    }

    #[test]
    fn windows_are_the_right_slices_whatever_the_read_size() {
        for piece in [1, 3, 7, 100] {
            // 25 samples, window 10, hop 4: full windows at 0, 4, 8, 12; tail from 16.
            let got = windows(25, 10, 4, piece);
            let starts: Vec<u64> = got.iter().map(|g| g.0).collect();
            assert_eq!(starts, vec![0, 4, 8, 12, 16], "piece {piece}");
            for (s, v) in &got {
                let end = (*s as usize + 10).min(25);
                let want: Vec<f32> = (*s as usize..end).map(|i| i as f32).collect();
                assert_eq!(v, &want);
            }
        }
    }

    #[test]
    fn exact_fit_has_no_tail_and_short_stream_is_one_window() {
        assert_eq!(
            windows(20, 10, 10, 3)
                .iter()
                .map(|g| g.0)
                .collect::<Vec<_>>(),
            vec![0, 10]
        );
        let short = windows(6, 10, 5, 4);
        assert_eq!(short.len(), 1);
        assert_eq!(short[0].1.len(), 6);
        // hop > window: gaps are skipped; tail [24, 25).
        let gaps = windows(25, 4, 8, 5);
        assert_eq!(
            gaps.iter().map(|g| g.0).collect::<Vec<_>>(),
            vec![0, 8, 16, 24]
        );
        assert_eq!(gaps[3].1, vec![24.0]);
    }

    #[test]
    fn rms_of_full_scale_square_is_0_dbfs() {
        assert!((rms_dbfs(&[1.0, -1.0, 1.0]) - 0.0).abs() < 1e-12);
        // 0.1 in f32 is 0.1 + 1.5e-9: -20 dB to within 2e-7.
        assert!((rms_dbfs(&[0.1; 10]) + 20.0).abs() < 1e-6);
        assert_eq!(rms_dbfs(&[0.0; 4]), f64::NEG_INFINITY);
    }
}
