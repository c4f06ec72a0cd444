//! 2-D convolution, square odd kernel k, stride 1, zero padding k/2 on both axes ("same"),
//! as im2col + GEMM per clip, parallel over the batch.
//!
//! Layouts: x `[B][cin][M][T]`, w `[cout][cin][k][k]` (PyTorch), bias `[cout]`,
//! y `[B][cout][M][T]`. Clip b is `lens[b]` frames long: inputs at t ≥ lens[b] are read as zero
//! and outputs at t ≥ lens[b] are written as zero (nothing downstream reads them: a 2×2 pool
//! only uses frames < 2·floor(len/2) ≤ len). This is what makes a clip's result independent of
//! the padding.

use super::fftconv::FftSaved;
use super::scratch::{grow, with_thread_scratch};
use super::{gemm, Float};
use rayon::prelude::*;

/// Shape of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConvShape {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    /// Mel bins (height).
    pub m: usize,
    /// Padded frames (width).
    pub t: usize,
}

impl ConvShape {
    fn kk(&self) -> usize {
        self.cin * self.k * self.k
    }
    pub fn x_len(&self) -> usize {
        self.batch * self.cin * self.m * self.t
    }
    pub fn y_len(&self) -> usize {
        self.batch * self.cout * self.m * self.t
    }
    pub fn w_len(&self) -> usize {
        self.cout * self.kk()
    }
}

/// How a convolution is computed: both give the same results up to rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvAlgo {
    /// im2col + GEMM ([`conv2d_forward_direct`], [`conv2d_backward_direct`]).
    Direct,
    /// Whole-plane FFTs and per-bin channel mixing ([`super::fftconv`]).
    Fft,
}

impl ConvAlgo {
    /// The `SER_CPU_CONV` spelling.
    pub fn name(self) -> &'static str {
        match self {
            ConvAlgo::Direct => "direct",
            ConvAlgo::Fft => "fft",
        }
    }
}

/// How the algorithm of each convolution is decided (`SER_CPU_CONV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPolicy {
    /// `direct` or `fft`: always that one.
    Fixed(ConvAlgo),
    /// `model`: the cost model [`conv_algo_model`] (fitted on one AMD EPYC Zen 4).
    Model,
    /// `measure` / `auto` / unset (default): timed on this machine once per shape and cached
    /// ([`super::conv_tune`]).
    Measure,
}

/// Parses a `SER_CPU_CONV` value: `direct`, `fft`, `model`, or `measure` / `auto` / empty.
pub fn parse_conv_policy(v: &str) -> Result<ConvPolicy, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "direct" => Ok(ConvPolicy::Fixed(ConvAlgo::Direct)),
        "fft" => Ok(ConvPolicy::Fixed(ConvAlgo::Fft)),
        "model" => Ok(ConvPolicy::Model),
        "measure" | "auto" | "" => Ok(ConvPolicy::Measure),
        other => Err(format!(
            "SER_CPU_CONV={other:?} is not direct|fft|model|measure|auto; using measure"
        )),
    }
}

/// The `SER_CPU_CONV` policy, read once per process; any other value falls back to
/// `measure` with a one-time warning on stderr (a speed knob must not abort a run).
pub fn conv_policy() -> ConvPolicy {
    static POLICY: std::sync::OnceLock<ConvPolicy> = std::sync::OnceLock::new();
    *POLICY.get_or_init(|| {
        let v = std::env::var("SER_CPU_CONV").unwrap_or_default();
        parse_conv_policy(&v).unwrap_or_else(|e| {
            eprintln!("warning: {e}");
            ConvPolicy::Measure
        })
    })
}

