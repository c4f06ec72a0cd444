//! The CNN + FC kernels (src/engine/cnn.rs, kernels/{conv,batchnorm,pool,dropout,fc}.cu) on the
//! `sim` device with shuffled thread order (or the real GPU with SER_TEST_DEVICE=cuda), each op
//! against its CPU reference in `crate::cpu`, then the composed forward/backward against
//! the CPU model's intermediates. Sizes are random and not multiples of the block size; clips
//! have unequal lengths and garbage in their padding.
//!
//! Tolerances: the oracle runs in f64 on the same f32 inputs, so the error measured is the
//! device's f32 rounding alone. Forward ops (sums of ≤ a few hundred products) stay at a
//! relative-norm error ≤ 1e-5 (f32 ε = 6e-8 times accumulation length and a few ulp of the
//! intermediate roundings); gradients (longer sums, BN's cancelling terms) ≤ 1e-4. Pooling,
//! reshapes and dropout involve no arithmetic beyond one f32 multiply done identically on both
//! sides, so they are compared bit for bit against the f32 CPU op.
//!
//! Layer: engine (beside train, below cli). May use `device`, `cpu` (the reference it is
//! checked against), `features`, `model` and the shared modules (`rng`, `isa`, `cache`,
//! `atomic_file`); never `train` or `cli`.

use super::util::{check_masked as check, dtoh, f64s, lengths, randn};
use crate::cpu::conv::{conv2d_backward, conv2d_forward, ConvShape};
use crate::cpu::dropout::{apply_mask, dropout_mask, site_base, SITE_FC, SITE_POOL1};
use crate::cpu::gradcheck::small_config;
use crate::cpu::{batchnorm, linear, pool, CpuModel, Input, Mode};
use crate::device::Device;
use crate::engine::cnn::{self, CnnOptions, Dims4, Dropout};
use crate::model::{ModelConfig, BN_EPS, BN_MOMENTUM};
use crate::rng::{Purpose, Stream};

fn device() -> Device {
    super::device(11)
}

/// A size in [lo, hi) that is not a multiple of 16.
fn odd(s: &Stream, k: u64, lo: u32, hi: u32) -> usize {
    let mut n = lo + s.below(k, hi - lo);
    if n.is_multiple_of(16) {
        n += 1;
    }
    n as usize
}

pub fn conv_matches_cpu() {
    let dev = device();
    let s = Stream::new(1, Purpose::Test, 1);
    for (trial, k) in [(0u64, 3usize), (1, 5), (2, 1), (3, 3)] {
        let sh = ConvShape {
            batch: 3,
            cin: 1 + s.below(100 + trial, 3) as usize,
            cout: 1 + s.below(200 + trial, 5) as usize,
            k,
            m: odd(&s, 300 + trial, 3, 12),
            t: odd(&s, 400 + trial, 6, 23),
        };
        let lens = lengths(&s, trial, sh.batch, sh.t);
        let x = randn(10 + trial, sh.x_len()); // garbage in the padding on purpose
        let w = randn(20 + trial, sh.w_len());
        let bias = randn(30 + trial, sh.cout);
        let dy = randn(40 + trial, sh.y_len());
        let dw0 = randn(50 + trial, sh.w_len());
        let db0 = randn(60 + trial, sh.cout);
        // chunks of 1 clip in odd trials, the whole batch in one chunk otherwise
        let max_col = if trial % 2 == 1 { 1 } else { 1 << 28 };

        let mut want = vec![0.0f64; sh.y_len()];
        conv2d_forward(&f64s(&x), &f64s(&w), &f64s(&bias), &lens, &sh, &mut want);
        let (xd, wd, bd) = (
            dev.htod(&x).unwrap(),
            dev.htod(&w).unwrap(),
            dev.htod(&bias).unwrap(),
        );
        let ld = cnn::upload_lens(&dev, &lens).unwrap();
        let mut y = dev.htod(&vec![f32::NAN; sh.y_len()]).unwrap();
        cnn::conv2d_forward(&dev, &xd, &wd, &bd, &ld, &sh, &mut y, max_col).unwrap();
        check(
            &format!("conv fwd {sh:?} {lens:?}"),
            &dtoh(&dev, &y),
            &want,
            1e-5,
        );

        let (mut dxw, mut dww, mut dbw) = (vec![0.0; sh.x_len()], f64s(&dw0), f64s(&db0));
        conv2d_backward(
            None,
            &f64s(&x),
            &f64s(&w),
            &f64s(&dy),
            &lens,
            &sh,
            Some(&mut dxw),
            &mut dww,
            &mut dbw,
        );
        let dyd = dev.htod(&dy).unwrap();
        let mut dx = dev.htod(&vec![f32::NAN; sh.x_len()]).unwrap();
        let (mut dw, mut db) = (dev.htod(&dw0).unwrap(), dev.htod(&db0).unwrap());
        cnn::conv2d_backward(
            &dev,
            &xd,
            &wd,
            &dyd,
            &ld,
            &sh,
            Some(&mut dx),
            &mut dw,
            &mut db,
            max_col,
        )
        .unwrap();
        check("conv dx", &dtoh(&dev, &dx), &dxw, 1e-4);
        check("conv dw (accumulated)", &dtoh(&dev, &dw), &dww, 1e-4);
        check("conv db (accumulated)", &dtoh(&dev, &db), &dbw, 1e-4);
    }
}

