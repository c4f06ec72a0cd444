//! `--precision bf16`: GEMMs with bf16 operands and fp32 accumulation on CPUs with
//! AVX512-BF16 (`vdpbf16ps`), for the GEMMs where they pay off (the FFT convolutions'
//! per-bin channel mixing, see [`gemm_mixed`]). Everything else stays fp32: weights (the
//! master copy), activations between ops, BatchNorm, the LSTM, losses and Adam.
//!
//! Technique: both operands are converted (round to nearest even, `vcvtneps2bf16`) into
//! packed pair layouts, then a register-blocked microkernel (8 rows × 32 columns of fp32
//! accumulators) runs `vdpbf16ps`, which multiplies pairs of bf16 along k and adds them to
//! fp32 lanes. The `gemm` crate (0.19) has no bf16-operand/fp32-accumulate path (its f16
//! support is half-precision storage, computed in f32), so this is hand-written.
//!
//! Accuracy: each operand is rounded to bf16's 8 significant bits (relative error ≤ 2⁻⁸, the
//! unit roundoff), so a product carries ≤ 2⁻⁷ + 2⁻¹⁶ relative error; sums are fp32. A dot
//! product of length k is within `(2⁻⁷ + 2⁻¹⁶ + k·2⁻²³)·Σ|a_i·b_i|` of the exact one (tested
//! in this file; in practice the rounding errors partly cancel, see the test's output).
//!
//! The precision is process-wide, set once by the CLI from `--precision` before any work
//! (like `--threads`); f64 computations never use bf16.
//!
//! Layer: cpu, the reference (below train, engine and cli). May use `model` and the shared
//! modules (`rng`, `isa`, `cache`, `atomic_file`).

use super::Float;
use std::sync::atomic::{AtomicU8, Ordering};

/// Arithmetic of the CPU device's large GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// fp32 everywhere (the default).
    Fp32,
    /// bf16 operands, fp32 accumulation, in the GEMMs listed in [`gemm_mixed`].
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Whether this CPU can run the bf16 kernels: AVX512-BF16 detected at run time, and the
/// vector ISA not capped below AVX-512 by `SER_CPU_ISA`.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::isa::active() == crate::isa::Isa::Avx512
            && std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Why bf16 cannot run here (None when it can).
pub fn unavailable_reason() -> Option<String> {
    if available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bf16") {
        return Some(format!(
            "--precision bf16 needs AVX512-BF16, which SER_CPU_ISA={} turns off; unset it or use --precision fp32",
            crate::isa::active().name()
        ));
    }
    Some(
        "--precision bf16 needs a CPU with AVX512-BF16 (vdpbf16ps; e.g. AMD Zen 4+, Intel \
         Cooper Lake / Sapphire Rapids+), which this CPU does not have; use --precision fp32"
            .into(),
    )
}

/// Sets the process-wide precision. bf16 on a CPU without AVX512-BF16 is an error (no
/// silent fallback: a user asking for bf16 speed should learn that it is not there).
pub fn set_precision(p: Precision) -> Result<(), String> {
    if p == Precision::Bf16 {
        if let Some(why) = unavailable_reason() {
            return Err(why);
        }
    }
    PRECISION.store(p as u8, Ordering::Relaxed);
    Ok(())
}

/// The process-wide precision.
pub fn precision() -> Precision {
    if PRECISION.load(Ordering::Relaxed) == Precision::Bf16 as u8 {
        Precision::Bf16
    } else {
        Precision::Fp32
    }
}

/// f32 → bf16 bits, round to nearest even (NaN stays a quiet NaN). Scalar twin of
/// `vcvtneps2bf16` apart from denormals, which the instruction flushes to zero.
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    let r = u.wrapping_add(0x7fff + ((u >> 16) & 1));
    (r >> 16) as u16
}

/// bf16 bits → f32 (exact).
#[inline]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Below this many multiply-adds a GEMM stays fp32 (packing would cost more than it saves).
const MIN_MACS: usize = 4096;

