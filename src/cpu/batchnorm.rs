//! BatchNorm2d over `[B][C][M][T]` with per-clip valid lengths: statistics use only the frames
//! `t < lens[b]` of each clip (all mel bins); outputs at `t ≥ lens[b]` are written as zero.
//! Training normalises with the biased batch variance and updates the running variance with
//! the unbiased one (n/(n−1)), exactly like torch; eval uses the running statistics.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::Float;
use rayon::prelude::*;

/// Per-channel statistics used by a forward pass (batch stats in training, running in eval).
#[derive(Clone, Debug, Default)]
pub struct BnStats<T> {
    pub mean: Vec<T>,
    pub invstd: Vec<T>,
    /// Biased batch variance (training only; empty in eval).
    pub var: Vec<T>,
    /// Number of values each channel's statistics cover.
    pub count: usize,
    pub train: bool,
}

fn valid_rows(
    lens: &[usize],
    c: usize,
    ch: usize,
    m: usize,
    t: usize,
) -> impl Iterator<Item = (usize, usize)> + '_ {
    // (start offset, length) of each valid mel row of channel `ch`.
    (0..lens.len()).flat_map(move |b| {
        let l = lens[b].min(t);
        (0..m).map(move |mo| (((b * c + ch) * m + mo) * t, l))
    })
}

/// Independent partial sums per channel reduction: a single running sum is a serial chain
/// of dependent adds (one per ~4 cycles); LANES of them vectorise. Only the rounding order
/// differs from a serial sum.
const LANES: usize = 16;

/// acc[i % LANES] += f(v[i]).
#[inline]
fn lane_sums<T: Float>(v: &[T], acc: &mut [T; LANES], f: impl Fn(T) -> T) {
    let ch = v.chunks_exact(LANES);
    let rem = ch.remainder();
    for c in ch {
        for i in 0..LANES {
            acc[i] = acc[i] + f(c[i]);
        }
    }
    for (i, a) in rem.iter().enumerate() {
        acc[i] = acc[i] + f(*a);
    }
}

/// Pairwise sum of the lanes.
#[inline]
fn combine<T: Float>(acc: &[T; LANES]) -> T {
    let mut w = *acc;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            w[i] = w[i] + w[i + n];
        }
    }
    w[0]
}

/// Batch statistics of every channel over the valid positions (two-pass, stable).
pub fn batch_stats<T: Float>(
    x: &[T],
    lens: &[usize],
    c: usize,
    m: usize,
    t: usize,
    eps: T,
) -> BnStats<T> {
    let count: usize = lens.iter().map(|&l| l.min(t) * m).sum();
    let nt = T::cst(count as f64);
    let st: Vec<(T, T)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = [T::zero(); LANES];
            for (o, l) in valid_rows(lens, c, ch, m, t) {
                lane_sums(&x[o..o + l], &mut acc, |a| a);
            }
            let mean = combine(&acc) / nt;
            let mut acc = [T::zero(); LANES];
            for (o, l) in valid_rows(lens, c, ch, m, t) {
                lane_sums(&x[o..o + l], &mut acc, |a| (a - mean) * (a - mean));
            }
            (mean, combine(&acc) / nt)
        })
        .collect();
    BnStats {
        mean: st.iter().map(|p| p.0).collect(),
        invstd: st.iter().map(|p| T::one() / (p.1 + eps).sqrt()).collect(),
        var: st.iter().map(|p| p.1).collect(),
        count,
        train: true,
    }
}

/// Statistics for eval mode from running mean/var.
pub fn running_stats<T: Float>(rm: &[T], rv: &[T], eps: T) -> BnStats<T> {
    BnStats {
        mean: rm.to_vec(),
        invstd: rv.iter().map(|&v| T::one() / (v + eps).sqrt()).collect(),
        var: Vec::new(),
        count: 0,
        train: false,
    }
}

