//! Accuracy of the FFT convolution against the direct one (f64 and f32), its masking and
//! its saved-spectra path.

use super::super::direct::{conv2d_backward_direct, conv2d_forward_direct};
use super::super::shape::ConvShape;
use super::backward::conv2d_backward_fft;
use super::forward::{conv2d_forward_fft, conv2d_forward_fft_saving};
use super::transform::{fft_size, is_smooth};
use crate::cpu::Float;
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
