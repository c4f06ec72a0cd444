//! A power-spectrum kernel for several frames at once: the frames' windowed samples sit in the
//! lanes of a vector (element `j` of frame `l` at `buf[j][l]`), so every butterfly of the FFT
//! is plain vertical arithmetic on `[f64; L]` with twiddles shared by all lanes — no shuffles,
//! and the compiler turns each `[f64; L]` operation into one or two SIMD instructions
//! (AVX2: L = 4 → one `ymm`; AVX-512: L = 8 → one `zmm`).
//!
//! It computes the same thing as [`crate::features::stft::Stft::frame_power_upto`] for frames
//! that lie wholly inside the signal (no zero padding): window (f32 sample × f64 Hann), pack
//! (even, odd) samples as complex values, a complex FFT of N/2 points, the real-FFT split step
//! and |X|², all in f64. The FFT is a radix-4 Stockham autosort FFT (a final radix-2 pass when
//! log₂(N/2) is odd) with twiddles computed directly by `cos`/`sin` (no recurrences), so its
//! error is of the same order as rustfft's; results differ from the single-frame path only in
//! rounding (≤ ~1e-15 of the frame's energy, see the tests).
//!
//! The kernels are generic and `#[inline(always)]`: the caller compiles them inside a
//! `#[target_feature]` function to get SIMD, and the plain build of the same code is the
//! portable fallback (bit-identical to the SIMD builds: no FMA contraction happens in Rust).

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
/// The SIMD implementations may only be used where the CPU has their features and the
/// calling code is compiled with them (`#[target_feature]`), which the methods' `unsafe`
/// pointer contracts do not express; [`crate::features::Extractor`] guarantees it.
pub unsafe trait Lane: Copy {
    /// Lanes per vector.
    const L: usize;
    /// Loads `L` f64 from `p`.
    unsafe fn load(p: *const f64) -> Self;
    /// Stores `L` f64 to `p`.
    unsafe fn store(self, p: *mut f64);
    fn splat(x: f64) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// Samples `j .. j + 4` of frames `x[0 .. L]` (f32), each times the window `w[j .. j + 4]`
    /// in f64, transposed: result `r` holds sample `j + r` of every frame.
    unsafe fn load_window4(x: &[*const f32; MAX_LANES], j: usize, w: *const f64) -> [Self; 4];
}

/// The portable lane type: four f64 in an array (what runs without AVX2).
#[derive(Clone, Copy, Debug)]
pub struct Scalar4(pub [f64; 4]);

