//! Every device-versus-CPU check, in the library so that `cargo test` (tests/sim_*.rs,
//! tests/cuda_cudnn.rs: thin wrappers) and `ser-engine check --device sim|cuda` run ONE body,
//! and a GPU machine without a Rust toolchain runs them from the one release binary
//! (tools/gpu-bundle.sh).
//!
//! A check is a function that panics (assert!) with its measured error when the device
//! disagrees with the CPU reference, as a test does; [`run_checks`] runs each under
//! `catch_unwind` and reports ok / FAILED (with the panic message) / skipped, and goes on with
//! the next. The device under test comes from [`device`], which the runner sets per thread:
//! the sim with shuffled thread order (seeded per module, as the tests were) or the GPU.
//!
//! Modules (each moved from the test file of the same subject): `kernels` (elementwise,
//! reductions, GEMM, Philox, launch checks, views), `cnn` (conv, BatchNorm+ReLU, dropout, max
//! pool, frames + FC, composed CNN), `rnn` (LSTM, attention, loss, Adam, composed sequence
//! half), `model` (whole forward, every gradient, three training steps, padding invariance,
//! workspace reuse), `frontend` (STFT, Mel, dB, pipeline, noise + SpecAugment), `cudnn`
//! (masking around cuDNN, cuDNN against the CPU and our kernels on a GPU).
//!
//! Layer: engine (below train and cli). May use `backend` (it implements it), `device`, `cpu`
//! (the reference it is checked against), `features`, `model` and the shared modules (`rng`,
//! `isa`, `cache`, `atomic_file`); never `train` or `cli`.

pub mod cnn;
pub mod cudnn;
pub mod frontend;
pub mod kernels;
pub mod model;
pub mod rnn;
pub mod util;

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use anyhow::Result;

use crate::device::{CudaDevice, Device, SimDevice, SimOptions};

/// Which device the checks run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The sim with shuffled thread order.
    Sim,
    /// GPU 0.
    Cuda,
}

thread_local! {
    static TARGET: Cell<Target> = const { Cell::new(Target::Sim) };
    static SKIPPED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The device under test for this thread's current check: the sim (shuffled thread order,
/// schedule seeded by `seed`) or the GPU. Panics when the GPU cannot be opened (the runner
/// reports it as the check's failure).
pub fn device(seed: u64) -> Device {
    match TARGET.with(|t| t.get()) {
        Target::Sim => Device::Sim(SimDevice::with_options(SimOptions {
            shuffle: true,
            seed,
            workers: 0,
            ..SimOptions::default()
        })),
        Target::Cuda => {
            Device::Cuda(CudaDevice::new(0).unwrap_or_else(|e| {
                panic!("the checks run on cuda but the GPU does not open: {e:#}")
            }))
        }
    }
}

/// Whether this thread's checks run on the GPU.
pub fn on_cuda() -> bool {
    TARGET.with(|t| t.get()) == Target::Cuda
}

/// Marks the current check as skipped (it then returns early), with the reason.
pub fn skip(why: &str) {
    eprintln!("skipping: {why}");
    SKIPPED.with(|s| *s.borrow_mut() = Some(why.to_string()));
}

/// Where a check applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// On the device under test (sim or cuda).
    Any,
    /// Only meaningful on sim (it builds its own sim device or tests sim-only behaviour).
    SimOnly,
}

/// One named check.
pub struct Check {
    pub module: &'static str,
    pub name: &'static str,
    pub run: fn(),
    pub runs: Runs,
    /// Part of `--quick`: every check but the launch census of the full-size model (which
    /// counts launches rather than comparing numbers and takes ~30 s on sim). Together they
    /// launch every kernel but the sim shim's own test kernels.
    pub quick: bool,
}

macro_rules! checks {
    ($( $module:ident :: $name:ident $runs:ident $quick:literal ),* $(,)?) => {
        &[ $( Check {
            module: stringify!($module),
            name: stringify!($name),
            run: $module::$name,
            runs: Runs::$runs,
            quick: $quick,
        } ),* ]
    };
}

