//! The log-Mel of a recording of any length at bounded memory.
//!
//! librosa's `power_to_db(ref=np.max)` needs the loudest value of the WHOLE clip before any
//! dB value is known, so a long recording is read twice: pass 1 streams the front end through
//! it and keeps only the maxima; pass 2 streams it again and hands out each block of frames
//! already in final dB. The values equal [`super::Extractor::log_mel`] of the whole clip
//! (the same frames, centred framing and zero padding at the true ends; FFT rounding may
//! differ by the lane-vs-single-frame path choice at block edges, ≲ 1e-15 of a frame's
//! energy, invisible in f32 dB). Memory: one block of [`BLOCK_FRAMES`] frames of samples and
//! of output, whatever the length.
//!
//! Blocks: frames `[t0, t1)` are computed from the sample slice `[S, E)` with `S` the start
//! of frame `t0 − P` (P frames cover half a window, so no frame we keep sees the slice's left
//! edge) and `E` the end of frame `t1 − 1`'s window (or the end of the recording, where the
//! zero padding is the whole clip's own).
//!
//! Layer: features (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

use super::{db10, n_frames, Extractor, AMIN};
use anyhow::Result;

/// Frames per block (8192 × hop 256 = 2.1 M samples, 131 s at 16 kHz).
pub const BLOCK_FRAMES: usize = 8192;

/// A source of mono samples: appends the next ones to the vector, returns 0 at the end.
pub type Reader<'a> = dyn FnMut(&mut Vec<f32>) -> Result<usize> + 'a;

/// Runs the front end over a stream and calls `sink(first_frame, frames, power)` for each
/// block with the mel power frame-major (`[frames][n_mels]`). Returns the sample count.
pub fn mel_power_blocks(
    ex: &Extractor,
    read: &mut Reader,
    block_frames: usize,
    mut sink: impl FnMut(usize, usize, &[f32]) -> Result<()>,
) -> Result<u64> {
    let (n_fft, hop, n_mels) = (ex.cfg.n_fft, ex.cfg.hop, ex.cfg.n_mels);
    let half = n_fft / 2;
    let p = half.div_ceil(hop);
    let block_frames = block_frames.max(1);
    let mut buf: Vec<f32> = Vec::new();
    let mut buf_start = 0usize; // absolute index of buf[0]
    let mut t0 = 0usize;
    let mut ended = false;
    let mut read_buf = Vec::new();
    loop {
        let total_known = buf_start + buf.len();
        let t1 = t0 + block_frames;
        let need_end = (t1 - 1) * hop + half;
        if !ended && total_known < need_end {
            read_buf.clear();
            if read(&mut read_buf)? == 0 {
                ended = true;
            } else {
                buf.extend_from_slice(&read_buf);
            }
            continue;
        }
        let total_frames = if ended {
            n_frames(total_known, hop)
        } else {
            usize::MAX
        };
        let t1 = t1.min(total_frames);
        if t0 >= t1 {
            return Ok(total_known as u64);
        }
        let s = t0.saturating_sub(p) * hop;
        let e = ((t1 - 1) * hop + half).min(total_known);
        let slice = &buf[s - buf_start..e - buf_start];
        let (power, frames) = ex.mel_power_frame_major(slice);
        let j0 = t0 - s / hop;
        debug_assert!(j0 + (t1 - t0) <= frames);
        sink(t0, t1 - t0, &power[j0 * n_mels..(j0 + t1 - t0) * n_mels])?;
        t0 = t1;
        // Keep samples from the next block's slice start on.
        let keep_from = (t0.saturating_sub(p) * hop).min(buf_start + buf.len());
        buf.drain(..keep_from - buf_start);
        buf_start = keep_from;
    }
}

/// The dB reference of a whole stream: what pass 1 finds.
#[derive(Clone, Copy, Debug)]
pub struct DbReference {
    /// 10·log10(max(amin, max power)).
    pub ref_db: f32,
    /// Values are floored here (max dB − top_db), relative to `ref_db`.
    pub floor: f32,
    pub frames: usize,
    pub samples: u64,
}

