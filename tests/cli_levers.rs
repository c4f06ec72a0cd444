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

/// The float32 tensor `name` of a safetensors file.
fn tensor(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn ema_is_the_saved_model_and_resumes_exactly() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let train = |run: &Path, epochs: &str| {
        run_ok(
            ser()
                .args(["train", "--epochs", epochs, "--ema", "0.9", "--data"])
                .arg(&data)
                .arg("--out")
                .arg(run)
                .args(SMALL),
        )
    };
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    train(&a, "1");
    assert_eq!(config(&a)["fit"]["ema"], 0.9);
    // one epoch: it is the best, so model.safetensors holds the average, not the weights
    let state = a.join("resume/state.safetensors");
    let (ema, params) = (tensor(&state, "ema"), tensor(&state, "params"));
    assert_ne!(ema, params);
    let model = a.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let first = st.tensor("conv1.weight").unwrap();
    let saved: Vec<f32> = first
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // conv1.weight is the first tensor of the flat layout
    assert_eq!(saved, ema[..saved.len()]);
    assert_ne!(saved, params[..saved.len()]);
    // 2 epochs in one go equal 1 + a resumed 1: the average is part of the resume state
    train(&b, "2");
    run_ok(ser().args(["train", "--epochs", "2", "--resume"]).arg(&a));
    let ma = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let mb = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(ma.lines().count(), 2);
    assert_eq!(ma, mb);
}

#[test]
fn ema_outside_its_range_is_refused() {
    for v in ["0", "1", "-0.5", "nan"] {
        ser()
            .args(["train", "--epochs", "1", "--ema", v])
            .assert()
            .failure()
            .stderr(contains("--ema"))
            .stderr(contains("> 0 and < 1"));
    }
}

/// Trains `run` for one epoch on `data` with the small model and `extra` flags.
fn train_small(data: &Path, run: &Path, extra: &[&str]) {
    run_ok(
        ser()
            .args(["train", "--epochs", "1", "--data"])
            .arg(data)
            .arg("--out")
            .arg(run)
            .args(SMALL)
            .args(extra),
    );
}

#[test]
fn mixup_is_recorded_and_changes_training_only() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let (plain, mixed) = (d.path().join("plain"), d.path().join("mixed"));
    train_small(&data, &plain, &[]);
    train_small(&data, &mixed, &["--mixup", "0.4"]);
    // config.json without --mixup is as before the option existed (no field: loads as off)
    assert!(config(&plain)["fit"].get("mixup").is_none());
    assert_eq!(config(&mixed)["fit"]["mixup"], 0.4);
    let line = |run: &Path| -> serde_json::Value {
        let m = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        serde_json::from_str(m.lines().next().unwrap()).unwrap()
    };
    let (p, m) = (line(&plain), line(&mixed));
    let (lp, lm) = (
        p["train_loss"].as_f64().unwrap(),
        m["train_loss"].as_f64().unwrap(),
    );
    assert!(lm.is_finite() && lm > 0.0, "{lm}");
    assert_ne!(lp, lm, "mixup left the training batches as they were");
    // an explicit 0 is off: the run is the plain one
    let zero = d.path().join("zero");
    train_small(&data, &zero, &["--mixup", "0"]);
    assert_eq!(
        std::fs::read(zero.join("model.safetensors")).unwrap(),
        std::fs::read(plain.join("model.safetensors")).unwrap()
    );
}

#[test]
fn mixup_outside_its_range_is_refused() {
    for v in ["-0.1", "10.5", "nan"] {
        ser()
            .args(["train", "--epochs", "1", "--mixup", v])
            .assert()
            .failure()
            .stderr(contains("--mixup"))
            .stderr(contains("≥ 0 and ≤ 10"));
    }
}

#[test]
fn speed_one_is_no_speed_and_other_factors_are_recorded() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let (plain, one, varied) = (
        d.path().join("plain"),
        d.path().join("one"),
        d.path().join("varied"),
    );
    train_small(&data, &plain, &[]);
    train_small(&data, &one, &["--speed", "1.0"]);
    train_small(&data, &varied, &["--speed", "0.8,1.0,1.25"]);
    assert!(config(&plain)["fit"].get("speed").is_none());
    assert_eq!(config(&one)["fit"]["speed"], serde_json::json!([1.0]));
    assert_eq!(
        config(&varied)["fit"]["speed"],
        serde_json::json!([0.8, 1.0, 1.25])
    );
    // factor 1 leaves every clip as loaded: the same weights and metrics, byte for byte
    for f in ["model.safetensors", "metrics.jsonl"] {
        assert_eq!(
            std::fs::read(one.join(f)).unwrap(),
            std::fs::read(plain.join(f)).unwrap(),
            "{f}"
        );
    }
    assert_ne!(
        std::fs::read(varied.join("model.safetensors")).unwrap(),
        std::fs::read(plain.join("model.safetensors")).unwrap()
    );
}

#[test]
fn speed_outside_its_range_is_refused() {
    for v in ["0.4", "1.0,2.5", "nan", "0.9,1,1,1,1,1,1,1,1.1"] {
        let a = ser()
            .args(["train", "--epochs", "1", "--speed", v])
            .assert()
            .failure()
            .stderr(contains("--speed"));
        if v.len() < 10 {
            a.stderr(contains("≥ 0.5 and ≤ 2"));
        } else {
            a.stderr(contains("1 to 8 factors, got 9"));
        }
    }
}
