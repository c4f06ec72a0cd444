//! The 2-D "same" convolution of [`super::direct`] computed with FFTs: same signatures, same
//! masking semantics, results equal to the direct (im2col + GEMM) convolution up to rounding.
//!
//! Why: at the model's stages 2 and 3 (k = 7, 32→64 and 64→128 channels) the direct
//! convolution costs ~800 MFLOP per clip each and already runs near the fp32 peak; in the
//! frequency domain the k×k spatial sum becomes one complex multiply per bin, so only the
//! per-bin channel mixing (`cout × cin × B` complex MACs) remains, ~10× fewer FLOPs.
//!
//! # Grid
//! One frequency grid per call, shared by the whole batch: `N1 ≥ M + p` mel bins and an even
//! `N2 ≥ Lmax + p` time bins, `p = k/2`, `Lmax` the longest valid clip, both 5-smooth
//! (2·3·5, the fastest rustfft sizes; 72 × 72 at stage 2, 36 × 36 at stage 3). Only outputs at `0 ≤ m < M`, `0 ≤ t < L` are kept, and they
//! read inputs at offsets `−p..=k−1−p`; with `N ≥ L + p` a circular wrap only ever lands in
//! the zero padding, so the circular convolution equals the linear one there (the same holds
//! for dx and for the `k×k` lags of dw). `NH = N2/2 + 1` bins are kept along time (real FFT).
//!
//! The conv is a cross-correlation, `y[m] = Σ_d w[d]·x[m + d − p]`, i.e. a circular
//! convolution with `g[(p − d) mod N] = w[d]`, so `Y = G·X` with
//! `G[f1][f2] = Σ_{di,dj} w[di][dj]·E1[f1][di]·E2[f2][dj]`, `E[f][d] = exp(−2πi·f·(p−d)/N)`.
//! `G` is computed from the k×k taps by two small GEMMs against these DFT matrices (9× fewer
//! FLOPs than FFTs of mostly-zero planes). Backward: `dX = conj(G)·dY`,
//! `dG = Σ_b dY·conj(X)`, and `dw[di][dj] = (1/N)·Σ_f Re(dG[f]·conj(E1[f1][di]·E2[f2][dj]))`
//! over the full spectrum = the half spectrum with weight 2 on bins other than `f2 = 0` and
//! `f2 = N2/2`.
//!
//! # Layouts (per call; `P = cout·cin` weight planes, `s` = 0 real / 1 imaginary part)
//! Every buffer is laid out so that, for one bin, each GEMM operand is a plain strided matrix
//! (no per-bin gathers) and each parallel job writes one contiguous chunk.
//! - `xe` / `dye`: expanded input (or dy) spectra `[2][c][f1][f2][2B]`: part 0 holds
//!   `[Re | Im]` of the B clips, part 1 `[−Im | Re]` (x) or `[Im | −Re]` (dy). For a bin,
//!   rows `(s, c)` are uniformly strided (`N1·NH·2B`). Built per channel (one real FFT per
//!   masked row, one complex FFT per column) by one job, which writes the B planes that share
//!   each cache line.
//! - `g`: weight spectrum `[co][s][f1][f2][ci]` real: for a bin, the `cout × cin` real (or
//!   imaginary) matrix has row stride `2·N1·NH·cin` and unit column stride.
//! - `ys` / `dxs`: mixed spectra `[f1][c][f2][2B]` (`[Re | Im]` per channel; one job per
//!   `f1`), read back per channel by the inverse transforms.
//! - dw: each `f1` job holds its row of `dG` (`[s][f2][co][ci]`, in cache) and reduces it
//!   at once to the k time lags `q[f1][s][dj][co][ci] = Σ_f2 (c_f2/N)·conj(E2[f2][dj])·dG`
//!   (one GEMM; `q` is `2k/NH`× smaller than dG); then `dw[..][di][dj] += Σ_f1
//!   Re(conj(E1[f1][di])·q[f1][dj])`, one GEMM per dj, added in a fixed order.
//!
//! Those buffers live in a per-thread cache on the calling thread (they grow to the largest
//! stage and are reused: no page faults on repeated calls). A training step's forward keeps
//! its `xe` and `g` instead ([`FftSaved`]) and hands them to the backward, which then
//! transforms only dy.
//!
//! Channel mixing per bin is real GEMMs on the expanded operands:
//! `[Yr | Yi] = Gr·[Xr | Xi] + Gi·[−Xi | Xr]`; `[dXr | dXi] = Grᵀ·[dYr | dYi] + Giᵀ·[dYi | −dYr]`;
//! `[dGr | dGi] = [dYr | dYi]·[[Xr, Xi], [−Xi, Xr]]ᵀ` (the sum over the batch is inside the
//! GEMM).
//!
//! # Determinism
//! Every reduction has a fixed order: FFTs per plane, GEMMs per bin (sum over channels and
//! over the batch inside one GEMM call), weight transforms per output channel; rayon only
//! distributes independent jobs, so results do not depend on the thread count.
//!
//! # Accuracy
//! FFT convolution error is norm-wise (`~ε·log N` relative to the whole output, not per
//! element): measured against the f64 direct conv, f64 agrees to ≤ 1e-15 relative norm and
//! f32 to ~2e-7 (≈ 3–5 ε, about the f32 direct conv's own error) on y, dx, dw and db. Outputs
//! much smaller than their plane's norm get the same absolute error, so a larger relative one
//! than with the direct conv; the tests bound 1e-12 (f64) and 2e-6 (f32) relative norm.

