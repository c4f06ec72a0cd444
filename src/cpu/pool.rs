//! ReLU and 2×2 max pooling (stride 2, floor) over `[B][C][M][T]`, with the per-clip time mask
//! applied to the pooled output: pooled frames `t ≥ lens_out[b]` are zero and get no gradient.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::batchnorm::BnStats;
use super::Float;
use rayon::prelude::*;

/// y = max(x, 0) elementwise (in place allowed by passing the same data to both via copy).
pub fn relu_forward<T: Float>(x: &[T], y: &mut [T]) {
    y.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(yc, xc)| {
            for (a, b) in yc.iter_mut().zip(xc) {
                *a = if *b > T::zero() { *b } else { T::zero() };
            }
        });
}

/// x = max(x, 0) in place: same values as [`relu_forward`] without a second buffer (saves an
/// allocation and a pass over each conv stage's largest activation).
pub fn relu_inplace<T: Float>(x: &mut [T]) {
    x.par_chunks_mut(4096).for_each(|c| {
        for a in c.iter_mut() {
            *a = if *a > T::zero() { *a } else { T::zero() };
        }
    });
}

/// dx = dy where the ReLU output y > 0, else 0 (torch: gradient 0 at x ≤ 0).
pub fn relu_backward<T: Float>(y: &[T], dy: &[T], dx: &mut [T]) {
    dx.par_chunks_mut(4096)
        .zip(y.par_chunks(4096).zip(dy.par_chunks(4096)))
        .for_each(|(dc, (yc, gc))| {
            for ((d, yv), g) in dc.iter_mut().zip(yc).zip(gc) {
                *d = if *yv > T::zero() { *g } else { T::zero() };
            }
        });
}

/// Max pool 2×2: x `[B][C][M][T]` -> y `[B][C][M/2][T/2]`; `arg[i]` ∈ 0..4 is the winning
/// window element (row-major: (0,0),(0,1),(1,0),(1,1); the first maximum wins, like torch).
/// Outputs at pooled frame `t ≥ lens_out[b]` are zero (the mask).
#[allow(clippy::too_many_arguments)]
pub fn maxpool2_forward<T: Float>(
    x: &[T],
    lens_out: &[usize],
    c: usize,
    m: usize,
    t: usize,
    y: &mut [T],
    arg: &mut [u8],
) {
    let (mo, to) = (m / 2, t / 2);
    y.par_chunks_mut(mo * to)
        .zip(arg.par_chunks_mut(mo * to))
        .enumerate()
        .for_each(|(bc, (yr, ar))| {
            let l = lens_out[bc / c].min(to);
            let xr = &x[bc * m * t..(bc + 1) * m * t];
            for i in 0..mo {
                pool_row_pair(
                    &xr[2 * i * t..(2 * i + 1) * t],
                    &xr[(2 * i + 1) * t..(2 * i + 2) * t],
                    l,
                    &mut yr[i * to..(i + 1) * to],
                    &mut ar[i * to..(i + 1) * to],
                );
            }
        });
}

/// Pools mel rows r0, r1 into one output row: frames j < l get the window maximum and its
/// index, frames l.. of the row are zero (the time mask).
#[inline]
fn pool_row_pair<T: Float>(r0: &[T], r1: &[T], l: usize, yr: &mut [T], ar: &mut [u8]) {
    // Blocks of W frames (the last one partial; at stage 3 a row has only 15): de-interleave
    // the four window elements into lane arrays, then pick with branch-free selects over
    // whole lanes, which the compiler vectorises (the per-frame loop with data-dependent
    // branches was 8 % of an inference pass). Same comparisons in the same order as the
    // definition (first maximum wins, NaN wins), so the same results.
    const W: usize = 16;
    let mut j0 = 0;
    while j0 < l {
        // The last block is partial: its unused lanes hold zeros and are not written back.
        let n = W.min(l - j0);
        let mut v = [[T::zero(); W]; 4];
        for (i, j) in (j0..j0 + n).enumerate() {
            v[0][i] = r0[2 * j];
            v[1][i] = r0[2 * j + 1];
            v[2][i] = r1[2 * j];
            v[3][i] = r1[2 * j + 1];
        }
        let mut bv = v[0];
        let mut bi = [0u32; W];
        for (q, vq) in v.iter().enumerate().skip(1) {
            for i in 0..W {
                let take = vq[i] > bv[i] || vq[i].is_nan();
                bv[i] = if take { vq[i] } else { bv[i] };
                bi[i] = if take { q as u32 } else { bi[i] };
            }
        }
        yr[j0..j0 + n].copy_from_slice(&bv[..n]);
        for (a, b) in ar[j0..j0 + n].iter_mut().zip(&bi[..n]) {
            *a = *b as u8;
        }
        j0 += n;
    }
    yr[l..].fill(T::zero());
    ar[l..].fill(0);
}

