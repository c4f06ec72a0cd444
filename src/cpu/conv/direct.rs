//! The direct convolution: im2col + GEMM per clip, parallel over the batch (the oracle the
//! FFT algorithm is checked against). Uses [`super::shape`] and the cpu GEMM and scratch.

use super::shape::ConvShape;
use crate::cpu::scratch::{grow, with_thread_scratch};
use crate::cpu::{gemm, Float};
use rayon::prelude::*;

/// Clips per rayon job: about two jobs per thread (balance vs. scratch reuse).
fn min_len(batch: usize) -> usize {
    (batch / (2 * rayon::current_num_threads())).max(1)
}

/// Bytes of one im2col chunk we aim for: the column block then stays in L2/L3 between
/// im2col writing it and the GEMM packing it (a whole clip's matrix is up to 25 MB at
/// stage 2, which made every conv a DRAM round trip).
const CHUNK_BYTES: usize = 1 << 21;
/// Fewest output pixels per chunk GEMM (narrower GEMMs lose efficiency to per-call setup).
const MIN_CHUNK_PX: usize = 256;

/// Output mel rows per im2col chunk for a clip of `l` valid frames.
pub(crate) fn chunk_rows<T>(s: &ConvShape, l: usize) -> usize {
    let row_bytes = (s.kk() * l * std::mem::size_of::<T>()).max(1);
    let rows = (CHUNK_BYTES / row_bytes).max(MIN_CHUNK_PX.div_ceil(l.max(1)));
    rows.clamp(1, s.m.max(1))
}

/// Per-thread scratch: (im2col chunk, compacted output / gradient of a short clip,
/// zero-padded input rows of one clip).
type Scratch<T> = (Vec<T>, Vec<T>, Vec<T>);

/// One clip's input rows with `k/2` zeros on both sides of its `l` valid frames:
/// xp[(ci·M + mi)·(l + 2p) + p + t] = x[ci][mi][t] for t < l, so every im2col segment is a
/// single contiguous copy (no per-segment edge fills).
fn pad_rows<T: Float>(xb: &[T], s: &ConvShape, l: usize, xp: &mut Vec<T>) {
    let p = s.k / 2;
    let lp = l + 2 * p;
    let xp = grow(xp, s.cin * s.m * lp);
    for (r, dst) in xp.chunks_mut(lp).enumerate() {
        dst[..p].fill(T::zero());
        copy_short(&mut dst[p..p + l], &xb[r * s.t..r * s.t + l]);
        dst[p + l..].fill(T::zero());
    }
}

/// `dst.copy_from_slice(src)` for the short rows of im2col (31–126 values) without a libc
/// `memcpy` call per row: fixed-size blocks compile to inline vector moves (the calls were
/// ~5 % of an inference pass).
#[inline(always)]
fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    let src = &src[..n];
    let mut i = 0;
    while i + 16 <= n {
        let a: &[T; 16] = src[i..i + 16].try_into().expect("16 values");
        dst[i..i + 16].copy_from_slice(a);
        i += 16;
    }
    while i + 4 <= n {
        let a: &[T; 4] = src[i..i + 4].try_into().expect("4 values");
        dst[i..i + 4].copy_from_slice(a);
        i += 4;
    }
    if i + 2 <= n {
        let a: &[T; 2] = src[i..i + 2].try_into().expect("2 values");
        dst[i..i + 2].copy_from_slice(a);
        i += 2;
    }
    if i < n {
        dst[i] = src[i];
    }
}

/// im2col of output mel rows `m0..m1` from the padded rows `xp` of [`pad_rows`]:
/// cols `[cin·k·k][(m1−m0)·L]`, cols[(ci·k+di)·k+dj][(mo−m0)·L+t] = x[ci][mo+di−p][t+dj−p]
/// (zero outside 0 ≤ mel < M, 0 ≤ frame < L).
fn im2col<T: Float>(xp: &[T], s: &ConvShape, l: usize, m0: usize, m1: usize, cols: &mut [T]) {
    let (m, k) = (s.m, s.k);
    let p = k / 2;
    let lp = l + 2 * p;
    let pxc = (m1 - m0) * l;
    for ci in 0..s.cin {
        for di in 0..k {
            for dj in 0..k {
                let row = &mut cols[((ci * k + di) * k + dj) * pxc..][..pxc];
                for mo in m0..m1 {
                    let seg = &mut row[(mo - m0) * l..][..l];
                    let mi = mo + di;
                    if mi < p || mi - p >= m {
                        seg.fill(T::zero());
                        continue;
                    }
                    copy_short(seg, &xp[(ci * m + mi - p) * lp + dj..]);
                }
            }
        }
    }
}

