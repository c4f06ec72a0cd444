//! Issue 14 from the command line: a run is never lost (existing run folders, --force, the
//! folder lock, stale temp files, synth --out), flag values are checked before any work, a
//! run folder edited by hand cannot crash the CLI, messages say what is wrong, and the same
//! seed gives the same bytes. Tiny corpora and model sizes: each test takes seconds.

mod common;

use assert_cmd::Command;
use common::cli::{ser, TINY_MODEL};
use predicates::prelude::*;
use predicates::str::contains;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// 5 classes x 4 clips written by `synth`.
fn corpus(dir: &Path) -> PathBuf {
    let root = dir.join("corpus");
    ser()
        .args(["synth", "--per-class", "4", "--out"])
        .arg(&root)
        .assert()
        .success();
    root
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    ser()
        .arg("train")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--epochs", "1"])
        .args(TINY_MODEL)
        .args(extra)
        .assert()
}

fn no_panic() -> impl Predicate<str> {
    contains("panicked").not()
}

#[test]
fn out_of_range_flag_values_are_refused_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    // The corpus does not exist: the option error must come first, and nothing is created.
    let cases: &[(&[&str], &str)] = &[
        (&["--lr", "-1"], "--lr -1: must be > 0"),
        (&["--lr", "nan"], "--lr NaN: must be a finite number"),
        (&["--lr", "inf"], "--lr inf: must be a finite number"),
        (&["--batch-size", "0"], "--batch-size 0: must be ≥ 1"),
        (&["--val-split", "0"], "--val-split 0: must be > 0"),
        (&["--val-split", "1"], "--val-split 1: must be < 1"),
        (&["--early-stop", "0"], "--early-stop 0: must be ≥ 1"),
        (&["--epochs", "0"], "--epochs 0: must be ≥ 1"),
        (&["--noise-prob", "1.5"], "--noise-prob 1.5: must be ≤ 1"),
        (&["--dropout", "1"], "--dropout 1: must be < 1"),
        (
            &["--weight-decay", "-0.1"],
            "--weight-decay -0.1: must be ≥ 0",
        ),
        (
            &["--label-smoothing", "1"],
            "--label-smoothing 1: must be < 1",
        ),
        (
            &["--plateau-factor", "1"],
            "--plateau-factor 1: must be < 1",
        ),
        (
            &["--time-mask-frac", "2"],
            "--time-mask-frac 2: must be ≤ 1",
        ),
        (
            &["--freq-mask-max", "200"],
            "--freq-mask-max 200: must be ≤ 128",
        ),
        (
            &["--clip-grad", "nan"],
            "--clip-grad NaN: must be a finite number",
        ),
        (
            &["--snr-min", "30", "--snr-max", "10"],
            "--snr-min 30 is above --snr-max 10",
        ),
        (
            &["--sample-rate", "4000000000"],
            "--sample-rate 4000000000: must be ≤ 192000",
        ),
        (&["--n-mels", "5000"], "--n-mels 5000: must be ≤ 512"),
        (
            &["--n-mels", "100"],
            "--n-mels 100: must be a multiple of 8",
        ),
        (&["--kernel-size", "999"], "--kernel-size 999: must be ≤ 31"),
        (&["--kernel-size", "4"], "--kernel-size 4: must be odd"),
        (&["--max-seconds", "0"], "--max-seconds 0: must be > 0"),
        (
            &["--max-seconds", "100000"],
            "--max-seconds 100000: must be ≤ 600",
        ),
    ];
    for (args, expected) in cases {
        ser()
            .args(["train", "--data", "/nonexistent/corpus", "--out"])
            .arg(&out)
            .args(*args)
            .assert()
            .failure()
            .code(1)
            .stderr(contains(*expected))
            .stderr(no_panic());
        assert!(!out.exists(), "{args:?} created the run folder");
    }
    // The same checks guard cv, and the global and eval options have theirs.
    ser()
        .args(["cv", "--data", "/nonexistent/corpus", "--lr", "-1"])
        .assert()
        .failure()
        .stderr(contains("--lr -1: must be > 0"));
    ser()
        .args(["cv", "--data", "/nonexistent/corpus", "--val-split", "0"])
        .assert()
        .failure()
        .stderr(contains("--val-split 0: must be > 0"));
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["--threads", "100000", "info"])
        .assert()
        .failure()
        .stderr(contains("--threads 100000: must be ≤ 1024"));
    ser()
        .args(["eval", "--model", "x", "--data", "y", "--batch-size", "0"])
        .assert()
        .failure()
        .stderr(contains("--batch-size 0: must be ≥ 1"));
}