use super::shape::ConvShape;
use crate::cpu::bf16::gemm_mixed;
use crate::cpu::scratch::{grow, recycle, reuse, with_thread_scratch};
use crate::cpu::{gemm, Float};
use rayon::prelude::*;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// True when `n` has no prime factor above 5. (7-smooth sizes give slightly smaller grids,
/// e.g. 70 instead of 72 at stage 2, but measured ~9 % slower: rustfft's radix-7 path is
/// slower per point.)
fn is_smooth(mut n: usize) -> bool {
    if n == 0 {
        return false;
    }
    for q in [2, 3, 5] {
        while n.is_multiple_of(q) {
            n /= q;
        }
    }
    n == 1
}

/// Smallest 5-smooth number ≥ n (even if asked).
fn fft_size(n: usize, even: bool) -> usize {
    let mut m = n.max(if even { 2 } else { 1 });
    while !(is_smooth(m) && (!even || m.is_multiple_of(2))) {
        m += 1;
    }
    m
}

/// The frequency grid of one call (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grid {
    pub n1: usize,
    pub n2: usize,
    pub nh: usize,
}

impl Grid {
    pub(crate) fn new(s: &ConvShape, lmax: usize) -> Self {
        let p = s.k / 2;
        let n1 = fft_size(s.m + p, false);
        let n2 = fft_size(lmax + p, true);
        Grid {
            n1,
            n2,
            nh: n2 / 2 + 1,
        }
    }
    /// Complex bins per plane.
    fn np(&self) -> usize {
        self.n1 * self.nh
    }
}

/// FFT plans for one grid, shared by all threads.
#[derive(Clone)]
struct Plans<T: Float> {
    r2c: Arc<dyn RealToComplex<T>>,
    c2r: Arc<dyn ComplexToReal<T>>,
    fwd: Arc<dyn Fft<T>>,
    inv: Arc<dyn Fft<T>>,
}

type PlanCache = Mutex<HashMap<(TypeId, usize, usize), Box<dyn Any + Send>>>;

/// Plans for (N1 columns, N2 rows), planned once per size and type for the process.
fn plans<T: Float>(g: &Grid) -> Plans<T> {
    static CACHE: OnceLock<PlanCache> = OnceLock::new();
    let key = (TypeId::of::<T>(), g.n1, g.n2);
    let mut c = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = c.get(&key).and_then(|b| b.downcast_ref::<Plans<T>>()) {
        return p.clone();
    }
    let mut rp = RealFftPlanner::<T>::new();
    let mut cp = FftPlanner::<T>::new();
    let p = Plans {
        r2c: rp.plan_fft_forward(g.n2),
        c2r: rp.plan_fft_inverse(g.n2),
        fwd: cp.plan_fft_forward(g.n1),
        inv: cp.plan_fft_inverse(g.n1),
    };
    c.insert(key, Box::new(p.clone()));
    p
}

/// Per-thread scratch of the plane FFTs and the per-bin mixing.
struct Work<T: Float> {
    row: Vec<T>,
    rspec: Vec<Complex<T>>,
    col: Vec<Complex<T>>,
    fscr: Vec<Complex<T>>,
    c: Vec<T>,
    z: Vec<T>,
}

impl<T: Float> Default for Work<T> {
    fn default() -> Self {
        Work {
            row: Vec::new(),
            rspec: Vec::new(),
            col: Vec::new(),
            fscr: Vec::new(),
            c: Vec::new(),
            z: Vec::new(),
        }
    }
}

/// Large per-call buffers, kept on the calling thread between calls (reused by every conv
/// stage: they grow to the largest).
struct Big<T: Float> {
    xe: Vec<T>,
    dye: Vec<T>,
    ys: Vec<T>,
    g: Vec<T>,
    dg: Vec<T>,
}

impl<T: Float> Default for Big<T> {
    fn default() -> Self {
        Big {
            xe: Vec::new(),
            dye: Vec::new(),
            ys: Vec::new(),
            g: Vec::new(),
            dg: Vec::new(),
        }
    }
}

/// Scratch length of every transform of the plans.
fn scratch_len<T: Float>(pl: &Plans<T>) -> usize {
    pl.r2c
        .get_scratch_len()
        .max(pl.fwd.get_inplace_scratch_len())
        .max(pl.c2r.get_scratch_len())
        .max(pl.inv.get_inplace_scratch_len())
}

/// Spectrum of one masked plane into `w.col`, column-major `[f2][f1]` (`NH × N1`): `src` is
/// `[M][t]` with `l` valid frames per row (frames ≥ l read as zero, rows ≥ M are zero).
fn fft_plane<T: Float>(
    src: &[T],
    s: &ConvShape,
    l: usize,
    g: &Grid,
    pl: &Plans<T>,
    w: &mut Work<T>,
) {
    let (n1, nh) = (g.n1, g.nh);
    let row = grow(&mut w.row, g.n2);
    let rspec = grow(&mut w.rspec, nh);
    // Column-major so each column FFT runs on contiguous data.
    let col = grow(&mut w.col, nh * n1);
    let fscr = grow(&mut w.fscr, scratch_len(pl));
    for m in 0..s.m {
        row[..l].copy_from_slice(&src[m * s.t..m * s.t + l]);
        row[l..].fill(T::zero());
        pl.r2c
            .process_with_scratch(row, rspec, fscr)
            .expect("r2c sizes match the plan");
        for (f2, v) in rspec.iter().enumerate() {
            col[f2 * n1 + m] = *v;
        }
    }
    for f2 in 0..nh {
        col[f2 * n1 + s.m..(f2 + 1) * n1].fill(Complex::new(T::zero(), T::zero()));
    }
    pl.fwd.process_with_scratch(col, fscr);
}

