//! Mixup (`--mixup ALPHA`; Zhang et al., "mixup: Beyond empirical risk minimization", ICLR
//! 2018): each training batch is mixed with a permutation of itself, inputs and targets alike,
//! with one λ ~ Beta(α, α) per batch as the paper's code does. The loss side (soft targets,
//! smoothed then mixed) is [`crate::backend::mixup`].
//!
//! λ and the permutation come from Philox (`Purpose::Mixup`, keyed by seed and step) on the
//! host, so every device trains on the same mixed batch. Words 0.. of the stream shuffle the
//! batch (Fisher–Yates as `split::shuffle`); λ's two Gamma draws start at words 2^32 and 2^33.
//!
//! Layer: train (below cli, above engine and cpu). May use `backend`, `cpu`, `features`,
//! `model`, `audio`, `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`);
//! never `cli`, and `engine` only in `devices.rs` (the one place a backend is chosen).

use crate::backend::batch::Batch;
use crate::backend::mixup::Mix;
use crate::rng::{Purpose, Stream};

/// Largest `--mixup` α (Beta(10, 10) already keeps λ within 0.5 ± 0.25 most of the time).
pub const MAX_ALPHA: f64 = 10.0;

/// Word offsets of λ's two Gamma draws in the step's stream (the permutation uses words below
/// the batch size).
const GAMMA_X: u64 = 1 << 32;
const GAMMA_Y: u64 = 1 << 33;
/// Marsaglia–Tsang accepts more than 95% of its tries for shape ≥ 1; past this many (never
/// reached in practice: 0.05^64) the draw returns the distribution's mode.
const MAX_TRIES: u64 = 64;

/// Uniform in (0, 1) from one 32-bit word, in f64.
fn uniform(s: &Stream, n: u64) -> f64 {
    (s.word(n) as f64 + 0.5) / 4_294_967_296.0
}

/// Gamma(shape, 1) by Marsaglia and Tsang (2000), with Gamma(k) = Gamma(k + 1)·U^(1/k) for
/// k < 1. Try t uses words base + 4t .. base + 4t + 2; the boost's uniform is the word after
/// the last try.
fn gamma(s: &Stream, base: u64, shape: f64) -> f64 {
    let k = if shape < 1.0 { shape + 1.0 } else { shape };
    let d = k - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    let mut g = d; // the mode of Gamma(k), if every try is refused
    for t in 0..MAX_TRIES {
        let w = base + 4 * t;
        // Box–Muller normal from two uniforms
        let z = (-2.0 * uniform(s, w).ln()).sqrt()
            * (2.0 * std::f64::consts::PI * uniform(s, w + 1)).cos();
        let v = (1.0 + c * z).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = uniform(s, w + 2);
        if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
            g = d * v;
            break;
        }
    }
    if shape < 1.0 {
        g * uniform(s, base + 4 * MAX_TRIES).powf(1.0 / shape)
    } else {
        g
    }
}

/// λ ~ Beta(α, α) and a permutation of `n` clips for training step `step`.
pub fn draw(alpha: f64, n: usize, seed: u64, step: u32) -> Mix {
    let s = Stream::new(seed, Purpose::Mixup, step);
    let x = gamma(&s, GAMMA_X, alpha);
    let y = gamma(&s, GAMMA_Y, alpha);
    let lambda = (x / (x + y)) as f32;
    let mut partner: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = s.below(i as u64, (i + 1) as u32) as usize;
        partner.swap(i, j);
    }
    Mix { lambda, partner }
}