pub fn batchnorm_relu_matches_cpu() {
    let dev = device();
    let s = Stream::new(2, Purpose::Test, 1);
    for trial in 0..3u64 {
        let d = Dims4 {
            batch: 1 + s.below(trial, 3) as usize,
            c: odd(&s, 10 + trial, 1, 6),
            m: odd(&s, 20 + trial, 2, 9),
            t: odd(&s, 30 + trial, 5, 40),
        };
        let lens = lengths(&s, trial + 5, d.batch, d.t);
        // offset and scale so the statistics are not trivially 0/1
        let x: Vec<f32> = randn(70 + trial, d.len())
            .iter()
            .map(|v| 0.5 + 2.0 * v)
            .collect();
        let gamma = randn(80 + trial, d.c);
        let beta = randn(90 + trial, d.c);
        let dy = randn(100 + trial, d.len());
        let (x64, g64, b64) = (f64s(&x), f64s(&gamma), f64s(&beta));
        let eps = BN_EPS;

        let (xd, gd, bd, dyd) = (
            dev.htod(&x).unwrap(),
            dev.htod(&gamma).unwrap(),
            dev.htod(&beta).unwrap(),
            dev.htod(&dy).unwrap(),
        );
        let ld = cnn::upload_lens(&dev, &lens).unwrap();
        let rm0 = randn(110 + trial, d.c);
        let rv0: Vec<f32> = randn(120 + trial, d.c)
            .iter()
            .map(|v| 1.0 + v.abs())
            .collect();
        for train in [true, false] {
            let mut act = vec![0.0f64; d.len()];
            let st = if train {
                batchnorm::bn_train_forward(&x64, &g64, &b64, &lens, d.c, d.m, d.t, eps, &mut act)
            } else {
                let st = batchnorm::running_stats(&f64s(&rm0), &f64s(&rv0), eps);
                batchnorm::bn_apply(&x64, &st, &g64, &b64, &lens, d.c, d.m, d.t, &mut act);
                st
            };
            let mut relu = vec![0.0f64; d.len()];
            pool::relu_forward(&act, &mut relu);

            let (mut mean, mut var) = if train {
                let mut mean = dev.alloc_zeros::<f32>(d.c).unwrap();
                let mut var = dev.alloc_zeros::<f32>(d.c).unwrap();
                let scratch = dev.alloc_uninit::<f32>(cnn::bn_scratch_len(d)).unwrap();
                cnn::bn_stats(
                    &dev,
                    &xd,
                    &ld,
                    d,
                    &mut mean,
                    &mut var,
                    &scratch,
                    cnn::bn_chunks(d),
                )
                .unwrap();
                check("bn mean", &dtoh(&dev, &mean), &st.mean, 1e-5);
                check("bn var", &dtoh(&dev, &var), &st.var, 1e-5);
                // running update
                let (mut rm, mut rv) = (dev.htod(&rm0).unwrap(), dev.htod(&rv0).unwrap());
                cnn::bn_update_running(&dev, &mean, &var, d.count(&lens), &mut rm, &mut rv)
                    .unwrap();
                let (mut rmw, mut rvw, mut nbt) = (f64s(&rm0), f64s(&rv0), 0.0);
                batchnorm::bn_update_running(&st, BN_MOMENTUM, &mut rmw, &mut rvw, &mut nbt);
                check("bn running mean", &dtoh(&dev, &rm), &rmw, 1e-5);
                check("bn running var", &dtoh(&dev, &rv), &rvw, 1e-5);
                (mean, var)
            } else {
                (dev.htod(&rm0).unwrap(), dev.htod(&rv0).unwrap())
            };
            let mut y = dev.htod(&vec![f32::NAN; d.len()]).unwrap();
            cnn::bn_relu_forward(&dev, &xd, &mean, &var, &gd, &bd, &ld, d, &mut y).unwrap();
            check(
                &format!("bn+relu fwd train={train} {d:?}"),
                &dtoh(&dev, &y),
                &relu,
                1e-5,
            );

            // backward: relu_backward then bn_backward; dgamma/dbeta accumulate onto 1
            let mut dact = vec![0.0f64; d.len()];
            pool::relu_backward(&relu, &f64s(&dy), &mut dact);
            let (mut dxw, mut dgw, mut dbw) = (vec![0.0; d.len()], vec![1.0; d.c], vec![1.0; d.c]);
            batchnorm::bn_backward(
                &x64, &dact, &st, &g64, &lens, d.c, d.m, d.t, &mut dxw, &mut dgw, &mut dbw,
            );
            let mut dx = dev.htod(&vec![f32::NAN; d.len()]).unwrap();
            let mut dg = dev.htod(&vec![1.0f32; d.c]).unwrap();
            let mut dbt = dev.htod(&vec![1.0f32; d.c]).unwrap();
            let mut sums = dev.alloc_uninit::<f32>(cnn::bn_scratch_len(d)).unwrap();
            cnn::bn_relu_backward(
                &dev,
                &dyd,
                &y,
                &xd,
                &mean,
                &var,
                &gd,
                &ld,
                d,
                train,
                &mut dx,
                &mut dg,
                &mut dbt,
                &mut sums,
                cnn::bn_chunks(d),
            )
            .unwrap();
            check(
                &format!("bn+relu dx train={train}"),
                &dtoh(&dev, &dx),
                &dxw,
                1e-4,
            );
            check("bn dgamma", &dtoh(&dev, &dg), &dgw, 1e-4);
            check("bn dbeta", &dtoh(&dev, &dbt), &dbw, 1e-4);
            let _ = (&mut mean, &mut var);
        }
    }
}