/// BatchNorm (statistics `st`) + ReLU + 2×2 max pool in one sweep over each (clip, channel)
/// plane: `relu` (if given) gets relu(bn(x)) (`[B][C][M][T]`, zero at `t ≥ lens[b]`), `y`/`arg`
/// its pooled values and winners (`[B][C][M/2][T/2]`, zero past `lens_out[b]`). Bit-for-bit the
/// same as `bn_apply` → [`relu_inplace`] → [`maxpool2_forward`] (same per-element
/// arithmetic), but each pair of BN/ReLU rows is pooled while still in L1 instead of in two
/// more passes over the stage's largest activation. Without `relu` (inference: backward
/// needs no ReLU output) the rows live in a two-row scratch and the full-size activation is
/// never written.
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_maxpool2_forward<T: Float>(
    x: &[T],
    st: &BnStats<T>,
    gamma: &[T],
    beta: &[T],
    lens: &[usize],
    lens_out: &[usize],
    c: usize,
    m: usize,
    t: usize,
    relu: Option<&mut [T]>,
    y: &mut [T],
    arg: &mut [u8],
) {
    let (mo, to) = (m / 2, t / 2);
    assert_eq!(y.len(), x.len() / (m * t) * mo * to);
    // One plane; `rr` holds all M rows of relu(bn(x)) (`full`) or just the last two.
    let plane = |bc: usize, rr: &mut [T], full: bool, yr: &mut [T], ar: &mut [u8]| {
        let (b, ch) = (bc / c, bc % c);
        let (l, lo) = (lens[b].min(t), lens_out[b].min(to));
        // Same expression as bn_apply, so the values are identical.
        let sc = gamma[ch] * st.invstd[ch];
        let sh = beta[ch] - st.mean[ch] * sc;
        let xr = &x[bc * m * t..(bc + 1) * m * t];
        let row_at = |mi: usize| if full { mi * t } else { (mi % 2) * t };
        for mi in 0..m {
            let row = &mut rr[row_at(mi)..row_at(mi) + t];
            for (r, xv) in row[..l].iter_mut().zip(&xr[mi * t..mi * t + l]) {
                let v = *xv * sc + sh;
                *r = if v > T::zero() { v } else { T::zero() };
            }
            row[l..].fill(T::zero());
            if mi % 2 == 1 && mi / 2 < mo {
                let i = mi / 2;
                let (r0, r1) = (&rr[row_at(mi - 1)..][..t], &rr[row_at(mi)..][..t]);
                pool_row_pair(
                    r0,
                    r1,
                    lo,
                    &mut yr[i * to..(i + 1) * to],
                    &mut ar[i * to..(i + 1) * to],
                );
            }
        }
    };
    let planes = y
        .par_chunks_mut((mo * to).max(1))
        .zip(arg.par_chunks_mut((mo * to).max(1)));
    match relu {
        Some(relu) => {
            assert_eq!(relu.len(), x.len());
            relu.par_chunks_mut(m * t)
                .zip(planes)
                .enumerate()
                .for_each(|(bc, (rr, (yr, ar)))| plane(bc, rr, true, yr, ar));
        }
        None => planes.enumerate().for_each_init(
            || vec![T::zero(); 2 * t],
            |rows, (bc, (yr, ar))| plane(bc, rows, false, yr, ar),
        ),
    }
}

