//! Fine-tuning (`--init RUN`, `--freeze`, `--backbone-lr-scale`) through the binary, on the
//! tiny synthetic corpus with a small model (an epoch in about a second): what is loaded,
//! what stays frozen, what becomes of the classifier head, and what is refused.

mod common;

use common::cli::{run_ok, ser, ser_loud, tiny_corpus};
use predicates::str::contains;
use std::path::{Path, PathBuf};

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

/// Every tensor of a safetensors file as raw bytes, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    out.sort();
    out
}

/// A pretrained run: one epoch of the small model on `corpus` into `dir/pre`.
fn pretrain(dir: &Path, corpus: &Path) -> PathBuf {
    let run = dir.join("pre");
    run_ok(
        ser()
            .args(["train", "--epochs", "1", "--data"])
            .arg(corpus)
            .arg("--out")
            .arg(&run)
            .args(SMALL),
    );
    run
}

/// A copy of folder `from` at `to`, with the class folder `rename.0` called `rename.1`.
fn copy_corpus(from: &Path, to: &Path, rename: (&str, &str)) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        let target = to.join(if name == rename.0 { rename.1 } else { &name });
        if e.file_type().unwrap().is_dir() {
            copy_corpus(&e.path(), &target, ("", ""));
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn fine_tuning_loads_the_run_keeps_the_cnn_frozen_and_records_the_start() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let pre = pretrain(d.path(), &data);
    let tuned = d.path().join("tuned");
    // no architecture flags: they come from the run
    let out = run_ok(
        ser_loud()
            .args(["train", "--epochs", "1", "--batch-size", "8", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&tuned)
            .arg("--init")
            .arg(&pre)
            .args(["--freeze", "cnn", "--backbone-lr-scale", "0.5"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("classifier head kept"), "{stderr}");
    let (cp, ct) = (config(&pre), config(&tuned));
    assert_eq!(ct["model"], cp["model"]);
    assert_eq!(ct["optim"]["freeze_cnn"], true);
    assert_eq!(ct["optim"]["backbone_lr_scale"], 0.5);
    assert_eq!(ct["init"]["run"], pre.display().to_string());
    assert_eq!(ct["init"]["head"], "kept");
    let model = pre.join("model.safetensors");
    assert_eq!(
        ct["init"]["model_bytes"],
        std::fs::metadata(&model).unwrap().len()
    );
    let sha = ct["init"]["model_sha256"].as_str().unwrap().to_string();
    assert_eq!(sha.len(), 64);
    // an independent SHA-256 where coreutils has one
    if let Ok(o) = std::process::Command::new("sha256sum").arg(&model).output() {
        let line = String::from_utf8_lossy(&o.stdout).to_string();
        assert_eq!(line.split_whitespace().next(), Some(sha.as_str()));
    }
    // a config.json without these fields (before they existed) trains everything: the
    // fields are absent from a plain run's file
    assert!(cp.get("init").is_none());
    assert!(cp["optim"].get("freeze_cnn").is_none());
    // the conv stages, their BatchNorm and its running statistics are the run's, to the
    // byte; the head and the LSTM trained
    let (a, b) = (tensors(&model), tensors(&tuned.join("model.safetensors")));
    assert_eq!(a.len(), b.len());
    let mut frozen = 0;
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        if na.starts_with("conv") || na.starts_with("bn") {
            assert_eq!(va, vb, "{na} changed under --freeze cnn");
            frozen += 1;
        } else if na.starts_with("classifier") || na.starts_with("lstm.weight") {
            assert_ne!(va, vb, "{na} did not train");
        }
    }
    // conv1..3 weight and bias, bn1..3 weight, bias, running mean, var, batches tracked
    assert_eq!(frozen, 6 + 15);
}

#[test]
fn other_labels_get_a_fresh_head_and_cv_starts_every_fold_from_the_run() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let pre = pretrain(d.path(), &data);
    let other = d.path().join("other");
    copy_corpus(&data, &other, ("anger", "angry"));
    let tuned = d.path().join("tuned");
    let out = run_ok(
        ser_loud()
            .args(["train", "--epochs", "1", "--data"])
            .arg(&other)
            .arg("--out")
            .arg(&tuned)
            .arg("--init")
            .arg(&pre),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("drawn afresh from seed 42"), "{stderr}");
    let ct = config(&tuned);
    assert_eq!(ct["init"]["head"], "reinitialised");
    assert_eq!(ct["labels"][0], "angry");
    // cv: each fold's run records the start
    let cv = d.path().join("cv");
    run_ok(
        ser()
            .args(["cv", "--folds", "2", "--epochs", "1", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&cv)
            .arg("--init")
            .arg(&pre),
    );
    for fold in ["fold-1", "fold-2"] {
        let c = config(&cv.join(fold));
        assert_eq!(c["init"]["head"], "kept", "{fold}");
        assert_eq!(c["model"], config(&pre)["model"], "{fold}");
    }
}

#[test]
fn differing_architecture_and_bad_values_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let pre = pretrain(d.path(), &data);
    ser()
        .args(["train", "--epochs", "1", "--data"])
        .arg(&data)
        .arg("--init")
        .arg(&pre)
        .args(["--kernel-size", "5", "--hidden-size", "16", "--out"])
        .arg(d.path().join("x"))
        .assert()
        .failure()
        .stderr(contains("--kernel-size 5 (the run's: 7)"))
        .stderr(contains("--hidden-size 16 (the run's: 8)"));
    assert!(!d.path().join("x").exists());
    ser()
        .args(["train", "--epochs", "1", "--freeze", "cnn"])
        .assert()
        .failure()
        .stderr(contains("--freeze cnn needs --init RUN"));
    for v in ["0", "1.5", "-1", "nan"] {
        ser()
            .args(["train", "--epochs", "1", "--backbone-lr-scale", v])
            .assert()
            .failure()
            .stderr(contains("--backbone-lr-scale"))
            .stderr(contains("> 0 and ≤ 1"));
    }
    ser()
        .args(["train", "--epochs", "1", "--freeze", "all"])
        .assert()
        .failure()
        .stderr(contains("invalid value 'all' for '--freeze"));
    ser()
        .args(["train", "--epochs", "1", "--init"])
        .arg(d.path().join("missing"))
        .assert()
        .failure()
        .stderr(contains("--init"))
        .stderr(contains("not a run folder"));
    // a damaged model file is named, not loaded
    std::fs::write(pre.join("model.safetensors"), b"not a checkpoint").unwrap();
    ser()
        .args(["train", "--epochs", "1", "--init"])
        .arg(&pre)
        .assert()
        .failure()
        .stderr(contains("model.safetensors"));
}

/// Writes `name.csv` in `dir` listing the clips of `corpus` (the tiny corpus: class folders,
/// files `label_sK_NNN.wav`), with the speaker `sK` from the name and the class folder
/// `rename.0` listed as `rename.1`.
fn manifest(dir: &Path, name: &str, corpus: &Path, rename: (&str, &str)) -> PathBuf {
    let mut rows = vec!["path,label,speaker".to_string()];
    let mut classes: Vec<_> = std::fs::read_dir(corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    classes.sort();
    for class in classes {
        let label = class.file_name().unwrap().to_string_lossy().to_string();
        let label = if label == rename.0 {
            rename.1.to_string()
        } else {
            label
        };
        let mut files: Vec<_> = std::fs::read_dir(&class)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let stem = f.file_stem().unwrap().to_string_lossy().to_string();
            let speaker = stem.split('_').nth(1).unwrap().to_string();
            rows.push(format!("{},{label},{speaker}", f.display()));
        }
    }
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, rows.join("\n") + "\n").unwrap();
    path
}

