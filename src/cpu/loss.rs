//! Softmax cross-entropy with torch.nn.CrossEntropyLoss semantics: optional class weights
//! (weighted mean Σ w_y ℓ / Σ w_y) and label smoothing ε:
//! loss = (1−ε)·Σ_i w_{y_i}(−log p_{i,y_i}) / W + (ε/C)·Σ_i Σ_c w_c(−log p_{i,c}) / W,
//! W = Σ_i w_{y_i} (= N without weights).
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `backend`, `model` and the
//! shared modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::Float;
use crate::backend::mixup::SoftTargets;

/// Returns (mean loss, dloss/dlogits `[B][C]`, number of clips whose argmax is the label).
pub fn cross_entropy<T: Float>(
    logits: &[T],
    labels: &[usize],
    classes: usize,
    class_weights: Option<&[f32]>,
    label_smoothing: T,
) -> (T, Vec<T>, usize) {
    let n = labels.len();
    assert_eq!(logits.len(), n * classes, "logits must be [batch][classes]");
    let wt = |c: usize| class_weights.map_or(T::one(), |w| T::cst(w[c] as f64));
    let eps = label_smoothing;
    let sw: T = (0..classes).map(wt).sum();
    let wsum: T = labels.iter().map(|&y| wt(y)).sum();
    let cn = T::cst(classes as f64);
    let mut loss = T::zero();
    let mut grad = vec![T::zero(); n * classes];
    let mut correct = 0;
    for (i, &y) in labels.iter().enumerate() {
        assert!(y < classes, "label {y} out of range 0..{classes}");
        let z = &logits[i * classes..(i + 1) * classes];
        let mx = z.iter().copied().fold(T::neg_infinity(), T::max);
        let lse = mx + z.iter().map(|&v| (v - mx).exp()).sum::<T>().ln();
        // argmax, first maximum wins
        let am = (0..classes).fold(0, |b, c| if z[c] > z[b] { c } else { b });
        if am == y {
            correct += 1;
        }
        let logp = |c: usize| z[c] - lse;
        let smooth: T = (0..classes).map(|c| wt(c) * -logp(c)).sum();
        loss = loss + (T::one() - eps) * wt(y) * -logp(y) + eps / cn * smooth;
        for c in 0..classes {
            let p = logp(c).exp();
            let hard = if c == y { T::one() } else { T::zero() };
            grad[i * classes + c] =
                ((T::one() - eps) * wt(y) * (p - hard) + eps / cn * (sw * p - wt(c))) / wsum;
        }
    }
    (loss / wsum, grad, correct)
}

