//! Huge inputs (issue 14, class 3) from the command line: a 10-minute clip in a training
//! corpus is cropped to --max-seconds at bounded memory, a batch that cannot fit is refused
//! before it is allocated with what to change, and a WAV header claiming 1 Hz is an error
//! naming the file. Its own test binary: the peak-memory figure is over this binary's
//! children only.

mod common;

use common::cli::{ser_loud as ser, write_wav_i16};
use predicates::prelude::*;
use predicates::str::contains;
use std::path::{Path, PathBuf};

/// A tone with a little deterministic noise, 16-bit mono.
fn write_wav(path: &Path, seconds: f64, rate: u32, header_rate: u32) {
    let n = (seconds * rate as f64) as usize;
    let mut x: u32 = 12345;
    let samples = (0..n).map(move |i| {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (x >> 16) as f32 / 65536.0 - 0.5;
        let v = 0.3 * (i as f32 * 220.0 * std::f32::consts::TAU / rate as f32).sin() + 0.05 * noise;
        (v * 32767.0) as i16
    });
    write_wav_i16(path, header_rate, samples);
}

/// 5 classes x 4 synthetic clips plus one 10-minute clip of class anger.
fn corpus_with_long_clip(dir: &Path) -> PathBuf {
    let root = dir.join("corpus");
    ser()
        .args(["-q", "synth", "--per-class", "4", "--out"])
        .arg(&root)
        .assert()
        .success();
    write_wav(
        &root.join("anger").join("anger_s1_999.wav"),
        600.0,
        16_000,
        16_000,
    );
    root
}

/// Largest resident set of any child this process has waited for, bytes.
fn children_peak_rss() -> u64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) },
        0
    );
    ru.ru_maxrss as u64 * 1024
}

#[test]
fn long_clips_train_cropped_at_bounded_memory_and_oversized_batches_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = corpus_with_long_clip(d.path());
    // The paper's conv channels: the full 10 minutes in one batch would need about 5 GB of
    // activations at 32 mels; cropped to the default 10 s, a few tens of MB.
    ser()
        .arg("train")
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(d.path().join("run"))
        .args(["--epochs", "1", "--n-mels", "32", "--batch-size", "8"])
        .args(["--fc-size", "16", "--hidden-size", "8"])
        .assert()
        .success()
        .stderr(contains("1 clip(s) are longer than --max-seconds 10"));
    let peak = children_peak_rss();
    println!("peak RSS of the training process: {} MiB", peak >> 20);
    assert!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);

    // A batch that cannot fit the memory it may use is refused before it is allocated.
    ser()
        .env("SER_ENGINE_MEMORY_LIMIT_MIB", "256")
        .arg("train")
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(d.path().join("run2"))
        .args(["--epochs", "1", "--n-mels", "32", "--max-seconds", "600"])
        .assert()
        .code(1)
        .stderr(contains("lower --batch-size or --max-seconds"))
        .stderr(contains("panicked").not());
    assert!(!d.path().join("run2").exists());
}

#[test]
fn a_header_claiming_an_absurd_sample_rate_is_an_error_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("corpus");
    ser()
        .args(["-q", "synth", "--per-class", "4", "--out"])
        .arg(&root)
        .assert()
        .success();
    // 16000 samples whose header claims 1 Hz: resampled to 16 kHz it would be 4.4 hours.
    let bad = root.join("anger").join("anger_s1_998.wav");
    write_wav(&bad, 1.0, 16_000, 1);
    let run = d.path().join("run");
    ser()
        .arg("train")
        .arg("--data")
        .arg(&root)
        .arg("--out")
        .arg(&run)
        .args(["--epochs", "1", "--n-mels", "32", "--channels", "4,8,8"])
        .args(["--fc-size", "16", "--hidden-size", "8", "--batch-size", "8"])
        .assert()
        .success()
        .stderr(contains("anger_s1_998.wav"))
        .stderr(contains("sample rate 1 Hz is outside"));
    ser()
        .arg("predict")
        .arg("--model")
        .arg(&run)
        .arg(&bad)
        .assert()
        .code(1)
        .stderr(contains("anger_s1_998.wav"))
        .stderr(contains("1 Hz"));
}