/// Backward of 2×2 max pool, optionally fused with the ReLU before it: dx (overwritten,
/// `[B][C][M][T]`) gets dy routed to each window's winner (valid frames only), zero elsewhere.
/// With `relu` (the ReLU output) the gradient passes only where it is positive: bit-for-bit
/// this function without `relu` followed by [`relu_backward`], without the intermediate
/// full-size gradient.
#[allow(clippy::too_many_arguments)]
pub fn maxpool2_backward<T: Float>(
    dy: &[T],
    arg: &[u8],
    relu: Option<&[T]>,
    lens_out: &[usize],
    c: usize,
    m: usize,
    t: usize,
    dx: &mut [T],
) {
    let (mo, to) = (m / 2, t / 2);
    if let Some(r) = relu {
        assert_eq!(r.len(), dx.len());
    }
    dx.par_chunks_mut(m * t).enumerate().for_each(|(bc, dr)| {
        dr.fill(T::zero());
        let l = lens_out[bc / c].min(to);
        let gy = &dy[bc * mo * to..(bc + 1) * mo * to];
        let ga = &arg[bc * mo * to..(bc + 1) * mo * to];
        let rr = relu.map(|r| &r[bc * m * t..(bc + 1) * m * t]);
        for i in 0..mo {
            for j in 0..l {
                let a = ga[i * to + j] as usize;
                let at = (2 * i + a / 2) * t + 2 * j + a % 2;
                if rr.is_none_or(|r| r[at] > T::zero()) {
                    dr[at] = gy[i * to + j];
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_picks_max_masks_and_routes_gradient() {
        // one clip, one channel, 2×6 → 1×3, lens_out 2 (third pooled frame masked)
        let x = [
            1.0, 5.0, -1.0, -2.0, 9.0, 9.0, 3.0, 2.0, -3.0, -0.5, 1.0, 1.0,
        ];
        let mut y = [f64::NAN; 3];
        let mut a = [9u8; 3];
        maxpool2_forward(&x, &[2], 1, 2, 6, &mut y, &mut a);
        assert_eq!(y, [5.0, -0.5, 0.0]);
        assert_eq!(a, [1, 3, 0]);
        let mut dx = [f64::NAN; 12];
        maxpool2_backward(&[10.0, 20.0, 30.0], &a, None, &[2], 1, 2, 6, &mut dx);
        let mut want = [0.0; 12];
        want[1] = 10.0;
        want[9] = 20.0;
        assert_eq!(dx, want);
        // odd sizes floor: 3×5 → 1×2
        let x3: Vec<f64> = (0..15).map(|v| v as f64).collect();
        let mut y3 = [0.0; 2];
        let mut a3 = [0u8; 2];
        maxpool2_forward(&x3, &[2], 1, 3, 5, &mut y3, &mut a3);
        assert_eq!(y3, [6.0, 8.0]);
    }

    #[test]
    fn relu_and_its_gradient() {
        let x = [-1.0f32, 0.0, 2.0];
        let mut y = [9.0; 3];
        relu_forward(&x, &mut y);
        assert_eq!(y, [0.0, 0.0, 2.0]);
        // In place gives the same values as out of place, NaN included (→ 0 in both).
        let xs = [-3.0f32, -0.0, 0.5, f32::NAN, 7.0, -1e-30];
        let mut yo = [9.0f32; 6];
        relu_forward(&xs, &mut yo);
        let mut yi = xs;
        relu_inplace(&mut yi);
        assert_eq!(yi.map(f32::to_bits), yo.map(f32::to_bits));
        let mut dx = [9.0; 3];
        relu_backward(&y, &[1.0, 1.0, 1.0], &mut dx);
        assert_eq!(dx, [0.0, 0.0, 1.0]);
    }

    /// The fused ops equal the unfused compositions bit for bit, on a shape with odd M and T,
    /// short clips, negative values (ReLU zeros, all-zero windows) and a NaN.
    #[test]
    fn fused_match_unfused_composition() {
        use super::super::batchnorm::{batch_stats, bn_apply};
        use super::super::testutil::rand;
        let (bsz, c, m, t) = (3, 2, 7, 11);
        let lens = [11, 6, 9];
        let lens_out: Vec<usize> = lens.iter().map(|l| l / 2).collect();
        let n = bsz * c * m * t;
        let mut x = rand(n, 21);
        let gamma = [0.7, -1.3];
        let beta = [0.2, -0.1];
        let st = batch_stats(&x, &lens, c, m, t, 1e-5);
        x[5] = f64::NAN; // after the statistics, so only this element is NaN

        // unfused
        let mut act = vec![f64::NAN; n];
        bn_apply(&x, &st, &gamma, &beta, &lens, c, m, t, &mut act);
        relu_inplace(&mut act);
        let po = bsz * c * (m / 2) * (t / 2);
        let (mut y0, mut a0) = (vec![f64::NAN; po], vec![9u8; po]);
        maxpool2_forward(&act, &lens_out, c, m, t, &mut y0, &mut a0);
        // fused
        let mut relu = vec![f64::NAN; n];
        let (mut y1, mut a1) = (vec![f64::NAN; po], vec![9u8; po]);
        bn_relu_maxpool2_forward(
            &x,
            &st,
            &gamma,
            &beta,
            &lens,
            &lens_out,
            c,
            m,
            t,
            Some(&mut relu),
            &mut y1,
            &mut a1,
        );
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&relu), bits(&act));
        assert_eq!(bits(&y1), bits(&y0));
        assert_eq!(a1, a0);
        // without the ReLU output (inference): the same pooled values and winners
        let (mut y2, mut a2) = (vec![f64::NAN; po], vec![9u8; po]);
        bn_relu_maxpool2_forward(
            &x, &st, &gamma, &beta, &lens, &lens_out, c, m, t, None, &mut y2, &mut a2,
        );
        assert_eq!(bits(&y2), bits(&y0));
        assert_eq!(a2, a0);
        assert!(relu.contains(&0.0) && relu.iter().any(|&v| v > 0.0));
        // backward
        let dy = rand(po, 22);
        let mut dpool = vec![f64::NAN; n];
        maxpool2_backward(&dy, &a0, None, &lens_out, c, m, t, &mut dpool);
        let mut dx0 = vec![f64::NAN; n];
        relu_backward(&act, &dpool, &mut dx0);
        let mut dx1 = vec![f64::NAN; n];
        maxpool2_backward(&dy, &a0, Some(&relu), &lens_out, c, m, t, &mut dx1);
        assert_eq!(bits(&dx1), bits(&dx0));
        // some winners are masked by the ReLU and some pass
        assert!(dx1.iter().filter(|&&v| v != 0.0).count() > 0);
        assert!(dpool.iter().zip(&dx1).any(|(a, b)| *a != 0.0 && *b == 0.0));
    }

    /// The blocked pooling kernel against the plain definition (first maximum wins, NaN
    /// wins) on rows long enough for several vector blocks plus a tail, with ties and NaNs.
    #[test]
    fn pool_row_pair_matches_definition() {
        use super::super::testutil::rand;
        let to = 45;
        let mut r0: Vec<f64> = rand(2 * to + 1, 31)
            .iter()
            .map(|v| (v * 4.0).round())
            .collect();
        let r1: Vec<f64> = rand(2 * to + 1, 32)
            .iter()
            .map(|v| (v * 4.0).round())
            .collect();
        r0[7] = f64::NAN;
        r0[40] = f64::NAN;
        for l in [0, 5, 16, 33, 40] {
            let (mut y, mut a) = (vec![f64::NAN; to], vec![9u8; to]);
            pool_row_pair(&r0, &r1, l, &mut y, &mut a);
            for j in 0..to {
                if j >= l {
                    assert!(y[j] == 0.0 && a[j] == 0);
                    continue;
                }
                let v = [r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]];
                let mut best = 0;
                for q in 1..4 {
                    if v[q] > v[best] || v[q].is_nan() {
                        best = q;
                    }
                }
                assert_eq!(a[j] as usize, best, "l {l} j {j}");
                assert_eq!(y[j].to_bits(), v[best].to_bits(), "l {l} j {j}");
            }
        }
        // the data has ties (rounded values) so first-wins is exercised
        assert!((0..to).any(|j| r0[2 * j] == r0[2 * j + 1]));
    }
}
