//! The FFT of the front end's fast path: several frames at once, one per SIMD lane.
//!
//! Frame `l` of a batch lives in lane `l` of every vector (element `j` of frame `l` at
//! `buf[j·L + l]`), so every butterfly is plain vertical arithmetic with twiddles shared by all
//! lanes: no shuffles inside the FFT. With AVX-512 a vector is one `zmm` (L = 8 frames), with
//! AVX2 one `ymm` (L = 4). The same code on `[f64; L]` arrays ([`Scalar`]) is the portable
//! twin the tests compare the SIMD builds with bit for bit (the front end does not use it in
//! production: without AVX2 the single-frame rustfft path is faster).
//!
//! The transform is a complex FFT of M = N/2 points (the real-input trick: even samples as the
//! real part, odd as the imaginary; [`crate::features::stft`] does the split step), computed as
//! in-place radix-4 decimation in frequency with a radix-2 last stage when log₂ M is odd:
//! - the first stage reads the frames straight from the signal: f32 sample × f64 periodic Hann
//!   window, the product librosa forms, transposed into lanes 4×L at a time
//!   ([`Lane::load_window4`]);
//! - the remaining stages run depth first: after a stage splits a block into quarters, each
//!   quarter is finished while it is in L1 (blocks of ≤ 8 KiB per re/im buffer go stage by
//!   stage);
//! - the output stays in digit-reversed order; the split step reads bin k at `pos()[k]`
//!   (no reordering pass).
//!
//! Precision: f64 throughout, twiddles from `cos`/`sin` of the exact angle (no recurrences), so
//! the error is like rustfft's, ≲ 1e-15 of the frame's energy (tested against an O(M²) DFT and
//! rustfft). All [`Lane`] types do the same IEEE operations per lane in the same order (Rust
//! never contracts `a * b + c` into FMA), so the SIMD and plain builds agree bit for bit.
//!
//! Everything is `#[inline(always)]` and generic over [`Lane`]: the caller instantiates it
//! inside a `#[target_feature]` function (see `Extractor::chunk`). No closures inside the
//! kernels: a closure does not inherit the caller's target features and its intrinsics would
//! become calls.
//!
//! Layer: features (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

/// Smallest FFT size the lane path handles; smaller sizes use the single-frame path.
pub const MIN_N_FFT: usize = 16;

/// Most lanes any [`Lane`] type has (buffers are laid out for this many).
pub const MAX_LANES: usize = 8;

/// Whether the lane path supports this FFT size: a power of two ≥ [`MIN_N_FFT`].
pub fn supported(n_fft: usize) -> bool {
    n_fft >= MIN_N_FFT && n_fft.is_power_of_two()
}

/// A vector of `L` f64 lanes, one per frame. Buffers of lane vectors are plain `f64` slices,
/// element `i` at `[i·L, i·L + L)`. Every operation is lane-wise IEEE arithmetic, so all
/// implementations give bit-identical results.
///
/// # Safety
/// The SIMD implementations ([`Avx2`], [`Avx512`]) may only be used where the CPU has their
/// features, inside code compiled with them (`#[target_feature]`): even their safe methods
/// execute those instructions. That is why this module is crate-private; `Extractor::chunk`
/// checks the CPU before choosing a lane type.
pub unsafe trait Lane: Copy {
    /// Lanes per vector.
    const L: usize;
    /// Loads `L` f64 from `p`.
    ///
    /// # Safety
    /// `p` is valid for reading `L` f64 (no alignment needed).
    unsafe fn load(p: *const f64) -> Self;
    /// Stores `L` f64 to `p`.
    ///
    /// # Safety
    /// `p` is valid for writing `L` f64 (no alignment needed).
    unsafe fn store(self, p: *mut f64);
    fn splat(x: f64) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// Samples `j .. j + 4` of frames `x[0 .. L]` (f32), each times the window `w[j .. j + 4]`
    /// in f64, transposed: result `r` holds sample `j + r` of every frame.
    ///
    /// # Safety
    /// `x[0 .. L]` are each valid for reading samples `j .. j + 4`, `w` for `j .. j + 4`.
    unsafe fn load_window4(x: &[*const f32; MAX_LANES], j: usize, w: *const f64) -> [Self; 4];
}