/// Every check, in the order they run.
pub static CHECKS: &[Check] = checks![
    kernels::elementwise_match_cpu Any true,
    kernels::reductions_match_cpu Any true,
    kernels::gemm_matches_cpu Any true,
    kernels::philox_kernel_matches_rng_rs Any true,
    kernels::launch_errors_are_reported Any true,
    kernels::views_launch_on_their_range_only Any true,
    kernels::gemm_on_views_matches_cpu Any true,
    kernels::utterance_norm_matches_cpu Any true,
    kernels::ema_update_matches_cpu_exactly Any true,
    cnn::conv_matches_cpu Any true,
    cnn::batchnorm_relu_matches_cpu Any true,
    cnn::dropout_masks_are_bit_identical Any true,
    cnn::maxpool_with_mask_and_dropout_matches_cpu_exactly Any true,
    cnn::frames_and_fc_match_cpu Any true,
    cnn::reductions_2d_match_cpu_and_are_deterministic Any true,
    cnn::composed_cnn_matches_cpu_model Any true,
    cnn::forward_rejects_bad_input_with_errors Any true,
    cnn::eval_without_stats_snapshot_is_identical_and_has_no_backward Any true,
    rnn::lstm_layer_matches_cpu Any true,
    rnn::lstm_rejects_unsupported_hidden_size Any true,
    rnn::dropout_masks_are_identical_to_cpu Any true,
    rnn::attention_matches_cpu Any true,
    rnn::cross_entropy_matches_cpu Any true,
    rnn::soft_cross_entropy_matches_cpu Any true,
    rnn::adam_and_clipping_match_cpu Any true,
    rnn::composed_sequence_half_matches_cpu Any true,
    model::whole_forward_matches_cpu_in_eval_and_train Any true,
    model::every_parameter_gradient_matches_cpu Any true,
    model::three_training_steps_match_cpu_backend Any true,
    model::logits_do_not_depend_on_batch_padding Any true,
    model::bad_inputs_are_errors Any true,
    model::utterance_norm_model_matches_cpu Any true,
    model::ema_matches_cpu_backend_and_round_trips Any true,
    model::freeze_and_backbone_lr_scale_match_cpu_backend Any true,
    model::mixup_steps_match_cpu_backend Any true,
    model::default_model_step_counts Any false,
    model::reused_workspace_gives_bit_identical_results Any true,
    model::workspace_cache_is_bounded_in_bytes Any true,
    frontend::stft_power_matches_cpu Any true,
    frontend::mel_power_and_db_match_cpu Any true,
    frontend::pipeline_matches_cpu_on_random_signals_short_clips_and_silence Any true,
    frontend::augmentation_matches_cpu Any true,
    cudnn::masking_around_a_dense_conv_matches_cpu_on_sim SimOnly true,
    cudnn::cudnn_backend_on_sim_is_an_error_and_auto_uses_our_kernels SimOnly true,
    cudnn::cudnn_conv_matches_cpu_and_our_kernels_on_gpu Any true,
    cudnn::cudnn_composed_cnn_matches_our_kernels_on_gpu Any true,
];

/// The verdict of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Skipped(String),
    Failed(String),
}

/// One check's outcome.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub module: &'static str,
    pub name: &'static str,
    pub verdict: Verdict,
    pub seconds: f64,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// Runs one check on `target` in this thread.
