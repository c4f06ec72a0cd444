//! Inverted dropout with Philox masks (MODEL_SPEC.md): element n of site s in training step
//! `step` is kept iff `Stream::new(seed, Purpose::Dropout, step).uniform((s << 40) + n) ≥ p`,
//! and kept elements are scaled by 1/(1−p). n is the row-major index in the padded batch
//! tensor, so every device draws the same mask.

use super::Float;
use crate::rng::{philox_words, uniform01, Purpose};
use rayon::prelude::*;

/// Dropout sites.
pub const SITE_POOL1: u64 = 0;
pub const SITE_POOL2: u64 = 1;
pub const SITE_POOL3: u64 = 2;
pub const SITE_FC: u64 = 3;
pub const SITE_LSTM0: u64 = 4;

/// First stream index of site `s`.
pub fn site_base(s: u64) -> u64 {
    s << 40
}

/// The mask of `n` elements as multipliers: 0 (dropped) or 1/(1−p) (kept).
pub fn dropout_mask<T: Float>(seed: u64, step: u32, site: u64, n: usize, p: f32) -> Vec<T> {
    let keep = T::one() / (T::one() - T::cst(p as f64));
    let base = site_base(site);
    let mut mask = vec![T::zero(); n];
    // Chunks of a multiple of 4 so each Philox call feeds four elements.
    mask.par_chunks_mut(4096).enumerate().for_each(|(ci, ch)| {
        let start = base + (ci * 4096) as u64;
        for (q, quad) in ch.chunks_mut(4).enumerate() {
            let w = philox_words(seed, Purpose::Dropout, step, (start >> 2) + q as u64);
            for (e, v) in quad.iter_mut().enumerate() {
                *v = if uniform01(w[e]) >= p {
                    keep
                } else {
                    T::zero()
                };
            }
        }
    });
    mask
}

/// y = x ⊙ mask (forward), or dx = dy ⊙ mask (backward), in place.
pub fn apply_mask<T: Float>(x: &mut [T], mask: &[T]) {
    x.par_chunks_mut(4096)
        .zip(mask.par_chunks(4096))
        .for_each(|(a, m)| {
            for (v, k) in a.iter_mut().zip(m) {
                *v = *v * *k;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    #[test]
    fn mask_follows_the_spec_rule() {
        let p = 0.3f32;
        let m: Vec<f64> = dropout_mask(5, 9, SITE_FC, 10_000, p);
        let s = Stream::new(5, Purpose::Dropout, 9);
        let keep = 1.0 / (1.0 - p as f64);
        for (n, v) in m.iter().enumerate() {
            let kept = s.uniform(site_base(SITE_FC) + n as u64) >= p;
            assert_eq!(*v, if kept { keep } else { 0.0 }, "element {n}");
        }
        // Kept fraction ≈ 0.7: binomial sd = sqrt(0.21/10000) ≈ 0.0046, allow 5 sd.
        let frac = m.iter().filter(|&&v| v > 0.0).count() as f64 / 1e4;
        assert!((frac - 0.7).abs() < 0.023, "{frac}");
        // Sites differ.
        let m2: Vec<f64> = dropout_mask(5, 9, SITE_LSTM0, 10_000, p);
        assert_ne!(m, m2);
    }
}