/// The portable lane type: `L` f64 in an array. `Scalar<4>` and `Scalar<8>` are the plain
/// twins of [`Avx2`] and [`Avx512`] in the tests; `Scalar<1>` (one lane) makes
/// `Extractor::chunk` take the single-frame path for every frame (the non-AVX2 fallback).
#[derive(Clone, Copy, Debug)]
pub struct Scalar<const L: usize>(pub [f64; L]);

/// The plain twin of [`Avx2`] (tests).
#[cfg(test)]
pub type Scalar4 = Scalar<4>;

// SAFETY: plain Rust arithmetic, no CPU feature needed.
unsafe impl<const N: usize> Lane for Scalar<N> {
    const L: usize = N;
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        Scalar(*(p as *const [f64; N]))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        *(p as *mut [f64; N]) = self.0;
    }
    #[inline(always)]
    fn splat(x: f64) -> Self {
        Scalar([x; N])
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Scalar(std::array::from_fn(|l| self.0[l] + o.0[l]))
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Scalar(std::array::from_fn(|l| self.0[l] - o.0[l]))
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Scalar(std::array::from_fn(|l| self.0[l] * o.0[l]))
    }
    #[inline(always)]
    unsafe fn load_window4(x: &[*const f32; MAX_LANES], j: usize, w: *const f64) -> [Self; 4] {
        std::array::from_fn(|r| {
            Scalar(std::array::from_fn(|l| {
                *x[l].add(j + r) as f64 * *w.add(j + r)
            }))
        })
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Lane, MAX_LANES};
    use std::arch::x86_64::*;

    /// Four f64 lanes in a `ymm` register (AVX2).
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2(__m256d);

    /// Window and transpose four frames: 4 × (4 f32 → 4 f64) × window, then a 4×4 transpose.
    #[inline(always)]
    unsafe fn window4x4(x: [*const f32; 4], j: usize, w: *const f64) -> [__m256d; 4] {
        let wv = _mm256_loadu_pd(w.add(j));
        // No closures here: they would not inherit the caller's target features, and the
        // intrinsics inside them would become calls.
        let r = [
            _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[0].add(j))), wv),
            _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[1].add(j))), wv),
            _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[2].add(j))), wv),
            _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[3].add(j))), wv),
        ];
        // r0 = a0 a1 a2 a3, r1 = b0.., r2 = c0.., r3 = d0..
        let t0 = _mm256_unpacklo_pd(r[0], r[1]); // a0 b0 a2 b2
        let t1 = _mm256_unpackhi_pd(r[0], r[1]); // a1 b1 a3 b3
        let t2 = _mm256_unpacklo_pd(r[2], r[3]); // c0 d0 c2 d2
        let t3 = _mm256_unpackhi_pd(r[2], r[3]); // c1 d1 c3 d3
        [
            _mm256_permute2f128_pd(t0, t2, 0x20),
            _mm256_permute2f128_pd(t1, t3, 0x20),
            _mm256_permute2f128_pd(t0, t2, 0x31),
            _mm256_permute2f128_pd(t1, t3, 0x31),
        ]
    }

    // SAFETY: only used inside `#[target_feature(enable = "avx2,fma")]` code on CPUs with it.
    unsafe impl Lane for Avx2 {
        const L: usize = 4;
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            Avx2(_mm256_loadu_pd(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            _mm256_storeu_pd(p, self.0)
        }
        #[inline(always)]
        fn splat(x: f64) -> Self {
            // SAFETY: see the impl.
            Avx2(unsafe { _mm256_set1_pd(x) })
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_add_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_sub_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_mul_pd(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn load_window4(x: &[*const f32; MAX_LANES], j: usize, w: *const f64) -> [Self; 4] {
            let [a, b, c, d] = window4x4([x[0], x[1], x[2], x[3]], j, w);
            [Avx2(a), Avx2(b), Avx2(c), Avx2(d)]
        }
    }

    /// Eight f64 lanes in a `zmm` register (AVX-512F).
    #[derive(Clone, Copy, Debug)]
    pub struct Avx512(__m512d);

    // SAFETY: only used inside `#[target_feature(enable = "avx512f,avx2,fma")]` code on CPUs
    // with it.
    unsafe impl Lane for Avx512 {
        const L: usize = 8;
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            Avx512(_mm512_loadu_pd(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            _mm512_storeu_pd(p, self.0)
        }
        #[inline(always)]
        fn splat(x: f64) -> Self {
            Avx512(unsafe { _mm512_set1_pd(x) })
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_add_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_sub_pd(self.0, o.0) })
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_mul_pd(self.0, o.0) })
        }
        #[inline(always)]
        unsafe fn load_window4(x: &[*const f32; MAX_LANES], j: usize, w: *const f64) -> [Self; 4] {
            let lo = window4x4([x[0], x[1], x[2], x[3]], j, w);
            let hi = window4x4([x[4], x[5], x[6], x[7]], j, w);
            [
                Avx512(_mm512_insertf64x4(_mm512_castpd256_pd512(lo[0]), hi[0], 1)),
                Avx512(_mm512_insertf64x4(_mm512_castpd256_pd512(lo[1]), hi[1], 1)),
                Avx512(_mm512_insertf64x4(_mm512_castpd256_pd512(lo[2]), hi[2], 1)),
                Avx512(_mm512_insertf64x4(_mm512_castpd256_pd512(lo[3]), hi[3], 1)),
            ]
        }
    }
}

