//! Kill-during-save: `train` killed (SIGKILL, through the `SER_ENGINE_KILL_AT` hook of the atomic
//! writes) at random points of its checkpoint writes, then `--resume`d. A resumed run must end
//! with the same metrics and the same best weights, byte for byte, as an uninterrupted one; the
//! only refusal allowed is for a run killed before its first epoch was published (no run folder
//! yet), and it must say so.

mod common;

use common::cli::{run_ok, ser, tiny_corpus, TINY_MODEL};
use ser_engine::rng::{Purpose, Stream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

const EPOCHS: &str = "2";

fn train(data: &Path, out: &Path, kill_at: Option<u64>) -> std::process::Output {
    let mut c = ser();
    c.arg("train")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--epochs", EPOCHS, "--lr", "3e-3", "--schedule", "plateau"])
        .args(TINY_MODEL);
    if let Some(k) = kill_at {
        c.env("SER_ENGINE_KILL_AT", k.to_string());
    }
    c.output().unwrap()
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn a_kill_at_any_point_of_a_checkpoint_write_resumes_exactly_or_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let whole = d.path().join("whole");
    let out = train(&data, &whole, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want_metrics = std::fs::read(whole.join("metrics.jsonl")).unwrap();
    let want_model = std::fs::read(whole.join("model.safetensors")).unwrap();
    // The write points of one run: per epoch, at most the best weights, the metrics and the
    // resume state (each: its bytes + 2 points), plus config.json once. The last point killed
    // is the last save's rename, so the range covers the whole run's writes.
    let epochs: u64 = EPOCHS.parse().unwrap();
    let per_epoch = [
        "model.safetensors",
        "metrics.jsonl",
        "resume/state.safetensors",
    ]
    .iter()
    .map(|f| size(&whole.join(f)) + 2)
    .sum::<u64>();
    let points = epochs * per_epoch + size(&whole.join("config.json")) + 2;
    // Random points, plus the first and last ones (a cut-short first write; the last rename).
    let rng = Stream::new(2026, Purpose::Shuffle, 26);
    let mut at: Vec<u64> = (0..10)
        .map(|i| (rng.uniform(i) as f64 * points as f64) as u64)
        .collect();
    at.extend([0, points - 1]);
    let (mut exact, mut refused, mut killed) = (0, 0, 0);
    for (i, &k) in at.iter().enumerate() {
        let run = d.path().join(format!("killed-{i}"));
        let out = train(&data, &run, Some(k));
        if out.status.signal() == Some(libc::SIGKILL) {
            killed += 1;
        } else {
            assert!(
                out.status.success(),
                "kill point {k}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let resumed = ser()
            .args(["train", "--epochs", EPOCHS, "--resume"])
            .arg(&run)
            .output()
            .unwrap();
        if resumed.status.success() {
            assert!(
                std::fs::read(run.join("metrics.jsonl")).unwrap() == want_metrics,
                "kill point {k}: the resumed run's metrics differ"
            );
            assert!(
                std::fs::read(run.join("model.safetensors")).unwrap() == want_model,
                "kill point {k}: the resumed run's best weights differ"
            );
            exact += 1;
        } else {
            let err = String::from_utf8_lossy(&resumed.stderr);
            assert!(
                !run.join("config.json").exists() && err.contains("not a run folder"),
                "kill point {k}: a published run was refused: {err}"
            );
            refused += 1;
        }
    }
    eprintln!(
        "{} kill points of {points}: {killed} killed, {exact} resumed exactly, {refused} refused \
         (killed before the first epoch was published)",
        at.len()
    );
    assert!(killed >= at.len() - 1, "the hook did not kill");
    assert!(exact > 0);
}

/// A real `kill -9` at random times during training (not only in a write), several times in a
/// row on the same run folder, then one resume: the same result as an uninterrupted run.
#[test]
fn repeated_random_kills_then_resume_end_like_an_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let whole = d.path().join("whole");
    assert!(train(&data, &whole, None).status.success());
    let run = d.path().join("run");
    run_ok(
        ser()
            .arg("train")
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&run)
            .args(["--epochs", "1", "--lr", "3e-3", "--schedule", "plateau"])
            .args(TINY_MODEL),
    );
    let rng = Stream::new(2026, Purpose::Shuffle, 27);
    for i in 0..3u64 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ser-engine"))
            .args(["--device", "cpu", "--threads", "2", "-q", "train"])
            .args(["--epochs", EPOCHS, "--resume"])
            .arg(&run)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(
            50 + (rng.uniform(i) * 400.0) as u64,
        ));
        let _ = child.kill();
        child.wait().unwrap();
    }
    run_ok(
        ser()
            .args(["train", "--epochs", EPOCHS, "--resume"])
            .arg(&run),
    );
    for f in ["metrics.jsonl", "model.safetensors"] {
        assert!(
            std::fs::read(run.join(f)).unwrap() == std::fs::read(whole.join(f)).unwrap(),
            "{f} differs from the uninterrupted run's"
        );
    }
}