#[test]
fn several_corpora_merge_by_name_or_by_a_label_map_and_keep_speakers_apart() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let a = manifest(d.path(), "a", &data, ("", ""));
    let b = manifest(d.path(), "b", &data, ("anger", "angry"));
    let info = |extra: &[&str]| {
        let out = run_ok(
            ser()
                .args(["info", "--data"])
                .arg(&a)
                .arg("--data")
                .arg(&b)
                .args(extra),
        );
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // by name: `angry` is a sixth class; six speakers per corpus make twelve
    let (merged, _) = info(&[]);
    assert!(merged.contains("clips: 60"), "{merged}");
    assert!(merged.contains("classes: 6"), "{merged}");
    assert!(merged.contains("  angry: 6 clips"), "{merged}");
    assert!(
        merged.contains("speakers: 12 (a.csv/s1, a.csv/s2, "),
        "{merged}"
    );
    assert!(merged.contains(", a.csv/s6, b.csv/s1, "), "{merged}");
    // through a map: one anger class; `-` leaves b's surprise out with a warning
    let map = d.path().join("labels.txt");
    std::fs::write(
        &map,
        "# common labels\nanger -> anger\nangry -> anger\nhappiness -> happiness\n\
         neutral -> neutral\nsadness -> sadness\nsurprise -> surprise\nb.csv: surprise -> -\n",
    )
    .unwrap();
    let map_arg = map.to_str().unwrap();
    let (mapped, warned) = info(&["--label-map", map_arg]);
    assert!(mapped.contains("classes: 5"), "{mapped}");
    assert!(mapped.contains("  anger: 12 clips"), "{mapped}");
    assert!(mapped.contains("  surprise: 6 clips"), "{mapped}");
    assert!(
        warned.contains("leaving out 6 clip(s) labelled 'surprise' in corpus b.csv"),
        "{warned}"
    );
    // training on both: config.json lists the corpora and the map
    let run = d.path().join("both");
    run_ok(
        ser()
            .args(["train", "--epochs", "1", "--data"])
            .arg(&a)
            .arg("--data")
            .arg(&b)
            .args(["--label-map", map_arg, "--out"])
            .arg(&run)
            .args(SMALL),
    );
    let c = config(&run);
    assert_eq!(c["data"][1], b.display().to_string());
    assert_eq!(c["label_map"], map_arg);
    assert_eq!(c["labels"].as_array().unwrap().len(), 5);
    // --resume reads both corpora through the recorded map again
    run_ok(ser().args(["train", "--epochs", "2", "--resume"]).arg(&run));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    // a label without an entry is named with the file and the corpus
    std::fs::write(&map, "angry -> anger\n").unwrap();
    ser()
        .args(["train", "--epochs", "1", "--data"])
        .arg(&a)
        .arg("--data")
        .arg(&b)
        .args(["--label-map", map_arg])
        .assert()
        .failure()
        .stderr(contains(format!(
            "--label-map {map_arg}: no entry for label 'anger' of corpus a.csv"
        )));
    std::fs::write(&map, "angry anger\n").unwrap();
    ser()
        .args(["info", "--data"])
        .arg(&a)
        .args(["--label-map", map_arg])
        .assert()
        .failure()
        .stderr(contains(format!("{map_arg}:1: 'angry anger' is not")));
    ser()
        .args(["train", "--epochs", "1", "--data"])
        .arg(&a)
        .arg("--data")
        .arg(&a)
        .assert()
        .failure()
        .stderr(contains("given twice"));
    ser()
        .args(["train", "--epochs", "1", "--label-map", map_arg])
        .assert()
        .failure()
        .stderr(contains("--label-map needs --data"));
}