#[test]
fn an_existing_run_is_replaced_only_with_force_and_only_whole() {
    let d = tempfile::tempdir().unwrap();
    let data = corpus(d.path());
    let run = d.path().join("run");
    train(&data, &run, &["--lr", "1e-3"]).success();
    let model = std::fs::read(run.join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();

    // Without --force: refused, nothing touched.
    train(&data, &run, &["--lr", "2e-3"])
        .failure()
        .stderr(contains("already holds a run"))
        .stderr(contains("--force"));
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), model);
    assert_eq!(
        std::fs::read_to_string(run.join("config.json")).unwrap(),
        config
    );

    // --force whose new run fails before its first epoch (a one-class corpus): the old run
    // is kept as it was and no staging folder is left.
    let one_class = d.path().join("one");
    std::fs::create_dir_all(one_class.join("anger")).unwrap();
    for e in std::fs::read_dir(data.join("anger")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, one_class.join("anger").join(p.file_name().unwrap())).unwrap();
    }
    train(&one_class, &run, &["--force"])
        .failure()
        .stderr(contains("only one class"));
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), model);
    assert!(!d.path().join(".run.partial").exists());

    // --force: replaced whole (a file of the old run does not survive).
    std::fs::write(run.join("old-notes.txt"), "x").unwrap();
    train(&data, &run, &["--lr", "2e-3", "--force"]).success();
    let new_cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(new_cfg["optim"]["lr"], 2e-3);
    assert!(!run.join("old-notes.txt").exists());
    assert!(!d.path().join(".run.partial").exists());
}

#[test]
fn a_folder_that_is_not_a_run_is_never_written_into() {
    let d = tempfile::tempdir().unwrap();
    let data = corpus(d.path());
    let out = d.path().join("mine");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "keep me").unwrap();
    for extra in [&[][..], &["--force"][..]] {
        train(&data, &out, extra)
            .failure()
            .stderr(contains("is not a run folder"))
            .stderr(contains("notes.txt"));
    }
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "keep me"
    );
    // An empty folder is fine.
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    train(&data, &empty, &[]).success();
    assert!(empty.join("model.safetensors").is_file());
}