// SAFETY: plain Rust arithmetic, no CPU feature needed.
unsafe impl Lane for Scalar4 {
    const L: usize = 4;
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        Scalar4(*(p as *const [f64; 4]))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        *(p as *mut [f64; 4]) = self.0;
    }
    #[inline(always)]
    fn splat(x: f64) -> Self {
        Scalar4([x; 4])
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Scalar4(std::array::from_fn(|l| self.0[l] + o.0[l]))
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Scalar4(std::array::from_fn(|l| self.0[l] - o.0[l]))
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Scalar4(std::array::from_fn(|l| self.0[l] * o.0[l]))
    }
    #[inline(always)]
    unsafe fn load_window4(x: &[*const f32; MAX_LANES], j: usize, w: *const f64) -> [Self; 4] {
        std::array::from_fn(|r| {
            Scalar4(std::array::from_fn(|l| {
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

/// One Stockham pass: `n` is the sub-transform length it splits, `s` the stride (n·s = N/2).
#[derive(Clone, Debug)]
struct Pass {
    n: usize,
    s: usize,
    /// Radix-4 only: for p in 1..n/4, (w1r, w1i, w2r, w2i, w3r, w3i) with w_r = e^{−2πi·rp/n}.
    tw: Vec<[f64; 6]>,
}

/// The FFT plan of the lane path: passes and twiddles for a complex FFT of N/2 points.
#[derive(Clone, Debug)]
pub struct LanePlan {
    /// Complex FFT length, N/2.
    m: usize,
    passes: Vec<Pass>,
}

/// (wr + i·wi)·(xr + i·xi) with a twiddle shared by all lanes.
#[inline(always)]
fn cmul<T: Lane>(wr: f64, wi: f64, xr: T, xi: T) -> (T, T) {
    let (wr, wi) = (T::splat(wr), T::splat(wi));
    (wr.mul(xr).sub(wi.mul(xi)), wr.mul(xi).add(wi.mul(xr)))
}

impl LanePlan {
    /// Plan for real frames of `n_fft` samples; `None` unless [`supported`].
    pub fn new(n_fft: usize) -> Option<Self> {
        if !supported(n_fft) {
            return None;
        }
        let m = n_fft / 2;
        let mut passes = Vec::new();
        let (mut n, mut s) = (m, 1);
        while n >= 4 {
            let tw = (1..n / 4)
                .map(|p| {
                    let w = |r: usize| {
                        let a = -2.0 * std::f64::consts::PI * (r * p) as f64 / n as f64;
                        (a.cos(), a.sin())
                    };
                    let ((a, b), (c, d), (e, f)) = (w(1), w(2), w(3));
                    [a, b, c, d, e, f]
                })
                .collect();
            passes.push(Pass { n, s, tw });
            n /= 4;
            s *= 4;
        }
        if n == 2 {
            passes.push(Pass {
                n,
                s,
                tw: Vec::new(),
            });
        }
        Some(LanePlan { m, passes })
    }

    /// Complex FFT length N/2.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Forward complex FFT of the `m` lane vectors in (`re`, `im`), using (`tr`, `ti`) as the
    /// Stockham ping-pong buffer; all four hold at least `m·T::L` f64. Returns `false` when
    /// the result is in (`re`, `im`), `true` when it is in (`tr`, `ti`) (odd pass count).
    #[inline(always)]
    pub fn fft<T: Lane>(
        &self,
        re: &mut [f64],
        im: &mut [f64],
        tr: &mut [f64],
        ti: &mut [f64],
    ) -> bool {
        let len = self.m * T::L;
        assert!(re.len() >= len && im.len() >= len && tr.len() >= len && ti.len() >= len);
        let mut in_x = true;
        for pass in &self.passes {
            // SAFETY: every element a pass touches is < n·s = m (see `radix4` / `radix2`),
            // all four buffers hold ≥ m elements (asserted above), and source and destination
            // are different buffers.
            unsafe {
                let (xr, xi, yr, yi) = if in_x {
                    (re.as_ptr(), im.as_ptr(), tr.as_mut_ptr(), ti.as_mut_ptr())
                } else {
                    (tr.as_ptr(), ti.as_ptr(), re.as_mut_ptr(), im.as_mut_ptr())
                };
                if pass.n == 2 {
                    radix2::<T>(pass.s, xr, xi, yr, yi);
                } else {
                    radix4::<T>(pass, xr, xi, yr, yi);
                }
            }
            in_x = !in_x;
        }
        !in_x
    }
}

/// One radix-4 decimation-in-frequency Stockham pass (the OTFFT formulation):
/// with n1 = n/4 and a..d = x[q + s(p + k·n1)], k = 0..3, writes
/// y[q + s(4p + r)] = w^r_p · (r-th radix-4 output), w_p = e^{−2πip/n}.
///
/// # Safety
/// `x*` readable and `y*` writable for n·s lane vectors, non-overlapping.
#[inline(always)]
unsafe fn radix4<T: Lane>(pass: &Pass, xr: *const f64, xi: *const f64, yr: *mut f64, yi: *mut f64) {
    let (n, s, l) = (pass.n, pass.s, T::L);
    let n1 = n / 4;
    let step = s * n1 * l;
    for p in 0..n1 {
        let w = if p == 0 { None } else { Some(pass.tw[p - 1]) };
        for q in 0..s {
            let i0 = (q + s * p) * l;
            let (ar, ai) = (T::load(xr.add(i0)), T::load(xi.add(i0)));
            let (br, bi) = (T::load(xr.add(i0 + step)), T::load(xi.add(i0 + step)));
            let (cr, ci) = (
                T::load(xr.add(i0 + 2 * step)),
                T::load(xi.add(i0 + 2 * step)),
            );
            let (dr, di) = (
                T::load(xr.add(i0 + 3 * step)),
                T::load(xi.add(i0 + 3 * step)),
            );
            let (apc_r, apc_i) = (ar.add(cr), ai.add(ci));
            let (amc_r, amc_i) = (ar.sub(cr), ai.sub(ci));
            let (bpd_r, bpd_i) = (br.add(dr), bi.add(di));
            let (bmd_r, bmd_i) = (br.sub(dr), bi.sub(di));
            // r = 0: a + b + c + d; r = 2: a − b + c − d;
            // r = 1: (a − c) − i(b − d); r = 3: (a − c) + i(b − d).
            let (y0r, y0i) = (apc_r.add(bpd_r), apc_i.add(bpd_i));
            let (y2r, y2i) = (apc_r.sub(bpd_r), apc_i.sub(bpd_i));
            let (y1r, y1i) = (amc_r.add(bmd_i), amc_i.sub(bmd_r));
            let (y3r, y3i) = (amc_r.sub(bmd_i), amc_i.add(bmd_r));
            let (o, os) = ((q + s * 4 * p) * l, s * l);
            y0r.store(yr.add(o));
            y0i.store(yi.add(o));
            let ((r1, i1), (r2, i2), (r3, i3)) = match w {
                None => ((y1r, y1i), (y2r, y2i), (y3r, y3i)),
                Some(w) => (
                    cmul(w[0], w[1], y1r, y1i),
                    cmul(w[2], w[3], y2r, y2i),
                    cmul(w[4], w[5], y3r, y3i),
                ),
            };
            r1.store(yr.add(o + os));
            i1.store(yi.add(o + os));
            r2.store(yr.add(o + 2 * os));
            i2.store(yi.add(o + 2 * os));
            r3.store(yr.add(o + 3 * os));
            i3.store(yi.add(o + 3 * os));
        }
    }
}

/// The last pass when log₂(N/2) is odd (n = 2, no twiddles): y[q] = x[q] + x[q+s],
/// y[q+s] = x[q] − x[q+s].
///
/// # Safety
/// As [`radix4`], for 2·s lane vectors.
#[inline(always)]
unsafe fn radix2<T: Lane>(s: usize, xr: *const f64, xi: *const f64, yr: *mut f64, yi: *mut f64) {
    let l = T::L;
    for q in 0..s {
        let (i, j) = (q * l, (q + s) * l);
        let (ar, ai) = (T::load(xr.add(i)), T::load(xi.add(i)));
        let (br, bi) = (T::load(xr.add(j)), T::load(xi.add(j)));
        ar.add(br).store(yr.add(i));
        ai.add(bi).store(yi.add(i));
        ar.sub(br).store(yr.add(j));
        ai.sub(bi).store(yi.add(j));
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
            ((j as f64 * (0.37 + 0.11 * lane as f64) + c).sin() * 0.8
                + ((j * 7919 + lane * 104729) % 1009) as f64 / 1009.0
                - 0.5)
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
        let (mut tr, mut ti) = (vec![0.0; m * l_n], vec![0.0; m * l_n]);
        let (zr, zi) = if plan.fft::<T>(&mut re, &mut im, &mut tr, &mut ti) {
            (tr, ti)
        } else {
            (re, im)
        };
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
        for m in [8, 32, 512, 1024] {
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