pub fn dropout_masks_are_bit_identical() {
    let dev = device();
    for (site, n, p, step) in [
        (SITE_POOL1, 1usize, 0.3f32, 0u32),
        (SITE_FC, 4097, 0.3, 7),
        (4, 999, 0.5, 123_456),
        (2, 5003, 0.1, 3),
    ] {
        let d = Dropout {
            seed: 0xDEAD_BEEF_1234,
            step,
            site,
            p,
        };
        let want: Vec<f32> = dropout_mask(d.seed, step, site, n, p);
        let got = dtoh(&dev, &cnn::dropout_mask(&dev, d, n).unwrap());
        assert_eq!(got, want, "mask site {site} n {n}");
        let x = randn(site + 1, n);
        let mut wantx = x.clone();
        apply_mask(&mut wantx, &want);
        let mut y = dev.alloc_zeros::<f32>(n).unwrap();
        cnn::dropout_apply(&dev, d, &dev.htod(&x).unwrap(), &mut y).unwrap();
        assert_eq!(dtoh(&dev, &y), wantx, "apply site {site} n {n}");
    }
    assert_eq!(site_base(3), 3 << 40);
}

pub fn maxpool_with_mask_and_dropout_matches_cpu_exactly() {
    let dev = device();
    let s = Stream::new(3, Purpose::Test, 1);
    for trial in 0..4u64 {
        let d = Dims4 {
            batch: 1 + s.below(trial, 3) as usize,
            c: odd(&s, 10 + trial, 1, 5),
            m: odd(&s, 20 + trial, 2, 11),
            t: odd(&s, 30 + trial, 4, 41),
        };
        let lens_out: Vec<usize> = lengths(&s, trial + 9, d.batch, d.t)
            .iter()
            .map(|l| l / 2)
            .collect();
        let x = randn(130 + trial, d.len());
        let n = d.batch * d.c * (d.m / 2) * (d.t / 2);
        let drop = (trial % 2 == 0).then_some(Dropout {
            seed: 99,
            step: trial as u32,
            site: SITE_POOL1 + trial % 3,
            p: 0.4,
        });
        let mut want = vec![f32::NAN; n];
        let mut arg = vec![0u8; n];
        pool::maxpool2_forward(&x, &lens_out, d.c, d.m, d.t, &mut want, &mut arg);
        let mask = drop.map(|dr| dropout_mask::<f32>(dr.seed, dr.step, dr.site, n, dr.p));
        if let Some(mk) = &mask {
            apply_mask(&mut want, mk);
        }
        let ld = cnn::upload_lens(&dev, &lens_out).unwrap();
        let mut y = dev.htod(&vec![f32::NAN; n]).unwrap();
        let mut ad = dev.htod(&vec![-1i32; n]).unwrap();
        cnn::maxpool_forward(&dev, &dev.htod(&x).unwrap(), &ld, d, drop, &mut y, &mut ad).unwrap();
        assert_eq!(dtoh(&dev, &y), want, "pool fwd {d:?}");
        let argd: Vec<i32> = dev.dtoh(&ad).unwrap();
        assert!(
            argd.iter().zip(&arg).all(|(a, b)| *a == *b as i32),
            "pool argmax"
        );

        let dy = randn(140 + trial, n);
        let mut dym = dy.clone();
        if let Some(mk) = &mask {
            apply_mask(&mut dym, mk);
        }
        let mut dxw = vec![f32::NAN; d.len()];
        pool::maxpool2_backward(&dym, &arg, None, &lens_out, d.c, d.m, d.t, &mut dxw);
        let mut dx = dev.htod(&vec![f32::NAN; d.len()]).unwrap();
        cnn::maxpool_backward(&dev, &dev.htod(&dy).unwrap(), &ad, &ld, d, drop, &mut dx).unwrap();
        assert_eq!(dtoh(&dev, &dx), dxw, "pool bwd {d:?}");
    }
}