pub fn run_one(check: &Check, target: Target) -> Outcome {
    let t0 = Instant::now();
    let verdict = if check.runs == Runs::SimOnly && target == Target::Cuda {
        Verdict::Skipped("a sim-only check".into())
    } else {
        TARGET.with(|t| t.set(target));
        SKIPPED.with(|s| *s.borrow_mut() = None);
        let r = catch_unwind(AssertUnwindSafe(check.run));
        TARGET.with(|t| t.set(Target::Sim));
        match r {
            Err(p) => Verdict::Failed(panic_message(&*p)),
            Ok(()) => match SKIPPED.with(|s| s.borrow_mut().take()) {
                Some(why) => Verdict::Skipped(why),
                None => Verdict::Ok,
            },
        }
    };
    Outcome {
        module: check.module,
        name: check.name,
        verdict,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

/// Runs the checks whose `module::name` contains `filter` (all when None; only the quick ones
/// with `quick`), each after the other, never stopping at a failure. `each` sees every outcome
/// as it comes.
pub fn run_checks(
    target: Target,
    quick: bool,
    filter: Option<&str>,
    each: &mut dyn FnMut(&Outcome),
) -> Vec<Outcome> {
    let mut out = Vec::new();
    for c in CHECKS {
        let full = format!("{}::{}", c.module, c.name);
        if (quick && !c.quick) || filter.is_some_and(|f| !full.contains(f)) {
            continue;
        }
        let o = run_one(c, target);
        each(&o);
        out.push(o);
    }
    out
}

/// The device the tests run on: the sim, or the GPU with SER_TEST_DEVICE=cuda.
pub fn test_target() -> Target {
    match std::env::var("SER_TEST_DEVICE").as_deref() {
        Ok("cuda") => Target::Cuda,
        _ => Target::Sim,
    }
}

/// For the test wrappers: runs `module::name` on [`test_target`], re-raising a failure as a
/// panic (skips print their reason and pass).
pub fn run_test(module: &str, name: &str) {
    let c = CHECKS
        .iter()
        .find(|c| c.module == module && c.name == name)
        .unwrap_or_else(|| panic!("no check {module}::{name}"));
    let o = run_one(c, test_target());
    match o.verdict {
        Verdict::Ok => {}
        Verdict::Skipped(why) => eprintln!("{module}::{name} skipped: {why}"),
        Verdict::Failed(msg) => panic!("{module}::{name} failed: {msg}"),
    }
}

/// One line per outcome.
pub fn format_outcome(o: &Outcome) -> String {
    let (v, note) = match &o.verdict {
        Verdict::Ok => ("ok", String::new()),
        Verdict::Skipped(w) => ("skipped", format!("  ({w})")),
        Verdict::Failed(m) => ("FAILED", format!("  {}", m.replace('\n', " | "))),
    };
    format!(
        "{:<8} {:>7.2}s  {}::{}{note}",
        v, o.seconds, o.module, o.name
    )
}

/// Kernels of the table this thread never launched (what a sanitizer run over the checks
/// would not cover), leaving out kernels/test_shim.cu (the sim's own tests, tests/sim_shim.rs).
pub fn kernels_not_launched() -> Result<Vec<&'static str>> {
    let mut v = Vec::new();
    for k in crate::device::kernels::KERNELS {
        if k.file != "test_shim.cu" && crate::device::thread_kernel_launches(k.name)? == 0 {
            v.push(k.name);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_is_registered_once_and_failures_are_reported() {
        let mut names: Vec<String> = CHECKS
            .iter()
            .map(|c| format!("{}::{}", c.module, c.name))
            .collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "a check registered twice");
        fn fails() {
            let err = std::hint::black_box(1.0f64);
            assert!(err <= 0.5, "error {err} > tol 0.5");
        }
        fn skips() {
            skip("no reason");
        }
        let c = Check {
            module: "t",
            name: "fails",
            run: fails,
            runs: Runs::Any,
            quick: true,
        };
        match run_one(&c, Target::Sim).verdict {
            Verdict::Failed(m) => assert!(m.contains("error 1 > tol 0.5"), "{m}"),
            v => panic!("{v:?}"),
        }
        let c = Check {
            run: skips,
            name: "skips",
            ..c
        };
        assert_eq!(
            run_one(&c, Target::Sim).verdict,
            Verdict::Skipped("no reason".into())
        );
        let c = Check {
            run: skips,
            runs: Runs::SimOnly,
            ..c
        };
        assert!(matches!(
            run_one(&c, Target::Cuda).verdict,
            Verdict::Skipped(_)
        ));
    }
}
