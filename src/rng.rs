//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): the one
//! counter-based generator of the project. The kernels carry an identical copy
//! (`kernels/philox.cuh`), so the same (seed, purpose, step, index) gives the same numbers on
//! every device, and a whole training step with dropout and augmentation can be compared across
//! devices.
//!
//! Keying, fixed for all devices:
//! - key     = [seed low 32 bits, seed high 32 bits]
//! - counter = [index low 32 bits, index high 32 bits, step, purpose]
//!
//! Each counter gives four u32 words. A consumer that needs more than four numbers for one item
//! spaces its indices (e.g. `index = item * words_per_item / 4 + k`).
//!
//! Shared module: may be used by every layer; uses nothing of the crate.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// What a random number is for; part of the counter so streams never overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Purpose {
    Init = 1,
    Dropout = 2,
    Noise = 3,
    SpecAugment = 4,
    Shuffle = 5,
    Split = 6,
    Synth = 7,
    Crop = 8,
    /// `--mixup`: λ and the permutation of each training batch (host only).
    Mixup = 9,
    /// `--speed`: each training clip's speed factor per epoch (host only).
    Speed = 10,
    Test = 99,
}

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = (a as u64) * (b as u64);
    ((p >> 32) as u32, p as u32)
}

/// The raw Philox4x32 bijection with 10 rounds.
#[inline]
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(W0);
            key[1] = key[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, ctr[0]);
        let (hi1, lo1) = mulhilo(M1, ctr[2]);
        ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0];
    }
    ctr
}

/// Four random words for (seed, purpose, step, index).
#[inline]
pub fn philox_words(seed: u64, purpose: Purpose, step: u32, index: u64) -> [u32; 4] {
    philox4x32_10(
        [index as u32, (index >> 32) as u32, step, purpose as u32],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// Lane count of [`philox_words_lanes`].
pub const PHILOX_LANES: usize = 16;

/// The words of the 16 consecutive counters `index0 .. index0 + 16`, word-major:
/// `out[w][lane] = philox_words(seed, purpose, step, index0 + lane)[w]` (tested). Written
/// lane-parallel (structure of arrays) so that, inlined into code compiled for AVX2 or
/// AVX-512, the ten rounds become vector multiplies: the hot loop of dropout masks.
#[inline(always)]
pub fn philox_words_lanes(
    seed: u64,
    purpose: Purpose,
    step: u32,
    index0: u64,
) -> [[u32; PHILOX_LANES]; 4] {
    const N: usize = PHILOX_LANES;
    let mut c0: [u32; N] = std::array::from_fn(|l| index0.wrapping_add(l as u64) as u32);
    let mut c1: [u32; N] = std::array::from_fn(|l| (index0.wrapping_add(l as u64) >> 32) as u32);
    let mut c2 = [step; N];
    let mut c3 = [purpose as u32; N];
    let mut key = [seed as u32, (seed >> 32) as u32];
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(W0);
            key[1] = key[1].wrapping_add(W1);
        }
        for l in 0..N {
            let p0 = (M0 as u64) * (c0[l] as u64);
            let p1 = (M1 as u64) * (c2[l] as u64);
            let n0 = ((p1 >> 32) as u32) ^ c1[l] ^ key[0];
            let n2 = ((p0 >> 32) as u32) ^ c3[l] ^ key[1];
            c1[l] = p1 as u32;
            c3[l] = p0 as u32;
            c0[l] = n0;
            c2[l] = n2;
        }
    }
    [c0, c1, c2, c3]
}

/// Uniform in the open interval (0, 1): the top 23 bits, centred in their bucket (exact in
/// f32, so never 0 or 1 and `ln(u)` is always finite). Identical in `kernels/philox.cuh`
/// (`philox_uniform`).
#[inline]
pub fn uniform01(word: u32) -> f32 {
    ((word >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// Two standard normals from two words by Box–Muller, computed in f32 as the kernels do.
#[inline]
pub fn box_muller(w0: u32, w1: u32) -> (f32, f32) {
    let u0 = uniform01(w0);
    let u1 = uniform01(w1);
    let r = (-2.0f32 * u0.ln()).sqrt();
    let theta = 2.0f32 * std::f32::consts::PI * u1;
    (r * theta.cos(), r * theta.sin())
}

/// A convenience stream over one (seed, purpose, step): the n-th number is always the same,
/// whoever asks and in which order.
#[derive(Clone, Debug)]
pub struct Stream {
    pub seed: u64,
    pub purpose: Purpose,
    pub step: u32,
}

impl Stream {
    pub fn new(seed: u64, purpose: Purpose, step: u32) -> Self {
        Self {
            seed,
            purpose,
            step,
        }
    }

    /// The n-th 32-bit word of the stream.
    #[inline]
    pub fn word(&self, n: u64) -> u32 {
        philox_words(self.seed, self.purpose, self.step, n / 4)[(n % 4) as usize]
    }

    /// The n-th uniform in (0, 1).
    #[inline]
    pub fn uniform(&self, n: u64) -> f32 {
        uniform01(self.word(n))
    }

    /// The n-th standard normal (pairs of words n*2, n*2+1 through Box–Muller; even n takes the
    /// cosine branch, odd n the sine branch of the same pair).
    #[inline]
    pub fn normal(&self, n: u64) -> f32 {
        let w = philox_words(self.seed, self.purpose, self.step, n / 2);
        let (z0, z1) = box_muller(w[0], w[1]);
        if n.is_multiple_of(2) {
            z0
        } else {
            z1
        }
    }

    /// Uniform integer in [0, n) (n > 0) from the k-th word, by 64-bit multiply-shift
    /// (Lemire), bias below 2^-32 * n.
    #[inline]
    pub fn below(&self, k: u64, n: u32) -> u32 {
        ((self.word(k) as u64 * n as u64) >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vectors of the Random123 distribution (kat_vectors, philox4x32_10).
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn lane_philox_equals_sixteen_scalar_calls() {
        // Counters that carry into the high word, wrap at u64::MAX, and ordinary ones.
        let starts = [0, 5, (1u64 << 32) - 7, u64::MAX - 3, 0x1234_5678_9abc];
        for (i, &index0) in starts.iter().enumerate() {
            let (seed, step) = (
                0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1),
                i as u32,
            );
            let got = philox_words_lanes(seed, Purpose::Dropout, step, index0);
            // Lane-major again: lane l's four words.
            let lanes = (0..PHILOX_LANES).map(|l| std::array::from_fn(|w| got[w][l]));
            for (lane, have) in lanes.enumerate() {
                let want = philox_words(
                    seed,
                    Purpose::Dropout,
                    step,
                    index0.wrapping_add(lane as u64),
                );
                assert_eq!(have, want, "index0 {index0} lane {lane}");
            }
        }
    }

    #[test]
    fn uniform_is_open_interval_and_normal_has_unit_moments() {
        assert!(uniform01(0) > 0.0 && uniform01(u32::MAX) < 1.0);
        let s = Stream::new(7, Purpose::Test, 3);
        let n = 200_000u64;
        let (mut m, mut v) = (0f64, 0f64);
        for i in 0..n {
            let z = s.normal(i) as f64;
            assert!(z.is_finite());
            m += z;
            v += z * z;
        }
        m /= n as f64;
        v = v / n as f64 - m * m;
        // Standard error of the mean is 1/sqrt(n) ~ 0.0022; of the variance ~ sqrt(2/n) ~ 0.0032.
        assert!(m.abs() < 0.01, "mean {m}");
        assert!((v - 1.0).abs() < 0.015, "var {v}");
    }
}
