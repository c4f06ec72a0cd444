//! Test-time averaging (`--tta N`) and ensembles (`--model a --model b`, a cv folder) of eval,
//! predict and export, through the binary, on the tiny synthetic corpus (5 classes × 6 clips of
//! about 1 s) with the tiny model.
//!
//! The runs train with `--max-seconds 0.5` (32 frames), so every clip is longer than the
//! training crop and `--tta` has crops to average. Expected values are computed here from the
//! library's single-clip path (`Classifier::probabilities` on one crop at a time) or from the
//! members' own `predict`/`eval` output, never from the averaging under test.
//!
//! Tolerances: 1e-6 absolute on probabilities (and on the mean cross-entropy) where the binary
//! classifies crops in one batch and the test one at a time: the model masks each clip's
//! padding, so the rows differ at most by f32 summation order in the batch-dependent kernels
//! (~1e-7 relative on logits of magnitude ~1, moving a probability by less than that). 1e-12
//! where both sides average the same f64 numbers (an ensemble against its members' output).

mod common;

use common::cli::{run_ok, ser, tiny_corpus, TINY_MODEL};
use ser_engine::audio::load_audio;
use ser_engine::device::DeviceChoice;
use ser_engine::features::LogMel;
use ser_engine::infer::Classifier;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const CROP_S: &str = "0.5";

/// (corpus, run a, run b) trained once per test binary: a with seed 42, b with seed 5.
fn runs() -> &'static (PathBuf, PathBuf, PathBuf) {
    static RUNS: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    RUNS.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_ensemble");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let corpus = tiny_corpus(&root);
        let (a, b) = (root.join("a"), root.join("b"));
        for (run, seed) in [(&a, "42"), (&b, "5")] {
            train(&corpus, run, &["--seed", seed]);
        }
        (corpus, a, b)
    })
}

/// The tiny model with `--max-seconds 0.5`; `n_mels` replaces its 32 mel bands.
fn train_mels(corpus: &Path, out: &Path, extra: &[&str], n_mels: &str) {
    let mut model: Vec<&str> = TINY_MODEL.to_vec();
    let i = model.iter().position(|a| *a == "--n-mels").unwrap();
    model[i + 1] = n_mels;
    run_ok(
        ser()
            .args(["train", "--epochs", "2", "--max-seconds", CROP_S, "--data"])
            .arg(corpus)
            .arg("--out")
            .arg(out)
            .args(model)
            .args(extra),
    );
}

fn train(corpus: &Path, out: &Path, extra: &[&str]) {
    train_mels(corpus, out, extra, "32");
}