/// Expanded spectra of every masked `[M][T]` plane of `x` (`[B][c][M][T]`) into `xe`,
/// `[2][c][f1][f2][2B]`: part 0 holds `[Re | Im]` of the B clips, part 1 `[−Im | Re]`
/// (`[Im | −Re]` if `swap`), so for a bin the `c × 2B` rows of either part are a plain
/// strided matrix (row stride `N1·NH·2B`) for the mixing GEMMs. Parallel over channels, so
/// one job writes the B planes that share each cache line.
#[allow(clippy::too_many_arguments)]
fn spectra<T: Float>(
    x: &[T],
    c: usize,
    lens: &[usize],
    s: &ConvShape,
    g: &Grid,
    pl: &Plans<T>,
    swap: bool,
    xe: &mut [T],
) {
    let (b, n1, nh) = (s.batch, g.n1, g.nh);
    let (ps, cs, b2) = (s.m * s.t, g.np() * 2 * b, 2 * b);
    let (p0, p1) = xe.split_at_mut(c * cs);
    p0.par_chunks_mut(cs)
        .zip(p1.par_chunks_mut(cs))
        .enumerate()
        .for_each(|(ch, (e0, e1))| {
            with_thread_scratch(|w: &mut Work<T>| {
                for (bi, &len) in lens[..b].iter().enumerate() {
                    let l = len.min(s.t);
                    let plane = bi * c + ch;
                    fft_plane(&x[plane * ps..(plane + 1) * ps], s, l, g, pl, w);
                    for f1 in 0..n1 {
                        for f2 in 0..nh {
                            let v = w.col[f2 * n1 + f1];
                            let o = (f1 * nh + f2) * b2 + bi;
                            e0[o] = v.re;
                            e0[o + b] = v.im;
                        }
                    }
                }
                // Part 1 from part 0 in one contiguous pass (cheaper than scattering it
                // per plane).
                for (d, s0) in e1.chunks_exact_mut(b2).zip(e0.chunks_exact(b2)) {
                    let (re, im) = s0.split_at(b);
                    let (d0, d1) = d.split_at_mut(b);
                    if swap {
                        d0.copy_from_slice(im);
                        for (o, v) in d1.iter_mut().zip(re) {
                            *o = -*v;
                        }
                    } else {
                        for (o, v) in d0.iter_mut().zip(im) {
                            *o = -*v;
                        }
                        d1.copy_from_slice(re);
                    }
                }
            })
        });
}

/// Inverse transforms of mixed spectra `spec` (`[f1][c][f2][2B]`, `[Re | Im]` per channel)
/// into `out` (`[B][c][M][T]`): real part / (N1·N2) + bias[ch] at frames < lens[b], zero
/// beyond. Parallel over channels (the B planes of a channel share cache lines of `spec`).
#[allow(clippy::too_many_arguments)]
fn inverse<T: Float>(
    spec: &[T],
    c: usize,
    lens: &[usize],
    s: &ConvShape,
    g: &Grid,
    pl: &Plans<T>,
    bias: Option<&[T]>,
    out: &mut [T],
) {
    let (b, n1, nh) = (s.batch, g.n1, g.nh);
    let b2 = 2 * b;
    let mut groups: Vec<Vec<(usize, &mut [T])>> = (0..c).map(|_| Vec::new()).collect();
    for (plane, op) in out.chunks_mut(s.m * s.t).enumerate() {
        groups[plane % c].push((plane / c, op));
    }
    let scale = T::one() / T::cst((g.n1 * g.n2) as f64);
    groups.into_par_iter().enumerate().for_each(|(ch, group)| {
        let bias = bias.map_or(T::zero(), |v| v[ch]);
        with_thread_scratch(|w: &mut Work<T>| {
            for (bi, op) in group {
                let l = lens[bi].min(s.t);
                let col = grow(&mut w.col, nh * n1);
                for f1 in 0..n1 {
                    for f2 in 0..nh {
                        let o = ((f1 * c + ch) * nh + f2) * b2 + bi;
                        col[f2 * n1 + f1] = Complex::new(spec[o], spec[o + b]);
                    }
                }
                let fscr = grow(&mut w.fscr, scratch_len(pl));
                pl.inv.process_with_scratch(col, fscr);
                let rspec = grow(&mut w.rspec, nh);
                let row = grow(&mut w.row, g.n2);
                for m in 0..s.m {
                    let dst = &mut op[m * s.t..(m + 1) * s.t];
                    if l == 0 {
                        dst.fill(T::zero());
                        continue;
                    }
                    for (f2, v) in rspec.iter_mut().enumerate() {
                        *v = col[f2 * n1 + m];
                    }
                    // The spectrum of a real row: DC and Nyquist are real (up to
                    // rounding, which the c2r transform rejects).
                    rspec[0].im = T::zero();
                    rspec[nh - 1].im = T::zero();
                    pl.c2r
                        .process_with_scratch(rspec, row, fscr)
                        .expect("c2r sizes match the plan");
                    for (d, v) in dst[..l].iter_mut().zip(&row[..l]) {
                        *d = *v * scale + bias;
                    }
                    dst[l..].fill(T::zero());
                }
            }
        })
    });
}