pub fn frames_and_fc_match_cpu() {
    let dev = device();
    let s = Stream::new(4, Purpose::Test, 1);
    for trial in 0..3u64 {
        let d = Dims4 {
            batch: 1 + s.below(trial, 3) as usize,
            c: odd(&s, 10 + trial, 1, 6),
            m: odd(&s, 20 + trial, 1, 5),
            t: odd(&s, 30 + trial, 1, 9),
        };
        let x = randn(150 + trial, d.len());
        // reshape: h[b][t][c*M+m] = x[b][c][m][t]
        let fin = d.c * d.m;
        let mut want = vec![0.0f32; d.len()];
        for b in 0..d.batch {
            for c in 0..d.c {
                for m in 0..d.m {
                    for t in 0..d.t {
                        want[(b * d.t + t) * fin + c * d.m + m] =
                            x[((b * d.c + c) * d.m + m) * d.t + t];
                    }
                }
            }
        }
        let xd = dev.htod(&x).unwrap();
        let mut h = dev.alloc_zeros::<f32>(d.len()).unwrap();
        cnn::frames_reshape(&dev, &xd, d, false, &mut h).unwrap();
        assert_eq!(dtoh(&dev, &h), want, "frames fwd");
        let mut back = dev.alloc_zeros::<f32>(d.len()).unwrap();
        cnn::frames_reshape(&dev, &h, d, true, &mut back).unwrap();
        assert_eq!(
            dtoh(&dev, &back),
            x,
            "frames bwd is the inverse permutation"
        );

        // FC + ReLU + dropout
        let (rows, dout) = (d.batch * d.t, odd(&s, 40 + trial, 1, 20));
        let w = randn(160 + trial, dout * fin);
        let bias = randn(170 + trial, dout);
        let drop = (trial != 1).then_some(Dropout {
            seed: 5,
            step: 2 + trial as u32,
            site: SITE_FC,
            p: 0.3,
        });
        let (h64, w64) = (f64s(&want), f64s(&w));
        let mut fc = vec![0.0f64; rows * dout];
        linear::linear_forward(&h64, &w64, &f64s(&bias), rows, fin, dout, &mut fc, false);
        let mut r = vec![0.0f64; fc.len()];
        pool::relu_forward(&fc, &mut r);
        let mask: Option<Vec<f64>> =
            drop.map(|dr| dropout_mask(dr.seed, dr.step, dr.site, fc.len(), dr.p));
        let mut hw = r.clone();
        if let Some(mk) = &mask {
            apply_mask(&mut hw, mk);
        }
        let (wd, bd) = (dev.htod(&w).unwrap(), dev.htod(&bias).unwrap());
        let mut rd = dev.alloc_zeros::<f32>(rows * dout).unwrap();
        let mut hd = dev.alloc_zeros::<f32>(rows * dout).unwrap();
        cnn::fc_forward(&dev, &h, &wd, &bd, rows, fin, dout, drop, &mut rd, &mut hd).unwrap();
        check("fc relu", &dtoh(&dev, &rd), &r, 1e-5);
        check("fc out", &dtoh(&dev, &hd), &hw, 1e-5);

        let dh = randn(180 + trial, rows * dout);
        let mut dhm = f64s(&dh);
        if let Some(mk) = &mask {
            apply_mask(&mut dhm, mk);
        }
        let mut dz = vec![0.0f64; dhm.len()];
        pool::relu_backward(&r, &dhm, &mut dz);
        let (mut dxw, mut dww, mut dbw) = (
            vec![0.0; rows * fin],
            vec![0.5; dout * fin],
            vec![0.5; dout],
        );
        linear::linear_backward(
            &h64,
            &w64,
            &dz,
            rows,
            fin,
            dout,
            Some(&mut dxw),
            &mut dww,
            &mut dbw,
            false,
        );
        let mut dx = dev.htod(&vec![f32::NAN; rows * fin]).unwrap();
        let mut dw = dev.htod(&vec![0.5f32; dout * fin]).unwrap();
        let mut db = dev.htod(&vec![0.5f32; dout]).unwrap();
        cnn::fc_backward(
            &dev,
            &h,
            &wd,
            &rd,
            &dev.htod(&dh).unwrap(),
            rows,
            fin,
            dout,
            drop,
            Some(&mut dx),
            &mut dw,
            &mut db,
            &mut dev
                .alloc_uninit::<f32>(cnn::fc_scratch_len(rows, dout))
                .unwrap(),
        )
        .unwrap();
        check("fc dx", &dtoh(&dev, &dx), &dxw, 1e-4);
        check("fc dw", &dtoh(&dev, &dw), &dww, 1e-4);
        check("fc db", &dtoh(&dev, &db), &dbw, 1e-4);
    }
}

/// The CPU model's CNN + FC backward (the first half of `CpuModel::backward` run in reverse),
/// from the gradient of the FC output: returns the flat gradient vector.
fn cpu_cnn_backward(m: &CpuModel<f64>, f: &crate::cpu::Forward<f64>, dout: &[f64]) -> Vec<f64> {
    let cfg = &m.cfg;
    let mut grads = vec![0.0f64; m.params.len()];
    let p = |n: &str| &m.params[m.layout.range(n)];
    let t3 = f.t_max / 8;
    let rows = f.batch * t3;
    let mut dh = dout.to_vec();
    if let Some(mk) = &f.fc_mask {
        apply_mask(&mut dh, mk);
    }
    let mut dfc = vec![0.0; dh.len()];
    pool::relu_backward(&f.fc_relu, &dh, &mut dfc);
    let fin = cfg.fc_in();
    let mut dframes = vec![0.0; rows * fin];
    let (mut dw, mut db) = (vec![0.0; cfg.fc * fin], vec![0.0; cfg.fc]);
    linear::linear_backward(
        &f.frames,
        p("fc.weight"),
        &dfc,
        rows,
        fin,
        cfg.fc,
        Some(&mut dframes),
        &mut dw,
        &mut db,
        false,
    );
    grads[m.layout.range("fc.weight")].copy_from_slice(&dw);
    grads[m.layout.range("fc.bias")].copy_from_slice(&db);
    let (c3, m3) = (cfg.channels[2], cfg.n_mels / 8);
    let mut dcur = vec![0.0; f.stage3.len()];
    for b in 0..f.batch {
        for c in 0..c3 {
            for mm in 0..m3 {
                for t in 0..t3 {
                    dcur[((b * c3 + c) * m3 + mm) * t3 + t] =
                        dframes[(b * t3 + t) * fin + c * m3 + mm];
                }
            }
        }
    }
    for s in (0..3).rev() {
        let st = &f.stages[s];
        let sh = st.shape;
        let (c, mm, t) = (sh.cout, sh.m, sh.t);
        if let Some(mk) = &st.mask {
            apply_mask(&mut dcur, mk);
        }
        let mut drelu = vec![0.0; sh.y_len()];
        pool::maxpool2_backward(&dcur, &st.arg, None, &f.lens[s + 1], c, mm, t, &mut drelu);
        let mut dact = vec![0.0; sh.y_len()];
        pool::relu_backward(&st.relu, &drelu, &mut dact);
        let dconv = if let Some(bn) = &st.bn {
            let (mut dg, mut dbt) = (vec![0.0; c], vec![0.0; c]);
            batchnorm::bn_backward(
                &st.conv,
                &dact,
                bn,
                p(&format!("bn{}.weight", s + 1)),
                &f.lens[s],
                c,
                mm,
                t,
                &mut drelu,
                &mut dg,
                &mut dbt,
            );
            grads[m.layout.range(&format!("bn{}.weight", s + 1))].copy_from_slice(&dg);
            grads[m.layout.range(&format!("bn{}.bias", s + 1))].copy_from_slice(&dbt);
            drelu
        } else {
            dact
        };
        let (mut dw, mut db) = (vec![0.0; sh.w_len()], vec![0.0; c]);
        let mut dx = vec![0.0; sh.x_len()];
        conv2d_backward(
            None,
            &st.input,
            p(&format!("conv{}.weight", s + 1)),
            &dconv,
            &f.lens[s],
            &sh,
            Some(&mut dx),
            &mut dw,
            &mut db,
        );
        grads[m.layout.range(&format!("conv{}.weight", s + 1))].copy_from_slice(&dw);
        grads[m.layout.range(&format!("conv{}.bias", s + 1))].copy_from_slice(&db);
        dcur = dx;
    }
    grads
}

