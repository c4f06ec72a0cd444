//! The first kernels on the `sim` device (or the real GPU with SER_TEST_DEVICE=cuda) against
//! CPU references. Sizes are drawn at random and are NOT multiples of the block size, so the
//! bounds checks and partial tiles are exercised; the sim runs with shuffled thread order.
//!
//! Layer: engine (below train and cli). May use `backend` (it implements it), `device`, `cpu`
//! (the reference it is checked against), `features`, `model` and the shared modules (`rng`,
//! `isa`, `cache`, `atomic_file`); never `train` or `cli`.

use crate::device::{ops, Device, Transpose};
use crate::rng::{self, Purpose, Stream};

fn device() -> Device {
    super::device(7)
}

/// A size in [lo, hi) that is not a multiple of 16, 32 or 256.
fn odd_size(s: &Stream, k: u64, lo: u32, hi: u32) -> usize {
    let mut n = lo + s.below(k, hi - lo);
    if n.is_multiple_of(16) {
        n += 1;
    }
    n as usize
}

fn randn(seed: u64, n: usize) -> Vec<f32> {
    let s = Stream::new(seed, Purpose::Test, 0);
    (0..n as u64).map(|i| s.normal(i)).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    // NaN-propagating: any NaN makes the result NaN and fails `<= tol`.
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, |m, d| {
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}

pub fn elementwise_match_cpu() {
    let dev = device();
    let s = Stream::new(1, Purpose::Test, 1);
    for trial in 0..4 {
        let n = odd_size(&s, trial, 1, 5000);
        let x = randn(10 + trial, n);
        let y0 = randn(20 + trial, n);
        let a = 0.75f32;
        let dx = dev.htod(&x).unwrap();

        let mut d = dev.htod(&x).unwrap();
        ops::scale(&dev, &mut d, a).unwrap();
        let want: Vec<f32> = x.iter().map(|v| v * a).collect();
        // a single f32 multiply, correctly rounded on both sides: exact
        assert_eq!(dev.dtoh(&d).unwrap(), want, "scale n={n}");

        let mut dy = dev.htod(&y0).unwrap();
        ops::axpy(&dev, &mut dy, a, &dx).unwrap();
        let want: Vec<f32> = y0.iter().zip(&x).map(|(y, x)| a.mul_add(*x, *y)).collect();
        // fmaf on both sides: exact
        assert!(
            max_abs_diff(&dev.dtoh(&dy).unwrap(), &want) <= 0.0,
            "axpy n={n}"
        );

        let mut r = dev.alloc_zeros::<f32>(n).unwrap();
        ops::relu_forward(&dev, &mut r, &dx).unwrap();
        let want: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
        assert_eq!(dev.dtoh(&r).unwrap(), want, "relu_forward n={n}");

        let g = dev.htod(&y0).unwrap();
        let mut dgx = dev.alloc_zeros::<f32>(n).unwrap();
        ops::relu_backward(&dev, &mut dgx, &g, &dx).unwrap();
        let want: Vec<f32> = x
            .iter()
            .zip(&y0)
            .map(|(x, g)| if *x > 0.0 { *g } else { 0.0 })
            .collect();
        assert_eq!(dev.dtoh(&dgx).unwrap(), want, "relu_backward n={n}");
    }
}

pub fn reductions_match_cpu() {
    let dev = device();
    let s = Stream::new(2, Purpose::Test, 1);
    // one block, several blocks, and more than REDUCE_MAX_BLOCKS * 256 (grid-stride + 2 passes)
    let sizes = [
        odd_size(&s, 0, 1, 200),
        odd_size(&s, 1, 300, 9000),
        256 * 1024 * 2 + 77,
    ];
    for (t, &n) in sizes.iter().enumerate() {
        let x = randn(30 + t as u64, n);
        let d = dev.htod(&x).unwrap();
        let sum = ops::reduce_sum(&dev, &d).unwrap();
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        let abs: f64 = x.iter().map(|&v| v.abs() as f64).sum();
        // f32 tree summation: error <= ~log2(n) * eps * sum|x|; 4 * 2^-24 * 20 * sum|x| is loose
        // but still fails for a single dropped or doubled element (|x| ~ 1 >> tol for n < 1e6).
        let tol = 20.0 * 4.0 * f32::EPSILON as f64 / 2.0 * abs;
        let err = (sum as f64 - want).abs();
        assert!(
            err <= tol,
            "sum n={n}: {sum} vs {want} (err {err}, tol {tol})"
        );
        let mx = ops::reduce_max(&dev, &d).unwrap();
        let want = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(mx, want, "max n={n}");
    }
}

#[allow(clippy::too_many_arguments)]
fn cpu_gemm(
    ta: Transpose,
    tb: Transpose,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &[f32],
) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                let av = if ta == Transpose::N {
                    a[i * k + p]
                } else {
                    a[p * m + i]
                };
                let bv = if tb == Transpose::N {
                    b[p * n + j]
                } else {
                    b[j * k + p]
                };
                acc += av as f64 * bv as f64;
            }
            out[i * n + j] = (alpha as f64 * acc
                + if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c[i * n + j] as f64
                }) as f32;
        }
    }
    out
}

