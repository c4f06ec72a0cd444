//! `sweep` and `cv` as many units of work: sharded runs in separate processes (`--shard I/N`,
//! Slurm array variables, Kubernetes' JOB_COMPLETION_INDEX) merged with `--merge` give the
//! same report and the same weights as one unsharded run; `--devices` runs units concurrently
//! with the same results; an interrupted unit resumes to the same result; cv's report has UA,
//! WA and F1 mean ± std and the summed confusion; the shipped Slurm and Kubernetes examples
//! match the guide (docs/guide.md). Tiny corpus (5 classes x 6 clips) and tiny model, so each run takes
//! seconds.

mod common;

use assert_cmd::Command;
use common::cli::{tiny_corpus, TINY_MODEL};
use predicates::str::contains;
use std::path::{Path, PathBuf};

/// The binary with a clean scheduler environment (a test run inside a Slurm job must not
/// pick up the job's own array variables).
fn ser(device: &str) -> Command {
    let mut c = Command::cargo_bin("ser-engine").unwrap();
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_MAX",
        "SLURM_ARRAY_TASK_STEP",
        "JOB_COMPLETION_INDEX",
        "SER_SHARD_COUNT",
    ] {
        c.env_remove(v);
    }
    c.args(["-q", "--device", device, "--threads", "2"]);
    c
}

fn sweep(device: &str, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = ser(device);
    c.arg("sweep")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--grid", "kernel-size=3,5", "--folds", "2", "--epochs", "2"])
        .args(TINY_MODEL)
        .args(["--lr", "3e-3"])
        .args(extra);
    c
}

/// Report text with the wall-time fields removed (they are the only thing that may differ).
fn without_times(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => {
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            strip_key(&mut v, "train_seconds");
            serde_json::to_string_pretty(&v).unwrap()
        }
        // the last column is the training time
        _ => text
            .lines()
            .map(|l| match l.rfind([',', '|']) {
                Some(i) if l.ends_with('|') => {
                    let head = &l[..i];
                    head[..head.rfind('|').unwrap_or(0)].to_string()
                }
                Some(i) => l[..i].to_string(),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// `without_times` of a report's bytes as first written.
fn without_times_bytes(json: &[u8]) -> String {
    let mut v: serde_json::Value = serde_json::from_slice(json).unwrap();
    strip_key(&mut v, "train_seconds");
    serde_json::to_string_pretty(&v).unwrap()
}

fn strip_key(v: &mut serde_json::Value, key: &str) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove(key);
            m.values_mut().for_each(|x| strip_key(x, key));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| strip_key(x, key)),
        _ => {}
    }
}

/// Every file two output folders must share byte for byte (weights, per-epoch metrics, the
/// plan) and the reports without their time fields.
fn assert_same_results(a: &Path, b: &Path, reports: &[&str]) {
    let plan = |d: &Path| std::fs::read_to_string(d.join("plan.json")).unwrap();
    assert_eq!(plan(a), plan(b));
    let units: Vec<PathBuf> = walk_units(a);
    assert!(!units.is_empty());
    for u in &units {
        let rel = u.strip_prefix(a).unwrap();
        for f in ["model.safetensors", "resume/state.safetensors"] {
            assert_same_tensors(&u.join(f), &b.join(rel).join(f));
        }
        let metrics = |d: &Path| std::fs::read(d.join("metrics.jsonl")).unwrap();
        assert!(
            metrics(u) == metrics(&b.join(rel)),
            "{}/metrics.jsonl",
            rel.display()
        );
        assert_eq!(
            without_times(&u.join("result.json")).replace("\"device\": \"sim\"", ""),
            without_times(&b.join(rel).join("result.json")).replace("\"device\": \"sim\"", ""),
        );
    }
    for r in reports {
        assert_eq!(
            without_times(&a.join(r)),
            without_times(&b.join(r)),
            "{r} differs"
        );
    }
}

