//! Per-kernel profiling of the device training step (`device::profile`, `device::cost`) on the
//! `sim` device (or the GPU with SER_TEST_DEVICE=cuda): the profile sees every launch the
//! launch counter sees, each under a real kernel name and inside a step phase, with a cost;
//! profiling changes no result and allocates nothing on the device; the analytic FLOP of the
//! convolution and FC GEMMs equal an independent count from the ModelConfig, and Adam's cost
//! follows the parameter count of the ParamLayout.

mod common;

use ser_engine::device::cost::LIBRARY_OPS;
use ser_engine::device::profile::{self, summarize, Record};
use ser_engine::device::{kernels, thread_stats, Device};
use ser_engine::engine::rnn::LossConfig;
use ser_engine::engine::step::DeviceModel;
use ser_engine::model::{ModelConfig, ParamLayout};
use ser_engine::rng::{Purpose, Stream};

fn device() -> Device {
    common::device(31)
}

/// The paper's layer structure at a small size: three conv stages, FC, 2-layer BiLSTM.
fn cfg() -> ModelConfig {
    ModelConfig {
        n_mels: 16,
        kernel: 5,
        channels: [4, 6, 8],
        fc: 8,
        hidden: 6,
        lstm_layers: 2,
        classes: 3,
        dropout: 0.3,
        batchnorm: true,
        input_norm: Default::default(),
    }
}

fn input(n: usize) -> Vec<f32> {
    let s = Stream::new(7, Purpose::Test, 0);
    (0..n).map(|i| s.normal(i as u64)).collect()
}

/// t_max 37: not a multiple of 8, so the pooled frame counts (37 → 18 → 9 → 4) test the
/// floor; a ragged batch so the masks run.
const T: usize = 37;
const LENS: [usize; 3] = [37, 30, 21];
const LABELS: [usize; 3] = [0, 2, 1];

fn step(dm: &mut DeviceModel, x: &[f32], s: u32) -> f32 {
    dm.train_step(
        x,
        &LENS,
        T,
        &LABELS,
        3,
        s,
        1e-3,
        1.0,
        &LossConfig::default(),
    )
    .unwrap()
    .loss
}

/// A model after one warm-up step (workspaces allocated) and the records of its next step.
fn profiled_step() -> (DeviceModel, Vec<Record>, ser_engine::device::DeviceStats) {
    let c = cfg();
    let x = input(LENS.len() * c.n_mels * T);
    let mut dm = DeviceModel::new(device(), &c, 1).unwrap();
    step(&mut dm, &x, 0);
    let a = thread_stats();
    profile::start();
    step(&mut dm, &x, 1);
    let records = profile::stop();
    let b = thread_stats();
    let delta = ser_engine::device::DeviceStats {
        launches: b.launches - a.launches,
        htod_bytes: b.htod_bytes - a.htod_bytes,
        dtoh_bytes: b.dtoh_bytes - a.dtoh_bytes,
        allocs: b.allocs - a.allocs,
        memsets: b.memsets - a.memsets,
    };
    (dm, records, delta)
}

#[test]
fn profile_sees_every_launch_with_a_real_name_phase_and_cost() {
    let (_, records, delta) = profiled_step();
    assert_eq!(
        records.len() as u64,
        delta.launches,
        "profile records vs the launch counter"
    );
    assert_eq!(delta.allocs, 0, "a profiled step of a seen shape allocates");
    let phases = ["cnn fwd", "rnn fwd", "rnn bwd", "cnn bwd", "optim"];
    for r in &records {
        assert!(
            kernels::find(r.name).is_ok() || LIBRARY_OPS.contains(&r.name),
            "'{}' is neither a kernel nor a library operation",
            r.name
        );
        assert!(phases.contains(&r.phase), "{r:?} outside the step's phases");
        let c = r.cost.unwrap_or_else(|| panic!("{r:?} has no cost model"));
        // NaN fails both comparisons; every launch moves at least one element
        assert!(
            c.flops >= 0.0 && c.bytes >= 4.0 && c.bytes.is_finite(),
            "{r:?}"
        );
        assert!(r.seconds >= 0.0 && r.seconds.is_finite(), "{r:?}");
    }
    // each phase ran, in step order
    let mut seen: Vec<&str> = Vec::new();
    for r in &records {
        if seen.last() != Some(&r.phase) {
            seen.push(r.phase);
        }
    }
    assert_eq!(seen, phases, "phase order");
    let s = summarize(&records, 1);
    assert_eq!(s.launches, records.len() as f64);
    assert!(s.rows.iter().all(|r| r.modeled));
    let t = s.table();
    assert_eq!(t.lines().count(), s.rows.len() + 2, "{t}");
    eprint!("{t}");
}