/// `exp(−2πi·f·(p − d)/n)` as (re, im), the phase reduced exactly in integers.
fn twiddle(f: usize, d: usize, p: usize, n: usize) -> (f64, f64) {
    let u = (p as i64 - d as i64).rem_euclid(n as i64) as usize;
    let a = -2.0 * std::f64::consts::PI * ((f * u) % n) as f64 / n as f64;
    (a.cos(), a.sin())
}

/// DFT matrices of one call (see the module doc for the block orders).
struct Twiddles<T> {
    /// `[s][f2][dj]`: E2 real / imaginary parts, `NH × k` each.
    e2: Vec<T>,
    /// `[(s1,f1)][(di,s)]` (`2N1 × 2k`): real block form of E1, G = A2·Z.
    a2: Vec<T>,
    /// `[(s,dj)][(s1,f2)]` (`2k × 2NH`): real block form of `(c_f2/N)·conj(E2)ᵀ` for dw
    /// (c = 1 at DC and Nyquist, 2 elsewhere: the half spectrum stands for the full one).
    b2q: Vec<T>,
    /// `[di][(f1,s)]` (`k × 2N1`): `Re(conj(E1)·q) = E1r·qr + E1i·qi` for dw.
    e1q: Vec<T>,
}

fn twiddles<T: Float>(g: &Grid, k: usize) -> Twiddles<T> {
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
fn weight_spectrum<T: Float>(w: &[T], s: &ConvShape, g: &Grid, tw: &Twiddles<T>, gs: &mut [T]) {
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

/// Longest valid clip (lens clamped to t).
fn max_len(lens: &[usize], s: &ConvShape) -> usize {
    lens[..s.batch]
        .iter()
        .map(|&l| l.min(s.t))
        .max()
        .unwrap_or(0)
}

/// What a training forward computed that its backward needs again: the expanded input
/// spectra `xe` ([`spectra`]) and the weight spectrum `gs` ([`weight_spectrum`]) on the
/// call's grid. Valid only for the same `x`, `w`, `lens` and shape (a training step's forward
/// and backward); saves one transform of every input plane and of the weights per stage and
/// step, and holds 66 MB (stage 2) and 56 MB (stage 3) of the default model at batch 16 ×
/// 126 frames until the step ends. Dropping it hands its buffers to this thread's
/// [`crate::cpu::scratch::recycle`] pool, so the next step's forward reuses them (no page faults).
#[derive(Clone, Debug, Default)]
pub struct FftSaved<T: Float> {
    shape: ConvShape,
    lmax: usize,
    xe: Vec<T>,
    gs: Vec<T>,
}

impl<T: Float> Drop for FftSaved<T> {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.xe));
        recycle(std::mem::take(&mut self.gs));
    }
}

/// [`super::conv2d_forward`] computed with FFTs (same layouts and semantics).
pub fn conv2d_forward_fft<T: Float>(
    x: &[T],
    w: &[T],
    bias: &[T],
    lens: &[usize],
    s: &ConvShape,
    y: &mut [T],
) {
    forward(x, w, bias, lens, s, y, false);
}

/// [`conv2d_forward_fft`] for a training step: also returns the spectra its backward
/// ([`conv2d_backward_fft`]) reuses (`None` when there is nothing to transform).
pub fn conv2d_forward_fft_saving<T: Float>(
    x: &[T],
    w: &[T],
    bias: &[T],
    lens: &[usize],
    s: &ConvShape,
    y: &mut [T],
) -> Option<FftSaved<T>> {
    forward(x, w, bias, lens, s, y, true)
}

