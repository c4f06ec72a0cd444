//! The frequency grid of a call, the FFT plans and per-thread buffers, and the plane
//! transforms: masked planes to the expanded spectra ([`spectra`]) and mixed spectra back to
//! masked planes ([`inverse`]). Uses [`super::super::shape`] and the cpu scratch.

use super::super::shape::ConvShape;
use crate::cpu::scratch::{grow, with_thread_scratch};
use crate::cpu::Float;
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
pub(super) fn is_smooth(mut n: usize) -> bool {
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
pub(super) fn fft_size(n: usize, even: bool) -> usize {
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
    pub(super) fn np(&self) -> usize {
        self.n1 * self.nh
    }
}

/// FFT plans for one grid, shared by all threads.
#[derive(Clone)]
pub(super) struct Plans<T: Float> {
    pub(super) r2c: Arc<dyn RealToComplex<T>>,
    pub(super) c2r: Arc<dyn ComplexToReal<T>>,
    pub(super) fwd: Arc<dyn Fft<T>>,
    pub(super) inv: Arc<dyn Fft<T>>,
}

pub(super) type PlanCache = Mutex<HashMap<(TypeId, usize, usize), Box<dyn Any + Send>>>;

/// Plans for (N1 columns, N2 rows), planned once per size and type for the process.
pub(super) fn plans<T: Float>(g: &Grid) -> Plans<T> {
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
pub(super) struct Work<T: Float> {
    pub(super) row: Vec<T>,
    pub(super) rspec: Vec<Complex<T>>,
    pub(super) col: Vec<Complex<T>>,
    pub(super) fscr: Vec<Complex<T>>,
    pub(super) c: Vec<T>,
    pub(super) z: Vec<T>,
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
pub(super) struct Big<T: Float> {
    pub(super) xe: Vec<T>,
    pub(super) dye: Vec<T>,
    pub(super) ys: Vec<T>,
    pub(super) g: Vec<T>,
    pub(super) dg: Vec<T>,
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
pub(super) fn scratch_len<T: Float>(pl: &Plans<T>) -> usize {
    pl.r2c
        .get_scratch_len()
        .max(pl.fwd.get_inplace_scratch_len())
        .max(pl.c2r.get_scratch_len())
        .max(pl.inv.get_inplace_scratch_len())
}

/// Spectrum of one masked plane into `w.col`, column-major `[f2][f1]` (`NH × N1`): `src` is
/// `[M][t]` with `l` valid frames per row (frames ≥ l read as zero, rows ≥ M are zero).
pub(super) fn fft_plane<T: Float>(
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
pub(super) fn spectra<T: Float>(
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
pub(super) fn inverse<T: Float>(
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

/// Longest valid clip (lens clamped to t).
pub(super) fn max_len(lens: &[usize], s: &ConvShape) -> usize {
    lens[..s.batch]
        .iter()
        .map(|&l| l.min(s.t))
        .max()
        .unwrap_or(0)
}
