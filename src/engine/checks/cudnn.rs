//! The cuDNN convolution path (src/engine/cudnn.rs).
//!
//! - On every machine: the masking that restores clip-length semantics around cuDNN's
//!   length-unaware convolution ([`masked_conv_forward`] / [`masked_conv_backward`] and the
//!   kernels `cnn_time_mask`, `cnn_bias_mask`, `cnn_bias_grad_partial` + `reduce_chunks_acc`) is run on `sim` (shuffled
//!   thread order) with our kernels standing in for cuDNN ([`KernelDenseConv`]), against the CPU
//!   reference `cpu::conv`, with garbage in the padding of x and dy.
//! - On a machine with an NVIDIA GPU and libcudnn: cuDNN itself, op by op against the CPU
//!   reference and against our kernels on the same GPU, bit-for-bit repeatability (the chosen
//!   algorithms are deterministic), no allocation on a repeated call of a seen shape, and the
//!   composed CNN forward/backward with cuDNN against our kernels. Without a GPU these print a
//!   skip notice and return; with a GPU but no cuDNN they skip too, unless SER_REQUIRE_CUDNN=1
//!   (tools/gpu-check.sh sets it), which makes a missing cuDNN a failure.
//!
//! Tolerances (as tests/sim_cnn.rs): the oracle runs in f64 on the same f32 inputs, so the error
//! is the device's f32 rounding: forward sums of ≤ a few hundred products stay ≤ 1e-5 relative
//! norm; gradients (longer sums over batch and positions) ≤ 1e-4. cuDNN vs our kernels: each is
//! within those bounds of the oracle, so they are compared with the same bounds (their
//! difference is bounded by the sum of both errors, and measured far below). Masked positions
//! must be exactly 0 on every path.
//!
//! Layer: engine (beside train, below cli). May use `device`, `cpu` (the reference it is
//! checked against), `features`, `model` and the shared modules (`rng`, `isa`, `cache`,
//! `atomic_file`); never `train` or `cli`.

use super::util::{check_masked as check, dtoh as dl, f64s, lengths, randn, rel_err};
use crate::cpu::conv::{conv2d_backward, conv2d_forward, ConvShape};
use crate::cpu::Mode;
use crate::device::{thread_stats, AsViewMut, Device, DeviceBuffer, SimDevice, SimOptions};
use crate::engine::cnn::{self, CnnOptions, ConvBackend, ConvScratch};
use crate::engine::cudnn::{masked_conv_backward, masked_conv_forward, xm_len, KernelDenseConv};
use crate::model::ModelConfig;
use crate::rng::{Purpose, Stream};

/// Inputs of one conv op test and the f64 CPU results.
struct Case {
    sh: ConvShape,
    lens: Vec<usize>,
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    dy: Vec<f32>,
    dw0: Vec<f32>,
    db0: Vec<f32>,
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
    db: Vec<f64>,
}

fn case(trial: u64, sh: ConvShape) -> Case {
    let s = Stream::new(5, Purpose::Test, trial as u32);
    let lens = lengths(&s, trial, sh.batch, sh.t);
    // garbage in the padding of x and dy on purpose: it must not leak in
    let x = randn(10 + trial, sh.x_len());
    let w = randn(20 + trial, sh.w_len());
    let bias = randn(30 + trial, sh.cout);
    let dy = randn(40 + trial, sh.y_len());
    let dw0 = randn(50 + trial, sh.w_len());
    let db0 = randn(60 + trial, sh.cout);
    let mut y = vec![0.0f64; sh.y_len()];
    conv2d_forward(&f64s(&x), &f64s(&w), &f64s(&bias), &lens, &sh, &mut y);
    let (mut dx, mut dw, mut db) = (vec![0.0; sh.x_len()], f64s(&dw0), f64s(&db0));
    conv2d_backward(
        None,
        &f64s(&x),
        &f64s(&w),
        &f64s(&dy),
        &lens,
        &sh,
        Some(&mut dx),
        &mut dw,
        &mut db,
    );
    Case {
        sh,
        lens,
        x,
        w,
        bias,
        dy,
        dw0,
        db0,
        y,
        dx,
        dw,
        db,
    }
}