pub fn gemm_matches_cpu() {
    let dev = device();
    let s = Stream::new(3, Purpose::Test, 1);
    for (t, (ta, tb)) in [
        (Transpose::N, Transpose::N),
        (Transpose::N, Transpose::T),
        (Transpose::T, Transpose::N),
    ]
    .into_iter()
    .enumerate()
    {
        for (r, &(alpha, beta)) in [(1.0f32, 0.0f32), (0.5, -1.25)].iter().enumerate() {
            let q = (t * 2 + r) as u64 * 3;
            let (m, n, k) = (
                odd_size(&s, q, 1, 70),
                odd_size(&s, q + 1, 1, 70),
                odd_size(&s, q + 2, 1, 90),
            );
            let a = randn(100 + q, m * k);
            let b = randn(200 + q, k * n);
            let c0 = if beta == 0.0 {
                vec![f32::NAN; m * n]
            } else {
                randn(300 + q, m * n)
            };
            let (da, db) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());
            let mut dc = dev.htod(&c0).unwrap();
            dev.gemm(ta, tb, m, n, k, alpha, &da, &db, beta, &mut dc)
                .unwrap();
            let got = dev.dtoh(&dc).unwrap();
            let want = cpu_gemm(ta, tb, m, n, k, alpha, &a, &b, beta, &c0);
            // f32 accumulation of k products of N(0,1) values vs f64: error ~ k * eps * sqrt(k);
            // 1e-5 * k * 4 is loose for k < 100, yet a wrong element (error ~ 1) fails.
            let tol = 4e-5 * k as f32;
            let err = max_abs_diff(&got, &want);
            assert!(
                err <= tol,
                "{ta:?}{tb:?} m={m} n={n} k={k} alpha={alpha} beta={beta}: err {err} > {tol}"
            );
        }
    }
}

pub fn philox_kernel_matches_rng_rs() {
    let dev = device();
    let n = 1003usize;
    let (seed, step) = (0x1234_5678_9ABC_DEF0u64, 17u32);
    let words = dev.alloc_zeros::<u32>(4 * n).unwrap();
    let uni = dev.alloc_zeros::<f32>(n).unwrap();
    let nor = dev.alloc_zeros::<f32>(n).unwrap();
    dev.launch(
        "philox_test",
        crate::device::blocks_for(n, 128),
        128u32,
        0,
        &[
            (&words).into(),
            (&uni).into(),
            (&nor).into(),
            seed.into(),
            (Purpose::Test as u32).into(),
            step.into(),
            (n as i32).into(),
        ],
    )
    .unwrap();
    let (w, u, z) = (
        dev.dtoh(&words).unwrap(),
        dev.dtoh(&uni).unwrap(),
        dev.dtoh(&nor).unwrap(),
    );
    let st = Stream::new(seed, Purpose::Test, step);
    for i in 0..n {
        let want = rng::philox_words(seed, Purpose::Test, step, i as u64);
        assert_eq!(&w[4 * i..4 * i + 4], &want, "words {i}");
        assert_eq!(
            u[i].to_bits(),
            rng::uniform01(want[0]).to_bits(),
            "uniform {i}"
        );
        // logf/sqrtf/cosf/sinf: glibc and CUDA's IEEE versions are within 2 ulp, so the normal
        // agrees to a few ulp of max(1, |z|) (ulp of 1 is 1.2e-7): 1e-6 relative.
        let want = st.normal(i as u64);
        let e = (z[i] - want).abs();
        assert!(
            e <= 1e-6 * want.abs().max(1.0),
            "normal {i}: {} vs {want}",
            z[i]
        );
    }
}