/// 2·m·n·k of the forward convolutions and the FC, counted from the config alone.
#[test]
fn conv_and_fc_gemm_flops_equal_an_independent_count() {
    let c = cfg();
    let (_, records, _) = profiled_step();
    let b = LENS.len() as f64;
    let k2 = (c.kernel * c.kernel) as f64;
    let (mut m, mut t, mut cin) = (c.n_mels, T, 1usize);
    let (mut conv_fwd, mut conv_bwd) = (0.0, 0.0);
    for (s, &cout) in c.channels.iter().enumerate() {
        let f = 2.0 * b * (t * m * cin * cout) as f64 * k2;
        conv_fwd += f;
        // filter gradient every stage; data gradient except for the input stage
        conv_bwd += if s == 0 { f } else { 2.0 * f };
        (m, t, cin) = (m / 2, t / 2, cout);
    }
    // t is now the frames after three pools, m the mel bins, cin the last width
    assert_eq!(t, ModelConfig::frames_out(T));
    let fc_in = cin * m;
    let fc = 2.0 * b * t as f64 * fc_in as f64 * c.fc as f64;
    let gemm = |phase: &str| -> f64 {
        records
            .iter()
            .filter(|r| {
                r.phase == phase
                    && (r.name.starts_with("sgemm_")
                        || r.name.starts_with("cublas_sgemm")
                        || r.name.starts_with("cudnn_conv"))
            })
            .map(|r| r.cost.unwrap().flops)
            .sum()
    };
    // integers well below 2^53: exact in f64
    assert_eq!(
        gemm("cnn fwd"),
        conv_fwd + fc,
        "forward conv + FC GEMM FLOP"
    );
    // backward: FC weight and input gradients
    assert_eq!(
        gemm("cnn bwd"),
        conv_bwd + 2.0 * fc,
        "backward conv + FC GEMM FLOP"
    );
}

#[test]
fn adam_cost_follows_the_parameter_count() {
    let c = cfg();
    let p = ParamLayout::new(&c).total() as f64;
    let (_, records, _) = profiled_step();
    let adam: Vec<_> = records.iter().filter(|r| r.name == "adam_step").collect();
    assert_eq!(adam.len(), 1);
    let cost = adam[0].cost.unwrap();
    // params, m, v read and written, gradient read: 7 floats per parameter
    assert_eq!(cost.bytes, 7.0 * 4.0 * p);
    assert_eq!(adam[0].phase, "optim");
}

/// Profiling synchronizes and records but must not change what a step computes.
#[test]
fn profiling_changes_no_result() {
    let c = cfg();
    let x = input(LENS.len() * c.n_mels * T);
    let mut plain = DeviceModel::new(device(), &c, 1).unwrap();
    let mut prof = DeviceModel::new(device(), &c, 1).unwrap();
    let l0 = step(&mut plain, &x, 0);
    profile::start();
    let l1 = step(&mut prof, &x, 0);
    let n = profile::stop().len();
    assert!(n > 0);
    assert_eq!(l0.to_bits(), l1.to_bits(), "loss");
    assert_eq!(
        plain.params_host().unwrap(),
        prof.params_host().unwrap(),
        "parameters after the update"
    );
}