/// Same tensors (names, dtypes, shapes, bytes), the same metadata and the same file bytes.
fn assert_same_tensors(a: &Path, b: &Path) {
    use safetensors::SafeTensors;
    let (ba, bb) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (ta, tb) = (
        SafeTensors::deserialize(&ba).unwrap(),
        SafeTensors::deserialize(&bb).unwrap(),
    );
    let mut names = ta.names();
    names.sort();
    let mut names_b = tb.names();
    names_b.sort();
    assert_eq!(names, names_b, "{}", a.display());
    for n in names {
        let (x, y) = (ta.tensor(n).unwrap(), tb.tensor(n).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{n}");
        assert!(x.data() == y.data(), "{}: tensor {n} differs", a.display());
    }
    let meta = |bytes: &[u8]| {
        SafeTensors::read_metadata(bytes)
            .unwrap()
            .1
            .metadata()
            .clone()
    };
    assert_eq!(meta(&ba), meta(&bb), "{}", a.display());
    // The metadata keys are written sorted, so the files are identical too.
    assert!(ba == bb, "{}: files differ", a.display());
}

/// Unit folders (those holding result.json) under `dir`.
fn walk_units(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.join("result.json").is_file() {
                out.push(p.clone());
            }
            out.extend(walk_units(&p));
        }
    }
    out.sort();
    out
}

#[test]
fn sharded_sweep_merges_to_the_unsharded_result() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let whole = d.path().join("whole");
    sweep("cpu", &data, &whole, &[])
        .assert()
        .success()
        .stdout(contains("kernel-size=5"));
    let reports = ["results.json", "results.csv", "results.md"];
    for r in reports.iter().chain(&["results.png"]) {
        assert!(whole.join(r).is_file(), "{r} missing");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("results.json")).unwrap())
            .unwrap();
    let trials = json["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2);
    // the 5x5 kernel has more weights than the 3x3 one; the per-trial means are the means of
    // the two folds' own scores
    assert!(trials[1]["parameters"].as_u64() > trials[0]["parameters"].as_u64());
    for t in trials {
        let folds = t["folds"].as_array().unwrap();
        assert_eq!(folds.len(), 2);
        let ua: Vec<f64> = folds
            .iter()
            .map(|f| f["scores"]["unweighted_accuracy"].as_f64().unwrap())
            .collect();
        let mean = t["ua"]["mean"].as_f64().unwrap();
        assert!((mean - (ua[0] + ua[1]) / 2.0).abs() < 1e-12, "{t}");
        assert!(t["train_seconds"].as_f64().unwrap() > 0.0);
    }

    // Two shards as separate processes, then --merge.
    let sharded = d.path().join("sharded");
    sweep("cpu", &data, &sharded, &["--shard", "1/2"])
        .assert()
        .success()
        .stdout(contains("2 of 4 units are done"));
    assert!(!sharded.join("results.json").exists());
    // merging before every shard is done names what is missing
    ser("cpu")
        .args(["sweep", "--merge"])
        .arg(&sharded)
        .assert()
        .failure()
        .stderr(contains("2 of 4 units are not finished"))
        .stderr(contains("fold-"));
    sweep("cpu", &data, &sharded, &["--shard", "2/2"])
        .assert()
        .success();
    // the last shard to finish wrote the report; --merge rebuilds the same
    std::fs::remove_file(sharded.join("results.json")).unwrap();
    ser("cpu")
        .args(["sweep", "--merge"])
        .arg(&sharded)
        .assert()
        .success();
    assert_same_results(&whole, &sharded, &reports);

    // A Slurm array starting at 3 (--array=3-5): three shards from the environment.
    let slurm = d.path().join("slurm");
    for id in ["3", "4", "5"] {
        sweep("cpu", &data, &slurm, &[])
            .env("SLURM_ARRAY_TASK_ID", id)
            .env("SLURM_ARRAY_TASK_MIN", "3")
            .env("SLURM_ARRAY_TASK_MAX", "5")
            .assert()
            .success();
    }
    assert_same_results(&whole, &slurm, &reports);

    // A Kubernetes Indexed Job of 2 (indices 0 and 1).
    let k8s = d.path().join("k8s");
    for idx in ["1", "0"] {
        sweep("cpu", &data, &k8s, &[])
            .env("JOB_COMPLETION_INDEX", idx)
            .env("SER_SHARD_COUNT", "2")
            .assert()
            .success();
    }
    assert_same_results(&whole, &k8s, &reports);

    // A shard started with other settings on the same folder is refused.
    sweep("cpu", &data, &whole, &["--dropout", "0.5"])
        .assert()
        .failure()
        .stderr(contains("plan.json"));
}

