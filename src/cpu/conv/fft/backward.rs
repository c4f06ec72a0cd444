//! The FFT convolution backward: dx, dw and db from dy, reusing a forward's [`FftSaved`]
//! when given. Uses [`super::transform`], [`super::weights`] and [`super::forward`].

use super::super::shape::ConvShape;
use super::forward::FftSaved;
use super::transform::{inverse, max_len, plans, spectra, Big, Grid, Work};
use super::weights::{twiddles, weight_spectrum};
use crate::cpu::bf16::gemm_mixed;
use crate::cpu::scratch::{grow, with_thread_scratch};
use crate::cpu::{gemm, Float};
use rayon::prelude::*;

/// [`super::conv2d_backward`] computed with FFTs: dw and db ACCUMULATE; dx (if given)
/// is overwritten (zero at t ≥ `lens[b]`); dy at t ≥ `lens[b]` is ignored. `saved`: the spectra of
/// the step's forward ([`super::conv2d_forward_fft_saving`], same `x`, `w`, `lens`, `s`), or `None`
/// to transform x and w again: the same arithmetic on the same values, so the same bits
/// (tested).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_fft<T: Float>(
    saved: Option<&FftSaved<T>>,
    x: &[T],
    w: &[T],
    dy: &[T],
    lens: &[usize],
    s: &ConvShape,
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: &mut [T],
) {
    assert_eq!(x.len(), s.x_len());
    assert_eq!(dy.len(), s.y_len());
    assert_eq!(w.len(), s.w_len());
    assert_eq!(dw.len(), s.w_len());
    assert!(lens.len() >= s.batch && db.len() >= s.cout);
    let (b, cin, cout, k) = (s.batch, s.cin, s.cout, s.k);
    // db: per channel, clips in order (deterministic).
    db.par_iter_mut()
        .take(cout)
        .enumerate()
        .for_each(|(co, d)| {
            let mut acc = T::zero();
            for bi in 0..b {
                let l = lens[bi].min(s.t);
                let pl = &dy[(bi * cout + co) * s.m * s.t..][..s.m * s.t];
                acc = acc
                    + pl.chunks(s.t)
                        .map(|r| r[..l].iter().copied().sum::<T>())
                        .sum();
            }
            *d = *d + acc;
        });
    let lmax = max_len(lens, s);
    if lmax == 0 || s.m == 0 || cin == 0 || cout == 0 {
        if let Some(dx) = dx {
            dx.fill(T::zero());
        }
        return;
    }
    let g = Grid::new(s, lmax);
    let pl = plans::<T>(&g);
    let tw = twiddles::<T>(&g, k);
    let (n1, nh, np) = (g.n1, g.nh, g.np());
    let (pw, b2, grs) = (cout * cin, 2 * b, 2 * n1 * nh * cin);
    if let Some(sv) = saved {
        assert!(
            sv.shape == *s && sv.lmax == lmax,
            "FFT spectra saved for {:?} (longest clip {}) used for {s:?} (longest {lmax})",
            sv.shape,
            sv.lmax
        );
    }
    with_thread_scratch(|big: &mut Big<T>| {
        let xe: &[T] = match saved {
            Some(sv) => &sv.xe,
            None => {
                let xe = grow(&mut big.xe, 2 * cin * np * b2);
                spectra(x, cin, lens, s, &g, &pl, false, xe);
                xe
            }
        };
        // dY expanded with part 1 = [dYi | −dYr] (the conj(G) product)
        let dye = grow(&mut big.dye, 2 * cout * np * b2);
        spectra(dy, cout, lens, s, &g, &pl, true, dye);
        let gs: &[T] = match saved {
            _ if dx.is_none() => &[],
            Some(sv) => &sv.gs,
            None => {
                let gs = grow(&mut big.g, 2 * n1 * nh * pw);
                weight_spectrum(w, s, &g, &tw, gs);
                gs
            }
        };
        // q[f1][s][dj][co][ci] = Σ_f2 (c_f2/N)·conj(E2[f2][dj])·dG[f1][f2] (s: re / im): the
        // time lags of dG per mel bin. dG itself is only ever held one f1 row at a time (in
        // cache), never whole (N1·NH·P complex).
        let q = grow(&mut big.dg, n1 * 2 * k * pw);
        // dxs[f1][ci][f2][2B]
        let dxs = grow(&mut big.ys, if dx.is_some() { np * cin * b2 } else { 0 });
        let dye = &*dye;
        let mix = |f1: usize, qb: &mut [T], mut dxb: Option<&mut [T]>| {
            with_thread_scratch(|wk: &mut Work<T>| {
                let c = grow(&mut wk.c, 2 * cout * cin);
                // this f1 row of dG: dgb[(s,f2)][(co,ci)]
                let dgb = grow(&mut wk.z, 2 * nh * pw);
                for f2 in 0..nh {
                    let bin = (f1 * nh + f2) * b2;
                    if let Some(dxb) = dxb.as_deref_mut() {
                        // [dXr | dXi] = Grᵀ·[dYr | dYi] + Giᵀ·[dYi | −dYr]
                        for sp in 0..2 {
                            gemm_mixed(
                                cin,
                                b2,
                                cout,
                                &mut dxb[f2 * b2..],
                                nh * b2,
                                sp == 1,
                                &gs[(sp * n1 + f1) * nh * cin + f2 * cin..],
                                1,
                                grs,
                                &dye[sp * cout * np * b2 + bin..],
                                np * b2,
                                1,
                            );
                        }
                    }
                    // [dGr | dGi] = [dYr | dYi]·[[Xr, Xi], [−Xi, Xr]]ᵀ (sums over the batch)
                    gemm_mixed(
                        cout,
                        2 * cin,
                        b2,
                        c,
                        2 * cin,
                        false,
                        &dye[bin..],
                        np * b2,
                        1,
                        &xe[bin..],
                        1,
                        np * b2,
                    );
                    for sp in 0..2 {
                        let dst = &mut dgb[(sp * nh + f2) * pw..][..pw];
                        let src = c.chunks_exact(cin).skip(sp).step_by(2);
                        for (d, s) in dst.chunks_exact_mut(cin).zip(src) {
                            d.copy_from_slice(s);
                        }
                    }
                }
                // qb[(s,dj)][(co,ci)] = Σ_(s1,f2) B2[(s,dj)][(s1,f2)]·dgb[(s1,f2)][(co,ci)]
                gemm(
                    2 * k,
                    pw,
                    2 * nh,
                    qb,
                    pw,
                    false,
                    &tw.b2q,
                    2 * nh,
                    1,
                    dgb,
                    pw,
                    1,
                    false,
                );
            })
        };
        if dx.is_some() {
            q.par_chunks_mut(2 * k * pw)
                .zip(dxs.par_chunks_mut(nh * cin * b2))
                .enumerate()
                .for_each(|(f1, (qb, dxb))| mix(f1, qb, Some(dxb)));
        } else {
            q.par_chunks_mut(2 * k * pw)
                .enumerate()
                .for_each(|(f1, qb)| mix(f1, qb, None));
        }
        if let Some(dx) = dx {
            inverse(dxs, cin, lens, s, &g, &pl, None, dx);
        }
        // dw[co][ci][di][dj] += Σ_f1 Re(conj(E1[f1][di])·q[f1][dj]), per dj as a GEMM
        // lags[dj][di][(co,ci)] over (f1, s), then added in a fixed order.
        let q = &*q;
        let lags: Vec<Vec<T>> = (0..k)
            .into_par_iter()
            .map(|dj| {
                let mut out = vec![T::zero(); k * pw];
                gemm(
                    k,
                    pw,
                    2 * n1,
                    &mut out,
                    pw,
                    false,
                    &tw.e1q,
                    2 * n1,
                    1,
                    &q[dj * pw..],
                    k * pw,
                    1,
                    false,
                );
                out
            })
            .collect();
        let kk = k * k;
        for (p, dwp) in dw.chunks_exact_mut(kk).enumerate() {
            for di in 0..k {
                for (dj, l) in lags.iter().enumerate() {
                    dwp[di * k + dj] = dwp[di * k + dj] + l[di * pw + p];
                }
            }
        }
    });
}