#[test]
fn a_second_writer_is_refused_with_the_holders_pid_and_kill_releases_the_lock() {
    let d = tempfile::tempdir().unwrap();
    let data = corpus(d.path());
    let run = d.path().join("run");
    // A writer that keeps going until killed.
    let mut first = std::process::Command::new(assert_cmd::cargo::cargo_bin("ser-engine"))
        .args(["-q", "--device", "cpu", "--threads", "1", "train", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .args(TINY_MODEL)
        .args(["--epochs", "100000", "--early-stop", "100000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    let t0 = Instant::now();
    while !run.join("config.json").is_file() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "first writer never published"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for extra in [&["--force"][..], &[][..]] {
        train(&data, &run, extra)
            .failure()
            .stderr(contains(format!("pid {pid}")))
            .stderr(contains(run.display().to_string()));
    }
    ser()
        .arg("train")
        .arg("--resume")
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains(format!("pid {pid}")));

    // kill -9: the kernel drops the lock; the next writer cleans the temp files left behind.
    first.kill().unwrap();
    first.wait().unwrap();
    std::fs::write(run.join(".tmpStale1"), "x").unwrap();
    std::fs::write(run.join("resume").join(".tmpStale2"), "x").unwrap();
    ser()
        .arg("train")
        .arg("--resume")
        .arg(&run)
        .args(["--epochs", "1"])
        .assert()
        .success()
        .stdout(contains("best epoch"));
    assert!(!run.join(".tmpStale1").exists());
    assert!(!run.join("resume").join(".tmpStale2").exists());
}

#[test]
fn resume_refuses_the_flags_it_would_ignore() {
    let d = tempfile::tempdir().unwrap();
    let data = corpus(d.path());
    let run = d.path().join("run");
    train(&data, &run, &[]).success();
    for (flag, value) in [
        ("--lr", "0.5"),
        ("--batch-size", "4"),
        ("--n-mels", "64"),
        ("--val-split", "0.5"),
        ("--seed", "7"),
    ] {
        ser()
            .arg("train")
            .arg("--resume")
            .arg(&run)
            .args([flag, value])
            .assert()
            .failure()
            .stderr(contains("would be ignored"))
            .stderr(contains(flag));
    }
    ser()
        .arg("train")
        .arg("--resume")
        .arg(&run)
        .args(["--epochs", "2"])
        .assert()
        .success();
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
}

#[test]
fn the_same_seed_gives_byte_identical_run_files() {
    let d = tempfile::tempdir().unwrap();
    let data = corpus(d.path());
    // Three runs: the metadata order used to vary per process (1 chance in 6 to agree).
    let runs: Vec<PathBuf> = (0..3).map(|k| d.path().join(format!("r{k}"))).collect();
    for r in &runs {
        train(&data, r, &[]).success();
    }
    for f in [
        "config.json",
        "model.safetensors",
        "metrics.jsonl",
        "resume/state.safetensors",
        "confusion.png",
        "learning_curve.png",
    ] {
        let first = std::fs::read(runs[0].join(f)).unwrap();
        for r in &runs[1..] {
            assert!(
                std::fs::read(r.join(f)).unwrap() == first,
                "{f} differs between runs with the same seed"
            );
        }
    }
}

#[test]
fn synth_never_deletes_files_it_did_not_write() {
    let d = tempfile::tempdir().unwrap();
    let data = corpus(d.path());
    let mine = data.join("anger").join("my_take.wav");
    std::fs::copy(data.join("anger").join("anger_s1_000.wav"), &mine).unwrap();
    ser()
        .args(["synth", "--per-class", "2", "--out"])
        .arg(&data)
        .assert()
        .failure()
        .stderr(contains("my_take.wav"))
        .stderr(contains("did not write"));
    assert!(mine.is_file());
    std::fs::remove_file(&mine).unwrap();
    // Only its own files: replaced.
    ser()
        .args(["synth", "--per-class", "2", "--out"])
        .arg(&data)
        .assert()
        .success();
    assert!(!data.join("anger").join("anger_s3_002.wav").exists());
}

/// Rewrites RUN/config.json through `edit`.
fn edit_config(run: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = run.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn a_hand_edited_run_folder_is_refused_naming_the_file_and_field() {
    let d = tempfile::tempdir().unwrap();
    let data = corpus(d.path());
    let run = d.path().join("run");
    train(&data, &run, &[]).success();
    let wav = data.join("anger").join("anger_s1_000.wav");
    // The model's file works in place of its folder.
    ser()
        .arg("predict")
        .arg("--model")
        .arg(run.join("model.safetensors"))
        .arg(&wav)
        .assert()
        .success()
        .stdout(contains("anger_s1_000.wav"));
    let pristine = std::fs::read_to_string(run.join("config.json")).unwrap();
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| {
                v["labels"].as_array_mut().unwrap().pop();
            }),
            "labels: lists 4 label(s)",
        ),
        (
            Box::new(|v| v["labels"].as_array_mut().unwrap().swap(0, 1)),
            "trained with labels [anger, happiness",
        ),
        (
            Box::new(|v| v["sample_rate"] = 0.into()),
            "sample_rate: 0 Hz",
        ),
        (
            Box::new(|v| v["optim"]["clip_grad_norm"] = serde_json::Value::Null),
            "config.json",
        ),
        (
            Box::new(|v| v["mel"]["n_mels"] = 64.into()),
            "mel.n_mels: 64 differs from model.n_mels 32",
        ),
        (
            Box::new(|v| v["model"]["kernel"] = 5.into()),
            "saved for a different model",
        ),
    ];
    for (edit, expected) in cases {
        std::fs::write(run.join("config.json"), &pristine).unwrap();
        edit_config(&run, edit);
        ser()
            .arg("predict")
            .arg("--model")
            .arg(&run)
            .arg(&wav)
            .assert()
            .code(1)
            .stderr(contains(expected))
            .stderr(contains("config.json").or(contains("model.safetensors")))
            .stderr(no_panic());
        ser()
            .arg("eval")
            .arg("--model")
            .arg(&run)
            .arg("--data")
            .arg(&data)
            .assert()
            .code(1)
            .stderr(contains(expected));
    }
}

#[test]
fn messages_say_what_is_wrong() {
    let d = tempfile::tempdir().unwrap();
    let data = corpus(d.path());
    // A named layout none of the files follow: say so and show one.
    ser()
        .args(["train", "--format", "ravdess", "--data"])
        .arg(&data)
        .args(["--epochs", "1"])
        .args(TINY_MODEL)
        .arg("--out")
        .arg(d.path().join("r"))
        .assert()
        .failure()
        .stderr(contains(
            "none of the 20 audio file names follow the ravdess naming",
        ))
        .stderr(contains("anger_s1_000.wav"));
    // A CSV row that names a folder says so.
    let csv = d.path().join("list.csv");
    let mut rows = String::from("path,label\n");
    for class in ["anger", "neutral"] {
        for k in 0..4 {
            let name = std::fs::read_dir(data.join(class))
                .unwrap()
                .map(|e| e.unwrap().path())
                .nth(k)
                .unwrap();
            rows += &format!("{},{class}\n", name.display());
        }
    }
    rows += &format!("{},anger\n", data.join("sadness").display());
    std::fs::write(&csv, rows).unwrap();
    ser()
        .arg("train")
        .arg("--data")
        .arg(&csv)
        .args(["--epochs", "1"])
        .args(TINY_MODEL)
        .args(["--val-split", "0.5", "--out"])
        .arg(d.path().join("r2"))
        .assert()
        .success()
        .stderr(contains("is a folder, not an audio file"));
    // --model given a file that is not in a run folder: say what to give instead.
    ser()
        .arg("predict")
        .arg("--model")
        .arg(&csv)
        .arg(&csv)
        .assert()
        .code(1)
        .stderr(contains("is a file; give the run folder"));
}