fn forward<T: Float>(
    x: &[T],
    w: &[T],
    bias: &[T],
    lens: &[usize],
    s: &ConvShape,
    y: &mut [T],
    keep: bool,
) -> Option<FftSaved<T>> {
    assert_eq!(x.len(), s.x_len());
    assert_eq!(y.len(), s.y_len());
    assert_eq!(w.len(), s.w_len());
    assert!(lens.len() >= s.batch && bias.len() >= s.cout);
    let lmax = max_len(lens, s);
    if lmax == 0 || s.m == 0 || s.cin == 0 || s.cout == 0 {
        // No valid input: bias on valid frames (none when lmax = 0), zero elsewhere.
        for (plane, yp) in y.chunks_mut((s.m * s.t).max(1)).enumerate() {
            let l = lens[plane / s.cout.max(1)].min(s.t);
            for row in yp.chunks_mut(s.t.max(1)) {
                row[..l].fill(bias[plane % s.cout]);
                row[l..].fill(T::zero());
            }
        }
        return None;
    }
    let g = Grid::new(s, lmax);
    let pl = plans::<T>(&g);
    let tw = twiddles::<T>(&g, s.k);
    let (b, cin, cout, nh, np) = (s.batch, s.cin, s.cout, g.nh, g.np());
    let (b2, grs) = (2 * b, 2 * g.n1 * nh * cin);
    let (nxe, ngs) = (2 * cin * np * b2, 2 * g.n1 * nh * cout * cin);
    // Kept: buffers the caller will own (from the recycle pool); else this thread's.
    let mut saved = keep.then(|| FftSaved {
        shape: *s,
        lmax,
        xe: reuse(nxe),
        gs: reuse(ngs),
    });
    with_thread_scratch(|big: &mut Big<T>| {
        let (xe, gs) = match saved.as_mut() {
            Some(sv) => (&mut sv.xe[..], &mut sv.gs[..]),
            None => (grow(&mut big.xe, nxe), grow(&mut big.g, ngs)),
        };
        spectra(x, cin, lens, s, &g, &pl, false, xe);
        weight_spectrum(w, s, &g, &tw, gs);
        let (xe, gs) = (&*xe, &*gs);
        // ys[f1][co][f2][2B]: per bin [Yr | Yi] = Gr·[Xr | Xi] + Gi·[−Xi | Xr]
        let ys = grow(&mut big.ys, np * cout * b2);
        ys.par_chunks_mut(nh * cout * b2)
            .enumerate()
            .for_each(|(f1, yb)| {
                for f2 in 0..nh {
                    for sp in 0..2 {
                        gemm_mixed(
                            cout,
                            b2,
                            cin,
                            &mut yb[f2 * b2..],
                            nh * b2,
                            sp == 1,
                            &gs[(sp * g.n1 + f1) * nh * cin + f2 * cin..],
                            grs,
                            1,
                            &xe[sp * cin * np * b2 + (f1 * nh + f2) * b2..],
                            np * b2,
                            1,
                        );
                    }
                }
            });
        inverse(ys, cout, lens, s, &g, &pl, Some(bias), y);
    });
    saved
}

/// [`super::conv2d_backward`] computed with FFTs: dw and db ACCUMULATE; dx (if given)
/// is overwritten (zero at t ≥ lens[b]); dy at t ≥ lens[b] is ignored. `saved`: the spectra of
/// the step's forward ([`conv2d_forward_fft_saving`], same `x`, `w`, `lens`, `s`), or `None`
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

#[cfg(test)]
mod tests {
    use super::super::direct::{conv2d_backward_direct, conv2d_forward_direct};
    use super::*;
    use crate::rng::{Purpose, Stream};

