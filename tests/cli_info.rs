//! `ser-engine info` through the binary: the build line, and a corpus summary on a tiny
//! temporary corpus.

use assert_cmd::Command;
use predicates::str::contains;
use std::path::Path;

fn wav(root: &Path, rel: &str, n: usize, rate: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&p, spec).unwrap();
    for _ in 0..n {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn info_without_data_prints_version_and_threads() {
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["info", "--threads", "3"])
        .assert()
        .success()
        .stdout(contains(format!(
            "ser-engine {}",
            env!("CARGO_PKG_VERSION")
        )))
        .stdout(contains("cpu threads: 3"));
}

/// `SER_CPU_ISA` caps the vector instruction set our SIMD code uses (never above the CPU's),
/// and the front end gives the same features on every path (up to rounding).
#[test]
fn cpu_isa_cap_is_reported_and_changes_no_result() {
    let info = |cap: &str| {
        let out = Command::cargo_bin("ser-engine")
            .unwrap()
            .env("SER_CPU_ISA", cap)
            .arg("info")
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let out = String::from_utf8(out).unwrap();
        out.lines()
            .find(|l| l.starts_with("cpu isa: "))
            .unwrap_or_else(|| panic!("no isa line in {out}"))
            .to_string()
    };
    let detected = info("auto");
    assert!(info("baseline").contains(", baseline in use"));
    let avx2 = info("avx2");
    if detected.contains("baseline detected") {
        assert!(avx2.contains(", baseline in use"), "{avx2}");
    } else {
        assert!(avx2.contains(", avx2 in use"), "{avx2}");
    }
    // features of a clip long enough for the lane FFT, on each path
    let d = tempfile::tempdir().unwrap();
    let clip = d.path().join("clips/a.wav");
    std::fs::create_dir_all(clip.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&clip, spec).unwrap();
    for i in 0..32000u32 {
        let t = i as f32 / 16000.0;
        let v = (t * 2.0 * std::f32::consts::PI * (200.0 + 900.0 * t)).sin() * 8000.0;
        w.write_sample(v as i16 + (i.wrapping_mul(2654435761) >> 28) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
    let feats = |cap: &str| {
        let out = d.path().join(cap);
        Command::cargo_bin("ser-engine")
            .unwrap()
            .env("SER_CPU_ISA", cap)
            .args(["-q", "features"])
            .arg(d.path().join("clips"))
            .arg("--out")
            .arg(&out)
            .assert()
            .success();
        let b = std::fs::read(out.join("a.npy")).unwrap();
        b[b.len() - 4 * 128 * 126..]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<f32>>()
    };
    let base = feats("baseline");
    assert!(base.iter().all(|x| x.is_finite()) && base.iter().any(|&x| x != 0.0));
    for cap in ["avx2", "auto"] {
        let v = feats(cap);
        assert!(v.iter().all(|x| x.is_finite()), "{cap}");
        let worst = v
            .iter()
            .zip(&base)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // f64 FFTs that differ by rounding only; in dB after f32 rounding: far below 1e-3
        assert!(worst < 1e-3, "{cap}: {worst} dB");
    }
}

#[test]
fn info_summarises_a_corpus() {
    let d = tempfile::tempdir().unwrap();
    // EYASE-style: 3 clips of 1 s at 16 kHz and one 2 s clip at 8 kHz, plus a broken file.
    wav(d.path(), "Female01/fm01_ang (1).wav", 16_000, 16_000);
    wav(d.path(), "Female01/fm01_hap (1).wav", 16_000, 16_000);
    wav(d.path(), "Male01/ml01_ang (2).wav", 16_000, 16_000);
    wav(d.path(), "Male01/ml01_sad (1).wav", 16_000, 8000);
    std::fs::write(d.path().join("Male01/ml01_neu (1).wav"), "not audio").unwrap();
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["info", "--data"])
        .arg(d.path())
        .assert()
        .success()
        .stdout(contains("format: eyase"))
        .stdout(contains("clips: 4"))
        .stdout(contains("duration: 0:00:05"))
        .stdout(contains("sample rates: 8000 Hz (1), 16000 Hz (3)"))
        .stdout(contains("classes: 3"))
        .stdout(contains(
            "  anger: 2 clips, 0:00:02\n  happiness: 1 clips, 0:00:01\n  sadness: 1 clips, 0:00:02",
        ))
        .stdout(contains("speakers: 2 (Female01, Male01)"))
        .stdout(contains("unreadable: 1"))
        .stdout(contains("ml01_neu (1).wav: "));
}

#[test]
fn info_with_a_missing_corpus_fails_naming_it() {
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["info", "--data", "/nonexistent/corpus dir"])
        .assert()
        .failure()
        .stderr(contains("/nonexistent/corpus dir"));
}

#[test]
fn info_lists_devices_and_why_one_is_missing() {
    // No GPU on CI: the report must say cuda is unavailable and why, and that sim works.
    let out = Command::cargo_bin("ser-engine")
        .unwrap()
        .arg("info")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains("cuda"), "{text}");
    assert!(text.contains("sim"), "{text}");
}

#[test]
fn model_summary_gives_the_paper_sizes() {
    // Table 3 of the paper / MODEL_SPEC.md, counted without BatchNorm for 5 classes.
    for (k, total) in [("3", "554374"), ("7", "965254"), ("11", "1704838")] {
        Command::cargo_bin("ser-engine")
            .unwrap()
            .args([
                "info",
                "--model-summary",
                "--no-batchnorm",
                "--kernel-size",
                k,
            ])
            .assert()
            .success()
            .stdout(contains("lstm.weight_hh_l1_reverse"))
            .stdout(contains(total));
    }
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["info", "--model-summary", "--classes", "4"])
        .assert()
        .success()
        .stdout(contains("of which BatchNorm"))
        .stdout(contains("448"));
    Command::cargo_bin("ser-engine")
        .unwrap()
        .args(["info", "--model-summary", "--kernel-size", "4"])
        .assert()
        .failure();
}