pub fn launch_errors_are_reported() {
    let dev = device();
    let x = dev.alloc_zeros::<f32>(10).unwrap();
    let xi = dev.alloc_zeros::<i32>(10).unwrap();
    // extent: x has 10 elements, n = 11
    let e = dev
        .launch(
            "scale",
            1u32,
            32u32,
            0,
            &[(&x).into(), 2.0f32.into(), 11i32.into()],
        )
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("buffer 'x' has 10 elements"),
        "{e:#}"
    );
    // wrong type: i32 buffer for float*
    let e = dev
        .launch(
            "scale",
            1u32,
            32u32,
            0,
            &[(&xi).into(), 2.0f32.into(), 10i32.into()],
        )
        .unwrap_err();
    assert!(format!("{e:#}").contains("argument 0 'x'"), "{e:#}");
    // wrong scalar type
    let e = dev
        .launch(
            "scale",
            1u32,
            32u32,
            0,
            &[(&x).into(), 2i32.into(), 10i32.into()],
        )
        .unwrap_err();
    assert!(format!("{e:#}").contains("argument 1 'a'"), "{e:#}");
    // wrong count, unknown kernel, bad shape
    assert!(dev.launch("scale", 1u32, 32u32, 0, &[(&x).into()]).is_err());
    assert!(dev.launch("nope", 1u32, 32u32, 0, &[]).is_err());
    assert!(dev
        .launch(
            "scale",
            1u32,
            2048u32,
            0,
            &[(&x).into(), 2.0f32.into(), 10i32.into()]
        )
        .is_err());
    // gemm: TT and too-small buffers
    let mut c = dev.alloc_zeros::<f32>(4).unwrap();
    assert!(dev
        .gemm(
            Transpose::T,
            Transpose::T,
            2,
            2,
            2,
            1.0,
            &x,
            &x,
            0.0,
            &mut c
        )
        .is_err());
    assert!(dev
        .gemm(
            Transpose::N,
            Transpose::N,
            2,
            2,
            6,
            1.0,
            &x,
            &x,
            0.0,
            &mut c
        )
        .is_err());
    // copies with mismatched lengths
    let mut y = dev.alloc_zeros::<f32>(3).unwrap();
    assert!(dev.copy_htod(&[1.0, 2.0], &mut y).is_err());
    dev.copy_htod(&[1.0, 2.0, 3.0], &mut y).unwrap();
    dev.memset_zero(&mut y).unwrap();
    assert_eq!(dev.dtoh(&y).unwrap(), vec![0.0; 3]);
}

/// Sub-buffer views: a launch on `buf.slice(a..b)` touches exactly that range, its extent check
/// uses the view's length (not the buffer's), and ranges outside the buffer are errors.
pub fn views_launch_on_their_range_only() {
    use crate::device::thread_kernel_launches;
    let dev = device();
    let n = 1000;
    let x = randn(40, n);
    let buf = dev.htod(&x).unwrap();
    let (a, b) = (123usize, 456usize);
    let v = buf.slice(a..b).unwrap();
    assert_eq!((v.len(), v.offset()), (b - a, a));
    let before = thread_kernel_launches("scale").unwrap();
    dev.launch(
        "scale",
        crate::device::blocks_for(b - a, 64),
        64u32,
        0,
        &[v.into(), 2.0f32.into(), ((b - a) as i32).into()],
    )
    .unwrap();
    assert_eq!(thread_kernel_launches("scale").unwrap() - before, 1);
    assert!(thread_kernel_launches("no_such_kernel").is_err());
    let got = dev.dtoh(&buf).unwrap();
    for i in 0..n {
        let want = if (a..b).contains(&i) {
            2.0 * x[i]
        } else {
            x[i]
        };
        // x * 2 is exact in f32, so equality is the right check (NaN would fail it)
        assert!(got[i] == want, "element {i}: {} vs {want}", got[i]);
    }
    // the extent check sees the view: one element more than the view is an error, although
    // the buffer has room after it
    let e = dev
        .launch(
            "scale",
            1u32,
            64u32,
            0,
            &[v.into(), 2.0f32.into(), ((b - a + 1) as i32).into()],
        )
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("kernel 'scale'") && msg.contains("buffer 'x' has 333 elements"),
        "{msg}"
    );
    // sub-views are relative to their view and bounded by it
    let w = v.slice(10..20).unwrap();
    assert_eq!((w.len(), w.offset()), (10, a + 10));
    assert!(v.slice(300..334).is_err());
    assert!(buf.slice(900..1001).is_err());
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 5..3;
    assert!(buf.slice(reversed).is_err());
    let mut buf = buf;
    assert!(buf.slice_mut(0..1001).is_err());
    let e = buf.split_mut(&[0..10, 20..30, 9..12]).err().unwrap();
    assert!(format!("{e:#}").contains("overlap"), "{e:#}");
    assert!(buf.split_mut(&[0..10, 20..30, 10..20]).is_ok());
    assert!(buf.split_mut(&[0..10, 990..1001]).is_err());
}