/// The algorithm the cost model picks. Fitted to `fftconv::timing` (f32, B = 16, 2 threads,
/// 16 shapes with k = 3…9, 1…128 channels; the model picks the faster one, forward +
/// backward, in all of them, two near-ties aside): the direct conv costs ∝ `cin·cout·k²·M·T`;
/// the FFT conv costs ∝ `(80·(cin + cout) + 6.5·cin·cout)·N1·N2` in the same units (plane
/// transforms + per-bin mixing on its `N1 × N2` grid). So the model's stage 1 (1 → 32
/// channels) and all k = 3 shapes measured stay direct; stages 2 and 3 (k = 7) go to the FFT
/// (measured 3.1× / 3.5× faster forward and backward at stage 2, 3.9× / 4.4× at stage 3).
pub fn conv_algo_model(s: &ConvShape) -> ConvAlgo {
    if s.k < 3 || s.m == 0 || s.t == 0 {
        return ConvAlgo::Direct;
    }
    let g = super::fftconv::Grid::new(s, s.t);
    let (ci, co) = (s.cin as f64, s.cout as f64);
    let direct = ci * co * (s.k * s.k * s.m * s.t) as f64;
    let fft = (80.0 * (ci + co) + 6.5 * ci * co) * (g.n1 * g.n2) as f64;
    if direct > fft {
        ConvAlgo::Fft
    } else {
        ConvAlgo::Direct
    }
}

/// How [`conv2d_forward`] / [`conv2d_backward`] compute `s` in element type `T`, and why.
pub fn conv_choice<T: Float>(s: &ConvShape) -> super::conv_tune::Choice {
    use super::conv_tune::{measured_choice, Choice};
    match conv_policy() {
        ConvPolicy::Fixed(a) => Choice::Fixed(a),
        ConvPolicy::Model => Choice::Model(conv_algo_model(s)),
        ConvPolicy::Measure => measured_choice::<T>(s),
    }
}

/// The algorithm [`conv2d_forward`] / [`conv2d_backward`] use for `s` ([`conv_choice`]).
pub fn conv_algo<T: Float>(s: &ConvShape) -> ConvAlgo {
    conv_choice::<T>(s).algo()
}

/// y = conv(x, w) + bias on each clip's valid frames, zero elsewhere; dispatches on
/// [`conv_algo`].
pub fn conv2d_forward<T: Float>(
    x: &[T],
    w: &[T],
    bias: &[T],
    lens: &[usize],
    s: &ConvShape,
    y: &mut [T],
) {
    // Bounded inference (predict, eval): the direct convolution, whose scratch is per clip and
    // in proportion to its length (so a call's memory follows the audio in it, not the thread
    // count); the FFT's weight spectrum grows with the clip and its timing would allocate the
    // training buffers too.
    let algo = if INFERENCE_BOUNDED.load(std::sync::atomic::Ordering::Relaxed) {
        ConvAlgo::Direct
    } else {
        conv_algo::<T>(s)
    };
    match algo {
        ConvAlgo::Direct => conv2d_forward_direct(x, w, bias, lens, s, y),
        ConvAlgo::Fft => super::fftconv::conv2d_forward_fft(x, w, bias, lens, s, y),
    }
}