/// Shapes: odd sizes (not multiples of the block), k = 1, 3, 5, 7, one whose bias gradient
/// takes two chunks (3·41·53 positions per channel > 4096), and (last) the model's stage-2 shape
/// at a small batch.
fn shapes() -> Vec<ConvShape> {
    let c = |batch, cin, cout, k, m, t| ConvShape {
        batch,
        cin,
        cout,
        k,
        m,
        t,
    };
    vec![
        c(3, 2, 3, 3, 7, 19),
        c(3, 1, 4, 5, 11, 13),
        c(2, 3, 2, 1, 5, 9),
        c(4, 2, 5, 7, 9, 21),
        c(3, 1, 3, 3, 41, 53),
        c(2, 32, 64, 7, 64, 37),
    ]
}

pub fn masking_around_a_dense_conv_matches_cpu_on_sim() {
    let dev = Device::Sim(SimDevice::with_options(SimOptions {
        shuffle: true,
        seed: 12,
        workers: 0,
        ..SimOptions::default()
    }));
    // the model-sized shape is slow on sim and adds nothing to the masking logic
    let all = shapes();
    assert!(
        all[..all.len() - 1]
            .iter()
            .any(|s| crate::engine::cnn::bias_grad_chunks(s.batch, s.cout, s.m, s.t) > 1),
        "no shape splits the bias gradient into chunks"
    );
    for (trial, sh) in all[..all.len() - 1].iter().enumerate() {
        let c = case(trial as u64, *sh);
        // chunks of one clip in odd trials (the dense stand-in's own im2col chunking)
        let max_col = if trial % 2 == 1 { 1 } else { 1 << 28 };
        let mut dense = KernelDenseConv::new(&dev, sh, max_col).unwrap();
        let (xd, wd, bd) = (
            dev.htod(&c.x).unwrap(),
            dev.htod(&c.w).unwrap(),
            dev.htod(&c.bias).unwrap(),
        );
        let ld = cnn::upload_lens(&dev, &c.lens).unwrap();
        let mut xm = dev.htod(&vec![f32::NAN; xm_len(sh)]).unwrap();
        let mut dym = dev.htod(&vec![f32::NAN; sh.y_len()]).unwrap();
        let mut y = dev.htod(&vec![f32::NAN; sh.y_len()]).unwrap();
        masked_conv_forward(
            &dev,
            &mut dense,
            &xd,
            wd.view(),
            bd.view(),
            &ld,
            sh,
            &mut y,
            &mut xm,
        )
        .unwrap();
        let tag = format!("masked {sh:?} {:?}", c.lens);
        check(&format!("{tag} fwd"), &dl(&dev, &y), &c.y, 1e-5);

        let dyd = dev.htod(&c.dy).unwrap();
        let mut dx = dev.htod(&vec![f32::NAN; sh.x_len()]).unwrap();
        let (mut dw, mut db) = (dev.htod(&c.dw0).unwrap(), dev.htod(&c.db0).unwrap());
        masked_conv_backward(
            &dev,
            &mut dense,
            &xd,
            wd.view(),
            &dyd,
            &ld,
            sh,
            Some(&mut dx),
            &mut dw.view_mut(),
            &mut db.view_mut(),
            &mut xm,
            &mut dym,
        )
        .unwrap();
        check(&format!("{tag} dx"), &dl(&dev, &dx), &c.dx, 1e-4);
        check(
            &format!("{tag} dw (accumulated)"),
            &dl(&dev, &dw),
            &c.dw,
            1e-4,
        );
        check(
            &format!("{tag} db (accumulated)"),
            &dl(&dev, &db),
            &c.db,
            1e-4,
        );
    }
}

pub fn cudnn_backend_on_sim_is_an_error_and_auto_uses_our_kernels() {
    let dev = Device::sim();
    let sh = shapes()[0];
    let e = ConvScratch::with_backend(ConvBackend::Cudnn)
        .reserve(&dev, &[sh], 1 << 20)
        .expect_err("cuDNN on sim must fail");
    assert!(format!("{e:#}").contains("sim"), "{e:#}");
    let mut auto = ConvScratch::default();
    auto.reserve(&dev, &[sh], 1 << 20).unwrap();
    assert!(!auto.uses_cudnn(&sh));
}

