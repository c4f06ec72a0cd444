//! Attention pooling over frames: e_t = tanh(w·h_t + b), α = softmax of e over the clip's
//! valid frames `t < lens[b]` only, context c = Σ_t α_t h_t.
//! Layouts: h `[B][T][D]`, w `[D]` (torch `[1][D]`), b `[1]`, α and e `[B][T]` (zero at
//! padded frames), c `[B][D]`.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::{axpy, dot, Float};

/// Saved for the backward pass.
#[derive(Clone, Debug, Default)]
pub struct AttnCache<T> {
    pub e: Vec<T>,
    pub alpha: Vec<T>,
}

/// Returns (context `[B][D]`, cache).
pub fn attention_forward<T: Float>(
    h: &[T],
    lens: &[usize],
    w: &[T],
    bias: T,
    batch: usize,
    t: usize,
    d: usize,
) -> (Vec<T>, AttnCache<T>) {
    assert_eq!(h.len(), batch * t * d);
    let mut e = vec![T::zero(); batch * t];
    let mut alpha = vec![T::zero(); batch * t];
    let mut ctx = vec![T::zero(); batch * d];
    for b in 0..batch {
        let l = lens[b].min(t);
        let mut mx = T::neg_infinity();
        for tt in 0..l {
            let v = (dot(w, &h[(b * t + tt) * d..][..d]) + bias).tanh();
            e[b * t + tt] = v;
            mx = mx.max(v);
        }
        let mut sum = T::zero();
        for tt in 0..l {
            let a = (e[b * t + tt] - mx).exp();
            alpha[b * t + tt] = a;
            sum = sum + a;
        }
        for tt in 0..l {
            alpha[b * t + tt] = alpha[b * t + tt] / sum;
            axpy(
                alpha[b * t + tt],
                &h[(b * t + tt) * d..][..d],
                &mut ctx[b * d..(b + 1) * d],
            );
        }
    }
    (ctx, AttnCache { e, alpha })
}

/// dh `[B][T][D]` is overwritten (zero at padded frames); dw, db ACCUMULATE.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(
    h: &[T],
    lens: &[usize],
    w: &[T],
    cache: &AttnCache<T>,
    dctx: &[T],
    batch: usize,
    t: usize,
    d: usize,
    dh: &mut [T],
    dw: &mut [T],
    db: &mut T,
) {
    dh.fill(T::zero());
    for b in 0..batch {
        let l = lens[b].min(t);
        let dc = &dctx[b * d..(b + 1) * d];
        // dα_t = dc·h_t ; de_t = α_t (dα_t − Σ_s α_s dα_s)
        let da: Vec<T> = (0..l)
            .map(|tt| dot(dc, &h[(b * t + tt) * d..][..d]))
            .collect();
        let mean: T = (0..l).map(|tt| cache.alpha[b * t + tt] * da[tt]).sum();
        for tt in 0..l {
            let a = cache.alpha[b * t + tt];
            let ev = cache.e[b * t + tt];
            let dz = a * (da[tt] - mean) * (T::one() - ev * ev);
            let ht = &h[(b * t + tt) * d..][..d];
            let dht = &mut dh[(b * t + tt) * d..][..d];
            axpy(a, dc, dht);
            axpy(dz, w, dht);
            axpy(dz, ht, dw);
            *db = *db + dz;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::rand;
    use super::*;

    #[test]
    fn weights_sum_to_one_over_valid_frames() {
        let (b, t, d) = (2, 5, 3);
        let mut h = rand(b * t * d, 1);
        let w = rand(d, 2);
        let lens = [5, 2];
        let (c, cache) = attention_forward(&h, &lens, &w, 0.1, b, t, d);
        for bb in 0..b {
            let s: f64 = cache.alpha[bb * t..(bb + 1) * t].iter().sum();
            assert!((s - 1.0).abs() < 1e-14);
        }
        assert!(cache.alpha[t + 2..2 * t].iter().all(|&a| a == 0.0));
        // context of clip 1 by definition
        let z: Vec<f64> = (0..2)
            .map(|tt| (0..d).map(|k| w[k] * h[(t + tt) * d + k]).sum::<f64>() + 0.1)
            .map(f64::tanh)
            .collect();
        let ex: Vec<f64> = z.iter().map(|v| v.exp()).collect();
        let se: f64 = ex.iter().sum();
        for k in 0..d {
            let want = (0..2)
                .map(|tt| ex[tt] / se * h[(t + tt) * d + k])
                .sum::<f64>();
            assert!((c[d + k] - want).abs() < 1e-14);
        }
        // padded frames of clip 1 do not matter
        for v in &mut h[(t + 2) * d..] {
            *v = 50.0;
        }
        let (c2, _) = attention_forward(&h, &lens, &w, 0.1, b, t, d);
        assert_eq!(c, c2);
    }
}
