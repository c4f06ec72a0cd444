//! The FFT convolution forward and what a training step's forward keeps for its backward
//! ([`FftSaved`]). Uses [`super::transform`] and [`super::weights`].

use super::super::shape::ConvShape;
use super::transform::{inverse, max_len, plans, spectra, Big, Grid};
use super::weights::{twiddles, weight_spectrum};
use crate::cpu::bf16::gemm_mixed;
use crate::cpu::scratch::{grow, recycle, reuse, with_thread_scratch};
use crate::cpu::Float;
use rayon::prelude::*;

/// What a training forward computed that its backward needs again: the expanded input
/// spectra `xe` (`spectra`) and the weight spectrum `gs` (`weight_spectrum`) on the
/// call's grid. Valid only for the same `x`, `w`, `lens` and shape (a training step's forward
/// and backward); saves one transform of every input plane and of the weights per stage and
/// step, and holds 66 MB (stage 2) and 56 MB (stage 3) of the default model at batch 16 ×
/// 126 frames until the step ends. Dropping it hands its buffers to this thread's
/// `cpu::scratch::recycle` pool, so the next step's forward reuses them (no page faults).
#[derive(Clone, Debug, Default)]
pub struct FftSaved<T: Float> {
    pub(super) shape: ConvShape,
    pub(super) lmax: usize,
    pub(super) xe: Vec<T>,
    pub(super) gs: Vec<T>,
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
/// ([`super::conv2d_backward_fft`]) reuses (`None` when there is nothing to transform).
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

pub(super) fn forward<T: Float>(
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