/// The GPU, or None (with a printed notice) when this machine has none or no cuDNN.
fn gpu_with_cudnn() -> Option<Device> {
    if !super::on_cuda() {
        super::skip("cuDNN runs only on the cuda device");
        return None;
    }
    let dev = super::device(0);
    if !crate::device::cuda::cudnn_status().0 {
        let need = std::env::var_os("SER_REQUIRE_CUDNN").is_some_and(|v| v == "1");
        assert!(
            !need,
            "SER_REQUIRE_CUDNN=1 but cuDNN is not used: {}",
            crate::device::cuda::cudnn_status().1
        );
        super::skip(&format!(
            "convolution by {}",
            crate::device::cuda::cudnn_status().1
        ));
        return None;
    }
    eprintln!("{}", dev.describe());
    Some(dev)
}

/// One backend's forward and backward results on the GPU: (y, dx, dw, db).
fn run_backend(
    dev: &Device,
    c: &Case,
    backend: ConvBackend,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let sh = &c.sh;
    let max_col = 1 << 28;
    let mut scratch = ConvScratch::with_backend(backend);
    scratch.reserve(dev, &[*sh], max_col).unwrap();
    assert_eq!(
        scratch.uses_cudnn(sh),
        backend == ConvBackend::Cudnn,
        "{backend:?} {sh:?}: a deterministic FP32 cuDNN algorithm should exist for this shape"
    );
    let (xd, wd, bd) = (
        dev.htod(&c.x).unwrap(),
        dev.htod(&c.w).unwrap(),
        dev.htod(&c.bias).unwrap(),
    );
    let ld = cnn::upload_lens(dev, &c.lens).unwrap();
    let dyd = dev.htod(&c.dy).unwrap();
    let mut y = dev.htod(&vec![f32::NAN; sh.y_len()]).unwrap();
    let mut dx = dev.htod(&vec![f32::NAN; sh.x_len()]).unwrap();
    let (mut dw, mut db) = (dev.htod(&c.dw0).unwrap(), dev.htod(&c.db0).unwrap());
    let pass = |scratch: &mut ConvScratch,
                y: &mut DeviceBuffer<f32>,
                dx: &mut DeviceBuffer<f32>,
                dw: &mut DeviceBuffer<f32>,
                db: &mut DeviceBuffer<f32>| {
        cnn::conv2d_forward_with(dev, &xd, &wd, &bd, &ld, sh, y, max_col, scratch).unwrap();
        cnn::conv2d_backward_with(
            dev,
            &xd,
            &wd,
            &dyd,
            &ld,
            sh,
            Some(dx),
            dw,
            db,
            max_col,
            scratch,
        )
        .unwrap();
    };
    pass(&mut scratch, &mut y, &mut dx, &mut dw, &mut db);
    let out = (dl(dev, &y), dl(dev, &dx), dl(dev, &dw), dl(dev, &db));
    // a repeated call of the seen shape: no allocation, and the same bits (deterministic
    // algorithms); dw, db restart from the same values
    dev.copy_htod(&c.dw0, &mut dw).unwrap();
    dev.copy_htod(&c.db0, &mut db).unwrap();
    let before = thread_stats();
    scratch.reserve(dev, &[*sh], max_col).unwrap();
    pass(&mut scratch, &mut y, &mut dx, &mut dw, &mut db);
    let allocs = thread_stats().allocs - before.allocs;
    assert_eq!(
        allocs, 0,
        "{backend:?} {sh:?}: {allocs} allocations on a repeated call"
    );
    let again = (dl(dev, &y), dl(dev, &dx), dl(dev, &dw), dl(dev, &db));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (name, a, b) in [
        ("y", &out.0, &again.0),
        ("dx", &out.1, &again.1),
        ("dw", &out.2, &again.2),
        ("db", &out.3, &again.3),
    ] {
        assert!(
            bits(a) == bits(b),
            "{backend:?} {sh:?}: {name} differs between two identical calls"
        );
    }
    out
}

