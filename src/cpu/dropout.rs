//! Inverted dropout with Philox masks (MODEL_SPEC.md): element n of site s in training step
//! `step` is kept iff `Stream::new(seed, Purpose::Dropout, step).uniform((s << 40) + n) ≥ p`,
//! and kept elements are scaled by 1/(1−p). n is the row-major index in the padded batch
//! tensor, so every device draws the same mask.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::Float;
use crate::rng::{philox_words, philox_words_lanes, uniform01, Purpose, PHILOX_LANES};
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
    // Chunks of a multiple of 4 so each Philox counter feeds four elements.
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, ch)| {
        let first = (base + (ci * CHUNK) as u64) >> 2;
        fill_mask(ch, seed, step, first, p, keep);
    });
    mask
}

/// Elements per rayon job of [`dropout_mask`] (a multiple of 4 · [`PHILOX_LANES`]).
const CHUNK: usize = 4096;

/// One chunk of [`dropout_mask`] starting at counter `first`, in the widest vector code the CPU
/// runs (`crate::isa`); the same bits on every path (the scalar tail and the lane form are the
/// same function of the counter, tested).
fn fill_mask<T: Float>(ch: &mut [T], seed: u64, step: u32, first: u64, p: f32, keep: T) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::isa::{active, Isa};
        match active() {
            // SAFETY: `active()` is at most what the CPU supports.
            Isa::Avx512 => return unsafe { fill_mask_avx512(ch, seed, step, first, p, keep) },
            // SAFETY: likewise, AVX2.
            Isa::Avx2 => return unsafe { fill_mask_avx2(ch, seed, step, first, p, keep) },
            Isa::Baseline => {}
        }
    }
    fill_mask_generic(ch, seed, step, first, p, keep)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn fill_mask_avx512<T: Float>(
    ch: &mut [T],
    seed: u64,
    step: u32,
    first: u64,
    p: f32,
    keep: T,
) {
    fill_mask_generic(ch, seed, step, first, p, keep)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_mask_avx2<T: Float>(
    ch: &mut [T],
    seed: u64,
    step: u32,
    first: u64,
    p: f32,
    keep: T,
) {
    fill_mask_generic(ch, seed, step, first, p, keep)
}

#[inline(always)]
fn fill_mask_generic<T: Float>(ch: &mut [T], seed: u64, step: u32, first: u64, p: f32, keep: T) {
    let pick = |w: u32| if uniform01(w) >= p { keep } else { T::zero() };
    const BLOCK: usize = 4 * PHILOX_LANES;
    let mut blocks = ch.chunks_exact_mut(BLOCK);
    let mut ctr = first;
    for blk in &mut blocks {
        let w = philox_words_lanes(seed, Purpose::Dropout, step, ctr);
        for (lane, quad) in blk.chunks_exact_mut(4).enumerate() {
            for (e, v) in quad.iter_mut().enumerate() {
                *v = pick(w[e][lane]);
            }
        }
        ctr += PHILOX_LANES as u64;
    }
    for (q, quad) in blocks.into_remainder().chunks_mut(4).enumerate() {
        let w = philox_words(seed, Purpose::Dropout, step, ctr + q as u64);
        for (e, v) in quad.iter_mut().enumerate() {
            *v = pick(w[e]);
        }
    }
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

    /// Every size class (lane blocks, the scalar tail, lengths not a multiple of 4, several
    /// chunks) follows the spec rule on the dispatched path, and each vector path the CPU has
    /// gives the plain code's bits.
    #[test]
    fn every_path_and_odd_size_follows_the_rule() {
        let p = 0.45f32;
        let keep = 1.0 / (1.0 - p);
        for (i, n) in [1usize, 3, 63, 64, 65, 130, 4095, 4100, 3 * 4096 + 77]
            .into_iter()
            .enumerate()
        {
            let (seed, step) = (11 + i as u64, 3 * i as u32);
            let m: Vec<f32> = dropout_mask(seed, step, SITE_POOL2, n, p);
            let s = Stream::new(seed, Purpose::Dropout, step);
            for (e, v) in m.iter().enumerate() {
                let kept = s.uniform(site_base(SITE_POOL2) + e as u64) >= p;
                assert_eq!(*v, if kept { keep } else { 0.0 }, "n {n} element {e}");
            }
            let first = (site_base(SITE_POOL2) >> 2) + 7;
            let mut plain = vec![0f32; n];
            fill_mask_generic(&mut plain, seed, step, first, p, keep);
            #[cfg(target_arch = "x86_64")]
            {
                let mut v = vec![-1f32; n];
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: AVX2 checked just above.
                    unsafe { fill_mask_avx2(&mut v, seed, step, first, p, keep) };
                    assert_eq!(v, plain, "avx2, n {n}");
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    v.fill(-1.0);
                    // SAFETY: AVX-512F (and AVX2, which every AVX-512 CPU has) checked.
                    unsafe { fill_mask_avx512(&mut v, seed, step, first, p, keep) };
                    assert_eq!(v, plain, "avx512, n {n}");
                }
            }
        }
    }
}
