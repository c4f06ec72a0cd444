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

/// `train` on `out`: a new 1-epoch run, or (`resume`) `out` continued to EPOCHS epochs; with
/// the kill hook at point `kill_at` and/or its write log.
fn train(
    data: &Path,
    out: &Path,
    resume: bool,
    kill_at: Option<u64>,
    log: Option<&Path>,
) -> std::process::Output {
    let mut c = ser();
    c.arg("train");
    if resume {
        c.args(["--epochs", EPOCHS, "--resume"]).arg(out);
    } else {
        c.arg("--data")
            .arg(data)
            .arg("--out")
            .arg(out)
            .args(["--epochs", "1", "--lr", "3e-3", "--schedule", "plateau"])
            .args(TINY_MODEL);
    }
    if let Some(k) = kill_at {
        c.env("SER_ENGINE_KILL_AT", k.to_string());
    }
    if let Some(l) = log {
        c.env("SER_ENGINE_KILL_LOG", l);
    }
    c.output().unwrap()
}

fn ok(o: std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Every write's (first point, points) from a run with the write log on.
fn write_points(log: &Path) -> Vec<(u64, u64, String)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, ' ');
            let first = f.next().unwrap().parse().unwrap();
            let n = f.next().unwrap().parse().unwrap();
            (first, n, f.next().unwrap().to_string())
        })
        .collect()
}

#[test]
fn a_kill_at_any_point_of_a_checkpoint_write_resumes_exactly_or_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    // The uninterrupted result: one epoch, then resumed to EPOCHS (the plateau schedule does
    // not depend on the epoch budget, so this equals one run of EPOCHS).
    let whole = d.path().join("whole");
    let (log_new, log_resume) = (d.path().join("new.log"), d.path().join("resume.log"));
    ok(train(&data, &whole, false, None, Some(&log_new)));
    ok(train(&data, &whole, true, None, Some(&log_resume)));
    let want_metrics = std::fs::read(whole.join("metrics.jsonl")).unwrap();
    let want_model = std::fs::read(whole.join("model.safetensors")).unwrap();
    let rng = Stream::new(2026, Purpose::Shuffle, 26);
    let (mut exact, mut refused, mut runs) = (0, 0, 0);
    for (resume, log) in [(false, &log_new), (true, &log_resume)] {
        let writes = write_points(log);
        let files: Vec<&str> = writes.iter().map(|w| w.2.as_str()).collect();
        assert!(
            files.iter().any(|f| f.ends_with("state.safetensors")),
            "{files:?}"
        );
        // Each write's first point (nothing written yet) and last (just renamed: the moment
        // a two-file checkpoint is half old, half new), and a random point inside each resume
        // state write.
        let mut at: Vec<u64> = Vec::new();
        for (i, (first, n, file)) in writes.iter().enumerate() {
            at.extend([*first, first + n - 1]);
            if file.ends_with("state.safetensors") {
                at.push(first + 1 + (rng.uniform(i as u64) as f64 * (n - 2) as f64) as u64);
            }
        }
        for k in at {
            runs += 1;
            let run = d.path().join(format!("killed-{runs}"));
            if resume {
                ok(train(&data, &run, false, None, None));
            }
            let out = train(&data, &run, resume, Some(k), None);
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGKILL),
                "kill point {k} (resume {resume}): not killed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let resumed = train(&data, &run, true, None, None);
            if resumed.status.success() {
                assert!(
                    std::fs::read(run.join("metrics.jsonl")).unwrap() == want_metrics,
                    "kill point {k} (resume {resume}): the resumed run's metrics differ"
                );
                assert!(
                    std::fs::read(run.join("model.safetensors")).unwrap() == want_model,
                    "kill point {k} (resume {resume}): the resumed run's best weights differ"
                );
                exact += 1;
            } else {
                let err = String::from_utf8_lossy(&resumed.stderr);
                assert!(
                    !resume
                        && !run.join("config.json").exists()
                        && err.contains("not a run folder"),
                    "kill point {k} (resume {resume}): a published run was refused: {err}"
                );
                refused += 1;
            }
        }
    }
    eprintln!(
        "{runs} kills (first and last point of every write of a new run's first epoch and of a \
         resumed run's next epoch, a random point inside each resume state write): {exact} \
         resumed exactly, {refused} refused (killed before the new run's first epoch was \
         published)"
    );
    assert!(exact > refused, "{exact} exact, {refused} refused");
}

/// A real `kill -9` at random times during training (not only in a write), several times in a
/// row on the same run folder, then one resume: the same result as an uninterrupted run.
#[test]
fn repeated_random_kills_then_resume_end_like_an_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    let data = tiny_corpus(d.path());
    let whole = d.path().join("whole");
    ok(train(&data, &whole, false, None, None));
    ok(train(&data, &whole, true, None, None));
    let run = d.path().join("run");
    ok(train(&data, &run, false, None, None));
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
