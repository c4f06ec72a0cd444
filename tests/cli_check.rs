//! `ser-engine check` and the GPU bundle's script through their real entry points, on the sim
//! (no GPU here): the command lists and runs the library's device-vs-CPU checks and fails
//! clearly on a device it cannot check; `tools/gpu-check.sh --device sim --quick` (what the
//! GPU machine runs, in its sim form) writes its summary with a verdict per step.

use assert_cmd::Command;
use predicates::str::contains;

fn bin() -> Command {
    Command::cargo_bin("ser-engine").unwrap()
}

#[test]
fn check_lists_runs_and_rejects_cpu() {
    bin()
        .args(["check", "--list"])
        .assert()
        .success()
        .stdout(contains(
            "model::three_training_steps_match_cpu_backend  [quick]",
        ))
        .stdout(contains(
            "cudnn::masking_around_a_dense_conv_matches_cpu_on_sim  [quick]  [sim only]",
        ));
    bin()
        .args([
            "--device",
            "sim",
            "check",
            "--filter",
            "model::logits_do_not_depend",
        ])
        .assert()
        .success()
        .stdout(contains("ok"))
        .stdout(contains("model::logits_do_not_depend_on_batch_padding"))
        .stdout(contains("checks: 1 ok, 0 failed, 0 skipped of 1"));
    bin()
        .args(["--device", "cpu", "check"])
        .assert()
        .failure()
        .stderr(contains("use --device sim or --device cuda"));
}

#[test]
fn gpu_check_script_runs_on_sim() {
    let out = tempfile::tempdir().unwrap();
    let exe = assert_cmd::cargo::cargo_bin("ser-engine");
    let root = env!("CARGO_MANIFEST_DIR");
    let o = std::process::Command::new("bash")
        .arg(format!("{root}/tools/gpu-check.sh"))
        .args(["--device", "sim", "--quick", "--out"])
        .arg(out.path())
        .env("SER_ENGINE", &exe)
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(out.path().join("summary.txt")).unwrap();
    eprintln!("{summary}");
    assert!(
        o.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(summary.starts_with("gpu-check "), "{summary}");
    for line in ["info ", "checks (sim, --quick)", "compute-sanitizer"] {
        assert!(summary.contains(line), "no '{line}' in {summary}");
    }
    assert!(summary.contains("0 failed"), "{summary}");
    assert!(summary.contains("all steps ok"), "{summary}");
    let files = std::fs::read_dir(out.path()).unwrap().count();
    assert!(files <= 8, "{files} files");
}
