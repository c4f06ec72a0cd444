//! One bidirectional LSTM layer (torch.nn.LSTM semantics, gate order i, f, g, o, both bias
//! vectors) over a padded batch with packed-sequence behaviour: clip b runs over its own
//! `lens[b]` frames in each direction (the reverse direction starts at frame `lens[b]−1`), and
//! outputs at `t ≥ lens[b]` are zero.
//!
//! Layouts: x `[B][T][din]`, out `[B][T][2H]` = [forward H | reverse H] per frame. Parameters
//! of the layer are one contiguous slice [forward | reverse], each direction
//! `w_ih [4H][din] | w_hh [4H][H] | b_ih [4H] | b_hh [4H]` (the PyTorch state_dict order, so
//! it is a plain sub-slice of the flat parameter buffer). The input projection of all frames
//! is one GEMM per direction; the recurrence runs per clip in parallel.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::{axpy, dot, gemm, Float};
use rayon::prelude::*;

/// Parameters of one direction: 4H·din + 4H·H + 8H.
pub fn dir_len(din: usize, h: usize) -> usize {
    4 * h * din + 4 * h * h + 8 * h
}

fn split<T>(p: &[T], din: usize, h: usize) -> (&[T], &[T], &[T], &[T]) {
    let (wi, r) = p.split_at(4 * h * din);
    let (wh, r) = r.split_at(4 * h * h);
    let (bi, bh) = r.split_at(4 * h);
    (wi, wh, bi, bh)
}

#[inline]
fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

/// What the backward pass needs, per clip b and direction d.
#[derive(Clone, Debug, Default)]
pub struct LstmCache<T> {
    /// gate activations `[B][2][T][4H]` (i, f, g, o after σ/tanh)
    pub gates: Vec<T>,
    /// cell state after each frame `[B][2][T][H]`
    pub c: Vec<T>,
    /// hidden state before each frame `[B][2][T][H]`
    pub hprev: Vec<T>,
    /// cell state before each frame `[B][2][T][H]`
    pub cprev: Vec<T>,
}

/// Shape of one layer.
#[derive(Clone, Copy, Debug)]
pub struct LstmShape {
    pub batch: usize,
    pub t: usize,
    pub din: usize,
    pub h: usize,
}

/// Forward of one bidirectional layer; `out` `[B][T][2H]` is overwritten.
pub fn lstm_layer_forward<T: Float>(
    x: &[T],
    lens: &[usize],
    p: &[T],
    s: &LstmShape,
    out: &mut [T],
) -> LstmCache<T> {
    let LstmShape { batch, t, din, h } = *s;
    let dl = dir_len(din, h);
    assert_eq!(p.len(), 2 * dl);
    assert_eq!(x.len(), batch * t * din);
    assert_eq!(out.len(), batch * t * 2 * h);
    let g4 = 4 * h;
    // Input projections of all frames: pre[d] = x W_ihᵀ + b_ih + b_hh, [B·T][4H].
    let pre: Vec<Vec<T>> = (0..2)
        .map(|d| {
            let (wi, _, bi, bh) = split(&p[d * dl..(d + 1) * dl], din, h);
            let bias: Vec<T> = bi.iter().zip(bh).map(|(a, b)| *a + *b).collect();
            let mut g = vec![T::zero(); batch * t * g4];
            for row in g.chunks_mut(g4) {
                row.copy_from_slice(&bias);
            }
            gemm(
                batch * t,
                g4,
                din,
                &mut g,
                g4,
                true,
                x,
                din,
                1,
                wi,
                1,
                din,
                true,
            );
            g
        })
        .collect();
    let per = 2 * t;
    let mut cache = LstmCache {
        gates: vec![T::zero(); batch * per * g4],
        c: vec![T::zero(); batch * per * h],
        hprev: vec![T::zero(); batch * per * h],
        cprev: vec![T::zero(); batch * per * h],
    };
    out.par_chunks_mut(t * 2 * h)
        .zip(cache.gates.par_chunks_mut(per * g4))
        .zip(cache.c.par_chunks_mut(per * h))
        .zip(cache.hprev.par_chunks_mut(per * h))
        .zip(cache.cprev.par_chunks_mut(per * h))
        .enumerate()
        .for_each(|(b, ((((ob, gb), cb), hpb), cpb))| {
            ob.fill(T::zero());
            let l = lens[b].min(t);
            for d in 0..2 {
                let (_, wh, _, _) = split(&p[d * dl..(d + 1) * dl], din, h);
                let mut hs = vec![T::zero(); h];
                let mut cs = vec![T::zero(); h];
                for step in 0..l {
                    let tt = if d == 0 { step } else { l - 1 - step };
                    let gi = (d * t + tt) * g4;
                    let si = (d * t + tt) * h;
                    hpb[si..si + h].copy_from_slice(&hs);
                    cpb[si..si + h].copy_from_slice(&cs);
                    let g = &mut gb[gi..gi + g4];
                    g.copy_from_slice(&pre[d][(b * t + tt) * g4..][..g4]);
                    for (r, gv) in g.iter_mut().enumerate() {
                        *gv = *gv + dot(&wh[r * h..(r + 1) * h], &hs);
                    }
                    for j in 0..h {
                        let i = sigmoid(g[j]);
                        let f = sigmoid(g[h + j]);
                        let gg = g[2 * h + j].tanh();
                        let o = sigmoid(g[3 * h + j]);
                        g[j] = i;
                        g[h + j] = f;
                        g[2 * h + j] = gg;
                        g[3 * h + j] = o;
                        cs[j] = f * cs[j] + i * gg;
                        hs[j] = o * cs[j].tanh();
                    }
                    cb[si..si + h].copy_from_slice(&cs);
                    ob[tt * 2 * h + d * h..][..h].copy_from_slice(&hs);
                }
            }
        });
    cache
}

