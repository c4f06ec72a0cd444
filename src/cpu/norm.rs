//! Per-utterance normalisation of the model input ([`crate::model::InputNorm::Utterance`]):
//! the reference the device kernel (kernels/norm.cu) is checked against.

use super::Float;

/// In place on `x` `[batch][n_mels][t_max]`: for each clip b and band m, over the valid
/// frames `t < lengths[b]`, x ← (x − mean) / √(var + eps) with the population variance.
/// Sums in f64 (two passes: mean, then the centred squares), so the f32 result is the exact
/// value rounded once. Frames past a clip's length are left alone. Lengths must be ≤ t_max and
/// `x` must hold `lengths.len() · n_mels · t_max` values (callers validate the input first).
pub fn utterance_norm<T: Float>(
    x: &mut [T],
    n_mels: usize,
    t_max: usize,
    lengths: &[usize],
    eps: f64,
) {
    assert_eq!(x.len(), lengths.len() * n_mels * t_max, "input size");
    for (b, &len) in lengths.iter().enumerate() {
        assert!(len <= t_max, "clip {b}: length {len} > t_max {t_max}");
        if len == 0 {
            continue;
        }
        for m in 0..n_mels {
            let row = &mut x[(b * n_mels + m) * t_max..][..len];
            let mean = row.iter().map(|v| v.as_f64()).sum::<f64>() / len as f64;
            let var = row.iter().map(|v| (v.as_f64() - mean).powi(2)).sum::<f64>() / len as f64;
            let inv = 1.0 / (var + eps).sqrt();
            for v in row.iter_mut() {
                *v = T::cst((v.as_f64() - mean) * inv);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_band_gets_zero_mean_unit_variance_over_its_valid_frames_only() {
        // clip 0: 2 bands × 4 valid frames of 6; clip 1: 3 valid frames.
        let (n_mels, t_max) = (2, 6);
        let mut x = vec![
            1.0, 2.0, 3.0, 4.0, 99.0, 99.0, // b0 m0
            5.0, 5.0, 5.0, 5.0, -7.0, -7.0, // b0 m1: constant
            -1.0, 0.0, 4.0, 99.0, 99.0, 99.0, // b1 m0
            0.5, 0.5, 2.0, 99.0, 99.0, 99.0, // b1 m1
        ];
        utterance_norm::<f64>(&mut x, n_mels, t_max, &[4, 3], 1e-12);
        // b0 m0: mean 2.5, population variance 1.25 (not the sample variance 5/3).
        let s = 1.25f64.sqrt();
        let want0 = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s];
        for (g, w) in x[..4].iter().zip(want0) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }
        // padding untouched, constant band → 0 (ε keeps it finite)
        assert_eq!(&x[4..6], &[99.0, 99.0]);
        assert_eq!(&x[6..10], &[0.0; 4]);
        assert_eq!(&x[10..12], &[-7.0, -7.0]);
        // b1 m0: mean 1, deviations -2, -1, 3, variance 14/3
        let s = (14.0f64 / 3.0).sqrt();
        for (g, w) in x[12..15].iter().zip([-2.0 / s, -1.0 / s, 3.0 / s]) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }
        assert_eq!(&x[15..18], &[99.0; 3]);
        // b1 m1: mean 1, deviations -0.5, -0.5, 1, variance 0.5
        let s = 0.5f64.sqrt();
        for (g, w) in x[18..21].iter().zip([-0.5 / s, -0.5 / s, 1.0 / s]) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }
    }

    #[test]
    fn epsilon_bounds_the_gain_of_a_nearly_constant_band() {
        // deviations ±0.001 (population variance 1e-6) with ε = 1e-4: gain 1/√(1.01e-4) ≈ 99.5
        let mut x = vec![1.001f64, 0.999, 1.001, 0.999, 1.001, 0.999, 1.001, 0.999];
        utterance_norm(&mut x, 1, 8, &[8], 1e-4);
        let want = 0.001 / (1e-6f64 + 1e-4).sqrt();
        assert!(
            (x[0] - want).abs() < 1e-9 && (x[1] + want).abs() < 1e-9,
            "{x:?}"
        );
    }
}