fn cv(device: &str, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = ser(device);
    c.arg("cv")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--schedule", "plateau"])
        .args(TINY_MODEL)
        .args(["--lr", "3e-3"])
        .args(extra);
    c
}

#[test]
fn cv_report_shards_and_resume() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let whole = d.path().join("whole");
    cv("cpu", &data, &whole, &["--epochs", "2", "--folds", "3"])
        .assert()
        .success()
        .stdout(contains("3-fold stratified: UA"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("cv.json")).unwrap()).unwrap();
    let t = &report;
    let folds = t["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 3);
    // UA, WA and macro-F1 of each fold recomputed here from its confusion matrix; the
    // summed confusion covers every clip exactly once.
    let mut summed = vec![vec![0u64; 5]; 5];
    let (mut uas, mut was) = (vec![], vec![]);
    for f in folds {
        let c: Vec<Vec<u64>> = serde_json::from_value(f["confusion"]["counts"].clone()).unwrap();
        let total: u64 = c.iter().flatten().sum();
        let right: u64 = (0..5).map(|i| c[i][i]).sum();
        let recalls: Vec<f64> = (0..5)
            .filter(|&i| c[i].iter().sum::<u64>() > 0)
            .map(|i| c[i][i] as f64 / c[i].iter().sum::<u64>() as f64)
            .collect();
        uas.push(recalls.iter().sum::<f64>() / recalls.len() as f64);
        was.push(right as f64 / total as f64);
        for i in 0..5 {
            for j in 0..5 {
                summed[i][j] += c[i][j];
            }
        }
    }
    let sc: Vec<Vec<u64>> = serde_json::from_value(t["confusion"]["counts"].clone()).unwrap();
    assert_eq!(sc, summed);
    assert_eq!(summed.iter().flatten().sum::<u64>(), 30);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let std = |v: &[f64]| {
        let m = mean(v);
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    };
    for (key, v) in [("ua", &uas), ("accuracy", &was)] {
        let m = t[format!("{key}_mean")].as_f64().unwrap();
        let s = t[format!("{key}_std")].as_f64().unwrap();
        assert!((m - mean(v)).abs() < 1e-12, "{key} mean {m} vs {}", mean(v));
        assert!((s - std(v)).abs() < 1e-12, "{key} std {s} vs {}", std(v));
    }
    for key in ["micro_f1_mean", "macro_f1_mean"] {
        let m = t[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&m), "{key} {m}");
    }
    for f in [
        "confusion.png",
        "learning_curve.png",
        "fold-1/model.safetensors",
    ] {
        assert!(whole.join(f).is_file(), "{f} missing");
    }

    // cv --shard + --merge gives the same report.
    let sharded = d.path().join("sharded");
    for s in ["2/2", "1/2"] {
        cv(
            "cpu",
            &data,
            &sharded,
            &["--epochs", "2", "--folds", "3", "--shard", s],
        )
        .assert()
        .success();
    }
    std::fs::remove_file(sharded.join("cv.json")).unwrap();
    ser("cpu")
        .args(["cv", "--merge"])
        .arg(&sharded)
        .assert()
        .success();
    assert_same_results(&whole, &sharded, &["cv.json"]);

    // An interrupted fold resumes from its last epoch to the same result: fold 1 of a
    // 1-epoch run is exactly fold 1 of the 2-epoch run stopped after epoch 1 (the plateau
    // schedule does not depend on the epoch budget), so it stands in for an interruption.
    let short = d.path().join("short");
    cv("cpu", &data, &short, &["--epochs", "1", "--folds", "3"])
        .assert()
        .success();
    let resumed = d.path().join("resumed");
    let unit = resumed.join("fold-1");
    std::fs::create_dir_all(unit.join("resume")).unwrap();
    // the plan of the same command (a folder without one is not written into)
    std::fs::copy(whole.join("plan.json"), resumed.join("plan.json")).unwrap();
    for f in [
        "model.safetensors",
        "metrics.jsonl",
        "resume/progress.json",
        "resume/state.safetensors",
    ] {
        std::fs::copy(short.join("fold-1").join(f), unit.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(short.join("fold-1/config.json")).unwrap())
            .unwrap();
    cfg["fit"]["epochs"] = 2.into();
    std::fs::write(unit.join("config.json"), cfg.to_string()).unwrap();
    // without -q, so that the resume is reported
    let mut loud = Command::cargo_bin("ser-engine").unwrap();
    let out = loud
        .args(["--device", "cpu", "--threads", "2", "cv", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&resumed)
        .args(["--folds", "3", "--schedule", "plateau", "--epochs", "2"])
        .args(TINY_MODEL)
        .args(["--lr", "3e-3"])
        .assert()
        .success();
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("fold 1: resuming after epoch 1"), "{err}");
    assert_same_results(&whole, &resumed, &["cv.json"]);
}

