//! BatchNorm2d over `[B][C][M][T]` with per-clip valid lengths: statistics use only the frames
//! t < lens[b] of each clip (all mel bins); outputs at t ≥ lens[b] are written as zero.
//! Training normalises with the biased batch variance and updates the running variance with
//! the unbiased one (n/(n−1)), exactly like torch; eval uses the running statistics.

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
            let mut s = T::zero();
            for (o, l) in valid_rows(lens, c, ch, m, t) {
                s = s + x[o..o + l].iter().copied().sum::<T>();
            }
            let mean = s / nt;
            let mut v = T::zero();
            for (o, l) in valid_rows(lens, c, ch, m, t) {
                v = v + x[o..o + l]
                    .iter()
                    .map(|&a| (a - mean) * (a - mean))
                    .sum::<T>();
            }
            (mean, v / nt)
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
            let (mut sd, mut sdx) = (T::zero(), T::zero());
            for (o, l) in valid_rows(lens, c, ch, m, t) {
                for (d, xv) in dy[o..o + l].iter().zip(&x[o..o + l]) {
                    sd = sd + *d;
                    sdx = sdx + *d * (*xv - mean) * inv;
                }
            }
            (sd, sdx)
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
}
