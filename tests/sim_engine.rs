//! The whole device training step (src/engine/step.rs) on the `sim` device with shuffled
//! thread order (or the real GPU with SER_TEST_DEVICE=cuda) against the CPU reference:
//! forward logits in eval and train mode, every parameter gradient, three full training
//! steps through the `Backend` trait (dropout, BatchNorm, clipping, weight decay, Adam), state
//! round trips, padding invariance, and `ser-engine --device sim train` end to end.
//!
//! Tolerances: the forward/gradient oracle is `CpuModel<f64>` on the same f32 parameters and
//! input, so the measured error is the device's f32 rounding alone: forward sums of a few
//! hundred products stay ≤ 1e-5 relative (f32 ε 6e-8 × accumulation depth); gradients go
//! through longer sums and BatchNorm's cancelling terms, ≤ 1e-4. Training steps compare with
//! `CpuBackend` (f32 on both sides, same update order): Adam divides by √v, which maps a
//! relative gradient error to at most the same relative update error, so after 3 steps the
//! parameters agree far inside 1e-4 (the update is lr·O(1) on parameters of size ~0.3).
//!
//! The checks themselves live in src/engine/checks/model.rs (one body for `cargo test` and
//! `ser-engine check --device sim|cuda`); these are thin wrappers. SER_TEST_DEVICE=cuda runs
//! them on the GPU.

fn run(name: &str) {
    ser_engine::engine::checks::run_test("model", name);
}

#[test]
fn whole_forward_matches_cpu_in_eval_and_train() {
    run("whole_forward_matches_cpu_in_eval_and_train");
}

#[test]
fn every_parameter_gradient_matches_cpu() {
    run("every_parameter_gradient_matches_cpu");
}

#[test]
fn three_training_steps_match_cpu_backend() {
    run("three_training_steps_match_cpu_backend");
}

#[test]
fn logits_do_not_depend_on_batch_padding() {
    run("logits_do_not_depend_on_batch_padding");
}

#[test]
fn bad_inputs_are_errors() {
    run("bad_inputs_are_errors");
}

#[test]
fn default_model_step_counts() {
    run("default_model_step_counts");
}

#[test]
fn reused_workspace_gives_bit_identical_results() {
    run("reused_workspace_gives_bit_identical_results");
}

#[test]
fn workspace_cache_is_bounded_in_bytes() {
    run("workspace_cache_is_bounded_in_bytes");
}

// ---- not device-vs-cpu checks of the library: CLI runs and data on disk

/// The metrics of `ser-engine --device DEVICE train` for 2 epochs on a small synthetic corpus
/// in `dir`, with a tiny model (hidden --channels/--fc-size/--hidden-size options; the full
/// 32/64/128 model also works on sim but takes ~40 s here) and `extra` flags.
fn train_metrics(dir: &std::path::Path, device: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    use ser_engine::audio::synth::{write_corpus, SynthConfig};
    let data = dir.join("corpus");
    if !data.is_dir() {
        let sc = SynthConfig {
            per_class: 6,
            sample_rate: 16000,
            seed: 7,
        };
        write_corpus(&data, &sc, false).unwrap();
    }
    let out = dir.join(device);
    assert_cmd::Command::cargo_bin("ser-engine")
        .unwrap()
        .args([
            "-q",
            "--threads",
            "2",
            "--device",
            device,
            "train",
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--epochs", "2", "--batch-size", "8", "--lr", "1e-2"])
        .args([
            "--n-mels",
            "16",
            "--kernel-size",
            "3",
            "--channels",
            "4,8,8",
        ])
        .args(["--fc-size", "8", "--hidden-size", "6", "--clip-grad", "1"])
        .args(extra)
        .assert()
        .success();
    assert!(out.join("model.safetensors").is_file());
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every epoch's train and validation loss of a sim run against the same run on cpu agree
/// to 1e-4 relative (f32 on both sides; the losses are batch means of values that agree to
/// ~1e-7, and two epochs of Adam steps keep the parameters within ~1e-6), and so do the
/// train accuracies' counts.
fn assert_sim_matches_cpu(extra: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let (sim, cpu) = (
        train_metrics(d.path(), "sim", extra),
        train_metrics(d.path(), "cpu", extra),
    );
    assert_eq!(sim.len(), 2);
    assert_eq!(cpu.len(), 2);
    for (s, c) in sim.iter().zip(&cpu) {
        for key in ["train_loss", "val_loss"] {
            let (a, b) = (s[key].as_f64().unwrap(), c[key].as_f64().unwrap());
            eprintln!("epoch {}: {key} sim {a} cpu {b}", s["epoch"]);
            assert!(((a - b) / b).abs() <= 1e-4, "{key}: sim {a} vs cpu {b}");
        }
        assert_eq!(s["train_accuracy"], c["train_accuracy"]);
    }
}

/// `ser-engine --device sim train` end to end through the CLI against `--device cpu`.
#[test]
fn cli_train_on_sim_matches_cpu() {
    assert_sim_matches_cpu(&[]);
}

/// With mixup and speed perturbation: both are drawn on the host from the seed, so the sim
/// and the CPU train on the same mixed, resampled clips (a different draw would move the
/// losses by far more than 1e-4).
#[test]
fn cli_train_with_mixup_and_speed_on_sim_matches_cpu() {
    assert_sim_matches_cpu(&["--mixup", "0.4", "--speed", "0.8,1.0,1.25"]);
}

#[test]
fn utterance_norm_model_matches_cpu() {
    run("utterance_norm_model_matches_cpu");
}

#[test]
fn freeze_and_backbone_lr_scale_match_cpu_backend() {
    run("freeze_and_backbone_lr_scale_match_cpu_backend");
}

#[test]
fn ema_matches_cpu_backend_and_round_trips() {
    run("ema_matches_cpu_backend_and_round_trips");
}

#[test]
fn mixup_steps_match_cpu_backend() {
    run("mixup_steps_match_cpu_backend");
}