/// The FFT plan of the lane path: a complex FFT of M = N/2 points as in-place radix-4
/// decimation in frequency (a final radix-2 stage when log₂ M is odd), depth first so that
/// after the first stage every sub-transform works inside the L1 cache; the output stays in
/// digit-reversed order and is read through [`LanePlan::pos`] (no reordering pass).
#[derive(Clone, Debug)]
pub struct LanePlan {
    /// Complex FFT length, N/2.
    m: usize,
    /// Twiddles of the radix-4 stage of each size n = M / 4^level: for p in 1..n/4,
    /// (w1r, w1i, w2r, w2i, w3r, w3i) with w_r = e^{−2πi·rp/n}, each from `cos`/`sin` directly.
    tw: Vec<Vec<[f64; 6]>>,
    /// `pos[k]`: the element of the buffer that holds output bin k.
    pos: Vec<u32>,
}

/// Blocks of at most this many f64 per buffer (re or im) are transformed stage by stage; larger
/// ones split into their four quarters first (8 KiB each of re and im: well inside L1).
const BLOCK_F64: usize = 1024;

/// (wr + i·wi)·(xr + i·xi) with a twiddle shared by all lanes.
#[inline(always)]
fn cmul<T: Lane>(wr: f64, wi: f64, xr: T, xi: T) -> (T, T) {
    let (wr, wi) = (T::splat(wr), T::splat(wi));
    (wr.mul(xr).sub(wi.mul(xi)), wr.mul(xi).add(wi.mul(xr)))
}

/// A complex lane vector (re, im).
type C<T> = (T, T);

/// The radix-4 DIF butterfly: outputs r = 0..3 are a + b + c + d, w1·((a − c) − i(b − d)),
/// w2·((a + c) − (b + d)), w3·((a − c) + i(b − d)); `tw` None means all twiddles are 1.
#[inline(always)]
fn butterfly4<T: Lane>(a: C<T>, b: C<T>, c: C<T>, d: C<T>, tw: Option<&[f64; 6]>) -> [C<T>; 4] {
    let (apc_r, apc_i) = (a.0.add(c.0), a.1.add(c.1));
    let (amc_r, amc_i) = (a.0.sub(c.0), a.1.sub(c.1));
    let (bpd_r, bpd_i) = (b.0.add(d.0), b.1.add(d.1));
    let (bmd_r, bmd_i) = (b.0.sub(d.0), b.1.sub(d.1));
    let y0 = (apc_r.add(bpd_r), apc_i.add(bpd_i));
    let y1 = (amc_r.add(bmd_i), amc_i.sub(bmd_r));
    let y2 = (apc_r.sub(bpd_r), apc_i.sub(bpd_i));
    let y3 = (amc_r.sub(bmd_i), amc_i.add(bmd_r));
    match tw {
        None => [y0, y1, y2, y3],
        Some(w) => [
            y0,
            cmul(w[0], w[1], y1.0, y1.1),
            cmul(w[2], w[3], y2.0, y2.1),
            cmul(w[4], w[5], y3.0, y3.1),
        ],
    }
}