/// Holds an exclusive flock on `dir/lock` (as a unit's writer does) with this process's pid
/// in it, until the returned file is dropped.
fn hold_lock(dir: &Path) -> std::fs::File {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all(dir).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("lock"))
        .unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    write!(f, "{}", std::process::id()).unwrap();
    f
}

/// Issue 14's rules for cv/sweep output folders: a finished run is never trained or written
/// again (a re-run only rebuilds the same report), other settings and foreign folders are
/// refused, and a unit another process is writing (published, or still in its staging
/// folder) is refused with that process's pid while shards of the same plan share the folder.
#[test]
fn cv_and_sweep_folders_are_never_clobbered() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let out = d.path().join("cv");
    let args = ["--epochs", "1", "--folds", "2"];
    cv("cpu", &data, &out, &args).assert().success();
    let model = out.join("fold-1/model.safetensors");
    let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (model_t, model_bytes) = (stamp(&model), std::fs::read(&model).unwrap());
    let report = std::fs::read(out.join("cv.json")).unwrap();

    // Re-run of the finished run: nothing trains, nothing changes.
    let mut loud = Command::cargo_bin("ser-engine").unwrap();
    let again = loud
        .args(["--device", "cpu", "--threads", "2", "cv", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--schedule", "plateau"])
        .args(TINY_MODEL)
        .args(["--lr", "3e-3"])
        .args(args)
        .assert()
        .success();
    let err = String::from_utf8_lossy(&again.get_output().stderr).to_string();
    assert!(err.contains("fold 1: finished earlier"), "{err}");
    assert!(err.contains("fold 2: finished earlier"), "{err}");
    assert_eq!(stamp(&model), model_t);
    assert!(std::fs::read(&model).unwrap() == model_bytes);
    assert!(std::fs::read(out.join("cv.json")).unwrap() == report);

    // Other settings on the same folder, or a folder that is not a cv/sweep folder.
    cv("cpu", &data, &out, &["--epochs", "2", "--folds", "2"])
        .assert()
        .failure()
        .stderr(contains("other settings"));
    let foreign = d.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    for mut cmd in [
        cv("cpu", &data, &foreign, &args),
        sweep("cpu", &data, &foreign, &[]),
    ] {
        cmd.assert()
            .failure()
            .stderr(contains("not a cv or sweep output folder"))
            .stderr(contains("notes.txt"));
    }
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1);

    // A published unit another process is writing: refused with its pid, the unit untouched.
    std::fs::remove_file(out.join("fold-2/result.json")).unwrap();
    let pid = std::process::id().to_string();
    {
        let _held = hold_lock(&out.join("fold-2"));
        cv("cpu", &data, &out, &args)
            .assert()
            .failure()
            .stderr(contains(format!("pid {pid}")))
            .stderr(contains("fold-2"));
        assert!(!out.join("fold-2/result.json").exists());
    }
    // Lock released: the unit finishes (from its saved state) and the report is the same.
    cv("cpu", &data, &out, &args).assert().success();
    assert_eq!(
        without_times(&out.join("cv.json")),
        without_times_bytes(&report)
    );

    // A new unit still in its staging folder (before its first epoch): refused as well,
    // while the other shard of the same plan runs beside it.
    let shared = d.path().join("shared");
    cv("cpu", &data, &shared, &args)
        .args(["--shard", "2/2"])
        .assert()
        .success();
    {
        let _held = hold_lock(&shared.join(".fold-1.partial"));
        cv("cpu", &data, &shared, &args)
            .args(["--shard", "1/2"])
            .assert()
            .failure()
            .stderr(contains(format!("pid {pid}")))
            .stderr(contains("fold-1"));
        assert!(!shared.join("fold-1").exists());
    }
    cv("cpu", &data, &shared, &args)
        .args(["--shard", "1/2"])
        .assert()
        .success();
    assert_same_results(&out, &shared, &["cv.json"]);
}

