//! `ser-engine bench`: throughput measurements (never asserted in tests).
//! - `bench train`: training samples/s (forward + backward + Adam) and inference samples/s of
//!   the paper model on random log-Mel batches, and the process's peak memory.
//! - `bench train --profile` (device sim or cuda): then profiles training steps kernel by
//!   kernel (`device::profile`): launches per step, time share, the analytic FLOP and minimum
//!   DRAM bytes of each kernel (`device::cost`), GFLOP/s, GB/s and FLOP/byte, and the
//!   step's totals, so the fraction of a GPU's roofline can be read off. On sim the times are
//!   the host emulation's, not GPU times; FLOP and bytes are the device's all the same.
//!
//! Layer: cli, the top. May use every other module.

use super::Global;
use crate::backend::batch::Batch;
use crate::backend::OptimConfig;
use crate::cpu::conv::tune::conv_choice;
use crate::device::profile::{summarize, Summary};
use crate::device::DeviceChoice;
use crate::model::ModelConfig;
use crate::rng::{Purpose, Stream};
use crate::train::devices::make_backend;
use anyhow::{ensure, Result};
use clap::{Args, Subcommand};
use std::time::Instant;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Training and inference throughput of the model.
    Train {
        /// Clips per batch.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Frames per clip (126 = 2 s at 16 kHz with hop 256).
        #[arg(long, default_value_t = 126)]
        frames: usize,
        /// Timed training steps (after 2 warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 7)]
        kernel_size: usize,
        #[arg(long, default_value_t = 5)]
        classes: usize,
        /// Then profile `--steps` training steps kernel by kernel (device sim or cuda; every
        /// launch is synchronized, so profiled steps run slower than the timed ones).
        #[arg(long)]
        profile: bool,
        /// Instead of timing, print the analytic FLOP and minimum DRAM bytes of each kernel of
        /// one training step, without executing the kernels (device sim or cuda; any size runs
        /// in seconds on sim).
        #[arg(long, conflicts_with = "profile")]
        cost_only: bool,
        /// Time cuda even when GEMMs run on our fallback sgemm kernels instead of cuBLAS
        /// (refused otherwise: those numbers are not the GPU's).
        #[arg(long)]
        allow_fallback_gemm: bool,
    },
    /// `serve`'s predict endpoint under load: requests/s, p50/p99 latency, peak memory.
    Serve {
        /// Run folder of the model to serve.
        #[arg(long)]
        model: std::path::PathBuf,
        /// Concurrent clients on 127.0.0.1, 1 to 64.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// How long the clients send, 1 to 600 s.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// The server's inference workers, 1 to 64.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Length of the clip each request sends, 0.5 to 30 s.
        #[arg(long, default_value_t = 2.0)]
        clip_seconds: f64,
    },
}

/// Peak resident memory of this process (VmHWM), in MiB, where /proc tells it.
pub fn peak_memory_mib() -> Option<f64> {
    crate::cpu::alloc::peak_resident_bytes().map(|b| b as f64 / (1u64 << 20) as f64)
}

