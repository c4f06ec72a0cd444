//! The batch a [`super::Backend`] is fed: clips' log-Mel in the model's input scale, laid out
//! `(batch, n_mels, t_max)` with each clip's valid length. Uses [`crate::model`] only.

use super::mixup::Mix;
use crate::model::MIN_FRAMES;

/// Model input scale: x = (dB + DB_OFFSET) / DB_SCALE maps librosa's [-80, 0] dB to [-1, 1].
pub const DB_OFFSET: f32 = 40.0;
pub const DB_SCALE: f32 = 40.0;

/// A batch laid out for the model: x is (batch, n_mels, t_max) row-major in model scale,
/// zero past each clip's `lengths[b]` frames.
#[derive(Clone, Debug)]
pub struct Batch {
    pub x: Vec<f32>,
    pub batch: usize,
    pub n_mels: usize,
    pub t_max: usize,
    pub lengths: Vec<usize>,
    pub labels: Vec<usize>,
    /// Dataset indices of the clips, in batch order.
    pub indices: Vec<usize>,
    /// `--mixup`: how `x` was mixed (the loss then takes soft targets,
    /// [`super::mixup::SoftTargets`]); None for a plain batch.
    pub mix: Option<Mix>,
}

/// Converts dB log-Mel to the model's input scale.
#[inline]
pub fn db_to_input(db: f32) -> f32 {
    (db + DB_OFFSET) / DB_SCALE
}

impl Batch {
    /// Lays out the given clips' features (each `[n_mels][frames]` in dB). Clips shorter than
    /// MIN_FRAMES are extended with silence (-top_db dB) frames that count as valid.
    pub fn from_features(
        feats: &[(&[f32], usize)],
        labels: &[usize],
        indices: &[usize],
        n_mels: usize,
        silence_db: f32,
    ) -> Batch {
        let lengths: Vec<usize> = feats.iter().map(|&(_, f)| f.max(MIN_FRAMES)).collect();
        let t_max = lengths.iter().copied().max().unwrap_or(MIN_FRAMES);
        let b = feats.len();
        let mut x = vec![0.0f32; b * n_mels * t_max];
        for (i, &(mel, frames)) in feats.iter().enumerate() {
            for m in 0..n_mels {
                let row = &mut x[(i * n_mels + m) * t_max..][..lengths[i]];
                for (t, v) in row.iter_mut().enumerate() {
                    let db = if t < frames {
                        mel[m * frames + t]
                    } else {
                        silence_db
                    };
                    *v = db_to_input(db);
                }
            }
        }
        Batch {
            x,
            batch: b,
            n_mels,
            t_max,
            lengths,
            labels: labels.to_vec(),
            indices: indices.to_vec(),
            mix: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_layout_pads_with_zero_and_extends_short_clips() {
        let a: Vec<f32> = (0..2 * 10).map(|i| -(i as f32)).collect(); // 2 mels x 10 frames
        let b: Vec<f32> = vec![-40.0; 2 * 3]; // 3 frames: extended to 8 with silence
        let batch = Batch::from_features(&[(&a, 10), (&b, 3)], &[0, 1], &[5, 6], 2, -80.0);
        assert_eq!((batch.t_max, batch.lengths.clone()), (10, vec![10, 8]));
        assert_eq!(batch.x[10 + 3], db_to_input(-13.0)); // clip 0, mel 1, frame 3
        let clip1 = &batch.x[2 * 10..];
        assert_eq!(clip1[2], 0.0 /* db_to_input(-40) */);
        assert_eq!(clip1[5], -1.0); // silence frame
        assert_eq!(clip1[9], 0.0); // padding
    }
}