/// Loads element `e` (a lane vector) of (re, im).
#[inline(always)]
unsafe fn ld<T: Lane>(re: *const f64, im: *const f64, e: usize) -> C<T> {
    (T::load(re.add(e * T::L)), T::load(im.add(e * T::L)))
}

/// Stores element `e` of (re, im).
#[inline(always)]
unsafe fn st<T: Lane>(re: *mut f64, im: *mut f64, e: usize, v: C<T>) {
    v.0.store(re.add(e * T::L));
    v.1.store(im.add(e * T::L));
}

/// One in-place radix-4 DIF stage on the block of `n` elements at (re, im): for p < n/4 the
/// butterfly of elements p + k·n/4 (k = 0..3), output r back to p + r·n/4, so quarter r then
/// holds the length-n/4 sequence whose DFT is bins 4k + r.
///
/// # Safety
/// (re, im) valid for n lane vectors; `tw` is the stage's table (n/4 − 1 entries).
#[inline(always)]
unsafe fn radix4<T: Lane>(re: *mut f64, im: *mut f64, n: usize, tw: &[[f64; 6]]) {
    let n1 = n / 4;
    radix4_one::<T>(re, im, n1, 0, None);
    for (p, w) in tw[..n1 - 1].iter().enumerate() {
        radix4_one::<T>(re, im, n1, p + 1, Some(w));
    }
}

/// The butterfly of [`radix4`] at position p. (A function, not a closure: closures do not
/// inherit the caller's target features, and the intrinsics inside would become calls.)
///
/// # Safety
/// As [`radix4`].
#[inline(always)]
unsafe fn radix4_one<T: Lane>(
    re: *mut f64,
    im: *mut f64,
    n1: usize,
    p: usize,
    w: Option<&[f64; 6]>,
) {
    let y = butterfly4::<T>(
        ld(re, im, p),
        ld(re, im, p + n1),
        ld(re, im, p + 2 * n1),
        ld(re, im, p + 3 * n1),
        w,
    );
    st(re, im, p, y[0]);
    st(re, im, p + n1, y[1]);
    st(re, im, p + 2 * n1, y[2]);
    st(re, im, p + 3 * n1, y[3]);
}

/// In-place 2-point DFTs of the element pairs (2q, 2q + 1) of a block of `n` elements.
///
/// # Safety
/// (re, im) valid for n lane vectors.
#[inline(always)]
unsafe fn radix2_pairs<T: Lane>(re: *mut f64, im: *mut f64, n: usize) {
    for b in (0..n).step_by(2) {
        let (a, c) = (ld::<T>(re, im, b), ld::<T>(re, im, b + 1));
        st(re, im, b, (a.0.add(c.0), a.1.add(c.1)));
        st(re, im, b + 1, (a.0.sub(c.0), a.1.sub(c.1)));
    }
}

impl LanePlan {
    /// Plan for real frames of `n_fft` samples; `None` unless [`supported`].
    pub fn new(n_fft: usize) -> Option<Self> {
        if !supported(n_fft) {
            return None;
        }
        let m = n_fft / 2;
        let mut tw = Vec::new();
        let mut n = m;
        while n >= 4 {
            tw.push(
                (1..n / 4)
                    .map(|p| {
                        let w = |r: usize| {
                            let a = -2.0 * std::f64::consts::PI * (r * p) as f64 / n as f64;
                            (a.cos(), a.sin())
                        };
                        let ((a, b), (c, d), (e, f)) = (w(1), w(2), w(3));
                        [a, b, c, d, e, f]
                    })
                    .collect(),
            );
            n /= 4;
        }
        // Bin k of a length-n block: k = 4j + r lies in quarter r at bin j of that quarter;
        // blocks of 2 are in natural order, blocks of 1 trivially.
        fn pos(k: usize, n: usize) -> usize {
            if n <= 2 {
                k
            } else {
                (k % 4) * (n / 4) + pos(k / 4, n / 4)
            }
        }
        let pos = (0..m).map(|k| pos(k, m) as u32).collect();
        Some(LanePlan { m, tw, pos })
    }