pub fn run(args: &BenchArgs, global: &Global) -> Result<()> {
    match &args.what {
        BenchWhat::Train {
            batch,
            frames,
            steps,
            kernel_size,
            classes,
            profile,
            cost_only,
            allow_fallback_gemm,
        } => bench_train(
            global,
            *allow_fallback_gemm,
            *batch,
            *frames,
            *steps,
            *kernel_size,
            *classes,
            *profile || *cost_only,
            *cost_only,
        ),
        BenchWhat::Serve {
            model,
            clients,
            seconds,
            workers,
            clip_seconds,
        } => {
            use crate::train::options::{check_range, Limit::Incl};
            check_range("clients", *clients as f64, Incl(1.0), Incl(64.0))?;
            check_range("seconds", *seconds, Incl(1.0), Incl(600.0))?;
            check_range("workers", *workers as f64, Incl(1.0), Incl(64.0))?;
            check_range("clip-seconds", *clip_seconds, Incl(0.5), Incl(30.0))?;
            crate::serve::bench::run(&crate::serve::bench::BenchServe {
                model,
                clients: *clients,
                seconds: *seconds,
                workers: *workers,
                clip_seconds: *clip_seconds,
                device: global.device,
                threads: global.threads,
            })
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn bench_train(
    global: &Global,
    allow_fallback_gemm: bool,
    b: usize,
    t: usize,
    steps: usize,
    kernel: usize,
    classes: usize,
    profile: bool,
    cost_only: bool,
) -> Result<()> {
    ensure!(
        b > 0 && steps > 0 && t >= crate::model::MIN_FRAMES,
        "--batch and --steps must be at least 1 and --frames at least {}",
        crate::model::MIN_FRAMES
    );
    ensure!(
        !profile || matches!(global.device, DeviceChoice::Sim | DeviceChoice::Cuda),
        "--profile and --cost-only profile device kernels: use --device sim or --device cuda"
    );
    let model = ModelConfig {
        kernel,
        classes,
        ..ModelConfig::default()
    };
    model.validate()?;
    let optim = OptimConfig {
        lr: 1e-4,
        weight_decay: 1e-5,
        decoupled_weight_decay: false,
        clip_grad_norm: 0.0,
        label_smoothing: 0.0,
        class_weights: None,
        freeze_cnn: false,
        backbone_lr_scale: 1.0,
    };
    let mut backend = make_backend(global.device, &model, &optim, global.seed)?;
    if let Some(why) = backend.gemm_fallback().filter(|_| !cost_only) {
        ensure!(
            allow_fallback_gemm,
            "bench: refusing to time cuda with GEMMs on our fallback sgemm kernels: {why}. \
             Install cuBLAS (pip install nvidia-cublas, or the CUDA toolkit) or pass --allow-fallback-gemm"
        );
        eprintln!("warning: timing cuda with GEMMs on our fallback kernels (--allow-fallback-gemm): {why}");
    }
    let s = Stream::new(global.seed, Purpose::Test, 0);
    let m = model.n_mels;
    let x: Vec<f32> = (0..b * m * t).map(|i| s.normal(i as u64) * 0.5).collect();
    let batch = Batch {
        x,
        batch: b,
        n_mels: m,
        t_max: t,
        lengths: vec![t; b],
        labels: (0..b).map(|i| i % classes).collect(),
        indices: (0..b).collect(),
        mix: None,
    };
    let threads = rayon::current_num_threads();
    if cost_only {
        crate::device::profile::start_cost_only();
        let r = backend.train_step(&batch, 0, 1e-4);
        let records = crate::device::profile::stop();
        r?;
        let s = summarize(&records, 1);
        println!(
            "analytic cost of one training step (kernels not executed), batch {b} x {m} mels x {t} frames, kernel {kernel}, device {}",
            backend.device()
        );
        print!("{}", s.cost_table());
        println!("{}", step_totals_line(&s, b));
        return Ok(());
    }
    for step in 0..2 {
        backend.train_step(&batch, step, 1e-4)?;
    }
    let t0 = Instant::now();
    for step in 0..steps {
        backend.train_step(&batch, 2 + step as u32, 1e-4)?;
    }
    let train_s = t0.elapsed().as_secs_f64();
    backend.eval_logits(&batch)?;
    let t1 = Instant::now();
    for _ in 0..steps {
        backend.eval_logits(&batch)?;
    }
    let infer_s = t1.elapsed().as_secs_f64();
    let train_rate = (b * steps) as f64 / train_s;
    let infer_rate = (b * steps) as f64 / infer_s;
    println!(
        "device {}  threads {threads}  batch {b} x {m} mels x {t} frames  kernel {kernel}",
        backend.device()
    );
    if backend.device() == "cuda" {
        println!("{}", backend.describe_device());
        if let Some(why) = backend.gemm_fallback() {
            println!("note: GEMMs ran on our fallback kernels: {why}");
        }
    }
    if backend.device() == "cpu" {
        println!("{}", crate::isa::report());
        println!(
            "precision {} (bf16: AVX512-BF16 GEMMs in the FFT convolutions' channel mixing; {})",
            crate::cpu::bf16::precision().name(),
            if crate::cpu::bf16::available() {
                "available"
            } else {
                "not available here"
            }
        );
        // Which convolution algorithm each stage used, and why (timed, cost model or
        // SER_CPU_CONV).
        for (s, sh) in crate::cpu::model::conv_shapes(&model, b, t)
            .iter()
            .enumerate()
        {
            println!(
                "convolution stage {} ({}->{}, {}x{}): {}",
                s + 1,
                sh.cin,
                sh.cout,
                sh.m,
                sh.t,
                conv_choice::<f32>(sh).describe()
            );
        }
    }
    println!(
        "training   {train_rate:8.1} samples/s  ({:.1} ms/step)",
        1e3 * train_s / steps as f64
    );
    println!(
        "inference  {infer_rate:8.1} samples/s  ({:.1} ms/batch)",
        1e3 * infer_s / steps as f64
    );
    if let Some(mib) = peak_memory_mib() {
        println!("peak memory {mib:.0} MiB");
    }
    if profile {
        let first = 2 + steps as u32;
        crate::device::profile::start();
        let r = (0..steps).try_for_each(|i| {
            backend
                .train_step(&batch, first + i as u32, 1e-4)
                .map(|_| ())
        });
        let records = crate::device::profile::stop();
        r?;
        let s = summarize(&records, steps);
        println!();
        println!(
            "per-kernel profile of {steps} training step(s) on {}{}",
            backend.device(),
            if backend.device() == "sim" {
                " (sim: host emulation times, not GPU times; FLOP and bytes are the device's)"
            } else {
                " (each launch synchronized: times include launch latency)"
            }
        );
        print!("{}", s.table());
        println!("{}", step_totals_line(&s, b));
    }
    Ok(())
}

/// The analytic totals of a profiled step: FLOP and minimum DRAM bytes per step and per clip.
pub fn step_totals_line(s: &Summary, batch: usize) -> String {
    format!(
        "per training step (analytic): {:.3} GFLOP, {:.3} GB of DRAM traffic at least \
         ({:.2} FLOP/byte); per clip {:.3} GFLOP, {:.2} MB; {:.0} launches",
        s.flops / 1e9,
        s.bytes / 1e9,
        if s.bytes > 0.0 {
            s.flops / s.bytes
        } else {
            0.0
        },
        s.flops / 1e9 / batch as f64,
        s.bytes / 1e6 / batch as f64,
        s.launches
    )
}
