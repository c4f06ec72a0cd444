//! `train`, `cv`, `eval` and `predict` end to end through the binary, on a tiny synthetic
//! corpus (5 classes x 6 clips, so a full-size model trains an epoch in seconds),
//! and the bad inputs a user meets: empty corpus, one class, a broken file among good ones,
//! fewer clips than folds, a checkpoint from another model configuration.

mod common;

use assert_cmd::Command;
use common::cli::{run_ok, ser, tiny_corpus, write_wav_i16};
use predicates::prelude::*;
use predicates::str::contains;
use ser_engine::audio::synth::{write_corpus, SynthConfig};
use std::path::{Path, PathBuf};

fn train(data: &Path, out: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    ser()
        .arg("train")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--batch-size", "8", "--lr", "1e-3"])
        .args(extra)
        .assert()
}

fn first_wav(root: &Path) -> PathBuf {
    let dir = root.join("anger");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    files.sort();
    files[0].clone()
}

#[test]
fn train_then_eval_and_predict() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let run = d.path().join("run");
    train(&data, &run, &["--epochs", "2"])
        .success()
        .stdout(contains("best epoch"))
        .stdout(contains("macro-F1"));
    for f in [
        "config.json",
        "model.safetensors",
        "metrics.jsonl",
        "confusion.png",
        "learning_curve.png",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let acc = l["val_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{l}");
        assert!(l["train_loss"].as_f64().unwrap().is_finite(), "{l}");
    }
    // No temporary files left behind by the atomic writes.
    for e in std::fs::read_dir(&run).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.starts_with('.') && !name.contains("tmp"), "{name}");
    }

    ser()
        .args(["eval", "--model"])
        .arg(&run)
        .arg("--data")
        .arg(&data)
        .assert()
        .success()
        .stdout(contains("30 clips"))
        .stdout(contains("accuracy"));

    // A 22.05 kHz file for a model trained at 16 kHz: resampled, not refused.
    let other = d.path().join("other rate (22k).wav");
    write_wav_i16(
        &other,
        22_050,
        (0..24_000).map(|i| ((i as f32 * 0.05).sin() * 8000.0) as i16),
    );
    let out = run_ok(
        ser()
            .args(["predict", "--json", "--model"])
            .arg(&run)
            .arg(first_wav(&data))
            .arg(&other),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let probs = r["probabilities"].as_object().unwrap();
        assert_eq!(probs.len(), 5);
        let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{r}");
        assert!(probs.contains_key(r["label"].as_str().unwrap()));
    }
}

#[test]
fn same_seed_same_metrics_and_resume_continues_exactly() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    train(&data, &a, &["--epochs", "3"]).success();
    // Stopped after 2 epochs, then resumed to 3: the same history as one run of 3.
    train(&data, &b, &["--epochs", "2"]).success();
    ser()
        .args(["train", "--epochs", "3", "--resume"])
        .arg(&b)
        .assert()
        .success();
    let ma = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let mb = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(ma.lines().count(), 3);
    assert_eq!(ma, mb);
}