    /// Complex FFT length N/2.
    #[cfg(test)]
    pub fn m(&self) -> usize {
        self.m
    }

    /// The buffer element that holds bin `k` after [`Self::fft`] (`k < m`).
    #[inline(always)]
    pub fn pos(&self) -> &[u32] {
        &self.pos
    }

    /// In-place forward complex FFT of the `m` lane vectors in (`re`, `im`) (each at least
    /// `m·T::L` f64); bin k ends up in element `pos()[k]`. (The front end uses
    /// [`Self::fft_windowed`]; this plain entry serves the tests of the stages.)
    #[cfg(test)]
    #[inline(always)]
    pub fn fft<T: Lane>(&self, re: &mut [f64], im: &mut [f64]) {
        let len = self.m * T::L;
        assert!(re.len() >= len && im.len() >= len);
        // SAFETY: every stage stays inside the first m elements of each buffer.
        unsafe { self.stages::<T>(re.as_mut_ptr(), im.as_mut_ptr(), 0) }
    }

    /// [`Self::fft`] with the first stage reading the frames straight from the signal: lane
    /// l's complex input element e is (x_l[2e]·w[2e], x_l[2e + 1]·w[2e + 1]) for the frame
    /// pointers `x` (each valid for N = 2m samples) and window `w` (N values). Saves writing
    /// and re-reading the windowed frames.
    ///
    /// # Safety
    /// As above for `x` and `w`; `re`, `im` hold ≥ m·T::L f64.
    #[inline(always)]
    pub unsafe fn fft_windowed<T: Lane>(
        &self,
        x: &[*const f32; MAX_LANES],
        w: *const f64,
        re: &mut [f64],
        im: &mut [f64],
    ) {
        let (m, len) = (self.m, self.m * T::L);
        assert!(re.len() >= len && im.len() >= len && m >= 8);
        let (re, im) = (re.as_mut_ptr(), im.as_mut_ptr());
        let n1 = m / 4;
        let tw = &self.tw[0];
        // Elements p and p + 1 of each quarter are samples 2p .. 2p + 4 of it: one windowed
        // 4×L load per quarter gives two butterflies.
        for p in (0..n1).step_by(2) {
            let q: [[T; 4]; 4] = [
                T::load_window4(x, 2 * p, w),
                T::load_window4(x, 2 * (p + n1), w),
                T::load_window4(x, 2 * (p + 2 * n1), w),
                T::load_window4(x, 2 * (p + 3 * n1), w),
            ];
            let y = butterfly4(
                (q[0][0], q[0][1]),
                (q[1][0], q[1][1]),
                (q[2][0], q[2][1]),
                (q[3][0], q[3][1]),
                if p == 0 { None } else { Some(&tw[p - 1]) },
            );
            for (r, v) in y.into_iter().enumerate() {
                st(re, im, p + r * n1, v);
            }
            let y = butterfly4(
                (q[0][2], q[0][3]),
                (q[1][2], q[1][3]),
                (q[2][2], q[2][3]),
                (q[3][2], q[3][3]),
                Some(&tw[p]),
            );
            for (r, v) in y.into_iter().enumerate() {
                st(re, im, p + 1 + r * n1, v);
            }
        }
        self.stages::<T>(re, im, 1);
    }