/// Mixes `batch` in place for step `step`: x_i ← λ·x_i + (1 − λ)·x_j (j = partner(i)) over
/// every frame, and clip i's valid length becomes max(L_i, L_j) (the union of both masks).
/// Past its own length a clip's input is the batch padding, 0 in model units (−40 dB), so the
/// shorter clip contributes (1 − λ)·0 or λ·0 there. The batch then carries its [`Mix`] and
/// trains on soft targets.
pub fn mix_batch(batch: &mut Batch, alpha: f64, seed: u64, step: u32) {
    let mix = draw(alpha, batch.batch, seed, step);
    let row = batch.n_mels * batch.t_max;
    let (l, x0) = (mix.lambda, batch.x.clone());
    for (i, &j) in mix.partner.iter().enumerate() {
        let (a, b) = (&x0[i * row..][..row], &x0[j * row..][..row]);
        for ((o, &xa), &xb) in batch.x[i * row..][..row].iter_mut().zip(a).zip(b) {
            *o = l * xa + (1.0 - l) * xb;
        }
    }
    let lengths = batch.lengths.clone();
    for (i, &j) in mix.partner.iter().enumerate() {
        batch.lengths[i] = lengths[i].max(lengths[j]);
    }
    batch.mix = Some(mix);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_has_the_beta_moments_and_draws_repeat() {
        // Beta(α, α): mean 1/2, variance 1 / (4(2α + 1)). 20000 draws: the standard error of
        // the mean is ≤ 0.0036 and of the variance ≤ 0.0018 (fourth central moment ≤ 1/16),
        // so 0.015 and 0.008 are more than four standard errors.
        for alpha in [0.2, 0.4, 1.0, 4.0] {
            let n = 20_000u32;
            let l: Vec<f64> = (0..n).map(|s| draw(alpha, 4, 9, s).lambda as f64).collect();
            assert!(l.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
            let mean = l.iter().sum::<f64>() / n as f64;
            let var = l.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let want = 1.0 / (4.0 * (2.0 * alpha + 1.0));
            assert!((mean - 0.5).abs() < 0.015, "α {alpha}: mean {mean}");
            assert!((var - want).abs() < 0.008, "α {alpha}: var {var} vs {want}");
        }
        assert_eq!(draw(0.4, 16, 3, 7), draw(0.4, 16, 3, 7));
        assert_ne!(draw(0.4, 16, 3, 7), draw(0.4, 16, 3, 8));
        assert_ne!(draw(0.4, 16, 3, 7), draw(0.4, 16, 4, 7));
        let mut p = draw(0.4, 16, 3, 7).partner;
        p.sort_unstable();
        assert_eq!(p, (0..16).collect::<Vec<_>>());
    }

    #[test]
    fn mixing_blends_inputs_and_takes_the_union_of_lengths() {
        // 3 clips, 2 mels, t_max 4, lengths 4, 2, 3; x = 100·clip + 10·mel + frame in the valid
        // part, 0 (padding) past it
        let lengths = [4usize, 2, 3];
        let mut x = vec![0.0f32; 3 * 2 * 4];
        for (b, &len) in lengths.iter().enumerate() {
            for m in 0..2 {
                for t in 0..len {
                    x[(b * 2 + m) * 4 + t] = (100 * b + 10 * m + t) as f32;
                }
            }
        }
        let mut batch = Batch {
            x: x.clone(),
            batch: 3,
            n_mels: 2,
            t_max: 4,
            lengths: lengths.to_vec(),
            labels: vec![0, 1, 2],
            indices: vec![0, 1, 2],
            mix: None,
        };
        mix_batch(&mut batch, 0.4, 5, 2);
        let mix = batch.mix.clone().unwrap();
        assert_eq!(mix, draw(0.4, 3, 5, 2));
        let l = mix.lambda;
        for i in 0..3 {
            let j = mix.partner[i];
            assert_eq!(batch.lengths[i], lengths[i].max(lengths[j]));
            for k in 0..8 {
                let want = l * x[i * 8 + k] + (1.0 - l) * x[j * 8 + k];
                assert_eq!(batch.x[i * 8 + k], want, "clip {i} value {k}");
            }
        }
        // labels stay the clips' own: the targets come from them and the partners
        assert_eq!(batch.labels, vec![0, 1, 2]);
    }
}