/// GEMM on views: operands at odd offsets of larger buffers, the output a range of a larger
/// buffer with beta != 0 (so the old values are read from the right place); elements outside
/// the output range stay untouched.
pub fn gemm_on_views_matches_cpu() {
    let dev = device();
    let (m, n, k) = (7usize, 13usize, 9usize);
    for (ta, tb) in [
        (Transpose::N, Transpose::N),
        (Transpose::N, Transpose::T),
        (Transpose::T, Transpose::N),
    ] {
        let (oa, ob, oc) = (5usize, 17usize, 3usize);
        let a_all = randn(50, oa + m * k + 4);
        let b_all = randn(51, ob + k * n + 1);
        let c_all = randn(52, oc + m * n + 6);
        let (da, db) = (dev.htod(&a_all).unwrap(), dev.htod(&b_all).unwrap());
        let mut dc = dev.htod(&c_all).unwrap();
        let (alpha, beta) = (0.75f32, -0.5f32);
        {
            let av = da.slice(oa..oa + m * k).unwrap();
            let bv = db.slice(ob..ob + k * n).unwrap();
            let mut cv = dc.slice_mut(oc..oc + m * n).unwrap();
            dev.gemm(ta, tb, m, n, k, alpha, &av, &bv, beta, &mut cv)
                .unwrap();
        }
        let got = dev.dtoh(&dc).unwrap();
        let want = cpu_gemm(
            ta,
            tb,
            m,
            n,
            k,
            alpha,
            &a_all[oa..oa + m * k],
            &b_all[ob..ob + k * n],
            beta,
            &c_all[oc..oc + m * n],
        );
        // same tolerance argument as gemm_matches_cpu (k = 9 products per element)
        let err = max_abs_diff(&got[oc..oc + m * n], &want);
        assert!(err <= 4e-5 * k as f32, "{ta:?}{tb:?}: err {err}");
        assert_eq!(&got[..oc], &c_all[..oc], "{ta:?}{tb:?}: before the view");
        assert_eq!(
            &got[oc + m * n..],
            &c_all[oc + m * n..],
            "{ta:?}{tb:?}: after the view"
        );
        // a view too small for the product is an error, not a write past it
        let small = da.slice(oa..oa + m * k - 1).unwrap();
        let bv = db.slice(ob..ob + k * n).unwrap();
        let mut cv = dc.slice_mut(oc..oc + m * n).unwrap();
        assert!(dev
            .gemm(ta, tb, m, n, k, alpha, &small, &bv, beta, &mut cv)
            .is_err());
    }
}

