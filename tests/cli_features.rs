//! `ser-engine features` end to end: writes .npy files that read back with the right shape and
//! values (equal to the library's `log_mel`), folder inputs, PNG output, and per-file errors
//! that name the file and make the exit status non-zero while other files are still written.

mod common;

use assert_cmd::Command;
use common::cli::write_wav_i16;
use predicates::str::contains;
use ser_engine::features::npy::read_npy;
use ser_engine::features::{log_mel, n_frames, MelConfig};
use std::path::Path;

/// A 16-bit mono WAV of a tone; returns the samples as the decoder will see them (/32768).
fn write_wav(path: &Path, sr: u32, n: usize, freq: f32) -> Vec<f32> {
    let pcm: Vec<i16> = (0..n)
        .map(|i| {
            (0.4 * (2.0 * std::f32::consts::PI * freq * i as f32 / sr as f32).sin() * 32767.0)
                .round() as i16
        })
        .collect();
    write_wav_i16(path, sr, pcm.iter().copied());
    pcm.iter().map(|&v| v as f32 / 32768.0).collect()
}

#[test]
fn writes_npy_and_png_for_files_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.wav");
    let sub = dir.path().join("set/inner");
    std::fs::create_dir_all(&sub).unwrap();
    let xa = write_wav(&a, 16000, 9000, 440.0);
    let xb = write_wav(&sub.join("b.wav"), 22050, 5000, 1000.0);
    std::fs::write(sub.join("notes.txt"), "not audio").unwrap();
    let out = dir.path().join("out");
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["--quiet", "features"])
        .arg(&a)
        .arg(dir.path().join("set"))
        .arg("--out")
        .arg(&out)
        .arg("--png")
        .assert()
        .success();
    let cfg = MelConfig::default();
    for (npy, x, sr) in [
        (out.join("a.npy"), &xa, 16000),
        (out.join("inner/b.npy"), &xb, 22050),
    ] {
        let got = read_npy(&npy).unwrap();
        assert_eq!(got.shape, vec![128, n_frames(x.len(), 256)]);
        // Same code path, so bit-identical.
        assert_eq!(got.data, log_mel(x, sr, &cfg).data);
        assert!(npy.with_extension("png").is_file());
        #[cfg(unix)]
        {
            // Written through a temporary file, but not left private (0600) like one.
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&npy).unwrap().permissions().mode();
            assert_eq!(mode & 0o044, 0o044, "mode {mode:o}");
        }
    }
    // No temporary files left behind.
    let leftovers: Vec<_> = walk(&out).into_iter().filter(|p| !is_output(p)).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            v.extend(walk(&path));
        } else {
            v.push(path);
        }
    }
    v
}

fn is_output(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("npy" | "png"))
}

#[test]
fn custom_parameters_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("c.wav");
    let x = write_wav(&a, 16000, 4001, 300.0);
    let out = dir.path().join("o");
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["-q", "features"])
        .arg(&a)
        .arg("--out")
        .arg(&out)
        .args(["--n-fft", "1024", "--hop", "160", "--n-mels", "64"])
        .args(["--fmin", "0", "--fmax", "4000", "--top-db", "60"])
        .assert()
        .success();
    let cfg = MelConfig {
        n_fft: 1024,
        hop: 160,
        n_mels: 64,
        fmin: 0.0,
        fmax: 4000.0,
        top_db: 60.0,
    };
    let got = read_npy(&out.join("c.npy")).unwrap();
    assert_eq!(got.shape, vec![64, n_frames(4001, 160)]);
    assert_eq!(got.data, log_mel(&x, 16000, &cfg).data);
}

#[test]
fn missing_input_is_named_and_others_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.wav");
    write_wav(&good, 16000, 3000, 440.0);
    let missing = dir.path().join("does_not_exist.wav");
    let out = dir.path().join("out");
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["-q", "features"])
        .arg(&missing)
        .arg(&good)
        .arg("--out")
        .arg(&out)
        .assert()
        .failure()
        .stderr(contains("does_not_exist.wav"))
        .stderr(contains("1 of 2 inputs failed"));
    assert!(out.join("good.npy").is_file());
    assert!(!out.join("does_not_exist.npy").exists());
}

#[test]
fn bad_config_for_the_rate_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("low.wav");
    write_wav(&a, 8000, 3000, 440.0);
    // fmax 7600 Hz is above Nyquist at 8 kHz.
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["-q", "features"])
        .arg(&a)
        .arg("--out")
        .arg(dir.path().join("o"))
        .assert()
        .failure()
        .stderr(contains("low.wav"))
        .stderr(contains("Nyquist"));
}