/// Every clip of the corpus with its class (the folder's name), in a fixed order.
fn clips(corpus: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut classes: Vec<_> = std::fs::read_dir(corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    for c in classes {
        let mut files: Vec<_> = std::fs::read_dir(&c)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let label = c.file_name().unwrap().to_string_lossy().to_string();
        out.extend(files.into_iter().map(|f| (f, label.clone())));
    }
    out
}

fn stdout(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8(run_ok(cmd).stdout).unwrap()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A row's probabilities by label.
fn probs(row: &serde_json::Value) -> Vec<(String, f64)> {
    row["probabilities"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect()
}

/// Frames `start..start + len` of a log-Mel, as a clip of its own.
fn crop(lm: &LogMel, start: usize, len: usize) -> LogMel {
    let data = (0..lm.n_mels)
        .flat_map(|b| lm.data[b * lm.frames + start..][..len].iter().copied())
        .collect();
    LogMel {
        data,
        n_mels: lm.n_mels,
        frames: len,
    }
}

/// The documented crops, computed here: `n` crops of `len` frames, starts k·spare/(n−1).
fn hand_tta(clf: &mut Classifier, lm: &LogMel, len: usize, n: usize) -> Vec<f64> {
    assert!(lm.frames > len, "the clip must be longer than the crop");
    let spare = lm.frames - len;
    let mut sum = vec![0.0; clf.cfg.labels.len()];
    for k in 0..n {
        let c = crop(lm, k * spare / (n - 1), len);
        let p = clf.probabilities(&[&c]).unwrap().remove(0);
        sum.iter_mut().zip(&p).for_each(|(s, v)| *s += v);
    }
    sum.iter().map(|s| s / n as f64).collect()
}

/// The training crop of the runs: 1 + 0.5 s · 16 kHz / hop 256 frames.
fn crop_frames() -> usize {
    1 + 8000 / 256
}

#[test]
fn tta_1_is_byte_for_byte_the_same_as_no_flag() {
    let (corpus, a, _) = runs();
    let d = tempfile::tempdir().unwrap();
    // a recording longer than --max-clip 1.5: averaged over windows
    let long = d.path().join("long.wav");
    let mut samples = Vec::new();
    for (f, _) in clips(corpus).iter().take(4) {
        samples.extend(load_audio(f, Some(16_000)).unwrap().samples);
    }
    common::cli::write_wav_i16(
        &long,
        16_000,
        samples.iter().map(|&s| (s * 32767.0).round() as i16),
    );
    let files = [clips(corpus)[0].0.clone(), clips(corpus)[7].0.clone(), long];
    for extra in [
        &["--json", "--max-clip", "1.5"][..],
        &["--json", "--window", "0.8", "--hop", "0.4"][..],
    ] {
        let plain = stdout(
            ser()
                .arg("predict")
                .arg("--model")
                .arg(a)
                .args(extra)
                .args(&files),
        );
        let one = stdout(
            ser()
                .arg("predict")
                .arg("--model")
                .arg(a)
                .args(["--tta", "1"])
                .args(extra)
                .args(&files),
        );
        assert!(plain.lines().count() >= 3, "{plain}");
        assert_eq!(plain, one, "{extra:?}");
    }
    let eval = |extra: &[&str]| {
        stdout(
            ser()
                .args(["eval", "--json", "-", "--model"])
                .arg(a)
                .arg("--data")
                .arg(corpus)
                .args(extra),
        )
    };
    assert_eq!(eval(&[]), eval(&["--tta", "1"]));
}

#[test]
fn predict_tta_is_the_mean_of_its_crops_classified_one_by_one() {
    let (corpus, a, _) = runs();
    let mut clf = Classifier::load(a, DeviceChoice::Cpu).unwrap();
    for (file, _) in clips(corpus).iter().step_by(7) {
        let rows = json_lines(&stdout(
            ser()
                .arg("predict")
                .arg("--model")
                .arg(a)
                .args(["--json", "--tta", "4"])
                .arg(file),
        ));
        let got = probs(&rows[0]);
        let audio = load_audio(file, Some(16_000)).unwrap();
        let lm = Classifier::features(&clf.cfg, &audio.samples).unwrap();
        let want = hand_tta(&mut clf, &lm, crop_frames(), 4);
        let whole = clf.probabilities(&[&lm]).unwrap().remove(0);
        let mut moved = 0.0f64;
        for (c, (label, g)) in got.iter().enumerate() {
            assert_eq!(label, &clf.cfg.labels[c]);
            assert!(
                (g - want[c]).abs() <= 1e-6,
                "{}: {label} {g} vs {}",
                file.display(),
                want[c]
            );
            moved = moved.max((g - whole[c]).abs());
        }
        // the crops' mean is not the whole clip's result, so a --tta that did nothing fails
        assert!(moved > 1e-5, "{}: --tta 4 equals no --tta", file.display());
    }
}

#[test]
fn eval_tta_scores_the_mean_of_the_crops() {
    let (corpus, a, _) = runs();
    let out = stdout(
        ser()
            .args(["eval", "--json", "-", "--tta", "3", "--model"])
            .arg(a)
            .arg("--data")
            .arg(corpus),
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut clf = Classifier::load(a, DeviceChoice::Cpu).unwrap();
    let labels = clf.cfg.labels.clone();
    let (mut loss, mut correct, mut n) = (0.0, 0, 0);
    for (file, label) in clips(corpus) {
        let audio = load_audio(&file, Some(16_000)).unwrap();
        let lm = Classifier::features(&clf.cfg, &audio.samples).unwrap();
        let p = hand_tta(&mut clf, &lm, crop_frames(), 3);
        let y = labels.iter().position(|l| *l == label).unwrap();
        loss -= p[y].ln();
        let best = (0..p.len()).fold(0, |b, i| if p[i] > p[b] { i } else { b });
        correct += usize::from(best == y);
        n += 1;
    }
    let got = report["loss"].as_f64().unwrap();
    assert!(
        (got - loss / n as f64).abs() <= 1e-6,
        "{got} vs {}",
        loss / n as f64
    );
    let wa = report["scores"]["accuracy"].as_f64().unwrap();
    assert!(
        (wa - correct as f64 / n as f64).abs() < 1e-12,
        "{wa} vs {correct}/{n}"
    );
    assert_eq!(report["tta"], 3);
}

#[test]
fn tta_out_of_range_is_refused_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("no-such-run");
    for v in ["0", "17", "-1"] {
        for cmd in ["eval", "predict"] {
            let mut c = ser();
            c.arg(cmd).arg("--model").arg(&missing).args(["--tta", v]);
            if cmd == "eval" {
                c.arg("--data").arg(d.path());
            } else {
                c.arg("x.wav");
            }
            let out = c.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{cmd} --tta {v}");
            // -1 is refused by the parser as no whole number, 0 and 17 by the range check
            let range = if v == "-1" { "whole number" } else { "16" };
            assert!(
                err.contains(&format!("--tta {v}"))
                    && err.contains(range)
                    && !err.contains("no-such-run"),
                "{cmd} --tta {v}: {err}"
            );
        }
    }
}

/// `run`'s copy whose outputs are the classes in reverse order (config.json and the
/// checkpoint's metadata both say so): the same model under relabelled outputs.
fn relabelled(run: &Path, out: &Path) -> Vec<String> {
    std::fs::create_dir_all(out).unwrap();
    let cfg = std::fs::read_to_string(run.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let labels: Vec<String> = serde_json::from_value(v["labels"].clone()).unwrap();
    let rev: Vec<String> = labels.iter().rev().cloned().collect();
    v["labels"] = serde_json::json!(rev);
    std::fs::write(out.join("config.json"), v.to_string()).unwrap();
    // same length, so the safetensors header keeps its size
    let esc = |l: &[String]| {
        l.iter()
            .map(|s| format!("\\\"{s}\\\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    let st = std::fs::read(run.join("model.safetensors")).unwrap();
    let (from, to) = (esc(&labels), esc(&rev));
    let pos = st
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("labels in the checkpoint's metadata");
    let mut st2 = st.clone();
    st2[pos..pos + to.len()].copy_from_slice(to.as_bytes());
    std::fs::write(out.join("model.safetensors"), st2).unwrap();
    rev
}

#[test]
fn an_ensemble_predicts_the_mean_of_its_members_by_label() {
    let (corpus, a, b) = runs();
    let d = tempfile::tempdir().unwrap();
    let b_rev = d.path().join("b-rev");
    let rev = relabelled(b, &b_rev);
    let files: Vec<PathBuf> = clips(corpus).into_iter().step_by(5).map(|c| c.0).collect();
    let predict = |models: &[&Path], extra: &[&str]| {
        let mut c = ser();
        c.arg("predict").arg("--json");
        for m in models {
            c.arg("--model").arg(m);
        }
        json_lines(&stdout(c.args(extra).args(&files)))
    };
    for extra in [&[][..], &["--tta", "3"][..]] {
        let ra = predict(&[a], extra);
        let rb = predict(&[&b_rev], extra);
        let both = predict(&[a, &b_rev], extra);
        let mut gap = 0.0f64;
        for ((x, y), e) in ra.iter().zip(&rb).zip(&both) {
            let (pa, pb, pe) = (probs(x), probs(y), probs(e));
            assert_eq!(pe.len(), pa.len());
            for (label, v) in &pe {
                let get = |p: &[(String, f64)]| p.iter().find(|(l, _)| l == label).unwrap().1;
                let want = (get(&pa) + get(&pb)) / 2.0;
                assert!((v - want).abs() <= 1e-12, "{label}: {v} vs {want}");
                gap = gap.max((get(&pa) - get(&pb)).abs());
            }
        }
        assert!(gap > 1e-4, "the members agree, which tests little");
    }
    // the relabelled copy really is relabelled: its text row lists its labels in its order
    let text = stdout(
        ser()
            .arg("predict")
            .arg("--model")
            .arg(&b_rev)
            .arg(&files[0]),
    );
    let at = |l: &str| text.find(&format!("{l} 0.")).unwrap();
    assert!(at(&rev[0]) < at(&rev[rev.len() - 1]), "{text}");
}

#[test]
fn an_ensembles_eval_reports_every_member_as_its_own_eval() {
    let (corpus, a, b) = runs();
    let eval = |models: &[&Path]| {
        let mut c = ser();
        c.args(["eval", "--json", "-", "--data"]).arg(corpus);
        for m in models {
            c.arg("--model").arg(m);
        }
        serde_json::from_str::<serde_json::Value>(&stdout(&mut c)).unwrap()
    };
    let both = eval(&[a, b]);
    let members = both["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for (m, run) in members.iter().zip([a, b]) {
        let alone = eval(&[run]);
        assert_eq!(m["scores"], alone["scores"], "{}", run.display());
        assert_eq!(m["confusion"], alone["confusion"]);
        assert_eq!(m["loss"], alone["loss"]);
    }
    assert_eq!(both["model"].as_array().unwrap().len(), 2);
    assert!(both["loss"].as_f64().unwrap().is_finite());
}

#[test]
fn members_that_cannot_share_an_input_or_classes_are_refused_by_name() {
    let (corpus, a, b) = runs();
    let d = tempfile::tempdir().unwrap();
    let mels = d.path().join("mels16");
    train_mels(corpus, &mels, &[], "16");
    // four of the five classes
    let four = d.path().join("four");
    for (f, label) in clips(corpus) {
        if label != "surprise" {
            let to = four.join(&label);
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    let classes = d.path().join("classes4");
    train(&four, &classes, &[]);
    let clip = clips(corpus)[0].0.clone();
    for (other, what) in [(&mels, "n_mels"), (&classes, "the classes")] {
        for cmd in ["predict", "eval", "export"] {
            let mut c = ser();
            c.arg(cmd).arg("--model").arg(a).arg("--model").arg(other);
            match cmd {
                "predict" => c.arg(&clip),
                "eval" => c.arg("--data").arg(corpus),
                _ => c.arg("--onnx").arg(d.path().join("x.onnx")),
            };
            let out = c.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{cmd} {what}");
            assert!(
                err.contains(&*other.to_string_lossy()) && err.contains(what),
                "{cmd} {what}: {err}"
            );
        }
    }
    assert!(!d.path().join("x.onnx").exists());
    // every member is an input: no output inside any of them
    let out = ser()
        .args(["eval", "--model"])
        .arg(a)
        .arg("--model")
        .arg(b)
        .arg("--data")
        .arg(corpus)
        .arg("--json")
        .arg(b.join("eval.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("inside the run folder"),
        "{err}"
    );
    assert!(!b.join("eval.json").exists());
    // one run twice
    let out = ser()
        .args(["predict", "--model"])
        .arg(a)
        .arg("--model")
        .arg(a)
        .arg(&clip)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("named twice"));
}

#[test]
fn a_cv_folder_is_its_fold_runs_and_a_sweep_folder_is_refused() {
    let (corpus, _, _) = runs();
    let d = tempfile::tempdir().unwrap();
    let cv = d.path().join("cv");
    run_ok(
        ser()
            .args(["cv", "--folds", "2", "--epochs", "1", "--data"])
            .arg(corpus)
            .arg("--out")
            .arg(&cv)
            .args(TINY_MODEL),
    );
    let clip = clips(corpus)[3].0.clone();
    let folds = [cv.join("fold-1"), cv.join("fold-2")];
    let by_folder = stdout(
        ser()
            .args(["predict", "--json", "--model"])
            .arg(&cv)
            .arg(&clip),
    );
    let by_runs = stdout(
        ser()
            .args(["predict", "--json", "--model"])
            .arg(&folds[0])
            .arg("--model")
            .arg(&folds[1])
            .arg(&clip),
    );
    assert_eq!(by_folder, by_runs);
    // export: the same single graph either way
    let (x, y) = (d.path().join("x.onnx"), d.path().join("y.onnx"));
    run_ok(
        ser()
            .args(["export", "--model"])
            .arg(&cv)
            .arg("--onnx")
            .arg(&x),
    );
    run_ok(
        ser()
            .args(["export", "--model"])
            .arg(&folds[0])
            .arg("--model")
            .arg(&folds[1])
            .arg("--onnx")
            .arg(&y),
    );
    assert_eq!(std::fs::read(&x).unwrap(), std::fs::read(&y).unwrap());
    // eval of the cv's own corpus is said not to be held out
    let out = run_ok(
        ser()
            .args(["eval", "--model"])
            .arg(&cv)
            .arg("--data")
            .arg(corpus),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a held-out"));
    // a sweep folder: refused, naming a run to give instead
    let sweep = d.path().join("sweep");
    std::fs::create_dir_all(&sweep).unwrap();
    let mut plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cv.join("plan.json")).unwrap()).unwrap();
    plan["kind"] = serde_json::json!("sweep");
    std::fs::write(sweep.join("plan.json"), plan.to_string()).unwrap();
    let out = ser()
        .args(["predict", "--model"])
        .arg(&sweep)
        .arg(&clip)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("sweep folder") && err.contains("fold-1"),
        "{err}"
    );
}

/// The ONNX export of an ensemble, run by onnxruntime (tests/fixtures/onnx_ensemble_cli/: two
/// tiny runs, a clip, and onnxruntime's probabilities of the exported graph on the clip's
/// `ser-engine features`, from tools/onnx_fixtures.py --clip), gives `predict --model a
/// --model b`'s probabilities to 1e-4, the ONNX parity tests' tolerance (tests/onnx_export.rs).
/// The export must still be the graph the fixture came from (same bytes), or the fixture is
/// stale and says how to regenerate it.
#[test]
fn the_onnx_ensemble_gives_what_predict_gives() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx_ensemble_cli");
    let exported = run_ok(
        ser()
            .current_dir(&dir)
            .args(["export", "--model", "a", "--model", "b", "--onnx", "-"]),
    )
    .stdout;
    assert!(
        exported == std::fs::read(dir.join("model.onnx")).unwrap(),
        "the ensemble export changed: regenerate tests/fixtures/onnx_ensemble_cli (steps in \
         tools/onnx_fixtures.py)"
    );
    let want = ser_engine::features::npy::read_npy(&dir.join("probabilities.npy")).unwrap();
    let predict = |models: &[&str]| {
        let mut c = ser();
        c.current_dir(&dir).args(["predict", "--json"]);
        for m in models {
            c.args(["--model", m]);
        }
        probs(&json_lines(&stdout(c.arg("clip.wav")))[0])
    };
    let both = predict(&["a", "b"]);
    // labels in the graph's (metadata) order: the runs' alphabetical class folders
    assert_eq!(both.len(), want.data.len());
    let mut worst = 0.0f64;
    for ((label, p), &w) in both.iter().zip(&want.data) {
        assert!(w.is_finite(), "{label}: {w}");
        worst = worst.max((p - w as f64).abs());
    }
    assert!(worst <= 1e-4, "max |predict - onnxruntime| = {worst:e}");
    // the runs disagree, so a graph that dropped one would not pass
    let (pa, pb) = (predict(&["a"]), predict(&["b"]));
    let gap = pa
        .iter()
        .zip(&pb)
        .map(|((_, x), (_, y))| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(gap > 1e-3, "the runs agree ({gap:e})");
    eprintln!("max |predict - onnxruntime| = {worst:e}");
}