/// Set by [`bound_inference_memory`].
static INFERENCE_BOUNDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on inference convolutions ([`conv2d_forward`]) use bounded memory at any clip
/// length and thread count, and [`end_inference_call`] frees the threads' kept scratch
/// (`predict`, `eval`; training keeps the tuner's choice and its buffers).
pub fn bound_inference_memory() {
    INFERENCE_BOUNDED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Frees the threads' kept scratch after an inference call once memory is bounded (each
/// thread would otherwise keep buffers for the largest clip it ever handled); a no-op
/// otherwise.
pub fn end_inference_call() {
    if INFERENCE_BOUNDED.load(std::sync::atomic::Ordering::Relaxed) {
        super::scratch::release_all_scratch();
        super::alloc::return_freed_memory();
    }
}

/// [`conv2d_forward`] in a training step: also returns what the step's
/// [`conv2d_backward`] reuses (the FFT path's spectra; `None` on the direct path).
pub fn conv2d_forward_saving<T: Float>(
    x: &[T],
    w: &[T],
    bias: &[T],
    lens: &[usize],
    s: &ConvShape,
    y: &mut [T],
) -> Option<FftSaved<T>> {
    match conv_algo::<T>(s) {
        ConvAlgo::Direct => {
            conv2d_forward_direct(x, w, bias, lens, s, y);
            None
        }
        ConvAlgo::Fft => super::fftconv::conv2d_forward_fft_saving(x, w, bias, lens, s, y),
    }
}

/// Backward of [`conv2d_forward`]: dw and db ACCUMULATE; dx (if given) is overwritten (zero at
/// t ≥ lens[b]); dy at t ≥ lens[b] is ignored. Dispatches on [`conv_algo`]. `saved`: what the
/// step's [`conv2d_forward_saving`] returned (`None` recomputes it).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Float>(
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
    match conv_algo::<T>(s) {
        ConvAlgo::Direct => conv2d_backward_direct(x, w, dy, lens, s, dx, dw, db),
        ConvAlgo::Fft => super::fftconv::conv2d_backward_fft(saved, x, w, dy, lens, s, dx, dw, db),
    }
}

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
fn chunk_rows<T>(s: &ConvShape, l: usize) -> usize {
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
/// the oracle for [`super::fftconv`]).
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

/// Backward: dw and db ACCUMULATE; dx (if given) is overwritten (zero at t ≥ lens[b]).
/// dy at t ≥ lens[b] is ignored. Direct (im2col + GEMM); the oracle for [`super::fftconv`].
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
    super::axpy(T::one(), &db0, db);
    for (dwb, dbb) in parts {
        super::axpy(T::one(), &dwb, &mut tot);
        super::axpy(T::one(), &dbb, db);
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
    use super::super::testutil::rand;
    use super::*;

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

    #[test]
    fn algo_choice_and_override_parsing() {
        let sh = |cin, cout, k, m, t| ConvShape {
            batch: 16,
            cin,
            cout,
            k,
            m,
            t,
        };
        // the model's three stages (measured: direct, FFT, FFT)
        assert_eq!(conv_algo_model(&sh(1, 32, 7, 128, 126)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(32, 64, 7, 64, 63)), ConvAlgo::Fft);
        assert_eq!(conv_algo_model(&sh(64, 128, 7, 32, 31)), ConvAlgo::Fft);
        // measured faster direct: few channels, or k = 3; and the gradcheck shapes
        assert_eq!(conv_algo_model(&sh(8, 8, 5, 64, 63)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(8, 16, 5, 32, 31)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(16, 16, 3, 64, 63)), ConvAlgo::Direct);
        // measured faster with the FFT
        assert_eq!(conv_algo_model(&sh(4, 8, 7, 64, 63)), ConvAlgo::Fft);
        assert_eq!(conv_algo_model(&sh(8, 8, 9, 64, 63)), ConvAlgo::Fft);
        assert_eq!(conv_algo_model(&sh(32, 32, 5, 64, 63)), ConvAlgo::Fft);
        assert_eq!(conv_algo_model(&sh(32, 64, 3, 64, 63)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(2, 3, 7, 6, 9)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(32, 64, 1, 64, 63)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(32, 64, 7, 64, 0)), ConvAlgo::Direct);
        assert_eq!(
            parse_conv_policy("fft"),
            Ok(ConvPolicy::Fixed(ConvAlgo::Fft))
        );
        assert_eq!(
            parse_conv_policy(" Direct "),
            Ok(ConvPolicy::Fixed(ConvAlgo::Direct))
        );
        assert_eq!(parse_conv_policy("model"), Ok(ConvPolicy::Model));
        assert_eq!(parse_conv_policy("auto"), Ok(ConvPolicy::Measure));
        assert_eq!(parse_conv_policy("measure"), Ok(ConvPolicy::Measure));
        assert_eq!(parse_conv_policy(""), Ok(ConvPolicy::Measure));
        assert!(parse_conv_policy("fast").is_err());
    }
}