/// [`super::gemm`] (single-threaded: `par` must be false at the call sites), in bf16 when
/// `--precision bf16` is on, T is f32 and the GEMM is big enough; fp32 otherwise. Used where a
/// profile showed the time goes and bf16 pays: the FFT convolutions' per-bin channel mixing
/// (forward, dX and dW products).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm_mixed<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    c_rs: usize,
    acc: bool,
    a: &[T],
    a_rs: usize,
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    b_cs: usize,
) {
    if precision() == Precision::Bf16
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && m * n * k >= MIN_MACS
    {
        // SAFETY: T is f32 (checked above), so the slices are f32 slices of the same length.
        let (c, a, b) = unsafe {
            (
                std::slice::from_raw_parts_mut(c.as_mut_ptr() as *mut f32, c.len()),
                std::slice::from_raw_parts(a.as_ptr() as *const f32, a.len()),
                std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len()),
            )
        };
        gemm_bf16(m, n, k, c, c_rs, acc, a, a_rs, a_cs, b, b_rs, b_cs);
    } else {
        super::gemm(m, n, k, c, c_rs, acc, a, a_rs, a_cs, b, b_rs, b_cs, false);
    }
}

thread_local! {
    /// Packed operands, kept per thread for reuse.
    static PACK: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// `C = (acc ? C : 0) + bf16(A)·bf16(B)` with fp32 accumulation; shapes and strides as in
/// [`super::gemm`]. Panics if the CPU lacks AVX512-BF16 (check [`available`] first).
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    c_rs: usize,
    acc: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * c_rs + n <= c.len(), "gemm_bf16: C too small");
    if k == 0 {
        if !acc {
            for i in 0..m {
                c[i * c_rs..i * c_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "gemm_bf16: A too small"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "gemm_bf16: B too small"
    );
    assert!(available(), "gemm_bf16 called on a CPU without AVX512-BF16");
    #[cfg(target_arch = "x86_64")]
    PACK.with(|p| {
        let (pa, pb) = &mut *p.borrow_mut();
        // SAFETY: AVX512-BF16/F are present (asserted); the asserts above bound every index
        // the strides reach; the packs are sized below by the packers.
        unsafe {
            x86::run(m, n, k, c, c_rs, acc, a, a_rs, a_cs, b, b_rs, b_cs, pa, pb);
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::to_bf16;
    use std::arch::x86_64::*;

    /// Rows of C per microkernel call (8 × 2 zmm accumulators = 16 registers).
    const MR: usize = 8;

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    pub(super) unsafe fn run(
        m: usize,
        n: usize,
        k: usize,
        c: &mut [f32],
        c_rs: usize,
        acc: bool,
        a: &[f32],
        a_rs: usize,
        a_cs: usize,
        b: &[f32],
        b_rs: usize,
        b_cs: usize,
        pa: &mut Vec<u32>,
        pb: &mut Vec<u32>,
    ) {
        let kp = k.div_ceil(2);
        let np = n.div_ceil(16) * 16;
        // A as pair words, addressed a[i·ars + p·aps]
        pa.clear();
        pa.resize(m * kp, 0);
        let (ars, aps) = if a_cs == 1 {
            for i in 0..m {
                contig_pairs(a.as_ptr().add(i * a_rs), k, pa.as_mut_ptr().add(i * kp));
            }
            (kp, 1)
        } else if a_rs == 1 {
            row_pairs(a.as_ptr(), a_cs, k, m, pa.as_mut_ptr(), m);
            (1, m)
        } else {
            for i in 0..m {
                for p in 0..kp {
                    pa[i * kp + p] = pair_at(a, i * a_rs, a_cs, p, k);
                }
            }
            (kp, 1)
        };
        // B as pair words [p][np], columns ≥ n zero.
        pb.clear();
        pb.resize(kp * np, 0);
        if b_cs == 1 {
            row_pairs(b.as_ptr(), b_rs, k, n, pb.as_mut_ptr(), np);
        } else if b_rs == 1 {
            // k contiguous per column: convert each column with vector code into [n][kp]
            // (the tail of pa's buffer), then transpose the words.
            let off = pa.len();
            pa.resize(off + n * kp, 0);
            for j in 0..n {
                contig_pairs(
                    b.as_ptr().add(j * b_cs),
                    k,
                    pa.as_mut_ptr().add(off + j * kp),
                );
            }
            for (j, col) in pa[off..].chunks_exact(kp).enumerate() {
                for (p, &w) in col.iter().enumerate() {
                    *pb.get_unchecked_mut(p * np + j) = w;
                }
            }
            pa.truncate(off);
        } else {
            for j in 0..n {
                for p in 0..kp {
                    pb[p * np + j] = pair_at(b, j * b_cs, b_rs, p, k);
                }
            }
        }
        let (pa, pb) = (pa.as_ptr(), pb.as_ptr());
        let cp = c.as_mut_ptr();
        let mut j0 = 0;
        while j0 < n {
            let w = (n - j0).min(32);
            let mut i0 = 0;
            while i0 < m {
                let h = (m - i0).min(MR);
                let ap = pa.add(i0 * ars);
                let bp = pb.add(j0);
                let cc = cp.add(i0 * c_rs + j0);
                macro_rules! go {
                    ($($r:literal)*) => {
                        match (h, w > 16) {
                            $(($r, true) => micro::<$r, 2>(kp, ap, ars, aps, bp, np, cc, c_rs, w, acc),
                              ($r, false) => micro::<$r, 1>(kp, ap, ars, aps, bp, np, cc, c_rs, w, acc),)*
                            _ => unreachable!(),
                        }
                    };
                }
                go!(1 2 3 4 5 6 7 8);
                i0 += MR;
            }
            j0 += 32;
        }
    }

    /// Pair word p of the strided vector v[base + i·st], i < k (zero past k).
    #[inline]
    fn pair_at(v: &[f32], base: usize, st: usize, p: usize, k: usize) -> u32 {
        let lo = to_bf16(v[base + 2 * p * st]) as u32;
        let hi = if 2 * p + 1 < k {
            to_bf16(v[base + (2 * p + 1) * st]) as u32
        } else {
            0
        };
        lo | hi << 16
    }

    /// k contiguous floats → kp pair words (bf16 in memory order, zero-padded to even k).
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    unsafe fn contig_pairs(src: *const f32, k: usize, dst: *mut u32) {
        let d16 = dst as *mut u16;
        let mut i = 0;
        while i < k {
            let r = (k - i).min(16);
            let mask: __mmask16 = if r == 16 { !0 } else { (1u16 << r) - 1 };
            let v = _mm512_maskz_loadu_ps(mask, src.add(i));
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(d16.add(i) as *mut i16, mask, h);
            i += 16;
        }
        if k % 2 == 1 {
            *d16.add(k) = 0;
        }
    }

    /// Rows 2p and 2p+1 (row stride rs, k rows) of `cols` contiguous floats → pair words
    /// dst[p·ds + j] = (bf16(row 2p)[j], bf16(row 2p+1)[j]); row k (odd k) reads as zero.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    unsafe fn row_pairs(
        src: *const f32,
        rs: usize,
        k: usize,
        cols: usize,
        dst: *mut u32,
        ds: usize,
    ) {
        for p in 0..k.div_ceil(2) {
            let lo = src.add(2 * p * rs);
            let hi_ok = 2 * p + 1 < k;
            let hi = src.add(if hi_ok { (2 * p + 1) * rs } else { 0 });
            let mut j = 0;
            while j < cols {
                let r = (cols - j).min(16);
                let mask: __mmask16 = if r == 16 { !0 } else { (1u16 << r) - 1 };
                let l = _mm512_maskz_loadu_ps(mask, lo.add(j));
                let h = if hi_ok {
                    _mm512_maskz_loadu_ps(mask, hi.add(j))
                } else {
                    _mm512_setzero_ps()
                };
                let lb: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(l));
                let hb: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(h));
                let word = _mm512_or_si512(
                    _mm512_cvtepu16_epi32(lb),
                    _mm512_slli_epi32(_mm512_cvtepu16_epi32(hb), 16),
                );
                _mm512_mask_storeu_epi32(dst.add(p * ds + j) as *mut i32, mask, word);
                j += 16;
            }
        }
    }

    /// C[H rows][w ≤ 16·NV cols] (+)= A-pairs · B-pairs over kp pairs.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    unsafe fn micro<const H: usize, const NV: usize>(
        kp: usize,
        a: *const u32,
        ars: usize,
        aps: usize,
        b: *const u32,
        bps: usize,
        c: *mut f32,
        c_rs: usize,
        w: usize,
        acc: bool,
    ) {
        let mut s = [[_mm512_setzero_ps(); NV]; H];
        for p in 0..kp {
            let mut bv = [_mm512_setzero_si512(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_si512(b.add(p * bps + 16 * v) as *const _);
            }
            for (i, row) in s.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(*a.add(i * ars + p * aps) as i32);
                for v in 0..NV {
                    row[v] = _mm512_dpbf16_ps(
                        row[v],
                        std::mem::transmute::<__m512i, __m512bh>(av),
                        std::mem::transmute::<__m512i, __m512bh>(bv[v]),
                    );
                }
            }
        }
        for (i, row) in s.iter().enumerate() {
            for (v, &x) in row.iter().enumerate() {
                let cols = w.saturating_sub(16 * v).min(16);
                if cols == 0 {
                    continue;
                }
                let mask: __mmask16 = if cols == 16 { !0 } else { (1u16 << cols) - 1 };
                let dst = c.add(i * c_rs + 16 * v);
                let out = if acc {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), x)
                } else {
                    x
                };
                _mm512_mask_storeu_ps(dst, mask, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0)
        assert_eq!(from_bf16(to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6)
        assert_eq!(
            from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        assert_eq!(
            from_bf16(to_bf16(1.0 + 1.5 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-7)
        );
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        for i in 0..10_000 {
            let x = ((i as f32) * 0.7131).sin() * 10f32.powi(i % 7 - 3);
            let r = from_bf16(to_bf16(x));
            // unit roundoff of 8 significant bits
            assert!((r - x).abs() <= x.abs() * 2f32.powi(-8), "{x} -> {r}");
        }
    }

    #[test]
    fn precision_setting_rejects_missing_hardware() {
        // Only fp32 is set here: other unit tests run in parallel in this process.
        assert!(set_precision(Precision::Fp32).is_ok());
        assert_eq!(precision(), Precision::Fp32);
        assert_eq!(unavailable_reason().is_none(), available());
    }

    /// Random unaligned shapes and every stride layout against an f64 reference of the
    /// unrounded operands. Bound per element: (2⁻⁷ + 2⁻¹⁶)·Σ|a·b| (bf16 rounding of both
    /// operands, ≤ 2⁻⁸ each) + k·2⁻²³·Σ|a·b| (fp32 accumulation) + 1e-6.
    #[test]
    fn bf16_gemm_matches_f64_reference() {
        if !available() {
            eprintln!(
                "NOTICE: skipping bf16_gemm_matches_f64_reference: no AVX512-BF16 on this CPU"
            );
            return;
        }
        let mut seed = 0x1234_5678u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
        };
        let mut worst = 0.0f64;
        for case in 0..60 {
            let m = 1 + (rnd().abs() * 70.0) as usize;
            let n = 1 + (rnd().abs() * 90.0) as usize;
            let k = 1 + (rnd().abs() * 150.0) as usize;
            let layout = case % 4;
            // A: row-major, column-major (a_rs = 1), or both strided (padded rows)
            let (a_rs, a_cs) = match layout {
                0 => (k + 3, 1),
                1 => (1, m + 2),
                2 => (2 * k + 1, 2),
                _ => (k, 1),
            };
            let (b_rs, b_cs) = match layout {
                0 | 1 => (n + 5, 1),
                2 => (1, k + 1),
                _ => (2 * n + 3, 2),
            };
            let a: Vec<f32> = (0..(m - 1) * a_rs + (k - 1) * a_cs + 1)
                .map(|_| (rnd() * 4.0) as f32)
                .collect();
            let b: Vec<f32> = (0..(k - 1) * b_rs + (n - 1) * b_cs + 1)
                .map(|_| (rnd() * 4.0) as f32)
                .collect();
            let c_rs = n + 7;
            let c0: Vec<f32> = (0..(m - 1) * c_rs + n).map(|_| rnd() as f32).collect();
            for acc in [false, true] {
                let mut c = c0.clone();
                gemm_bf16(m, n, k, &mut c, c_rs, acc, &a, a_rs, a_cs, &b, b_rs, b_cs);
                for i in 0..m {
                    for j in 0..n {
                        let (mut exact, mut mag) = (0.0f64, 0.0f64);
                        for p in 0..k {
                            let t = a[i * a_rs + p * a_cs] as f64 * b[p * b_rs + j * b_cs] as f64;
                            exact += t;
                            mag += t.abs();
                        }
                        let base = if acc { c0[i * c_rs + j] as f64 } else { 0.0 };
                        let err = (c[i * c_rs + j] as f64 - base - exact).abs();
                        let tol = mag
                            * (2f64.powi(-7) + 2f64.powi(-16) + k as f64 * 2f64.powi(-23))
                            + 1e-6;
                        worst = worst.max(err / (mag + 1e-30));
                        assert!(
                            err <= tol,
                            "case {case} m{m} n{n} k{k} layout {layout} acc {acc} ({i},{j}): err {err:e} > {tol:e}"
                        );
                    }
                    // columns past n in the row padding are untouched
                    if i + 1 < m {
                        assert_eq!(
                            c[i * c_rs + n..(i + 1) * c_rs],
                            c0[i * c_rs + n..(i + 1) * c_rs]
                        );
                    }
                }
            }
        }
        eprintln!("bf16 gemm worst error / Σ|a·b|: {worst:.2e} (bound 2^-7 = 7.8e-3 + k·2^-23)");
        // rounding is actually happening (not an fp32 path in disguise)
        assert!(worst > 1e-5, "worst {worst:e}: bf16 rounding not visible");
    }
}

#[cfg(test)]
mod timing {
    /// Speed of the bf16 GEMM against the gemm crate's f32 on the FFT convolutions' mixing
    /// shapes (B = 16). Not a pass/fail test: `cargo test --release --lib bf16_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bf16_timing() {
        if !super::available() {
            return;
        }
        for &(m, n, k, a_rs, a_cs, b_rs, b_cs) in &[
            (
                64usize, 32usize, 32usize, 4096usize, 1usize, 4096usize, 1usize,
            ),
            (128, 32, 64, 4096, 1, 4096, 1),
            (32, 32, 64, 1, 4096, 4096, 1),
            (64, 32, 128, 1, 4096, 4096, 1),
            (64, 64, 32, 4096, 1, 1, 4096),
            (128, 128, 32, 4096, 1, 1, 4096),
        ] {
            let a: Vec<f32> = (0..(m - 1) * a_rs + (k - 1) * a_cs + 1)
                .map(|i| (i % 7) as f32)
                .collect();
            let b: Vec<f32> = (0..(k - 1) * b_rs + (n - 1) * b_cs + 1)
                .map(|i| (i % 5) as f32)
                .collect();
            let mut c = vec![0f32; m * n];
            let reps = 2000;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                super::super::gemm(
                    m, n, k, &mut c, n, true, &a, a_rs, a_cs, &b, b_rs, b_cs, false,
                );
            }
            let f32_us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                super::gemm_bf16(m, n, k, &mut c, n, true, &a, a_rs, a_cs, &b, b_rs, b_cs);
            }
            let bf_us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
            eprintln!("m{m} n{n} k{k} A({a_rs},{a_cs}) B({b_rs},{b_cs}): f32 {f32_us:.2} us, bf16 {bf_us:.2} us");
        }
    }
}