/// Pass 1: the maxima of a whole stream (nothing else is kept).
pub fn db_reference(ex: &Extractor, read: &mut Reader, block_frames: usize) -> Result<DbReference> {
    let (mut max_raw, mut max_db) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    let mut frames = 0;
    let samples = mel_power_blocks(ex, read, block_frames, |_, n, power| {
        for &x in power {
            max_raw = max_raw.max(x);
            max_db = max_db.max(db10(x.max(AMIN)));
        }
        frames += n;
        Ok(())
    })?;
    // As Extractor::log_mel: the loudest value becomes exactly 0 dB, the floor top_db below.
    let ref_db = db10(max_raw.max(AMIN));
    Ok(DbReference {
        ref_db,
        floor: (max_db - ref_db) - ex.cfg.top_db,
        frames,
        samples,
    })
}

/// Pass 2: each block's dB values, mel-major `[n_mels][frames]`, with its first frame.
pub fn log_mel_blocks(
    ex: &Extractor,
    read: &mut Reader,
    r: &DbReference,
    block_frames: usize,
    mut sink: impl FnMut(usize, usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let n_mels = ex.cfg.n_mels;
    let mut tile = Vec::new();
    let samples = mel_power_blocks(ex, read, block_frames, |t0, n, power| {
        tile.clear();
        tile.resize(n * n_mels, 0.0);
        for (t, frame) in power.chunks_exact(n_mels).enumerate() {
            for (m, &x) in frame.iter().enumerate() {
                tile[m * n + t] = (db10(x.max(AMIN)) - r.ref_db).max(r.floor);
            }
        }
        sink(t0, n, &tile)
    })?;
    anyhow::ensure!(
        samples == r.samples,
        "the recording changed between the two passes ({} then {samples} samples)",
        r.samples
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::MelConfig;

    /// `x` handed out `piece` samples at a time.
    fn pieces(x: &[f32], piece: usize) -> impl FnMut(&mut Vec<f32>) -> Result<usize> + '_ {
        let mut pos = 0;
        move |out| {
            let k = piece.min(x.len() - pos);
            out.extend_from_slice(&x[pos..pos + k]);
            pos += k;
            Ok(k)
        }
    }

    #[test]
    fn two_passes_in_blocks_equal_the_whole_clip() {
        let cfg = MelConfig {
            n_fft: 512,
            hop: 160,
            n_mels: 40,
            ..MelConfig::default()
        };
        let rate = 16_000;
        let ex = Extractor::new(rate, &cfg).unwrap();
        // A chirp with a loud burst late in the clip (so the reference is not in block 0).
        for n in [100usize, 5_000, 48_123] {
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    let t = i as f32 / rate as f32;
                    let amp = if i > n * 3 / 4 { 0.9 } else { 0.05 };
                    amp * (2.0 * std::f32::consts::PI * (200.0 + 900.0 * t) * t).sin()
                })
                .collect();
            let whole = ex.log_mel(&x);
            for (block, piece) in [(7usize, 333usize), (64, 4096), (1000, 1)] {
                let r = db_reference(&ex, &mut pieces(&x, piece), block).unwrap();
                assert_eq!(r.frames, whole.frames);
                let mut got = vec![f32::NAN; whole.data.len()];
                log_mel_blocks(&ex, &mut pieces(&x, piece), &r, block, |t0, nf, tile| {
                    for m in 0..cfg.n_mels {
                        got[m * whole.frames + t0..][..nf].copy_from_slice(&tile[m * nf..][..nf]);
                    }
                    Ok(())
                })
                .unwrap();
                let worst = got
                    .iter()
                    .zip(&whole.data)
                    .map(|(a, b)| (a - b).abs())
                    .fold(
                        0.0f32,
                        |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
                    );
                // FFT path choice may differ at block edges (≲1e-15 relative): 1e-4 dB bound.
                assert!(worst <= 1e-4, "n {n} block {block}: max diff {worst} dB");
            }
        }
    }
}