/// Soft-target cross-entropy of a mixed batch (`--mixup`; the definition is in
/// [`crate::backend::mixup`]): loss = Σ_i Σ_c w_c q_ic (−log p_ic) / Σ_i r_i with q the targets
/// and r their row weights, so dloss/dz_ic = (s_i p_ic − w_c q_ic) / Σ r, s_i = Σ_c w_c q_ic.
/// Returns (mean loss, dloss/dlogits `[B][C]`, clips whose argmax is the λ-dominant label).
pub fn cross_entropy_soft<T: Float>(
    logits: &[T],
    targets: &SoftTargets,
    classes: usize,
    class_weights: Option<&[f32]>,
) -> (T, Vec<T>, usize) {
    let n = targets.dominant.len();
    assert_eq!(logits.len(), n * classes, "logits must be [batch][classes]");
    assert_eq!(
        targets.q.len(),
        n * classes,
        "targets must be [batch][classes]"
    );
    let wt = |c: usize| class_weights.map_or(T::one(), |w| T::cst(w[c] as f64));
    let wsum: T = targets.row_weight.iter().map(|&r| T::cst(r as f64)).sum();
    let mut loss = T::zero();
    let mut grad = vec![T::zero(); n * classes];
    let mut correct = 0;
    for i in 0..n {
        let z = &logits[i * classes..(i + 1) * classes];
        let q = |c: usize| T::cst(targets.q[i * classes + c] as f64);
        let mx = z.iter().copied().fold(T::neg_infinity(), T::max);
        let lse = mx + z.iter().map(|&v| (v - mx).exp()).sum::<T>().ln();
        let am = (0..classes).fold(0, |b, c| if z[c] > z[b] { c } else { b });
        if am == targets.dominant[i] {
            correct += 1;
        }
        let s: T = (0..classes).map(|c| wt(c) * q(c)).sum();
        for c in 0..classes {
            loss = loss + wt(c) * q(c) * (lse - z[c]);
            let p = (z[c] - lse).exp();
            grad[i * classes + c] = (s * p - wt(c) * q(c)) / wsum;
        }
    }
    (loss / wsum, grad, correct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_cross_entropy_by_hand() {
        // logits [0, ln 3] → p = [1/4, 3/4]; label 1 → loss −ln(3/4); label 0 → −ln(1/4)
        let z = [0.0, 3f64.ln(), 0.0, 3f64.ln()];
        let (l, g, correct) = cross_entropy(&z, &[1, 0], 2, None, 0.0);
        let want = (-(0.75f64).ln() - (0.25f64).ln()) / 2.0;
        assert!((l - want).abs() < 1e-15);
        assert_eq!(correct, 1);
        assert!((g[0] - 0.25 / 2.0).abs() < 1e-15 && (g[1] + 0.25 / 2.0).abs() < 1e-15);
        assert!((g[2] - (0.25 - 1.0) / 2.0).abs() < 1e-15);
    }

    #[test]
    fn weights_and_smoothing_match_torch_formula() {
        // torch: loss = (1−ε)·nll_weighted_mean + ε/C · Σ_i Σ_c w_c(−log p_ic) / Σ_i w_{y_i}
        let z = [0.0, 3f64.ln(), 0.0, 3f64.ln()];
        let w = [2.0f32, 1.0];
        let (l, _, _) = cross_entropy(&z, &[1, 0], 2, Some(&w), 0.2);
        let (lp, lq) = ((0.25f64).ln(), (0.75f64).ln());
        let nll = (1.0 * -lq + 2.0 * -lp) / 3.0;
        let smooth = 2.0 * (2.0 * -lp + 1.0 * -lq) / 3.0;
        let want = 0.8 * nll + 0.2 / 2.0 * smooth;
        assert!((l - want).abs() < 1e-14, "{l} {want}");
    }

    #[test]
    fn soft_targets_of_a_mix_are_the_mix_of_the_hard_losses() {
        use crate::backend::mixup::{Mix, SoftTargets};
        // Without class weights the mixed loss is λ·loss(y_i) + (1 − λ)·loss(y_j) per clip.
        let z = [0.3f64, -1.2, 2.0, 0.7, 0.1, -0.4];
        let labels = [2, 0];
        let mix = Mix {
            lambda: 0.625,
            partner: vec![1, 0],
        };
        let t = SoftTargets::new(&labels, &mix, 3, 0.1, None);
        let (l, g, correct) = cross_entropy_soft(&z, &t, 3, None);
        let (la, ga, _) = cross_entropy(&z, &[2, 0], 3, None, 0.1);
        let (lb, gb, _) = cross_entropy(&z, &[0, 2], 3, None, 0.1);
        // the targets are rounded to f32 once (≤ 6e-8 each), times |log p| ≤ 4 over 3
        // classes: the loss and gradients agree to 1e-6, while a wrong formula is off by > 1e-2
        assert!((l - (0.625 * la + 0.375 * lb)).abs() < 1e-6, "{l}");
        for k in 0..6 {
            assert!((g[k] - (0.625 * ga[k] + 0.375 * gb[k])).abs() < 1e-6, "{k}");
        }
        // argmax of row 0 is class 2 (dominant label 2), of row 1 class 0 (dominant 0)
        assert_eq!(correct, 2);
        // λ = 1 with weights and smoothing is the hard-label loss exactly (weighted mean)
        let w = [2.0f32, 0.5, 1.5];
        let one = Mix {
            lambda: 1.0,
            partner: vec![1, 0],
        };
        let t1 = SoftTargets::new(&labels, &one, 3, 0.2, Some(&w));
        let (l1, g1, _) = cross_entropy_soft(&z, &t1, 3, Some(&w));
        let (lh, gh, _) = cross_entropy(&z, &labels, 3, Some(&w), 0.2);
        assert!((l1 - lh).abs() < 1e-6, "{l1} vs {lh}");
        for k in 0..6 {
            assert!((g1[k] - gh[k]).abs() < 1e-6, "{k}");
        }
    }
}
