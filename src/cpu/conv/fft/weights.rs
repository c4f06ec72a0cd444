//! The weight spectrum: the k×k taps to `G` on the grid by two small GEMMs against DFT
//! matrices ([`weight_spectrum`]), with the twiddles they use. Uses [`super::transform`].

use super::super::shape::ConvShape;
use super::transform::{Grid, Work};
use crate::cpu::scratch::{grow, with_thread_scratch};
use crate::cpu::{gemm, Float};
use rayon::prelude::*;

/// `exp(−2πi·f·(p − d)/n)` as (re, im), the phase reduced exactly in integers.
pub(super) fn twiddle(f: usize, d: usize, p: usize, n: usize) -> (f64, f64) {
    let u = (p as i64 - d as i64).rem_euclid(n as i64) as usize;
    let a = -2.0 * std::f64::consts::PI * ((f * u) % n) as f64 / n as f64;
    (a.cos(), a.sin())
}

/// DFT matrices of one call (see the module doc for the block orders).
pub(super) struct Twiddles<T> {
    /// `[s][f2][dj]`: E2 real / imaginary parts, `NH × k` each.
    pub(super) e2: Vec<T>,
    /// `[(s1,f1)][(di,s)]` (`2N1 × 2k`): real block form of E1, G = A2·Z.
    pub(super) a2: Vec<T>,
    /// `[(s,dj)][(s1,f2)]` (`2k × 2NH`): real block form of `(c_f2/N)·conj(E2)ᵀ` for dw
    /// (c = 1 at DC and Nyquist, 2 elsewhere: the half spectrum stands for the full one).
    pub(super) b2q: Vec<T>,
    /// `[di][(f1,s)]` (`k × 2N1`): `Re(conj(E1)·q) = E1r·qr + E1i·qi` for dw.
    pub(super) e1q: Vec<T>,
}

pub(super) fn twiddles<T: Float>(g: &Grid, k: usize) -> Twiddles<T> {
    let p = k / 2;
    let (n1, nh) = (g.n1, g.nh);
    let mut e2 = vec![T::zero(); 2 * nh * k];
    let mut b2q = vec![T::zero(); 4 * k * nh];
    let inv_n = 1.0 / (g.n1 * g.n2) as f64;
    for dj in 0..k {
        for f2 in 0..nh {
            let (c, s) = twiddle(f2, dj, p, g.n2);
            e2[f2 * k + dj] = T::cst(c);
            e2[(nh + f2) * k + dj] = T::cst(s);
            let wt = if f2 == 0 || 2 * f2 == g.n2 { 1.0 } else { 2.0 } * inv_n;
            // q = Σ conj(E2)·dG: qr = E2r·dGr + E2i·dGi, qi = E2r·dGi − E2i·dGr
            let (r0, r1) = (dj * 2 * nh, (k + dj) * 2 * nh);
            b2q[r0 + f2] = T::cst(c * wt);
            b2q[r0 + nh + f2] = T::cst(s * wt);
            b2q[r1 + f2] = T::cst(-s * wt);
            b2q[r1 + nh + f2] = T::cst(c * wt);
        }
    }
    let mut a2 = vec![T::zero(); 4 * n1 * k];
    let mut e1q = vec![T::zero(); 2 * k * n1];
    for f1 in 0..n1 {
        for di in 0..k {
            let (c, s) = twiddle(f1, di, p, n1);
            e1q[di * 2 * n1 + 2 * f1] = T::cst(c);
            e1q[di * 2 * n1 + 2 * f1 + 1] = T::cst(s);
            let (c, s) = (T::cst(c), T::cst(s));
            // G = E1·Z: Gr = E1r·Zr − E1i·Zi, Gi = E1i·Zr + E1r·Zi
            let r0 = f1 * 2 * k;
            let r1 = (n1 + f1) * 2 * k;
            a2[r0 + 2 * di] = c;
            a2[r0 + 2 * di + 1] = -s;
            a2[r1 + 2 * di] = s;
            a2[r1 + 2 * di + 1] = c;
        }
    }
    Twiddles { e2, a2, b2q, e1q }
}

/// Weight spectrum `g` (`[co][s][f1][f2][ci]`) of w (`[cout][cin][k][k]`), per output
/// channel: `Z = E2·w` along time, then `G = E1·Z` along mels (two GEMMs; Z stays in cache).
pub(super) fn weight_spectrum<T: Float>(
    w: &[T],
    s: &ConvShape,
    g: &Grid,
    tw: &Twiddles<T>,
    gs: &mut [T],
) {
    let (k, cin, nh, n1) = (s.k, s.cin, g.nh, g.n1);
    let kk = k * k;
    gs.par_chunks_mut(2 * n1 * nh * cin)
        .enumerate()
        .for_each(|(co, gco)| {
            with_thread_scratch(|wk: &mut Work<T>| {
                // Z[(di,s)][f2][ci] = Σ_dj E2_s[f2][dj]·w[co][ci][di][dj]
                let z = grow(&mut wk.z, 2 * k * nh * cin);
                for di in 0..k {
                    for sp in 0..2 {
                        gemm(
                            nh,
                            cin,
                            k,
                            &mut z[(2 * di + sp) * nh * cin..],
                            cin,
                            false,
                            &tw.e2[sp * nh * k..],
                            k,
                            1,
                            &w[co * cin * kk + di * k..],
                            1,
                            kk,
                            false,
                        );
                    }
                }
                // G[(s1,f1)][(f2,ci)] = Σ_(di,s) A2[(s1,f1)][(di,s)]·Z[(di,s)][(f2,ci)]
                gemm(
                    2 * n1,
                    nh * cin,
                    2 * k,
                    gco,
                    nh * cin,
                    false,
                    &tw.a2,
                    2 * k,
                    1,
                    z,
                    nh * cin,
                    1,
                    false,
                );
            })
        });
}