    /// ‖a − b‖ / ‖b‖ (NaN if anything is NaN, and NaN fails every `<=` check).
    fn rel(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let den: f64 = b.iter().map(|y| y * y).sum();
        (num / den.max(f64::MIN_POSITIVE)).sqrt()
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    /// Values in [-1, 1) at valid frames and huge garbage (±1e6) at t ≥ lens[b], so any read
    /// past a clip's end shows up as a gross error.
    fn masked_data(st: &Stream, salt: u64, c: usize, lens: &[usize], s: &ConvShape) -> Vec<f64> {
        let n = lens.len() * c * s.m * s.t;
        (0..n)
            .map(|i| {
                let u = 2.0 * st.uniform(salt * 1_000_000 + i as u64) as f64 - 1.0;
                let t = i % s.t;
                let b = i / (c * s.m * s.t);
                if t < lens[b] {
                    u
                } else {
                    1e6 * u
                }
            })
            .collect()
    }

    /// Everything at frames ≥ lens[b] of `[B][c][M][T]` data is exactly zero.
    fn zero_past_end(v: &[f64], c: usize, lens: &[usize], s: &ConvShape) -> bool {
        v.chunks(s.t)
            .enumerate()
            .all(|(r, row)| row[lens[r / (c * s.m)]..].iter().all(|&x| x == 0.0))
    }

    /// One random problem: shape, lengths (clip 0 full, clip 1 of 1..=3 frames), data.
    struct Case {
        s: ConvShape,
        lens: Vec<usize>,
        x: Vec<f64>,
        w: Vec<f64>,
        bias: Vec<f64>,
        dy: Vec<f64>,
        dw0: Vec<f64>,
        db0: Vec<f64>,
    }

    fn case(i: u32) -> Case {
        let st = Stream::new(99, Purpose::Test, i);
        let r = |j: u64, lo: u32, hi: u32| lo as usize + st.below(j, hi - lo + 1) as usize;
        let s = ConvShape {
            batch: r(0, 1, 5),
            cin: r(1, 1, 9),
            cout: r(2, 1, 9),
            k: [3, 5, 7, 9, 11][r(3, 0, 4)],
            m: r(4, 5, 40),
            t: r(5, 5, 60),
        };
        let lens: Vec<usize> = (0..s.batch)
            .map(|b| match b {
                0 => s.t,
                1 => r(10 + b as u64, 1, 3),
                _ => r(10 + b as u64, 1, s.t as u32),
            })
            .collect();
        let u = |salt: u64, n: usize| -> Vec<f64> {
            (0..n)
                .map(|j| 2.0 * st.uniform(salt * 1_000_000 + j as u64) as f64 - 1.0)
                .collect()
        };
        Case {
            x: masked_data(&st, 100, s.cin, &lens, &s),
            dy: masked_data(&st, 101, s.cout, &lens, &s),
            w: u(102, s.w_len()),
            bias: u(103, s.cout),
            dw0: u(104, s.w_len()),
            db0: u(105, s.cout),
            s,
            lens,
        }
    }

    /// Forward and backward in f64 through both algorithms: (y, dx, dw − dw0, db − db0).
    type Out = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

    fn run<T: Float>(c: &Case, fft: bool) -> Out {
        let cv = |v: &[f64]| v.iter().map(|&x| T::cst(x)).collect::<Vec<T>>();
        let back = |v: &[T]| v.iter().map(|x| x.as_f64()).collect::<Vec<f64>>();
        let s = &c.s;
        let (x, w, bias, dy) = (cv(&c.x), cv(&c.w), cv(&c.bias), cv(&c.dy));
        let mut y = vec![T::nan(); s.y_len()];
        let mut dx = vec![T::nan(); s.x_len()];
        let (mut dw, mut db) = (cv(&c.dw0), cv(&c.db0));
        if fft {
            conv2d_forward_fft(&x, &w, &bias, &c.lens, s, &mut y);
            conv2d_backward_fft(
                None,
                &x,
                &w,
                &dy,
                &c.lens,
                s,
                Some(&mut dx),
                &mut dw,
                &mut db,
            );
        } else {
            conv2d_forward_direct(&x, &w, &bias, &c.lens, s, &mut y);
            conv2d_backward_direct(&x, &w, &dy, &c.lens, s, Some(&mut dx), &mut dw, &mut db);
        }
        let ddw: Vec<f64> = back(&dw).iter().zip(&c.dw0).map(|(a, b)| a - b).collect();
        let ddb: Vec<f64> = back(&db).iter().zip(&c.db0).map(|(a, b)| a - b).collect();
        (back(&y), back(&dx), ddw, ddb)
    }

    fn errs(a: &Out, b: &Out) -> [f64; 4] {
        [
            rel(&a.0, &b.0),
            rel(&a.1, &b.1),
            rel(&a.2, &b.2),
            rel(&a.3, &b.3),
        ]
    }

    #[test]
    fn fft_sizes_are_smooth_and_minimal() {
        for (n, want) in [(0, false), (1, true), (72, true), (70, false), (49, false)] {
            assert_eq!(is_smooth(n), want, "{n}");
        }
        for (n, want) in [
            (135, true),
            (138, false),
            (2 * 3 * 5 * 11, false),
            (1 << 10, true),
        ] {
            assert_eq!(is_smooth(n), want, "{n}");
        }
        // the model's stages 2 and 3: 64 mels + 3 → 72, 63 frames + 3 → 72; 35 → 36, 34 → 36
        assert_eq!((fft_size(67, false), fft_size(66, true)), (72, 72));
        assert_eq!((fft_size(35, false), fft_size(34, true)), (36, 36));
        for n in 1..300 {
            for even in [false, true] {
                let m = fft_size(n, even);
                assert!(
                    m >= n && is_smooth(m) && (!even || m.is_multiple_of(2)),
                    "{n} -> {m}"
                );
                assert!((n..m).all(|j| !(is_smooth(j) && (!even || j.is_multiple_of(2)))));
            }
        }
    }

    /// f64: FFT and direct agree to 1e-12 relative norm (FFT rounding is ~ε·log N ≈ 1e-15;
    /// 1e-12 leaves room for the norm-wise growth over channels and k² taps, and any
    /// indexing, masking or accumulation bug is ≥ 1e-3). Garbage of ±1e6 past each clip's
    /// end in x and dy proves they are not read; dx starts as NaN, so an unwritten entry
    /// fails; dw and db start non-zero and their increments are compared (accumulation).
    #[test]
    fn random_shapes_f64_match_direct() {
        for i in 0..24 {
            let c = case(i);
            let d = run::<f64>(&c, false);
            let f = run::<f64>(&c, true);
            let e = errs(&f, &d);
            assert!(
                e.iter().all(|&v| v <= 1e-12),
                "{:?} {:?}: {e:?}",
                c.s,
                c.lens
            );
            assert!(zero_past_end(&f.0, c.s.cout, &c.lens, &c.s));
            assert!(zero_past_end(&f.1, c.s.cin, &c.lens, &c.s));
        }
    }

    /// f32: both f32 paths against the f64 direct result. The FFT path's error may exceed the
    /// direct one (its rounding grows like ε·log N over whole planes instead of ε·√(cin·k²)
    /// per output), so it must be within 2e-6 relative norm (≈ 34 ε; measured ≤ 2.7e-7 ≈ 5 ε
    /// on these shapes and the model's stage 2, and ε·log₂N ≈ 13 ε for the largest planes;
    /// any real bug is ≥ 1e-3) or within 8× the direct f32 error.
    #[test]
    fn random_shapes_f32_close_to_f64() {
        for i in 0..24 {
            let c = case(i);
            let want = run::<f64>(&c, false);
            let e_dir = errs(&run::<f32>(&c, false), &want);
            let e_fft = errs(&run::<f32>(&c, true), &want);
            for (ef, ed) in e_fft.iter().zip(&e_dir) {
                assert!(
                    *ef <= 2e-6f64.max(8.0 * ed),
                    "{:?}: {e_fft:?} vs {e_dir:?}",
                    c.s
                );
            }
        }
    }

    /// A clip alone (T = its length) and the same clip batched with a 3× longer one (its
    /// padding full of garbage) give the same result (the grids differ, so up to rounding).
    #[test]
    fn clip_alone_equals_clip_batched() {
        let st = Stream::new(7, Purpose::Test, 0);
        let l = 17;
        let s1 = ConvShape {
            batch: 1,
            cin: 6,
            cout: 5,
            k: 7,
            m: 12,
            t: l,
        };
        let s2 = ConvShape {
            batch: 2,
            t: 3 * l,
            ..s1
        };
        let lens2 = [l, 3 * l];
        let x2 = masked_data(&st, 1, s1.cin, &lens2, &s2);
        let dy2 = masked_data(&st, 2, s1.cout, &lens2, &s2);
        let w: Vec<f64> = (0..s1.w_len())
            .map(|j| st.normal(10_000 + j as u64) as f64)
            .collect();
        let bias = vec![0.25; s1.cout];
        // clip 0 cropped to its own length
        let crop = |v: &[f64], c: usize| -> Vec<f64> {
            v[..c * s1.m * s2.t]
                .chunks(s2.t)
                .flat_map(|r| r[..l].to_vec())
                .collect()
        };
        let (x1, dy1) = (crop(&x2, s1.cin), crop(&dy2, s1.cout));
        let mut y1 = vec![0.0; s1.y_len()];
        let mut y2 = vec![0.0; s2.y_len()];
        conv2d_forward_fft(&x1, &w, &bias, &[l], &s1, &mut y1);
        conv2d_forward_fft(&x2, &w, &bias, &lens2, &s2, &mut y2);
        assert!(rel(&crop(&y2, s1.cout), &y1) <= 1e-12);
        let (mut dx1, mut dw1, mut db1) = (vec![0.0; s1.x_len()], vec![0.0; s1.w_len()], [0.0; 5]);
        conv2d_backward_fft(
            None,
            &x1,
            &w,
            &dy1,
            &[l],
            &s1,
            Some(&mut dx1),
            &mut dw1,
            &mut db1,
        );
        // the long clip's gradient is isolated by giving it dy = 0
        let mut dy2z = dy2.clone();
        dy2z[s1.cout * s1.m * s2.t..].fill(0.0);
        let (mut dx2, mut dw2, mut db2) = (vec![0.0; s2.x_len()], vec![0.0; s1.w_len()], [0.0; 5]);
        conv2d_backward_fft(
            None,
            &x2,
            &w,
            &dy2z,
            &lens2,
            &s2,
            Some(&mut dx2),
            &mut dw2,
            &mut db2,
        );
        assert!(rel(&crop(&dx2, s1.cin), &dx1) <= 1e-12);
        assert!(rel(&dw2, &dw1) <= 1e-12 && rel(&db2, &db1) <= 1e-12);
        // f32: same, within the f32 bound of the test above
        let (x1f, x2f, wf, bf) = (f32s(&x1), f32s(&x2), f32s(&w), f32s(&bias));
        let mut y1f = vec![0.0f32; s1.y_len()];
        let mut y2f = vec![0.0f32; s2.y_len()];
        conv2d_forward_fft(&x1f, &wf, &bf, &[l], &s1, &mut y1f);
        conv2d_forward_fft(&x2f, &wf, &bf, &lens2, &s2, &mut y2f);
        assert!(rel(&crop(&f64s(&y2f), s1.cout), &f64s(&y1f)) <= 2e-6);
    }

    /// Bitwise identical results for 1 and 3 threads, and when the per-thread buffers were
    /// last used by a larger problem (no state leaks between calls; training runs must not
    /// depend on the thread count).
    /// A backward given the forward's saved spectra does the same arithmetic on the same
    /// values as one that transforms x and w again: the same bits, with and without dx, in
    /// f32 and f64, and the forward's own output is unchanged by saving.
    #[test]
    fn saved_spectra_give_the_same_bits() {
        fn check<T: Float>(c: &Case, conv: fn(&[f64]) -> Vec<T>, i: u32) {
            let s = &c.s;
            let (x, w, bias, dy) = (conv(&c.x), conv(&c.w), conv(&c.bias), conv(&c.dy));
            let mut y0 = vec![T::zero(); s.y_len()];
            conv2d_forward_fft(&x, &w, &bias, &c.lens, s, &mut y0);
            let mut y1 = vec![T::zero(); s.y_len()];
            let saved = conv2d_forward_fft_saving(&x, &w, &bias, &c.lens, s, &mut y1);
            assert!(y0 == y1, "case {i}: forward output changed by saving");
            for with_dx in [true, false] {
                let mut outs = Vec::new();
                for sv in [None, saved.as_ref()] {
                    let mut dx = vec![T::zero(); s.x_len()];
                    let (mut dw, mut db) = (conv(&c.dw0), conv(&c.db0));
                    let dxo = with_dx.then_some(&mut dx[..]);
                    conv2d_backward_fft(sv, &x, &w, &dy, &c.lens, s, dxo, &mut dw, &mut db);
                    outs.push((dx, dw, db));
                }
                assert!(outs[0] == outs[1], "case {i}, dx {with_dx}: bits differ");
            }
        }
        for i in 0..8 {
            let c = case(300 + i);
            check::<f64>(&c, |v| v.to_vec(), i);
            check::<f32>(&c, f32s, i);
        }
    }

    #[test]
    #[should_panic(expected = "FFT spectra saved for")]
    fn saved_spectra_of_another_shape_are_refused() {
        let (a, b) = (case(310), case(311));
        let mut y = vec![0.0; a.s.y_len()];
        let saved = conv2d_forward_fft_saving(&a.x, &a.w, &a.bias, &a.lens, &a.s, &mut y);
        let (mut dw, mut db) = (b.dw0.clone(), b.db0.clone());
        conv2d_backward_fft(
            saved.as_ref(),
            &b.x,
            &b.w,
            &b.dy,
            &b.lens,
            &b.s,
            None,
            &mut dw,
            &mut db,
        );
    }

    #[test]
    fn deterministic_across_threads_and_calls() {
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let c = case(3);
        let big = case(14);
        let a = pool(1).install(|| run::<f32>(&c, true));
        let _ = pool(3).install(|| run::<f32>(&big, true));
        let b = pool(3).install(|| run::<f32>(&c, true));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (x, y) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2), (&a.3, &b.3)] {
            assert_eq!(bits(x), bits(y));
        }
    }

    /// The model's stage-2 shape (32→64 channels, 64 mels, 63 frames, k = 7) in f32 against
    /// the f64 direct result, with the bound of `random_shapes_f32_close_to_f64`.
    #[test]
    fn model_stage2_f32() {
        let st = Stream::new(11, Purpose::Test, 0);
        let s = ConvShape {
            batch: 3,
            cin: 32,
            cout: 64,
            k: 7,
            m: 64,
            t: 63,
        };
        let lens = vec![63, 40, 2];
        let nrm = |salt: u64, n: usize, sc: f64| -> Vec<f64> {
            (0..n)
                .map(|j| sc * st.normal(salt * 100_000_000 + j as u64) as f64)
                .collect()
        };
        let c = Case {
            x: masked_data(&st, 1, s.cin, &lens, &s),
            dy: masked_data(&st, 2, s.cout, &lens, &s),
            // He-like init scale, as in the model
            w: nrm(3, s.w_len(), (2.0 / (32.0 * 49.0f64)).sqrt()),
            bias: nrm(4, s.cout, 0.1),
            dw0: nrm(5, s.w_len(), 1.0),
            db0: nrm(6, s.cout, 1.0),
            s,
            lens,
        };
        let want = run::<f64>(&c, false);
        let e_dir = errs(&run::<f32>(&c, false), &want);
        let e_fft = errs(&run::<f32>(&c, true), &want);
        eprintln!("stage 2 f32 rel errors (y, dx, dw, db): fft {e_fft:?} direct {e_dir:?}");
        for (ef, ed) in e_fft.iter().zip(&e_dir) {
            assert!(*ef <= 2e-6f64.max(8.0 * ed), "{e_fft:?} vs {e_dir:?}");
        }
    }
}