pub fn cudnn_conv_matches_cpu_and_our_kernels_on_gpu() {
    let Some(dev) = gpu_with_cudnn() else {
        return;
    };
    for (trial, sh) in shapes().iter().enumerate() {
        let c = case(100 + trial as u64, *sh);
        let tag = format!("{sh:?} {:?}", c.lens);
        let cu = run_backend(&dev, &c, ConvBackend::Cudnn);
        let ours = run_backend(&dev, &c, ConvBackend::Kernels);
        for (who, r) in [("cuDNN", &cu), ("our kernels", &ours)] {
            check(&format!("{who} {tag} fwd"), &r.0, &c.y, 1e-5);
            check(&format!("{who} {tag} dx"), &r.1, &c.dx, 1e-4);
            check(&format!("{who} {tag} dw (accumulated)"), &r.2, &c.dw, 1e-4);
            check(&format!("{who} {tag} db (accumulated)"), &r.3, &c.db, 1e-4);
        }
        check(
            &format!("cuDNN vs ours {tag} fwd"),
            &cu.0,
            &f64s(&ours.0),
            1e-5,
        );
        check(
            &format!("cuDNN vs ours {tag} dx"),
            &cu.1,
            &f64s(&ours.1),
            1e-4,
        );
        check(
            &format!("cuDNN vs ours {tag} dw"),
            &cu.2,
            &f64s(&ours.2),
            1e-4,
        );
        check(
            &format!("cuDNN vs ours {tag} db"),
            &cu.3,
            &f64s(&ours.3),
            1e-4,
        );
    }
}

/// The composed CNN (conv stages with BN, pooling, dropout, FC) forward and backward with
/// cuDNN convolutions against the same with our kernels, on the GPU.
pub fn cudnn_composed_cnn_matches_our_kernels_on_gpu() {
    let Some(dev) = gpu_with_cudnn() else {
        return;
    };
    let cfg = ModelConfig {
        n_mels: 32,
        kernel: 7,
        channels: [8, 16, 16],
        fc: 16,
        hidden: 6,
        lstm_layers: 2,
        classes: 3,
        dropout: 0.3,
        batchnorm: true,
    };
    let (bsz, t_max) = (3usize, 61usize);
    let lens = [61usize, 40, 23];
    let x = randn(700, bsz * cfg.n_mels * t_max);
    let params32 = crate::model::init_params(&cfg, 9);
    let buffers32 = crate::model::init_buffers(&cfg);
    let params = cnn::CnnParams::upload(&dev, &cfg, &params32).unwrap();
    let opts = CnnOptions::default();
    let mode = Mode::Train { seed: 3, step: 1 };
    let mut results = Vec::new();
    for backend in [ConvBackend::Cudnn, ConvBackend::Kernels] {
        let mut running = cnn::BnRunning::upload(&dev, &cfg, &buffers32).unwrap();
        let mut ws = cnn::CnnWorkspace::new(&dev, &cfg, bsz, t_max).unwrap();
        let mut scratch = ConvScratch::with_backend(backend);
        dev.copy_htod(&x, ws.input_mut()).unwrap();
        cnn::cnn_forward(
            &dev,
            &cfg,
            &params,
            &mut running,
            &lens,
            mode,
            &opts,
            &mut ws,
            &mut scratch,
        )
        .unwrap();
        for s in ws.shapes() {
            assert_eq!(
                scratch.uses_cudnn(&s),
                backend == ConvBackend::Cudnn,
                "{s:?}"
            );
        }
        let out = dl(&dev, &ws.out);
        let dout = randn(701, out.len());
        let mut grads = cnn::CnnParams::zeros(&dev, &cfg).unwrap();
        cnn::cnn_backward(
            &dev,
            &cfg,
            &params,
            &mut ws,
            &dev.htod(&dout).unwrap(),
            &mut grads,
            &opts,
            &mut scratch,
        )
        .unwrap();
        let mut g = vec![0.0f32; params32.len()];
        grads.download_into(&dev, &cfg, &mut g).unwrap();
        results.push((out, g));
    }
    let (cu, ours) = (&results[0], &results[1]);
    check(
        "composed CNN out: cuDNN vs ours",
        &cu.0,
        &f64s(&ours.0),
        1e-5,
    );
    // relative norm only: with training BN the conv bias gradients are rounding noise around
    // 0, so one side may be exactly 0 where the other is not (the non-CNN entries are 0 on both)
    let e = rel_err(&cu.1, &f64s(&ours.1));
    eprintln!("composed CNN grads: cuDNN vs ours: relative error {e:.3e} (tol 1e-4)");
    assert!(e <= 1e-4, "composed CNN grads: cuDNN vs ours: {e}");
}