/// kernels/norm.cu (per-utterance normalisation) against `cpu::norm::utterance_norm` in f64:
/// random batch, band and frame counts that are not multiples of the 128-thread block (and
/// frame counts both below and several times above it), random lengths including 0 and t_max,
/// rows centred far from zero (where `E[x²] − mean²` would cancel) and a constant row (variance
/// 0: ε alone keeps it finite). Padding must come back bit for bit.
///
/// Tolerance 2e-5 absolute on outputs of size ~1-4: the kernel sums up to ~1000 f32 values of
/// size ~3 (strided per thread, then a tree), an error of a few f32 ε (6e-8) × the
/// accumulation depth relative to the sum, carried into (x − mean)/σ with σ ≥ 0.5, i.e. ≲ 1e-5.
pub fn utterance_norm_matches_cpu() {
    use crate::cpu::norm::utterance_norm as cpu_norm;
    use crate::engine::norm::utterance_norm;
    let dev = device();
    let s = Stream::new(3, Purpose::Test, 9);
    const PAD: f32 = -123.25;
    let eps = crate::model::UTTERANCE_NORM_EPS;
    for trial in 0..4u64 {
        let batch = 1 + s.below(100 + trial, 5) as usize;
        let n_mels = odd_size(&s, 200 + trial, 1, 40);
        let t_max = odd_size(&s, 300 + trial, 1, if trial < 2 { 120 } else { 900 });
        let mut lens: Vec<usize> = (0..batch)
            .map(|b| s.below(400 + 10 * trial + b as u64, t_max as u32 + 1) as usize)
            .collect();
        lens[0] = t_max;
        if batch > 2 {
            lens[2] = 0;
        }
        let z = randn(500 + trial, batch * n_mels * t_max);
        let mut x = vec![PAD; z.len()];
        for (b, &l) in lens.iter().enumerate() {
            for m in 0..n_mels {
                let row = (b * n_mels + m) * t_max;
                for t in 0..l {
                    // per-row offset in [-3, 3] and spread in [0.5, 1.5]; row (0, 0) constant
                    let off = 3.0 - 6.0 * ((b * 7 + m * 3) % 11) as f32 / 10.0;
                    let sd = 0.5 + ((b + m) % 3) as f32 * 0.5;
                    x[row + t] = if b == 0 && m == 0 {
                        2.5
                    } else {
                        off + sd * z[row + t]
                    };
                }
            }
        }
        let mut want = super::util::f64s(&x);
        cpu_norm(&mut want, n_mels, t_max, &lens, eps);
        let mut dx = dev.htod(&x).unwrap();
        let lens_i: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let dl = dev.htod(&lens_i).unwrap();
        utterance_norm(&dev, &mut dx, &dl, n_mels, t_max, eps as f32).unwrap();
        let got = dev.dtoh(&dx).unwrap();
        let mut worst = 0.0f64;
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let (b, t) = (i / (n_mels * t_max), i % t_max);
            if t >= lens[b] {
                assert_eq!(g, PAD, "trial {trial}: padding at {i} changed");
                continue;
            }
            let d = (g as f64 - w).abs();
            assert!(d.is_finite(), "trial {trial}: {g} vs {w} at {i}");
            worst = worst.max(d);
        }
        eprintln!(
            "utterance_norm B {batch} mels {n_mels} T {t_max} lens {lens:?}: max abs error {worst:.2e}"
        );
        assert!(worst <= 2e-5, "trial {trial}: max abs error {worst:e}");
    }
    // a length past t_max is clamped by the kernel, not read past the row; an input of the
    // wrong size is an error before any launch
    let mut dx = dev.htod(&[1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let dl = dev.htod(&[9i32]).unwrap();
    utterance_norm(&dev, &mut dx, &dl, 1, 4, 1e-4).unwrap();
    let got = dev.dtoh(&dx).unwrap();
    let sd = (1.25f32 + 1e-4).sqrt();
    let want = [-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd];
    assert!(max_abs_diff(&got, &want) <= 1e-6, "{got:?} vs {want:?}");
    assert!(utterance_norm(&dev, &mut dx, &dl, 1, 5, 1e-4).is_err());
}

/// kernels/ema.cu against `backend::ema_update`: the same f32 fma on both sides, so the
/// results must be bit-identical (tolerance 0), on a size that is not a multiple of the block.
pub fn ema_update_matches_cpu_exactly() {
    let dev = device();
    let s = Stream::new(4, Purpose::Test, 2);
    for trial in 0..3u64 {
        let n = odd_size(&s, trial, 1, 3000);
        let (e0, p) = (randn(600 + trial, n), randn(700 + trial, n));
        let decay = [0.1f32, 0.9, 0.999][trial as usize];
        let mut want = e0.clone();
        crate::backend::ema_update(&mut want, &p, decay);
        let mut de = dev.htod(&e0).unwrap();
        let dp = dev.htod(&p).unwrap();
        crate::engine::ema::ema_update(&dev, &mut de, &dp, decay).unwrap();
        let got = dev.dtoh(&de).unwrap();
        assert!(max_abs_diff(&got, &want) <= 0.0, "n {n} decay {decay}");
        assert_ne!(got, e0, "the average did not move");
    }
    let mut short = dev.htod(&[0.0f32; 3]).unwrap();
    let p = dev.htod(&[0.0f32; 4]).unwrap();
    assert!(crate::engine::ema::ema_update(&dev, &mut short, &p, 0.5).is_err());
}