/// Adds the chunk `cols` (output mel rows `m0..m1`) back into dx: the adjoint of [`im2col`].
fn col2im<T: Float>(cols: &[T], s: &ConvShape, l: usize, m0: usize, m1: usize, dxb: &mut [T]) {
    let (m, t, k) = (s.m, s.t, s.k);
    let p = k / 2;
    let pxc = (m1 - m0) * l;
    for ci in 0..s.cin {
        for di in 0..k {
            for dj in 0..k {
                let row = &cols[((ci * k + di) * k + dj) * pxc..][..pxc];
                let t0 = p.saturating_sub(dj);
                let t1 = (l + p).saturating_sub(dj).min(l);
                if t0 >= t1 {
                    continue;
                }
                for mo in m0..m1 {
                    let mi = mo + di;
                    if mi < p || mi - p >= m {
                        continue;
                    }
                    let dst = &mut dxb[(ci * m + mi - p) * t..][..t];
                    let seg = &row[(mo - m0) * l..][..l];
                    for (d, v) in dst[t0 + dj - p..t1 + dj - p].iter_mut().zip(&seg[t0..t1]) {
                        *d = *d + *v;
                    }
                }
            }
        }
    }
}

/// y = conv(x, w) + bias on each clip's valid frames, zero elsewhere (direct: im2col + GEMM;
/// the oracle for [`super::fft`]).
pub fn conv2d_forward_direct<T: Float>(
    x: &[T],
    w: &[T],
    bias: &[T],
    lens: &[usize],
    s: &ConvShape,
    y: &mut [T],
) {
    assert_eq!(x.len(), s.x_len());
    assert_eq!(y.len(), s.y_len());
    assert_eq!(w.len(), s.w_len());
    let (xs, ys, kk) = (s.cin * s.m * s.t, s.cout * s.m * s.t, s.kk());
    y.par_chunks_mut(ys)
        .enumerate()
        .with_min_len(min_len(s.batch))
        .for_each(|(b, yb)| {
            with_thread_scratch(|(cols, out, xp): &mut Scratch<T>| {
                let l = lens[b].min(s.t);
                let ml = s.m * l;
                pad_rows(&x[b * xs..(b + 1) * xs], s, l, xp);
                let rows = chunk_rows::<T>(s, l);
                let full = l == s.t;
                // Full-length clip: the GEMM output layout `[cout][M·L]` is y's layout.
                let dst: &mut [T] = if full { yb } else { grow(out, s.cout * ml) };
                for m0 in (0..s.m).step_by(rows) {
                    let m1 = (m0 + rows).min(s.m);
                    let pxc = (m1 - m0) * l;
                    let c = grow(cols, kk * pxc);
                    im2col(xp, s, l, m0, m1, c);
                    gemm(
                        s.cout,
                        pxc,
                        kk,
                        &mut dst[m0 * l..],
                        ml,
                        false,
                        w,
                        kk,
                        1,
                        c,
                        pxc,
                        1,
                        false,
                    );
                    if full {
                        // Bias while the chunk's output is still in cache (a separate pass
                        // afterwards re-read the whole output from memory).
                        for (co, &bc) in bias.iter().enumerate().take(s.cout) {
                            for v in &mut dst[co * ml + m0 * l..co * ml + m1 * l] {
                                *v = *v + bc;
                            }
                        }
                    }
                }
                if full {
                    return;
                }
                for co in 0..s.cout {
                    for mo in 0..s.m {
                        let dst = &mut yb[(co * s.m + mo) * s.t..][..s.t];
                        let src = &out[co * ml + mo * l..][..l];
                        for (d, v) in dst[..l].iter_mut().zip(src) {
                            *d = *v + bias[co];
                        }
                        dst[l..].fill(T::zero());
                    }
                }
            })
        });
}