/// Timings behind [`super::tune::conv_algo_model`]: `cargo test --release --lib
/// conv::fft::timing -- --ignored --nocapture` (f32, B = 16, all clips full length).
#[cfg(test)]
mod timing {
    use super::super::direct::{conv2d_backward_direct, conv2d_forward_direct};
    use super::*;
    use std::time::Instant;

    fn best(mut f: impl FnMut()) -> f64 {
        f();
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    #[ignore]
    fn timing() {
        let shapes = [
            (1, 32, 7, 128, 126),
            (32, 64, 7, 64, 63),
            (64, 128, 7, 32, 31),
            (4, 8, 7, 64, 63),
            (8, 16, 7, 64, 63),
            (16, 16, 7, 64, 63),
            (16, 32, 7, 32, 31),
            (8, 8, 9, 64, 63),
            (8, 8, 5, 64, 63),
            (8, 16, 5, 32, 31),
            (32, 32, 5, 64, 63),
            (32, 64, 5, 64, 63),
            (64, 128, 5, 32, 31),
            (16, 16, 3, 64, 63),
            (32, 64, 3, 64, 63),
            (64, 128, 3, 32, 31),
        ];
        for (cin, cout, k, m, t) in shapes {
            let s = ConvShape {
                batch: 16,
                cin,
                cout,
                k,
                m,
                t,
            };
            let lens = vec![t; 16];
            let x: Vec<f32> = (0..s.x_len()).map(|i| (i % 7) as f32 - 3.0).collect();
            let w: Vec<f32> = (0..s.w_len()).map(|i| (i % 5) as f32 - 2.0).collect();
            let bias = vec![0.5f32; cout];
            let dy: Vec<f32> = (0..s.y_len()).map(|i| (i % 3) as f32 - 1.0).collect();
            let mut y = vec![0f32; s.y_len()];
            let mut dx = vec![0f32; s.x_len()];
            let mut dw = vec![0f32; s.w_len()];
            let mut db = vec![0f32; cout];
            let fd = best(|| conv2d_forward_direct(&x, &w, &bias, &lens, &s, &mut y));
            let ff = best(|| conv2d_forward_fft(&x, &w, &bias, &lens, &s, &mut y));
            let bd = best(|| {
                conv2d_backward_direct(&x, &w, &dy, &lens, &s, Some(&mut dx), &mut dw, &mut db)
            });
            let bf = best(|| {
                conv2d_backward_fft(
                    None,
                    &x,
                    &w,
                    &dy,
                    &lens,
                    &s,
                    Some(&mut dx),
                    &mut dw,
                    &mut db,
                )
            });
            eprintln!(
                "{cin:>3}->{cout:<3} k{k} {m}x{t}: fwd direct {fd:7.2} ms fft {ff:7.2} ms | \
                 bwd direct {bd:7.2} ms fft {bf:7.2} ms"
            );
        }
    }
}