/// y = gamma·(x−mean)·invstd + beta on valid positions, zero elsewhere.
#[allow(clippy::too_many_arguments)]
pub fn bn_apply<T: Float>(
    x: &[T],
    st: &BnStats<T>,
    gamma: &[T],
    beta: &[T],
    lens: &[usize],
    c: usize,
    m: usize,
    t: usize,
    y: &mut [T],
) {
    y.par_chunks_mut(m * t).enumerate().for_each(|(bc, yr)| {
        let (b, ch) = (bc / c, bc % c);
        let l = lens[b].min(t);
        let sc = gamma[ch] * st.invstd[ch];
        let sh = beta[ch] - st.mean[ch] * sc;
        let xr = &x[bc * m * t..(bc + 1) * m * t];
        for mo in 0..m {
            for (yv, xv) in yr[mo * t..mo * t + l]
                .iter_mut()
                .zip(&xr[mo * t..mo * t + l])
            {
                *yv = *xv * sc + sh;
            }
            yr[mo * t + l..(mo + 1) * t].fill(T::zero());
        }
    });
}

/// Training forward: returns the batch statistics used.
#[allow(clippy::too_many_arguments)]
pub fn bn_train_forward<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    lens: &[usize],
    c: usize,
    m: usize,
    t: usize,
    eps: T,
    y: &mut [T],
) -> BnStats<T> {
    let st = batch_stats(x, lens, c, m, t, eps);
    bn_apply(x, &st, gamma, beta, lens, c, m, t, y);
    st
}

/// torch's running-statistics update: r = (1−mom)·r + mom·batch (variance unbiased).
pub fn bn_update_running<T: Float>(
    st: &BnStats<T>,
    momentum: T,
    rm: &mut [T],
    rv: &mut [T],
    nbt: &mut T,
) {
    let n = st.count as f64;
    let unbias = T::cst(if n > 1.0 { n / (n - 1.0) } else { 1.0 });
    for ch in 0..rm.len() {
        rm[ch] = (T::one() - momentum) * rm[ch] + momentum * st.mean[ch];
        rv[ch] = (T::one() - momentum) * rv[ch] + momentum * st.var[ch] * unbias;
    }
    *nbt = *nbt + T::one();
}

