//! The training levers of issue 28 through the binary, on the tiny synthetic corpus with a
//! small model (`--channels 4,8,8 --fc-size 8 --hidden-size 8`: an epoch in about a second):
//! each lever lands in config.json, and eval/predict/export of the run apply it.

mod common;

use common::cli::{run_ok, ser, tiny_corpus};
use predicates::str::contains;
use std::path::Path;

const SMALL: [&str; 8] = [
    "--channels",
    "4,8,8",
    "--fc-size",
    "8",
    "--hidden-size",
    "8",
    "--batch-size",
    "8",
];

fn config(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap()
}

#[test]
fn norm_utterance_is_stored_and_applied_by_eval_and_export() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let (plain, normed) = (d.path().join("plain"), d.path().join("normed"));
    for (run, extra) in [(&plain, None), (&normed, Some("utterance"))] {
        let mut cmd = ser();
        cmd.args(["train", "--epochs", "1", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(run)
            .args(SMALL);
        if let Some(n) = extra {
            cmd.args(["--norm", n]);
        }
        run_ok(&mut cmd);
    }
    // config.json without --norm is as before the option existed (no field: loads as none)
    assert!(config(&plain)["model"].get("input_norm").is_none());
    assert_eq!(config(&normed)["model"]["input_norm"], "utterance");
    let out = run_ok(
        ser()
            .args(["eval", "--model"])
            .arg(&normed)
            .arg("--data")
            .arg(&data),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("30 clips"));
    // the graph holds the normalisation (ReduceMean over frames) only for the normed run
    for (run, want) in [(&plain, false), (&normed, true)] {
        let onnx = run.with_extension("onnx");
        run_ok(
            ser()
                .args(["export", "--model"])
                .arg(run)
                .arg("--onnx")
                .arg(&onnx),
        );
        let bytes = std::fs::read(&onnx).unwrap();
        let has = bytes.windows(10).any(|w| w == b"ReduceMean");
        assert_eq!(has, want, "{}", run.display());
    }
}

#[test]
fn norm_takes_only_its_documented_values() {
    ser()
        .args(["train", "--norm", "global", "--epochs", "1"])
        .assert()
        .failure()
        .stderr(contains("invalid value 'global' for '--norm"))
        .stderr(contains("none"))
        .stderr(contains("utterance"));
}