#[test]
fn cross_validation_reports_folds_and_writes_its_files() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let out = d.path().join("cv");
    // Not quiet (unlike `ser()`): --verbose adds one line per epoch and fold.
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["--device", "cpu", "--threads", "2"])
        .args([
            "cv",
            "--verbose",
            "--folds",
            "3",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stdout(contains("fold 3"))
        .stdout(contains("±"))
        // runs of hours are not silent when stderr is not a terminal
        .stderr(contains("fold 3 epoch   1  lr"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cv.json")).unwrap()).unwrap();
    assert_eq!(report["folds"].as_array().unwrap().len(), 3);
    // Every clip is tested exactly once across the folds.
    let tested: u64 = report["folds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["test"].as_u64().unwrap())
        .sum();
    assert_eq!(tested, 30);
    assert!(out.join("confusion.png").is_file());
    assert!(out.join("learning_curve.png").is_file());
}

#[test]
fn bad_corpora_give_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let empty = d.path().join("empty corpus");
    std::fs::create_dir_all(&empty).unwrap();
    train(&empty, &d.path().join("r1"), &["--epochs", "1"])
        .failure()
        .stderr(contains("empty corpus"));

    // One class only.
    let data = tiny_corpus(d.path());
    let one = d.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::rename(data.join("anger"), one.join("anger")).unwrap();
    train(&one, &d.path().join("r2"), &["--epochs", "1"])
        .failure()
        .stderr(contains("one class"));

    // 8 kHz audio cannot hold the paper's 7600 Hz top Mel band: an error that says what to do,
    // not a panic.
    let low = d.path().join("low rate");
    let cfg = SynthConfig {
        per_class: 2,
        sample_rate: 8000,
        seed: 1,
    };
    write_corpus(&low, &cfg, false).unwrap();
    train(&low, &d.path().join("r3"), &["--epochs", "1"])
        .failure()
        .stderr(contains("--sample-rate"))
        .stderr(contains("panicked").not());
    train(
        &low,
        &d.path().join("r4"),
        &["--epochs", "1", "--sample-rate", "16000"],
    )
    .success();

    // More folds than the smallest class has clips.
    ser()
        .args(["cv", "--folds", "7", "--epochs", "1", "--data"])
        .arg(&data)
        .assert()
        .failure()
        .stderr(contains("fold"));
}

#[test]
fn a_broken_file_is_skipped_with_a_warning_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let broken = data.join("sadness").join("broken (copy).wav");
    std::fs::write(&broken, b"RIFF....WAVEfmt this is not audio").unwrap();
    let out = d.path().join("run");
    ser()
        .arg("train")
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--epochs", "1", "--batch-size", "8"])
        .assert()
        .success()
        .stderr(contains("skipped 1 unreadable"))
        .stderr(contains("broken (copy).wav"));
}

#[test]
fn a_checkpoint_from_another_configuration_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let (k7, k3) = (d.path().join("k7"), d.path().join("k3"));
    train(&data, &k7, &["--epochs", "1"]).success();
    train(&data, &k3, &["--epochs", "1", "--kernel-size", "3"]).success();
    std::fs::copy(k3.join("model.safetensors"), k7.join("model.safetensors")).unwrap();
    ser()
        .args(["eval", "--model"])
        .arg(&k7)
        .arg("--data")
        .arg(&data)
        .assert()
        .failure()
        .stderr(contains("model.safetensors"));
    ser()
        .args(["predict", "--model"])
        .arg(d.path().join("no such run"))
        .arg(first_wav(&data))
        .assert()
        .failure()
        .stderr(contains("no such run"));
}

#[test]
fn device_choices_without_a_gpu() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    // No GPU here: cuda is a clear error, never a panic.
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["-q", "--device", "cuda", "train", "--epochs", "1", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(d.path().join("r"))
        .assert()
        .failure()
        .stderr(contains("cuda"))
        .stderr(contains("panicked").not());
}

#[test]
fn cpu_bench_reports_rates_and_the_convolution_algorithms() {
    // Default: each stage timed on this machine (once; the timings are cached in the file).
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("tune.json");
    let bench = |policy: Option<&str>| {
        let mut c = ser();
        c.env("SER_CPU_TUNE_CACHE", &cache);
        if let Some(p) = policy {
            c.env("SER_CPU_CONV", p);
        }
        c.args([
            "bench", "train", "--batch", "2", "--frames", "40", "--steps", "1",
        ]);
        c
    };
    let out = bench(None).assert().success().get_output().stdout.clone();
    let out = String::from_utf8(out).unwrap();
    for stage in 1..=3 {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("convolution stage {stage} ")))
            .unwrap_or_else(|| panic!("no stage {stage} line in {out}"));
        assert!(
            line.contains("(measured fwd+bwd: direct ") && line.contains(" ms/clip, fft "),
            "{line}"
        );
    }
    assert!(
        out.contains("convolution stage 1 (1->32, 128x40): "),
        "{out}"
    );
    assert!(
        out.contains("training") && out.contains("inference"),
        "{out}"
    );
    let cached = std::fs::read_to_string(&cache).unwrap();
    assert!(cached.contains("f32 32->64 k7 m64 t<=32"), "{cached}");
    // The cached timings are reused: the same lines again.
    let again = bench(None).assert().success().get_output().stdout.clone();
    let again = String::from_utf8(again).unwrap();
    let stage_lines = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("convolution stage"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(stage_lines(&out), stage_lines(&again));
    // SER_CPU_CONV overrides it for every stage; `model` is the fitted cost model.
    bench(Some("fft"))
        .assert()
        .success()
        .stdout(contains(
            "convolution stage 1 (1->32, 128x40): fft (SER_CPU_CONV)",
        ))
        .stdout(contains(
            "convolution stage 3 (64->128, 32x10): fft (SER_CPU_CONV)",
        ));
    bench(Some("model")).assert().success().stdout(contains(
        "convolution stage 1 (1->32, 128x40): direct (cost model)",
    ));
}