/// The cuDNN cost model (`Cost::conv`, one call per pass) against the im2col path it replaces:
/// the GEMMs of `conv2d_forward` / `conv2d_backward`, split into several chunks, add up to the
/// same FLOP (the GEMMs are the convolution's multiply-adds, nothing more).
#[test]
fn conv_cost_model_equals_the_im2col_gemms() {
    use ser_engine::cpu::conv::ConvShape;
    use ser_engine::device::cost::{ConvPass, Cost};
    use ser_engine::engine::cnn;
    let dev = Device::sim();
    let sh = ConvShape {
        batch: 3,
        cin: 2,
        cout: 5,
        k: 3,
        m: 8,
        t: 7,
    };
    // one clip's columns are cin·k²·m·t = 1008 elements: 2 clips per chunk, 2 chunks
    let max_col = 2100;
    let z = |n| dev.alloc_zeros::<f32>(n).unwrap();
    let (x, w, bias, dy) = (z(sh.x_len()), z(sh.w_len()), z(sh.cout), z(sh.y_len()));
    let (mut y, mut dx, mut dw, mut db) = (z(sh.y_len()), z(sh.x_len()), z(sh.w_len()), z(sh.cout));
    let lens = cnn::upload_lens(&dev, &[7, 5, 6]).unwrap();
    let gemm_flops = |recs: &[Record], name: &str| -> (f64, usize) {
        let v: Vec<_> = recs.iter().filter(|r| r.name == name).collect();
        (v.iter().map(|r| r.cost.unwrap().flops).sum(), v.len())
    };
    profile::start();
    cnn::conv2d_forward(&dev, &x, &w, &bias, &lens, &sh, &mut y, max_col).unwrap();
    let fwd = profile::stop();
    profile::start();
    cnn::conv2d_backward(
        &dev,
        &x,
        &w,
        &dy,
        &lens,
        &sh,
        Some(&mut dx),
        &mut dw,
        &mut db,
        max_col,
    )
    .unwrap();
    let bwd = profile::stop();
    let cost = |p| Cost::conv(p, sh.batch, sh.cin, sh.cout, sh.m, sh.t, sh.k).flops;
    // 2·b·m·t·cout·cin·k², written out independently of Cost::conv
    let direct = 2.0 * (3 * 8 * 7 * 5 * 2 * 9) as f64;
    assert_eq!(cost(ConvPass::Forward), direct);
    assert_eq!(
        gemm_flops(&fwd, "sgemm_nn"),
        (direct, 2),
        "forward: 2 chunks"
    );
    assert_eq!(
        gemm_flops(&bwd, "sgemm_nt"),
        (cost(ConvPass::BackwardFilter), 2)
    );
    assert_eq!(
        gemm_flops(&bwd, "sgemm_tn"),
        (cost(ConvPass::BackwardData), 2)
    );
}

/// `bench train --profile` on sim prints the table and the analytic step totals; on cpu it is
/// an error naming the devices it needs.
#[test]
fn cli_bench_train_profile() {
    use assert_cmd::Command;
    let args = [
        "bench",
        "train",
        "--batch",
        "2",
        "--frames",
        "16",
        "--steps",
        "1",
        "--kernel-size",
        "3",
        "--profile",
    ];
    let out = Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["--device", "sim"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "per-kernel profile of 1 training step(s) on sim",
        "cnn fwd",
        "sgemm_nn",
        "lstm_forward_recurrent",
        "adam_step",
        "per training step (analytic):",
    ] {
        assert!(text.contains(want), "missing '{want}':\n{text}");
    }
    let out = Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--device sim or --device cuda"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Cost-only mode records what a profiled step records (names, phases, costs), in the same
/// order, without running a kernel: the launch sequence does not depend on the data.
#[test]
fn cost_only_matches_the_executed_profile() {
    let c = cfg();
    let x = input(LENS.len() * c.n_mels * T);
    let (_, timed, _) = profiled_step();
    let mut dm = DeviceModel::new(device(), &c, 1).unwrap();
    step(&mut dm, &x, 0);
    let params = dm.params_host().unwrap();
    profile::start_cost_only();
    step(&mut dm, &x, 1);
    let dry = profile::stop();
    let key = |r: &Record| (r.name, r.phase, r.cost);
    assert_eq!(
        dry.iter().map(key).collect::<Vec<_>>(),
        timed.iter().map(key).collect::<Vec<_>>()
    );
    assert!(dry.iter().all(|r| r.seconds == 0.0));
    // nothing ran: Adam did not move the parameters
    assert_eq!(dm.params_host().unwrap(), params);
}

#[test]
fn cli_bench_train_cost_only() {
    use assert_cmd::Command;
    let out = Command::cargo_bin("ser-engine")
        .unwrap()
        .args([
            "--device", "sim", "bench", "train", "--batch", "16", "--frames", "126",
        ])
        .arg("--cost-only")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("kernels not executed") && text.contains("per training step (analytic):"),
        "{text}"
    );
    eprint!("{text}");
}