/// Backward. dgamma, dbeta ACCUMULATE; dx is overwritten (zero at invalid positions).
/// In training mode the gradient flows through the batch statistics too.
#[allow(clippy::too_many_arguments)]
pub fn bn_backward<T: Float>(
    x: &[T],
    dy: &[T],
    st: &BnStats<T>,
    gamma: &[T],
    lens: &[usize],
    c: usize,
    m: usize,
    t: usize,
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    // Σ dy and Σ dy·xhat per channel over valid positions.
    let sums: Vec<(T, T)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mean, inv) = (st.mean[ch], st.invstd[ch]);
            let (mut sd, mut sdx) = ([T::zero(); LANES], [T::zero(); LANES]);
            for (o, l) in valid_rows(lens, c, ch, m, t) {
                let (dr, xr) = (&dy[o..o + l], &x[o..o + l]);
                let (dc, xc) = (dr.chunks_exact(LANES), xr.chunks_exact(LANES));
                let (d_rem, x_rem) = (dc.remainder(), xc.remainder());
                for (d, xv) in dc.zip(xc) {
                    for i in 0..LANES {
                        sd[i] = sd[i] + d[i];
                        sdx[i] = sdx[i] + d[i] * (xv[i] - mean) * inv;
                    }
                }
                for (i, (d, xv)) in d_rem.iter().zip(x_rem).enumerate() {
                    sd[i] = sd[i] + *d;
                    sdx[i] = sdx[i] + *d * (*xv - mean) * inv;
                }
            }
            (combine(&sd), combine(&sdx))
        })
        .collect();
    for ch in 0..c {
        dbeta[ch] = dbeta[ch] + sums[ch].0;
        dgamma[ch] = dgamma[ch] + sums[ch].1;
    }
    let n = T::cst(st.count.max(1) as f64);
    dx.par_chunks_mut(m * t).enumerate().for_each(|(bc, dxr)| {
        let (b, ch) = (bc / c, bc % c);
        let l = lens[b].min(t);
        let (mean, inv, g) = (st.mean[ch], st.invstd[ch], gamma[ch]);
        let o = bc * m * t;
        for mo in 0..m {
            let r = mo * t;
            for i in r..r + l {
                dxr[i] = if st.train {
                    let xh = (x[o + i] - mean) * inv;
                    g * inv * (dy[o + i] - sums[ch].0 / n - xh * sums[ch].1 / n)
                } else {
                    g * inv * dy[o + i]
                };
            }
            dxr[r + l..r + t].fill(T::zero());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::testutil::rand;
    use super::*;

    #[test]
    fn train_forward_normalises_valid_positions_only() {
        let (b, c, m, t) = (2, 3, 4, 6);
        let lens = [6, 3];
        let mut x = rand(b * c * m * t, 1);
        // Garbage in the padding must not change anything.
        for ch in 0..c {
            for mo in 0..m {
                for tt in 3..6 {
                    x[((c + ch) * m + mo) * t + tt] = 1e6;
                }
            }
        }
        let gamma = vec![1.0; c];
        let beta = vec![0.0; c];
        let mut y = vec![f64::NAN; x.len()];
        let st = bn_train_forward(&x, &gamma, &beta, &lens, c, m, t, 1e-5, &mut y);
        assert_eq!(st.count, (6 + 3) * m);
        for ch in 0..c {
            let vals: Vec<f64> = (0..b)
                .flat_map(|bb| {
                    (0..m).flat_map(move |mo| {
                        (0..lens[bb]).map(move |tt| ((bb * c + ch) * m + mo) * t + tt)
                    })
                })
                .map(|i| y[i])
                .collect();
            let n = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / n;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            assert!(mean.abs() < 1e-12);
            // var of the output = var/(var+eps) ≈ 1 - eps/var; data var ≈ 1/3
            assert!((var - 1.0).abs() < 1e-4, "{var}");
        }
        assert!(y[(c * m) * t + 5] == 0.0);
        // running update: unbiased variance, momentum 0.1
        let (mut rm, mut rv, mut nbt) = (vec![0.0; c], vec![1.0; c], 0.0);
        bn_update_running(&st, 0.1, &mut rm, &mut rv, &mut nbt);
        let nn = st.count as f64;
        assert!((rm[1] - 0.1 * st.mean[1]).abs() < 1e-15);
        assert!((rv[1] - (0.9 + 0.1 * st.var[1] * nn / (nn - 1.0))).abs() < 1e-15);
        assert_eq!(nbt, 1.0);
    }

    /// The lane-split reductions against plain serial sums, with rows long enough for full
    /// 16-lane blocks plus a remainder (37 and 21 valid frames): mean, variance, dbeta = Σ dy
    /// and dgamma = Σ dy·x̂ agree to f64 rounding (≤ 1e-12 relative for sums of ~1000
    /// terms of magnitude ≤ 1).
    #[test]
    fn lane_reductions_match_serial_sums() {
        let (b, c, m, t) = (2, 3, 5, 40);
        let lens = [37, 21];
        let x = rand(b * c * m * t, 7);
        let dy = rand(b * c * m * t, 8);
        let st = batch_stats(&x, &lens, c, m, t, 1e-5);
        let (mut dg, mut dbt) = (vec![0.0; c], vec![0.0; c]);
        let mut dx = vec![f64::NAN; x.len()];
        let gamma = vec![1.5; c];
        bn_backward(
            &x, &dy, &st, &gamma, &lens, c, m, t, &mut dx, &mut dg, &mut dbt,
        );
        for ch in 0..c {
            let idx: Vec<usize> = (0..b)
                .flat_map(|bb| {
                    (0..m).flat_map(move |mo| {
                        (0..lens[bb]).map(move |tt| ((bb * c + ch) * m + mo) * t + tt)
                    })
                })
                .collect();
            let n = idx.len() as f64;
            let mean = idx.iter().map(|&i| x[i]).sum::<f64>() / n;
            let var = idx.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (var + 1e-5).sqrt();
            let sd: f64 = idx.iter().map(|&i| dy[i]).sum();
            let sdx: f64 = idx.iter().map(|&i| dy[i] * (x[i] - mean) * inv).sum();
            let close = |a: f64, w: f64| (a - w).abs() <= 1e-12 * w.abs().max(1.0);
            assert!(close(st.mean[ch], mean), "{} {mean}", st.mean[ch]);
            assert!(close(st.var[ch], var), "{} {var}", st.var[ch]);
            assert!(close(dbt[ch], sd), "{} {sd}", dbt[ch]);
            assert!(close(dg[ch], sdx), "{} {sdx}", dg[ch]);
        }
    }
}
