//! Mixup's soft targets (`--mixup`): what a mixed batch asks of the loss, shared by the CPU
//! reference and the device so both compute the same loss from the same numbers.
//!
//! A mixed batch (`train::mixup` draws it) holds clip i's input mixed with clip
//! `partner[i]`'s: x = λ·x_i + (1 − λ)·x_partner(i), one λ per batch. Its target is the same
//! mix of the two clips' label-smoothed one-hot vectors (smooth each, then mix):
//!
//! ```text
//! q_i = λ·s(y_i) + (1 − λ)·s(y_j),   s(y) = (1 − ε)·onehot(y) + ε/C,   j = partner(i)
//! loss = Σ_i Σ_c w_c·q_ic·(−log p_ic) / Σ_i (λ·w_{y_i} + (1 − λ)·w_{y_j})
//! ```
//!
//! with class weights w (all 1 without `--class-weights`). At λ = 1 this is exactly the
//! hard-label loss of `cpu::loss` (torch.nn.CrossEntropyLoss with weights and smoothing), and
//! without weights it is λ·loss(y_i) + (1 − λ)·loss(y_j), mixup's usual form.

/// How a batch was mixed: one λ for the batch, and each clip's partner (a batch position).
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    pub lambda: f32,
    pub partner: Vec<usize>,
}

/// The soft targets of a mixed batch, ready for the loss.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftTargets {
    /// q `[B][C]`: the mixed, smoothed targets (each row sums to 1).
    pub q: Vec<f32>,
    /// Per clip λ·w_{y_i} + (1 − λ)·w_{y_j} (λ·1 + (1 − λ)·1 = 1 without weights): the
    /// loss divides by their sum.
    pub row_weight: Vec<f32>,
    /// The λ-dominant label (y_i when λ ≥ 0.5, else y_partner(i)): train accuracy counts a
    /// clip as correct when its argmax is this label.
    pub dominant: Vec<usize>,
}

impl SoftTargets {
    /// Targets of a batch with `labels` mixed by `mix` (computed in f64, rounded once).
    /// Panics on a partner or label out of range (the mixer and the loader make them).
    pub fn new(
        labels: &[usize],
        mix: &Mix,
        classes: usize,
        label_smoothing: f64,
        class_weights: Option<&[f32]>,
    ) -> Self {
        let b = labels.len();
        assert_eq!(mix.partner.len(), b, "one partner per clip");
        let lambda = mix.lambda as f64;
        let eps = label_smoothing;
        let w = |c: usize| class_weights.map_or(1.0, |w| w[c] as f64);
        let mut q = vec![0.0f32; b * classes];
        let mut row_weight = Vec::with_capacity(b);
        let mut dominant = Vec::with_capacity(b);
        for (i, &yi) in labels.iter().enumerate() {
            let yj = labels[mix.partner[i]];
            assert!(
                yi < classes && yj < classes,
                "label out of range 0..{classes}"
            );
            for c in 0..classes {
                let s = |y: usize| (1.0 - eps) * f64::from(u8::from(c == y)) + eps / classes as f64;
                q[i * classes + c] = (lambda * s(yi) + (1.0 - lambda) * s(yj)) as f32;
            }
            row_weight.push((lambda * w(yi) + (1.0 - lambda) * w(yj)) as f32);
            dominant.push(if lambda >= 0.5 { yi } else { yj });
        }
        Self {
            q,
            row_weight,
            dominant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_smooth_each_label_then_mix() {
        // λ 0.75, ε 0.2, C 4: s(y) = 0.8·onehot + 0.05
        let mix = Mix {
            lambda: 0.75,
            partner: vec![1, 0, 2],
        };
        let t = SoftTargets::new(&[0, 3, 2], &mix, 4, 0.2, Some(&[1.0, 1.0, 2.0, 3.0]));
        let want0 = [
            0.75 * 0.85 + 0.25 * 0.05,
            0.05,
            0.05,
            0.75 * 0.05 + 0.25 * 0.85,
        ];
        for (g, w) in t.q[..4].iter().zip(want0) {
            assert!((*g as f64 - w).abs() < 1e-7, "{g} vs {w}");
        }
        // clip 2 is its own partner: its plain smoothed target
        assert_eq!(&t.q[8..], &[0.05, 0.05, 0.85, 0.05]);
        for row in t.q.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert_eq!(
            t.row_weight,
            vec![0.75 + 0.25 * 3.0, 0.75 * 3.0 + 0.25, 2.0]
        );
        assert_eq!(t.dominant, vec![0, 3, 2]);
        let low = Mix {
            lambda: 0.25,
            partner: vec![1, 0, 2],
        };
        assert_eq!(
            SoftTargets::new(&[0, 3, 2], &low, 4, 0.0, None).dominant,
            vec![3, 0, 2]
        );
    }
}