/// Two real processes on one sweep folder: the second is refused with the first one's pid
/// while the first trains a unit.
#[test]
fn a_second_sweep_process_on_a_running_unit_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let out = d.path().join("sweep");
    let long = ["--epochs", "100000", "--early-stop", "100000"];
    let mut first = std::process::Command::new(assert_cmd::cargo::cargo_bin("ser-engine"))
        .args(["-q", "--device", "cpu", "--threads", "1", "sweep", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--grid", "kernel-size=3,5", "--folds", "2"])
        .args(TINY_MODEL)
        .args(["--lr", "3e-3"])
        .args(long)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    let unit = out.join("trial-00/fold-1");
    let t0 = std::time::Instant::now();
    while !unit.join("config.json").is_file() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(120),
            "first sweep never published its unit"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = ser("cpu")
        .args(["sweep", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--grid", "kernel-size=3,5", "--folds", "2"])
        .args(TINY_MODEL)
        .args(["--lr", "3e-3"])
        .args(long)
        .assert();
    first.kill().unwrap();
    first.wait().unwrap();
    second
        .failure()
        .stderr(contains(format!("pid {pid}")))
        .stderr(contains("trial-00/fold-1"));
}

/// `--devices sim,sim` trains two folds at once on two sim devices: the same weights and
/// report as `--device sim` one fold after another.
#[test]
fn devices_run_units_concurrently_with_identical_results() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let one = d.path().join("one");
    let two = d.path().join("two");
    let args = ["--epochs", "1", "--folds", "2"];
    cv("sim", &data, &one, &args).assert().success();
    cv("cpu", &data, &two, &args)
        .args(["--devices", "sim,sim"])
        .assert()
        .success();
    assert_same_results(&one, &two, &["cv.json"]);
    cv("cpu", &data, &d.path().join("bad"), &args)
        .args(["--devices", "0,x"])
        .assert()
        .failure()
        .stderr(contains("--devices 0,x"));
}

#[test]
fn bad_sweep_flags_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("none");
    for (args, msg) in [
        (vec!["sweep", "--grid", "n-mels=32,64"], "cannot be swept"),
        (vec!["sweep"], "at least one --grid"),
        (
            vec!["sweep", "--grid", "lr=1e-3", "--shard", "3/2"],
            "--shard 3/2",
        ),
        (vec!["sweep", "--merge", "nowhere"], "plan.json"),
        (
            vec!["sweep", "--grid", "lr=1e-3,0.001"],
            "'0.001' repeats '1e-3'",
        ),
        (
            vec!["sweep", "--table3", "--kernel-size", "5"],
            "cannot be used with",
        ),
        // option ranges, checked before the corpus is read (it does not exist here)
        (
            vec!["sweep", "--grid", "lr=1e-3,-1"],
            "--grid: trial lr=-1: --lr -1: must be > 0",
        ),
        (
            vec!["sweep", "--grid", "dropout=0.3,nan"],
            "--dropout NaN: must be a finite number",
        ),
        (
            vec!["sweep", "--grid", "kernel-size=4"],
            "--kernel-size 4: must be odd",
        ),
        (vec!["cv", "--folds", "1"], "--folds 1: must be ≥ 2"),
        (vec!["cv", "--folds", "101"], "--folds 101: must be ≤ 100"),
        (
            vec!["cv", "--val-split", "-0.1"],
            "--val-split -0.1: must be > 0",
        ),
        (vec!["cv", "--val-split", "1"], "--val-split 1: must be < 1"),
        (vec!["cv", "--lr", "-1"], "--lr -1: must be > 0"),
        (
            vec!["cv", "--shard-count", "0"],
            "--shard-count 0: must be ≥ 1",
        ),
        (vec!["cv", "--shard", "1/100001"], "--shard 1/100001"),
        (vec!["cv", "--within-fold", "1/101"], "--within-fold 1/101"),
        (
            vec!["cv", "--devices", &"sim,".repeat(65)[..259]],
            "at most 64",
        ),
    ] {
        ser("cpu")
            .args(&args)
            .arg("--data")
            .arg(&data)
            .assert()
            .failure()
            .stderr(contains(msg));
    }
}

/// The guide, where the Slurm and Kubernetes examples are shown.
fn guide() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/guide.md")).unwrap()
}