pub fn composed_cnn_matches_cpu_model() {
    let dev = device();
    for (k, batchnorm, train) in [(3, true, true), (5, true, false), (3, false, true)] {
        let cfg = ModelConfig {
            kernel: k,
            ..small_config(batchnorm)
        };
        let (bsz, t_max) = (3usize, 43usize);
        let lens = [43usize, 30, 17];
        let x = randn(200 + k as u64, bsz * cfg.n_mels * t_max);
        let mut cpu = CpuModel::<f64>::new(cfg.clone(), 42);
        // perturb BN affine parameters and running stats away from 1/0 so they matter
        let params32: Vec<f32> = {
            let base = crate::model::init_params(&cfg, 42);
            let noise = randn(300, base.len());
            base.iter()
                .zip(&noise)
                .enumerate()
                .map(|(i, (v, n))| {
                    let bn = cpu.layout.0.entries.iter().any(|e| {
                        e.name.starts_with("bn") && (e.offset..e.offset + e.len).contains(&i)
                    });
                    if bn {
                        v + 0.3 * n
                    } else {
                        *v
                    }
                })
                .collect()
        };
        let mut buffers32 = crate::model::init_buffers(&cfg);
        for (i, v) in buffers32.iter_mut().enumerate() {
            *v += 0.1 * (i % 5) as f32;
        }
        cpu.params = f64s(&params32);
        cpu.buffers = f64s(&buffers32);
        let mode = if train {
            Mode::Train { seed: 77, step: 5 }
        } else {
            Mode::Eval
        };
        let x64 = f64s(&x);
        let f = cpu.forward(
            &Input {
                x: &x64,
                batch: bsz,
                t_max,
                lengths: &lens,
            },
            mode,
        );

        let params = cnn::CnnParams::upload(&dev, &cfg, &params32).unwrap();
        let mut running = cnn::BnRunning::upload(&dev, &cfg, &buffers32).unwrap();
        let opts = CnnOptions::default();
        let mut fw = cnn::CnnWorkspace::new(&dev, &cfg, bsz, t_max).unwrap();
        let mut scratch = cnn::ConvScratch::default();
        dev.copy_htod(&x, fw.input_mut()).unwrap();
        cnn::cnn_forward(
            &dev,
            &cfg,
            &params,
            &mut running,
            &lens,
            mode,
            &opts,
            &mut fw,
            &mut scratch,
        )
        .unwrap();
        let tag = format!("k={k} bn={batchnorm} train={train}");
        // forward 1e-5 as per op: the f32 roundings compound over 3 stages + FC but measure
        // ~3e-7 (a pool argmax flip would show as a far larger error).
        for s in 0..3 {
            check(
                &format!("{tag} stage {s} conv"),
                &dtoh(&dev, &fw.stages[s].conv),
                &f.stages[s].conv,
                1e-5,
            );
            check(
                &format!("{tag} stage {s} relu"),
                &dtoh(&dev, &fw.stages[s].relu),
                &f.stages[s].relu,
                1e-5,
            );
        }
        check(
            &format!("{tag} stage3"),
            &dtoh(&dev, &fw.stage3),
            &f.stage3,
            1e-5,
        );
        check(
            &format!("{tag} frames"),
            &dtoh(&dev, &fw.frames),
            &f.frames,
            1e-5,
        );
        check(
            &format!("{tag} fc relu"),
            &dtoh(&dev, &fw.fc_relu),
            &f.fc_relu,
            1e-5,
        );
        check(
            &format!("{tag} fc out"),
            &dtoh(&dev, &fw.out),
            &f.lstm_in[0],
            1e-5,
        );
        let mut bufs = vec![0.0f32; buffers32.len()];
        running.download_into(&dev, &cfg, &mut bufs).unwrap();
        check(&format!("{tag} running buffers"), &bufs, &cpu.buffers, 1e-5);

        let dout = randn(400, f.lstm_in[0].len());
        let want = cpu_cnn_backward(&cpu, &f, &f64s(&dout));
        let mut grads = cnn::CnnParams::zeros(&dev, &cfg).unwrap();
        cnn::cnn_backward(
            &dev,
            &cfg,
            &params,
            &mut fw,
            &dev.htod(&dout).unwrap(),
            &mut grads,
            &opts,
            &mut scratch,
        )
        .unwrap();
        let mut got = vec![0.0f32; params32.len()];
        grads.download_into(&dev, &cfg, &mut got).unwrap();
        for e in &cpu.layout.0.entries {
            if e.name.starts_with("lstm")
                || e.name.starts_with("attention")
                || e.name.starts_with("classifier")
            {
                continue;
            }
            let r = e.offset..e.offset + e.len;
            if batchnorm && train && e.name.starts_with("conv") && e.name.ends_with(".bias") {
                // Training BN subtracts the batch mean, so the true bias gradient is 0 and the
                // CPU's is rounding noise (~1e-17): compare on the scale of the weight gradient.
                let wr = cpu.layout.range(&e.name.replace("bias", "weight"));
                let scale = want[wr].iter().map(|v| v * v).sum::<f64>().sqrt();
                let diff = got[r.clone()]
                    .iter()
                    .zip(&want[r])
                    .map(|(a, b)| (*a as f64 - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let e2 = diff / scale;
                eprintln!("{tag} grad {}: error / |dW| {e2:.3e} (tol 1e-4)", e.name);
                assert!(e2 <= 1e-4, "{tag} grad {}: {e2}", e.name);
                continue;
            }
            check(
                &format!("{tag} grad {}", e.name),
                &got[r.clone()],
                &want[r],
                1e-4,
            );
        }
    }
}

/// A tiny BatchNorm model (16 mels, 2 channels per stage) for the error-path tests.
fn tiny_bn_cfg() -> ModelConfig {
    ModelConfig {
        n_mels: 16,
        kernel: 3,
        channels: [2, 2, 2],
        fc: 4,
        hidden: 2,
        lstm_layers: 1,
        classes: 2,
        dropout: 0.0,
        batchnorm: true,
    }
}

pub fn forward_rejects_bad_input_with_errors() {
    let dev = device();
    let cfg = tiny_bn_cfg();
    let params = cnn::CnnParams::upload(&dev, &cfg, &crate::model::init_params(&cfg, 1)).unwrap();
    let mut running =
        cnn::BnRunning::upload(&dev, &cfg, &crate::model::init_buffers(&cfg)).unwrap();
    let run = |lens: &[usize], n: usize, running: &mut cnn::BnRunning| {
        let mut ws = cnn::CnnWorkspace::new(&dev, &cfg, lens.len(), 16).unwrap();
        *ws.input_mut() = dev.alloc_zeros(n).unwrap();
        cnn::cnn_forward(
            &dev,
            &cfg,
            &params,
            running,
            lens,
            Mode::Eval,
            &CnnOptions::default(),
            &mut ws,
            &mut cnn::ConvScratch::default(),
        )
        .err()
        .map(|e| format!("{e:#}"))
    };
    let e = run(&[16, 7], 2 * 16 * 16, &mut running).expect("length 7 < 8 is an error");
    assert!(e.contains("clip 1 has length 7"), "{e}");
    let e = run(&[16, 17], 2 * 16 * 16, &mut running).expect("length > t_max is an error");
    assert!(e.contains("clip 1 has length 17"), "{e}");
    let e = run(&[16], 2 * 16 * 16, &mut running).expect("wrong input size is an error");
    assert!(e.contains("input has 512 values"), "{e}");
    assert!(run(&[16, 8], 2 * 16 * 16, &mut running).is_none());
}

/// `CnnOptions::eval_stats_snapshot` off: the eval forward reads the BatchNorm running
/// statistics in place (no copy launch) and gives bit-identical outputs; its backward is an
/// error instead of using statistics that may have changed since.
pub fn eval_without_stats_snapshot_is_identical_and_has_no_backward() {
    use crate::device::thread_kernel_launches;
    let dev = device();
    let cfg = ModelConfig {
        channels: [3, 4, 4],
        fc: 5,
        ..tiny_bn_cfg()
    };
    let params = cnn::CnnParams::upload(&dev, &cfg, &crate::model::init_params(&cfg, 3)).unwrap();
    // running statistics away from their 0/1 init, so using the wrong ones would show
    let mut buffers = crate::model::init_buffers(&cfg);
    for (i, v) in buffers.iter_mut().enumerate() {
        *v += 0.05 * (i % 7) as f32;
    }
    let mut running = cnn::BnRunning::upload(&dev, &cfg, &buffers).unwrap();
    let (lens, t_max) = ([24usize, 13], 24usize);
    let x = randn(600, lens.len() * cfg.n_mels * t_max);
    let mut outs = Vec::new();
    for snapshot in [true, false] {
        let opts = CnnOptions {
            eval_stats_snapshot: snapshot,
            ..CnnOptions::default()
        };
        let mut ws = cnn::CnnWorkspace::new(&dev, &cfg, lens.len(), t_max).unwrap();
        let mut scratch = cnn::ConvScratch::default();
        dev.copy_htod(&x, ws.input_mut()).unwrap();
        let copies = thread_kernel_launches("loss_copy_slice").unwrap();
        cnn::cnn_forward(
            &dev,
            &cfg,
            &params,
            &mut running,
            &lens,
            Mode::Eval,
            &opts,
            &mut ws,
            &mut scratch,
        )
        .unwrap();
        let copied = thread_kernel_launches("loss_copy_slice").unwrap() - copies;
        assert_eq!(copied, if snapshot { 6 } else { 0 }, "snapshot {snapshot}");
        let mut o: Vec<f32> = ws
            .stages
            .iter()
            .flat_map(|st| dtoh(&dev, &st.relu))
            .collect();
        o.extend(dtoh(&dev, &ws.out));
        outs.push(o);
        let dout = dev.htod(&randn(601, ws.out.len())).unwrap();
        let mut grads = cnn::CnnParams::zeros(&dev, &cfg).unwrap();
        let r = cnn::cnn_backward(
            &dev,
            &cfg,
            &params,
            &mut ws,
            &dout,
            &mut grads,
            &opts,
            &mut scratch,
        );
        match (snapshot, r) {
            (true, r) => r.unwrap(),
            (false, Ok(())) => panic!("backward of an eval forward without snapshot succeeded"),
            (false, Err(e)) => assert!(format!("{e:#}").contains("eval_stats_snapshot"), "{e:#}"),
        }
    }
    assert!(
        outs[0].iter().any(|&v| v != 0.0),
        "all-zero output tests nothing"
    );
    assert!(
        outs[0]
            .iter()
            .zip(&outs[1])
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "eval outputs differ with and without the snapshot"
    );
}

/// The per-channel reductions as 2-D grids (channel × chunk, then a fixed-order merge):
/// BatchNorm statistics and backward sums, the conv bias gradient's row sums and the FC bias
/// gradient, each at random sizes that are not multiples of the block, in 1 chunk, a few, more
/// chunks than some channels have valid elements (empty chunks: clips of 1 frame), and the
/// automatic count, against f64 CPU references (relative norm ≤ 1e-5); and bit-identical
/// results on two devices with different thread-order seeds (on cuda: two runs). The chunk
/// heuristic gives ≥ 2 blocks per SM of a 132-SM GPU on the model's real shapes and one chunk
/// on tiny inputs.
pub fn reductions_2d_match_cpu_and_are_deterministic() {
    // the chunking (host only)
    let real = |c: usize, m: usize, t: usize| cnn::Dims4 { batch: 32, c, m, t };
    for d in [real(16, 128, 200), real(32, 64, 100), real(64, 32, 50)] {
        let k = cnn::bn_chunks(d);
        assert!(d.c * k >= 264, "{d:?}: {k} chunks, {} blocks", d.c * k);
    }
    assert!(16 * cnn::row_sum_chunks(16, 32 * 128 * 200) >= 264);
    assert_eq!(cnn::bn_chunks(real(8, 4, 10)), 1, "tiny input, one chunk");
    assert_eq!(cnn::row_sum_chunks(3, 4000), 1);

    let devs = [super::device(11), super::device(0xD1FF_5EED)];
    let s = Stream::new(3, Purpose::Test, 1);
    // every result of every device, to compare bits
    let mut bits: [Vec<u32>; 2] = Default::default();
    for trial in 0..2u64 {
        // BatchNorm: a small shape and one large enough for several automatic chunks
        let d = if trial == 0 {
            Dims4 {
                batch: 3,
                c: odd(&s, 10, 1, 6),
                m: odd(&s, 20, 2, 9),
                t: odd(&s, 30, 5, 40),
            }
        } else {
            Dims4 {
                batch: 3,
                c: 3,
                m: odd(&s, 21, 20, 40),
                t: odd(&s, 31, 200, 300),
            }
        };
        let mut lens = lengths(&s, trial + 40, d.batch, d.t);
        lens[1] = 1; // a clip of one frame: chunks of its padding have no valid element
        let x: Vec<f32> = randn(300 + trial, d.len())
            .iter()
            .map(|v| 3.0 + 2.0 * v)
            .collect();
        let dy = randn(310 + trial, d.len());
        let gamma = randn(320 + trial, d.c);
        let x64 = f64s(&x);
        let st = batchnorm::batch_stats(&x64, &lens, d.c, d.m, d.t, BN_EPS);
        // the CPU's bn_backward gives Σ g and Σ g·xhat as dbeta, dgamma (accumulated onto 0.5)
        let mut y64 = vec![0.0f64; d.len()];
        let ones = vec![1.0f64; d.c];
        batchnorm::bn_apply(
            &x64,
            &st,
            &ones,
            &vec![0.0; d.c],
            &lens,
            d.c,
            d.m,
            d.t,
            &mut y64,
        );
        let mut relu = vec![0.0f64; d.len()];
        pool::relu_forward(&y64, &mut relu);
        let mut g64 = vec![0.0f64; d.len()];
        pool::relu_backward(&relu, &f64s(&dy), &mut g64);
        let (mut dxw, mut dgw, mut dbw) = (vec![0.0; d.len()], vec![0.5; d.c], vec![0.5; d.c]);
        batchnorm::bn_backward(
            &x64,
            &g64,
            &st,
            &f64s(&gamma),
            &lens,
            d.c,
            d.m,
            d.t,
            &mut dxw,
            &mut dgw,
            &mut dbw,
        );
        let auto = cnn::bn_chunks(d);
        if trial == 1 {
            assert!(auto > 1, "{d:?} should split: {auto} chunk(s)");
        }
        for (di, dev) in devs.iter().enumerate() {
            let ld = cnn::upload_lens(dev, &lens).unwrap();
            let xd = dev.htod(&x).unwrap();
            // the ReLU output the backward reads: the device's own forward at mean/var
            for chunks in [1, 2, 5, 37, auto] {
                let mut scratch = dev.alloc_uninit::<f32>(2 * d.c + 3 * d.c * chunks).unwrap();
                let mut mean = dev.alloc_uninit::<f32>(d.c).unwrap();
                let mut var = dev.alloc_uninit::<f32>(d.c).unwrap();
                cnn::bn_stats(dev, &xd, &ld, d, &mut mean, &mut var, &scratch, chunks).unwrap();
                let (mh, vh) = (dtoh(dev, &mean), dtoh(dev, &var));
                check(
                    &format!("bn mean {d:?} chunks {chunks}"),
                    &mh,
                    &st.mean,
                    1e-5,
                );
                check(&format!("bn var chunks {chunks}"), &vh, &st.var, 1e-5);
                // backward sums at the CPU's statistics, so only the reduction is compared
                let (md, vd) = (
                    dev.htod(&st.mean.iter().map(|&v| v as f32).collect::<Vec<_>>())
                        .unwrap(),
                    dev.htod(&st.var.iter().map(|&v| v as f32).collect::<Vec<_>>())
                        .unwrap(),
                );
                let relu32: Vec<f32> = relu.iter().map(|&v| v as f32).collect();
                let (yd, dyd, gd) = (
                    dev.htod(&relu32).unwrap(),
                    dev.htod(&dy).unwrap(),
                    dev.htod(&gamma).unwrap(),
                );
                let mut dx = dev.alloc_uninit::<f32>(d.len()).unwrap();
                let mut dg = dev.htod(&vec![0.5f32; d.c]).unwrap();
                let mut db = dev.htod(&vec![0.5f32; d.c]).unwrap();
                cnn::bn_relu_backward(
                    dev,
                    &dyd,
                    &yd,
                    &xd,
                    &md,
                    &vd,
                    &gd,
                    &ld,
                    d,
                    true,
                    &mut dx,
                    &mut dg,
                    &mut db,
                    &mut scratch,
                    chunks,
                )
                .unwrap();
                let (dgh, dbh) = (dtoh(dev, &dg), dtoh(dev, &db));
                check(&format!("bn dgamma chunks {chunks}"), &dgh, &dgw, 1e-5);
                check(&format!("bn dbeta chunks {chunks}"), &dbh, &dbw, 1e-5);
                for v in [&mh, &vh, &dgh, &dbh] {
                    bits[di].extend(v.iter().map(|f| f.to_bits()));
                }
            }
        }

        // conv bias gradient: out[r] += Σ_c a[r][c]
        let rows = odd(&s, 50 + trial, 1, 9);
        let cols = odd(&s, 60 + trial, 3000, 20000);
        let a = randn(330 + trial, rows * cols);
        let out0 = randn(340 + trial, rows);
        let want: Vec<f64> = (0..rows)
            .map(|r| {
                out0[r] as f64
                    + a[r * cols..(r + 1) * cols]
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>()
            })
            .collect();
        // fc bias gradient: db[o] += Σ_r dz[r][o], dout past one 256-thread block
        let frows = odd(&s, 70 + trial, 20, 700);
        let dout = odd(&s, 80 + trial, 200, 400);
        let dz = randn(350 + trial, frows * dout);
        let db0 = randn(360 + trial, dout);
        let fwant: Vec<f64> = (0..dout)
            .map(|o| db0[o] as f64 + (0..frows).map(|r| dz[r * dout + o] as f64).sum::<f64>())
            .collect();
        for (di, dev) in devs.iter().enumerate() {
            let ad = dev.htod(&a).unwrap();
            let dzd = dev.htod(&dz).unwrap();
            for chunks in [1, 3, 64, cnn::row_sum_chunks(rows, cols)] {
                let out = dev.htod(&out0).unwrap();
                let part = dev.alloc_uninit::<f32>(rows * chunks).unwrap();
                cnn::row_sum_acc(dev, out.view(), &ad, rows, cols, part.view(), chunks).unwrap();
                let got = dtoh(dev, &out);
                check(
                    &format!("row sums {rows}×{cols} chunks {chunks}"),
                    &got,
                    &want,
                    1e-5,
                );
                bits[di].extend(got.iter().map(|f| f.to_bits()));
            }
            for chunks in [1, 7, frows + 3, cnn::fc_bias_chunks(frows, dout)] {
                let db = dev.htod(&db0).unwrap();
                let part = dev.alloc_uninit::<f32>(dout * chunks).unwrap();
                cnn::fc_bias_grad(dev, db.view(), dzd.view(), frows, dout, part.view(), chunks)
                    .unwrap();
                let got = dtoh(dev, &db);
                check(
                    &format!("fc bias {frows}×{dout} chunks {chunks}"),
                    &got,
                    &fwant,
                    1e-5,
                );
                bits[di].extend(got.iter().map(|f| f.to_bits()));
            }
        }
    }
    let differ = bits[0].iter().zip(&bits[1]).filter(|(a, b)| a != b).count();
    assert!(
        bits[0].len() == bits[1].len() && differ == 0,
        "two runs with different thread orders differ in {differ} of {} results",
        bits[0].len()
    );
}
