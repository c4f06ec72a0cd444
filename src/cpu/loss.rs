//! Softmax cross-entropy with torch.nn.CrossEntropyLoss semantics: optional class weights
//! (weighted mean Σ w_y ℓ / Σ w_y) and label smoothing ε:
//! loss = (1−ε)·Σ_i w_{y_i}(−log p_{i,y_i}) / W + (ε/C)·Σ_i Σ_c w_c(−log p_{i,c}) / W,
//! W = Σ_i w_{y_i} (= N without weights).
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::Float;

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
}