    /// Runs stages `from..` of the FFT (those before are done), depth first: the blocks of
    /// level `d`, the first level whose blocks are small (≤ `BLOCK_F64` f64 per buffer), are
    /// finished one after another, each right after its ancestors' stages (an ancestor's
    /// stage runs when its first descendant block comes up, parents before children).
    ///
    /// # Safety
    /// (re, im) valid for m lane vectors.
    #[inline(always)]
    unsafe fn stages<T: Lane>(&self, re: *mut f64, im: *mut f64, from: usize) {
        let (m, l) = (self.m, T::L);
        let mut d = from;
        while (m >> (2 * d)) * l > BLOCK_F64 && (m >> (2 * d)) >= 4 {
            d += 1;
        }
        let n = m >> (2 * d);
        for b in 0..1usize << (2 * d) {
            for i in from..d {
                let span = 1usize << (2 * (d - i));
                if b % span == 0 {
                    let size = m >> (2 * i);
                    let base = (b / span) * size * l;
                    radix4::<T>(re.add(base), im.add(base), size, &self.tw[i]);
                }
            }
            // The small block: stage by stage over its sub-blocks.
            let (re, im) = (re.add(b * n * l), im.add(b * n * l));
            let (mut nn, mut lvl) = (n, d);
            while nn >= 4 {
                for sb in (0..n).step_by(nn) {
                    radix4::<T>(re.add(sb * l), im.add(sb * l), nn, &self.tw[lvl]);
                }
                nn /= 4;
                lvl += 1;
            }
            if nn == 2 {
                radix2_pairs::<T>(re, im, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct O(M²) complex DFT in f64 with exactly reduced angles: the reference.
    fn naive_dft(re: &[f64], im: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let m = re.len();
        let mut out = (vec![0.0; m], vec![0.0; m]);
        for k in 0..m {
            let (mut sr, mut si) = (0.0, 0.0);
            for j in 0..m {
                // (j·k) mod m keeps the angle in [0, 2π): no large-argument cos/sin error.
                let a = -2.0 * std::f64::consts::PI * ((j * k) % m) as f64 / m as f64;
                let (c, s) = (a.cos(), a.sin());
                sr += re[j] * c - im[j] * s;
                si += re[j] * s + im[j] * c;
            }
            out.0[k] = sr;
            out.1[k] = si;
        }
        out
    }

    /// A deterministic test signal per lane (different in every lane).
    fn signal(m: usize, lane: usize) -> (Vec<f64>, Vec<f64>) {
        let f = |j: usize, c: f64| {
            (j as f64 * (0.37 + 0.11 * lane as f64) + c).sin() * 0.8
                + ((j * 7919 + lane * 104729) % 1009) as f64 / 1009.0
                - 0.5
        };
        (
            (0..m).map(|j| f(j, 0.0)).collect(),
            (0..m).map(|j| f(j, 1.3)).collect(),
        )
    }

    /// Runs the lane FFT of size `m` with lane type `T` on `T::L` different signals and
    /// checks each lane against [`naive_dft`].
    fn check_fft<T: Lane>(m: usize) {
        let l_n = T::L;
        let plan = LanePlan::new(2 * m).expect("supported size");
        let (mut re, mut im) = (vec![0.0; m * l_n], vec![0.0; m * l_n]);
        let sigs: Vec<_> = (0..l_n).map(|l| signal(m, l)).collect();
        for j in 0..m {
            for l in 0..l_n {
                re[j * l_n + l] = sigs[l].0[j];
                im[j * l_n + l] = sigs[l].1[j];
            }
        }
        plan.fft::<T>(&mut re, &mut im);
        let pos = plan.pos();
        // Bin k from its digit-reversed place.
        let zr: Vec<f64> = (0..m * l_n)
            .map(|i| re[pos[i / l_n] as usize * l_n + i % l_n])
            .collect();
        let zi: Vec<f64> = (0..m * l_n)
            .map(|i| im[pos[i / l_n] as usize * l_n + i % l_n])
            .collect();
        for (l, (sr, si)) in sigs.iter().enumerate() {
            let (wr, wi) = naive_dft(sr, si);
            // Parseval: Σ|X|² = m·Σ|x|², the frame's spectral energy.
            let energy: f64 = wr.iter().zip(&wi).map(|(a, b)| a * a + b * b).sum();
            let err: f64 = (0..m)
                .map(|k| (zr[k * l_n + l] - wr[k]).powi(2) + (zi[k * l_n + l] - wi[k]).powi(2))
                .sum();
            // Relative squared error; both FFT and O(M²) reference round at ~1e-16 per
            // operation, so ≤ 1e-24 of the energy (1e-12 in amplitude) is a loose bound
            // that still catches any wrong twiddle or index (those give O(1e-2) or more).
            assert!(
                err <= 1e-24 * energy,
                "m {m} lane {l}: error² {err} vs energy {energy}"
            );
        }
    }

    #[test]
    fn lane_fft_matches_naive_dft() {
        // Even and odd numbers of radix-4 passes (a final radix-2 pass when log2 m is odd),
        // up to the default n_fft 2048 (m 1024).
        for m in [8, 16, 32, 64, 128, 256, 512, 1024] {
            check_fft::<Scalar4>(m);
        }
        check_fft::<Scalar<1>>(1024);
        check_fft::<Scalar<8>>(512);
    }

    #[test]
    fn lane_fft_matches_rustfft() {
        // The single-frame path's FFT, at the default size and a size with a radix-2 stage.
        for m in [1024usize, 512] {
            let plan = LanePlan::new(2 * m).unwrap();
            let (sr, si) = signal(m, 3);
            let mut z: Vec<rustfft::num_complex::Complex<f64>> = sr
                .iter()
                .zip(&si)
                .map(|(&r, &i)| rustfft::num_complex::Complex::new(r, i))
                .collect();
            rustfft::FftPlanner::new()
                .plan_fft_forward(m)
                .process(&mut z);
            let (mut re, mut im) = (sr.clone(), si.clone());
            plan.fft::<Scalar<1>>(&mut re, &mut im);
            let energy: f64 = z.iter().map(|c| c.norm_sqr()).sum();
            let err: f64 = (0..m)
                .map(|k| {
                    let e = plan.pos()[k] as usize;
                    (re[e] - z[k].re).powi(2) + (im[e] - z[k].im).powi(2)
                })
                .sum();
            // Two f64 FFTs, each ~1e-16 relative per operation, log2(m) ≤ 10 stages: their
            // difference is ~1e-15 in amplitude; 1e-24 in energy (1e-12 amplitude) is loose.
            assert!(
                err <= 1e-24 * energy,
                "m {m}: error² {err} vs energy {energy}"
            );
        }
    }

    #[test]
    fn pos_is_a_permutation_with_bin_zero_first() {
        for n_fft in [16usize, 32, 512, 2048, 4096] {
            let plan = LanePlan::new(n_fft).unwrap();
            let mut seen = vec![false; plan.m()];
            for &e in plan.pos() {
                assert!(!seen[e as usize], "n_fft {n_fft}: element {e} twice");
                seen[e as usize] = true;
            }
            assert!(seen.iter().all(|&s| s));
            // The split step reads bin 0 at element 0 without the table.
            assert_eq!(plan.pos()[0], 0);
        }
    }

    /// The SIMD lane types run the same arithmetic: against the DFT too (where the CPU has
    /// them; the kernels are inlined into these `#[target_feature]` wrappers).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_lane_fft_matches_naive_dft() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(m: usize) {
            check_fft::<Avx2>(m)
        }
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512(m: usize) {
            check_fft::<Avx512>(m)
        }
        // 2048: m·L above the block size, so the depth-first split runs at two levels.
        for m in [8, 32, 512, 1024, 2048] {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                unsafe { avx2(m) };
            } else {
                eprintln!("skipping AVX2 lanes: CPU lacks AVX2/FMA");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                unsafe { avx512(m) };
            } else {
                eprintln!("skipping AVX-512 lanes: CPU lacks AVX-512F");
            }
        }
    }

    #[test]
    fn unsupported_sizes_have_no_plan() {
        for n in [0, 2, 4, 8, 18, 1000, 2047] {
            assert!(LanePlan::new(n).is_none(), "{n}");
        }
        assert_eq!(LanePlan::new(2048).map(|p| p.m()), Some(1024));
    }
}