/// Backward of one layer: `dp` (same layout as p) ACCUMULATES; `dx` `[B][T][din]` is
/// overwritten if given. dout at `t ≥ lens[b]` is ignored.
#[allow(clippy::too_many_arguments)]
pub fn lstm_layer_backward<T: Float>(
    x: &[T],
    lens: &[usize],
    p: &[T],
    s: &LstmShape,
    cache: &LstmCache<T>,
    dout: &[T],
    dx: Option<&mut [T]>,
    dp: &mut [T],
) {
    let LstmShape { batch, t, din, h } = *s;
    let dl = dir_len(din, h);
    let g4 = 4 * h;
    let per = 2 * t;
    // dG per clip `[B][2][T][4H]` (pre-activation gate gradients; zero at padded frames).
    let mut dg = vec![T::zero(); batch * per * g4];
    dg.par_chunks_mut(per * g4)
        .enumerate()
        .for_each(|(b, dgb)| {
            let l = lens[b].min(t);
            let gb = &cache.gates[b * per * g4..][..per * g4];
            let cb = &cache.c[b * per * h..][..per * h];
            let cpb = &cache.cprev[b * per * h..][..per * h];
            for d in 0..2 {
                let (_, wh, _, _) = split(&p[d * dl..(d + 1) * dl], din, h);
                let mut dh_next = vec![T::zero(); h];
                let mut dc_next = vec![T::zero(); h];
                for step in (0..l).rev() {
                    let tt = if d == 0 { step } else { l - 1 - step };
                    let gi = (d * t + tt) * g4;
                    let si = (d * t + tt) * h;
                    let g = &gb[gi..gi + g4];
                    let dgt = &mut dgb[gi..gi + g4];
                    let dob = &dout[(b * t + tt) * 2 * h + d * h..][..h];
                    for j in 0..h {
                        let (i, f, gg, o) = (g[j], g[h + j], g[2 * h + j], g[3 * h + j]);
                        let tc = cb[si + j].tanh();
                        let dh = dob[j] + dh_next[j];
                        let dc = dc_next[j] + dh * o * (T::one() - tc * tc);
                        dgt[j] = dc * gg * i * (T::one() - i);
                        dgt[h + j] = dc * cpb[si + j] * f * (T::one() - f);
                        dgt[2 * h + j] = dc * i * (T::one() - gg * gg);
                        dgt[3 * h + j] = dh * tc * o * (T::one() - o);
                        dc_next[j] = dc * f;
                    }
                    // dh_prev = W_hhᵀ dG
                    dh_next.fill(T::zero());
                    for (r, gv) in dgt.iter().enumerate() {
                        axpy(*gv, &wh[r * h..(r + 1) * h], &mut dh_next);
                    }
                }
            }
        });
    // Regroup by direction: dG_d `[B·T][4H]`, Hprev_d `[B·T][H]`, for the weight GEMMs.
    let mut dx_acc = dx;
    if let Some(dxs) = dx_acc.as_deref_mut() {
        dxs.fill(T::zero());
    }
    for d in 0..2 {
        let mut dgd = vec![T::zero(); batch * t * g4];
        let mut hpd = vec![T::zero(); batch * t * h];
        for b in 0..batch {
            dgd[b * t * g4..(b + 1) * t * g4]
                .copy_from_slice(&dg[(b * per + d * t) * g4..][..t * g4]);
            hpd[b * t * h..(b + 1) * t * h]
                .copy_from_slice(&cache.hprev[(b * per + d * t) * h..][..t * h]);
        }
        let (wi, _, _, _) = split(&p[d * dl..(d + 1) * dl], din, h);
        let gd = &mut dp[d * dl..(d + 1) * dl];
        let (gwi, r) = gd.split_at_mut(4 * h * din);
        let (gwh, r) = r.split_at_mut(4 * h * h);
        let (gbi, gbh) = r.split_at_mut(4 * h);
        let n = batch * t;
        gemm(g4, din, n, gwi, din, true, &dgd, 1, g4, x, din, 1, true);
        gemm(g4, h, n, gwh, h, true, &dgd, 1, g4, &hpd, h, 1, true);
        for row in dgd.chunks(g4) {
            axpy(T::one(), row, gbi);
            axpy(T::one(), row, gbh);
        }
        if let Some(dxs) = dx_acc.as_deref_mut() {
            gemm(n, din, g4, dxs, din, true, &dgd, g4, 1, wi, din, 1, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::rand;
    use super::*;

    /// Independent scalar implementation of one direction of torch's LSTM cell.
    #[test]
    fn forward_matches_scalar_reference_and_ignores_padding() {
        let s = LstmShape {
            batch: 2,
            t: 5,
            din: 3,
            h: 2,
        };
        let lens = [5, 3];
        let p: Vec<f64> = rand(2 * dir_len(3, 2), 1).iter().map(|v| v * 0.5).collect();
        let mut x = rand(2 * 5 * 3, 2);
        let mut out = vec![f64::NAN; 2 * 5 * 4];
        lstm_layer_forward(&x, &lens, &p, &s, &mut out);
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        for b in 0..2 {
            for d in 0..2 {
                let dl = dir_len(3, 2);
                let q = &p[d * dl..];
                let (wi, wh) = (&q[..24], &q[24..40]);
                let (bi, bh) = (&q[40..48], &q[48..56]);
                let (mut hs, mut cs) = ([0.0; 2], [0.0; 2]);
                let order: Vec<usize> = if d == 0 {
                    (0..lens[b]).collect()
                } else {
                    (0..lens[b]).rev().collect()
                };
                for tt in order {
                    let xt = &x[(b * 5 + tt) * 3..][..3];
                    let mut g = [0.0; 8];
                    for r in 0..8 {
                        g[r] = bi[r] + bh[r];
                        for k in 0..3 {
                            g[r] += wi[r * 3 + k] * xt[k];
                        }
                        for k in 0..2 {
                            g[r] += wh[r * 2 + k] * hs[k];
                        }
                    }
                    for j in 0..2 {
                        cs[j] = sig(g[2 + j]) * cs[j] + sig(g[j]) * g[4 + j].tanh();
                        hs[j] = sig(g[6 + j]) * cs[j].tanh();
                    }
                    for j in 0..2 {
                        let got = out[(b * 5 + tt) * 4 + d * 2 + j];
                        assert!((got - hs[j]).abs() < 1e-14, "{got} {}", hs[j]);
                    }
                }
            }
        }
        assert!(out[(5 + 4) * 4..].iter().all(|&v| v == 0.0));
        // Changing clip 1's padded frames changes nothing.
        for v in &mut x[(5 + 3) * 3..] {
            *v = 100.0;
        }
        let mut out2 = vec![0.0; out.len()];
        lstm_layer_forward(&x, &lens, &p, &s, &mut out2);
        assert_eq!(out, out2);
    }
}