/// The sbatch script's command line is the one the guide shows.
#[test]
fn slurm_example_matches_the_guide() {
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm/sweep.sbatch"),
    )
    .unwrap();
    let cmds: Vec<&str> = script
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ser-engine "))
        .collect();
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    assert!(
        guide().lines().any(|l| l.trim() == cmds[0]),
        "docs/guide.md does not show `{}`",
        cmds[0]
    );
    let array = script
        .lines()
        .find_map(|l| l.strip_prefix("#SBATCH --array="))
        .expect("#SBATCH --array");
    assert_eq!(array, "0-4");
}

/// The Kubernetes manifest parses, is an Indexed Job whose shard count is its completions,
/// runs the guide's command and writes to a shared (ReadWriteMany) volume.
#[test]
fn kubernetes_example_is_an_indexed_job() {
    use yaml_rust2::YamlLoader;
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/sweep-job.yaml"),
    )
    .unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let pvc = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("PersistentVolumeClaim"))
        .expect("a PersistentVolumeClaim");
    assert_eq!(
        pvc["spec"]["accessModes"][0].as_str(),
        Some("ReadWriteMany")
    );
    let job = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Job"))
        .expect("a Job");
    assert_eq!(job["apiVersion"].as_str(), Some("batch/v1"));
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    let completions = spec["completions"].as_i64().unwrap();
    let c = &spec["template"]["spec"]["containers"][0];
    let env = c["env"].as_vec().unwrap();
    let count = env
        .iter()
        .find(|e| e["name"].as_str() == Some("SER_SHARD_COUNT"))
        .and_then(|e| e["value"].as_str())
        .expect("SER_SHARD_COUNT");
    assert_eq!(count.parse::<i64>().unwrap(), completions);
    let cmd: Vec<&str> = c["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let line = cmd.join(" ");
    assert!(
        guide().lines().any(|l| l.trim() == line),
        "docs/guide.md does not show `{line}`"
    );
    let out = cmd[cmd.iter().position(|&a| a == "--out").unwrap() + 1];
    let mount = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("runs"))
        .unwrap()["mountPath"]
        .as_str()
        .unwrap();
    assert!(
        out.starts_with(mount),
        "--out {out} is not on the volume {mount}"
    );
    let vol = spec["template"]["spec"]["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("runs"))
        .unwrap();
    assert_eq!(
        vol["persistentVolumeClaim"]["claimName"].as_str(),
        pvc["metadata"]["name"].as_str()
    );
}