/// Backward: dw and db ACCUMULATE; dx (if given) is overwritten (zero at t ≥ `lens[b]`).
/// dy at t ≥ `lens[b]` is ignored. Direct (im2col + GEMM); the oracle for [`super::fft`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_direct<T: Float>(
    x: &[T],
    w: &[T],
    dy: &[T],
    lens: &[usize],
    s: &ConvShape,
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: &mut [T],
) {
    assert_eq!(dy.len(), s.y_len());
    assert_eq!(dw.len(), s.w_len());
    let (xs, ys) = (s.cin * s.m * s.t, s.cout * s.m * s.t);
    let kk = s.kk();
    let per_clip = |b: usize, mut dxb: Option<&mut [T]>| -> (Vec<T>, Vec<T>) {
        with_thread_scratch(|(cols, dbuf, xp): &mut Scratch<T>| {
            let l = lens[b].min(s.t);
            let ml = s.m * l;
            pad_rows(&x[b * xs..(b + 1) * xs], s, l, xp);
            // d = dy of this clip restricted to valid frames, `[cout][M·L]`.
            let d: &[T] = if l == s.t {
                &dy[b * ys..(b + 1) * ys]
            } else {
                let dbuf = grow(dbuf, s.cout * ml);
                for co in 0..s.cout {
                    for mo in 0..s.m {
                        let src = &dy[b * ys + (co * s.m + mo) * s.t..][..l];
                        dbuf[co * ml + mo * l..][..l].copy_from_slice(src);
                    }
                }
                dbuf
            };
            let dbb: Vec<T> = d.chunks(ml).map(|row| row.iter().copied().sum()).collect();
            if let Some(dxb) = dxb.as_deref_mut() {
                dxb.fill(T::zero());
            }
            // This clip's dWᵀ `[kk][cout]` (the layout the gemm crate computes fastest here:
            // measured up to 2× for stage 1's k = 49); transposed when summed into dw.
            let mut dwb = vec![T::zero(); kk * s.cout];
            let rows = chunk_rows::<T>(s, l);
            for m0 in (0..s.m).step_by(rows) {
                let m1 = (m0 + rows).min(s.m);
                let pxc = (m1 - m0) * l;
                let c = grow(cols, kk * pxc);
                im2col(xp, s, l, m0, m1, c);
                let dc = &d[m0 * l..];
                // dW_bᵀ[r][co] += Σ_px cols[r][px] · d[co][px] over this chunk's pixels
                gemm(
                    kk,
                    s.cout,
                    pxc,
                    &mut dwb,
                    s.cout,
                    m0 > 0,
                    c,
                    pxc,
                    1,
                    dc,
                    1,
                    ml,
                    false,
                );
                if let Some(dxb) = dxb.as_deref_mut() {
                    // dcols[r][px] = Σ_co w[co][r] · d[co][px], reusing the column buffer
                    gemm(kk, pxc, s.cout, c, pxc, false, w, 1, kk, dc, ml, 1, false);
                    col2im(c, s, l, m0, m1, dxb);
                }
            }
            (dwb, dbb)
        })
    };
    let parts: Vec<(Vec<T>, Vec<T>)> = match dx {
        Some(dx) => {
            assert_eq!(dx.len(), s.x_len());
            dx.par_chunks_mut(xs)
                .enumerate()
                .with_min_len(min_len(s.batch))
                .map(|(b, dxb)| per_clip(b, Some(dxb)))
                .collect()
        }
        None => (0..s.batch)
            .into_par_iter()
            .with_min_len(min_len(s.batch))
            .map(|b| per_clip(b, None))
            .collect(),
    };
    // Summed in clip order (then added to dw): the result does not depend on the thread
    // count.
    let mut parts = parts.into_iter();
    let Some((mut tot, db0)) = parts.next() else {
        return;
    };
    crate::cpu::axpy(T::one(), &db0, db);
    for (dwb, dbb) in parts {
        crate::cpu::axpy(T::one(), &dwb, &mut tot);
        crate::cpu::axpy(T::one(), &dbb, db);
    }
    // dw[co][r] += tot[r][co], in blocks of 64 r so the block of `tot` stays in cache.
    const RB: usize = 64;
    for r0 in (0..kk).step_by(RB) {
        let r1 = (r0 + RB).min(kk);
        for (co, row) in dw.chunks_mut(kk).enumerate() {
            for (r, d) in (r0..r1).zip(&mut row[r0..r1]) {
                *d = *d + tot[r * s.cout + co];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::rand;

    /// Direct definition of the masked "same" convolution.
    fn naive(x: &[f64], w: &[f64], bias: &[f64], lens: &[usize], s: &ConvShape) -> Vec<f64> {
        let p = (s.k / 2) as isize;
        let mut y = vec![0.0; s.y_len()];
        for b in 0..s.batch {
            for co in 0..s.cout {
                for mo in 0..s.m {
                    for t in 0..lens[b] {
                        let mut acc = bias[co];
                        for ci in 0..s.cin {
                            for di in 0..s.k {
                                for dj in 0..s.k {
                                    let mi = mo as isize + di as isize - p;
                                    let ti = t as isize + dj as isize - p;
                                    if mi < 0
                                        || mi >= s.m as isize
                                        || ti < 0
                                        || ti >= lens[b] as isize
                                    {
                                        continue;
                                    }
                                    acc += w[((co * s.cin + ci) * s.k + di) * s.k + dj]
                                        * x[((b * s.cin + ci) * s.m + mi as usize) * s.t
                                            + ti as usize];
                                }
                            }
                        }
                        y[((b * s.cout + co) * s.m + mo) * s.t + t] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn forward_matches_direct_convolution() {
        for k in [1, 3, 5] {
            let s = ConvShape {
                batch: 2,
                cin: 3,
                cout: 4,
                k,
                m: 6,
                t: 9,
            };
            let lens = [9, 5];
            let x = rand(s.x_len(), 1);
            let w = rand(s.w_len(), 2);
            let bias = rand(4, 3);
            let mut y = vec![f64::NAN; s.y_len()];
            conv2d_forward_direct(&x, &w, &bias, &lens, &s, &mut y);
            let want = naive(&x, &w, &bias, &lens, &s);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-12, "{a} vs {b}");
            }
        }
    }

    /// A shape big enough that each clip is processed in several im2col chunks (uneven last
    /// chunk, and a short clip with a different chunking): forward against the direct
    /// definition, backward by the adjoint identities.
    #[test]
    fn chunked_forward_and_backward() {
        let s = ConvShape {
            batch: 2,
            cin: 16,
            cout: 3,
            k: 5,
            m: 40,
            t: 40,
        };
        let lens = [40, 33];
        for &l in &lens {
            let rows = chunk_rows::<f64>(&s, l);
            assert!(
                rows < s.m && !s.m.is_multiple_of(rows),
                "want uneven chunks, got {rows}"
            );
        }
        let x = rand(s.x_len(), 11);
        let w = rand(s.w_len(), 12);
        let bias = rand(3, 13);
        let mut y = vec![f64::NAN; s.y_len()];
        conv2d_forward_direct(&x, &w, &bias, &lens, &s, &mut y);
        let want = naive(&x, &w, &bias, &lens, &s);
        for (a, b) in y.iter().zip(&want) {
            // sums of 400 products of values in [-1, 1]: rounding ≪ 1e-11
            assert!((a - b).abs() <= 1e-11, "{a} vs {b}");
        }
        let dy = rand(s.y_len(), 14);
        let mut dx = vec![f64::NAN; s.x_len()];
        let mut dw = vec![0.0; s.w_len()];
        let mut db = vec![0.0; 3];
        conv2d_backward_direct(&x, &w, &dy, &lens, &s, Some(&mut dx), &mut dw, &mut db);
        let zero_b = vec![0.0; 3];
        let y0 = naive(&x, &w, &zero_b, &lens, &s);
        let lhs: f64 = y0.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let rx: f64 = dx.iter().zip(&x).map(|(a, b)| a * b).sum();
        let rw: f64 = dw.iter().zip(&w).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rx).abs() < 1e-9 && (lhs - rw).abs() < 1e-9,
            "{lhs} {rx} {rw}"
        );
        // dx is zero past each clip's end (and not NaN anywhere).
        for b in 0..2 {
            for row in dx[b * 16 * 40 * 40..(b + 1) * 16 * 40 * 40].chunks(40) {
                assert!(row[..lens[b]].iter().all(|v| v.is_finite()));
                assert!(row[lens[b]..].iter().all(|&v| v == 0.0));
            }
        }
    }

    /// The backward is the adjoint of the forward: <dy, J dx> = <J^T dy, dx> for random
    /// directions (exact up to rounding; the finite-difference check is in gradcheck.rs).
    #[test]
    fn backward_is_adjoint() {
        let s = ConvShape {
            batch: 2,
            cin: 2,
            cout: 3,
            k: 3,
            m: 5,
            t: 8,
        };
        let lens = [8, 6];
        let x = rand(s.x_len(), 4);
        let w = rand(s.w_len(), 5);
        let dy = rand(s.y_len(), 6);
        let mut dx = vec![0.0; s.x_len()];
        let mut dw = vec![0.0; s.w_len()];
        let mut db = vec![0.0; 3];
        conv2d_backward_direct(&x, &w, &dy, &lens, &s, Some(&mut dx), &mut dw, &mut db);
        let zero_b = vec![0.0; 3];
        // linear in x: <dy, conv(x)> = <dx, x>; linear in w: <dy, conv_w(x)> = <dw, w>
        let mut y = vec![0.0; s.y_len()];
        conv2d_forward_direct(&x, &w, &zero_b, &lens, &s, &mut y);
        let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let rx: f64 = dx.iter().zip(&x).map(|(a, b)| a * b).sum();
        let rw: f64 = dw.iter().zip(&w).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rx).abs() < 1e-10 && (lhs - rw).abs() < 1e-10,
            "{lhs} {rx} {rw}"
        );
        // db = Σ dy over valid positions
        for (co, dbv) in db.iter().enumerate() {
            let mut want = 0.0;
            for b in 0..2 {
                for mo in 0..5 {
                    for t in 0..lens[b] {
                        want += dy[((b * 3 + co) * 5 + mo) * 8 + t];
                    }
                }
            }
            assert!((dbv - want).abs() < 1e-12);
        }
    }
}
