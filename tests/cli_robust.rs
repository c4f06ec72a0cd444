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

/// Issue 26, class 1: an output that names an input (in any spelling: symlink, `./`, `..`) or a
/// file of a run folder is refused before anything is read or written, leaving every file as
/// it was; a missing output folder is named; `-` is standard output.
#[test]
fn outputs_never_replace_inputs_or_run_files() {
    let d = tempfile::tempdir().unwrap();
    let data = corpus(d.path());
    let run = d.path().join("run");
    train(&data, &run, &[]).success();
    let wav = d.path().join("a.wav");
    let first = std::fs::read_dir(data.join("anger"))
        .unwrap()
        .next()
        .unwrap();
    std::fs::copy(first.unwrap().path(), &wav).unwrap();
    std::os::unix::fs::symlink(&wav, d.path().join("link.wav")).unwrap();
    let list = d.path().join("list.txt");
    std::fs::write(&list, format!("{}\n", wav.display())).unwrap();
    let snapshot = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file() && e.file_name() != "lock")
            .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = snapshot(d.path());
    let p = |s: &str| d.path().join(s).display().to_string();
    let (w, r, l) = (p("a.wav"), p("run"), format!("@{}", p("list.txt")));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "predict".into(),
                "--model".into(),
                r.clone(),
                w.clone(),
                "--csv".into(),
                w.clone(),
            ],
            "one of the inputs",
        ),
        (
            vec![
                "predict".into(),
                "--model".into(),
                r.clone(),
                w.clone(),
                "--csv".into(),
                p("link.wav"),
            ],
            "one of the inputs",
        ),
        (
            vec![
                "predict".into(),
                "--model".into(),
                r.clone(),
                w.clone(),
                "--csv".into(),
                p("run/../a.wav"),
            ],
            "one of the inputs",
        ),
        (
            vec![
                "predict".into(),
                "--model".into(),
                r.clone(),
                l.clone(),
                "--csv".into(),
                p("list.txt"),
            ],
            "one of the inputs",
        ),
        (
            vec![
                "predict".into(),
                "--model".into(),
                r.clone(),
                w.clone(),
                "--window".into(),
                "1".into(),
                "--timeline-png".into(),
                w.clone(),
            ],
            "one of the inputs",
        ),
        (
            vec![
                "predict".into(),
                "--model".into(),
                r.clone(),
                w.clone(),
                "--csv".into(),
                p("run/config.json"),
            ],
            "inside the run folder",
        ),
        (
            vec![
                "predict".into(),
                "--model".into(),
                p("run/model.safetensors"),
                w.clone(),
                "--csv".into(),
                p("run/resume/x.csv"),
            ],
            "inside the run folder",
        ),
        (
            vec![
                "predict".into(),
                "--model".into(),
                r.clone(),
                w.clone(),
                "--csv".into(),
                p("no/such/x.csv"),
            ],
            "does not exist",
        ),
        (
            vec![
                "predict".into(),
                "--model".into(),
                r.clone(),
                w.clone(),
                "--csv".into(),
                "-".into(),
                "--json".into(),
            ],
            "standard output",
        ),
        (
            vec![
                "eval".into(),
                "--model".into(),
                r.clone(),
                "--data".into(),
                data.display().to_string(),
                "--json".into(),
                p("run/config.json"),
            ],
            "inside the run folder",
        ),
        (
            vec![
                "eval".into(),
                "--model".into(),
                r.clone(),
                "--data".into(),
                data.display().to_string(),
                "--json".into(),
                p("./run/./model.safetensors"),
            ],
            "inside the run folder",
        ),
        (
            vec![
                "eval".into(),
                "--model".into(),
                r.clone(),
                "--data".into(),
                data.display().to_string(),
                "--confusion-png".into(),
                first_file(&data),
            ],
            "input folder",
        ),
        (
            vec![
                "eval".into(),
                "--model".into(),
                r.clone(),
                "--data".into(),
                data.display().to_string(),
                "--json".into(),
                p("x"),
                "--confusion-png".into(),
                p("x"),
            ],
            "the same file",
        ),
        (
            vec![
                "export".into(),
                "--model".into(),
                r.clone(),
                "--onnx".into(),
                p("run/model.safetensors"),
            ],
            "inside the run folder",
        ),
        (
            vec![
                "export".into(),
                "--model".into(),
                r.clone(),
                "--onnx".into(),
                p("run/metrics.jsonl"),
            ],
            "inside the run folder",
        ),
        (
            vec![
                "export".into(),
                "--model".into(),
                r.clone(),
                "--onnx".into(),
                p("no/x.onnx"),
            ],
            "does not exist",
        ),
    ];
    for (args, why) in &cases {
        ser()
            .args(args)
            .assert()
            .code(1)
            .stderr(contains(*why))
            .stderr(no_panic());
        assert!(snapshot(d.path()) == before, "{args:?} changed a file");
    }
    eprintln!("{} output cases refused, nothing touched", cases.len());
    // `-` is standard output: the CSV rows, the JSON report, the ONNX bytes.
    let out = ser()
        .args(["predict", "--model", &r, &w, "--csv", "-"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("file,duration_s,windows,label,"), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    let out = ser()
        .args(["eval", "--model", &r, "--data"])
        .arg(&data)
        .args(["--json", "-"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clips"], 20);
    let out = ser()
        .args(["export", "--model", &r, "--onnx", "-"])
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.len() > 1000);
}

fn first_file(data: &Path) -> String {
    let mut f: Vec<PathBuf> = std::fs::read_dir(data.join("anger"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    f.sort();
    f[0].display().to_string()
}

/// Issue 26, classes 4 and 5: values out of range for every command are refused before any
/// work, naming the option and its range; weights, streams and resume files that are bad are
/// refused naming the file.
#[test]
fn bad_values_and_bad_files_are_refused_naming_the_option_or_file() {
    let d = tempfile::tempdir().unwrap();
    let data = corpus(d.path());
    let run = d.path().join("run");
    train(&data, &run, &[]).success();
    let r = run.display().to_string();
    let w = first_file(&data);
    let out = d.path().join("f").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["predict", "--model", &r, &w, "--window", "1e12"],
            "--window 1000000000000: must be ≤ 60",
        ),
        (
            vec!["predict", "--model", &r, &w, "--window", "1e7"],
            "--window",
        ),
        (
            vec!["predict", "--model", &r, &w, "--window", "0.01"],
            "--window 0.01: shorter than the model's shortest input",
        ),
        (
            vec!["predict", "--model", &r, &w, "--max-clip", "1e9"],
            "--max-clip",
        ),
        (
            vec!["predict", "--model", &r, &w, "--max-clip", "0.01"],
            "--max-clip 0.01: shorter",
        ),
        (
            vec!["predict", "--model", &r, &w, "--window", "1", "--hop", "-1"],
            "--hop -1",
        ),
        (
            vec!["predict", "--model", &r, &w, "--silence-db", "nan"],
            "--silence-db NaN",
        ),
        (
            vec!["predict", "--model", &r, &w, "--silence-db", "5"],
            "--silence-db 5",
        ),
        (
            vec!["predict", "--model", &r, &w, "--batch-size", "0"],
            "--batch-size 0",
        ),
        (
            vec!["predict", "--model", &r, &w, "--batch-size", "1e8"],
            "--batch-size 1e8: must be a whole number",
        ),
        (
            vec!["predict", "--model", &r, &w, "--batch-size", "100000000"],
            "--batch-size 100000000: must be ≤ 64",
        ),
        (
            vec![
                "predict", "--model", &r, "-", "--raw", "s16le", "--rate", "1",
            ],
            "--rate 1: must be ≥ 1000",
        ),
        (
            vec![
                "predict",
                "--model",
                &r,
                "-",
                "--raw",
                "s16le",
                "--channels",
                "0",
            ],
            "--channels 0",
        ),
        (
            vec!["features", "--out", &out, &w, "--n-fft", "100000000"],
            "--n-fft 100000000: must be ≤ 65536",
        ),
        (
            vec!["features", "--out", &out, &w, "--n-fft", "511"],
            "--n-fft 511: must be even",
        ),
        (
            vec!["features", "--out", &out, &w, "--n-mels", "100000"],
            "--n-mels 100000: must be ≤ 512",
        ),
        (vec!["features", "--out", &out, &w, "--hop", "0"], "--hop 0"),
        (
            vec!["features", "--out", &out, &w, "--top-db", "-1"],
            "--top-db -1",
        ),
        (
            vec!["features", "--out", &out, &w, "--sample-rate", "10"],
            "--sample-rate 10",
        ),
        (vec!["train", "--epochs", "-1"], "--epochs -1: must be ≥ 0"),
        (
            vec!["eval", "--model", &r, "--data", &w, "--batch-size", "-5"],
            "--batch-size -5: must be ≥ 0",
        ),
    ];
    for (args, why) in &cases {
        ser()
            .args(args)
            .assert()
            .failure()
            .stderr(contains(*why))
            .stderr(no_panic());
    }
    assert!(
        !d.path().join("f").exists(),
        "features wrote before its options were checked"
    );
    // Empty mel bands: a warning (as librosa's), the features still written.
    ser_loud_features(&out, &w)
        .success()
        .stderr(contains("of the 512 mel bands hold no FFT bin"));
    // A WAV header and then the end of the stream: no audio, an error, not "(silent)".
    let wav = std::fs::read(&w).unwrap();
    let data_at = wav.windows(4).position(|c| c == b"data").unwrap() + 8;
    for (stdin, why) in [
        (wav[..data_at].to_vec(), "no audio"),
        (wav[..30].to_vec(), "ends inside the WAV header"),
        (wav[..wav.len() / 2].to_vec(), "cut short"),
    ] {
        ser()
            .args(["predict", "--model", &r, "-"])
            .write_stdin(stdin)
            .assert()
            .code(1)
            .stderr(contains("standard input"))
            .stderr(contains(why));
    }
    // Lists: a list inside a list is read; an empty folder or list is named.
    let inner = d.path().join("inner.txt");
    let outer = d.path().join("outer.txt");
    std::fs::write(&inner, format!("{w}\n@{}\n", outer.display())).unwrap();
    std::fs::write(&outer, format!("@{}\n", inner.display())).unwrap();
    ser()
        .args(["predict", "--model", &r])
        .arg(format!("@{}", outer.display()))
        .assert()
        .success()
        .stdout(contains("anger"));
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    ser()
        .args(["predict", "--model", &r])
        .arg(&empty)
        .assert()
        .code(1)
        .stderr(contains("empty: the folder holds no audio files"));
    // Weights holding NaN are refused by every command that loads them.
    let bad = d.path().join("bad");
    copy_run(&run, &bad);
    let m = bad.join("model.safetensors");
    let mut bytes = std::fs::read(&m).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let meta: serde_json::Value = serde_json::from_slice(&bytes[8..header]).unwrap();
    let at = header + meta["conv1.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&m, &bytes).unwrap();
    let b = bad.display().to_string();
    let onnx = d.path().join("x.onnx").display().to_string();
    for args in [
        vec!["predict", "--model", &b, &w],
        vec!["eval", "--model", &b, "--data", &w],
        vec!["export", "--model", &b, "--onnx", &onnx],
    ] {
        ser()
            .args(&args)
            .assert()
            .code(1)
            .stderr(contains("model.safetensors"))
            .stderr(contains("non-finite"));
    }
    // An empty or corrupt checkpoint is named as such, not as another model's.
    for (contents, why) in [(&b""[..], "is empty"), (&b"garbage!garbage"[..], "corrupt")] {
        std::fs::write(&m, contents).unwrap();
        ser()
            .args(["predict", "--model", &b, &w])
            .assert()
            .code(1)
            .stderr(contains(why))
            .stderr(contains("different model").not());
    }
    // A missing resume state is named as such.
    std::fs::remove_file(bad.join("resume/state.safetensors")).unwrap();
    ser()
        .args(["train", "--resume", &b])
        .assert()
        .code(1)
        .stderr(contains("resume/state.safetensors: nothing to resume"));
    eprintln!("{} option cases refused", cases.len());
}

fn ser_loud_features(out: &str, wav: &str) -> assert_cmd::assert::Assert {
    common::cli::ser_loud()
        .args([
            "features", "--out", out, wav, "--n-mels", "512", "--n-fft", "256",
        ])
        .assert()
}

fn copy_run(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dst = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
        } else if e.file_name() != "lock" {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
