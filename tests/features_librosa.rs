//! The CPU front end against librosa 0.11: the synthetic fixtures in tests/fixtures/librosa
//! (made by tools/librosa_fixtures.py) and librosa's log-Mel of 12 real EYASE clips in
//! ../shared/data/eyase-librosa (skipped when that folder is absent).
//!
//! Tolerance: 1e-3 dB max abs. Our arithmetic differs from librosa's only in rounding (librosa
//! stores the spectrum as complex64 and multiplies by the filterbank in float32 BLAS; we keep
//! f64 until the mel sum), i.e. ~1e-6 relative in power = ~5e-6 dB; values at the -top_db
//! floor are clipped identically. 1e-3 dB leaves room for that and still catches any real
//! difference (a wrong window, frame offset or filter edge shows up as ≥ 0.01 dB).

mod common;

use common::max_abs_diff;
use ser_engine::features::npy::read_npy;
use ser_engine::features::{log_mel, MelConfig};
use std::path::{Path, PathBuf};

const TOL_DB: f32 = 1e-3;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/librosa")
}

#[test]
fn synthetic_fixtures_match_librosa() {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest parses");
    let cases = manifest["cases"].as_array().expect("cases");
    assert!(cases.len() >= 18, "fixture set is incomplete");
    let mut worst = (0.0f32, String::new());
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let sr = c["sr"].as_u64().unwrap() as u32;
        let cfg = MelConfig {
            n_fft: c["n_fft"].as_u64().unwrap() as usize,
            hop: c["hop"].as_u64().unwrap() as usize,
            n_mels: c["n_mels"].as_u64().unwrap() as usize,
            fmin: c["fmin"].as_f64().unwrap() as f32,
            fmax: c["fmax"].as_f64().unwrap() as f32,
            top_db: c["top_db"].as_f64().unwrap() as f32,
        };
        let input = read_npy(&fixtures().join(format!("{name}.in.npy"))).unwrap();
        let want = read_npy(&fixtures().join(format!("{name}.out.npy"))).unwrap();
        assert_eq!(input.shape.len(), 1);
        let got = log_mel(&input.data, sr, &cfg);
        assert_eq!(
            vec![got.n_mels, got.frames],
            want.shape,
            "{name}: shape differs from librosa"
        );
        let err = max_abs_diff(&got.data, &want.data);
        println!(
            "{name:>14} sr {sr:>5} shape {:?}: max |diff| {err:.2e} dB",
            want.shape
        );
        assert!(err <= TOL_DB, "{name}: max |diff| {err} dB > {TOL_DB}");
        if err > worst.0 {
            worst = (err, name.to_string());
        }
    }
    println!("worst case {}: {:.2e} dB", worst.1, worst.0);
}

/// 16-bit PCM WAV to mono f32 the way librosa loads it (sample / 32768, channels averaged).
fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let mut r = hound::WavReader::open(path).expect("open wav");
    let spec = r.spec();
    assert_eq!(spec.bits_per_sample, 16);
    let ch = spec.channels as usize;
    let raw: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let mono = raw
        .chunks(ch)
        .map(|f| f.iter().map(|&s| s as f32 / 32768.0).sum::<f32>() / ch as f32)
        .collect();
    (mono, spec.sample_rate)
}

#[test]
fn eyase_speech_matches_librosa() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let refs = data.join("eyase-librosa");
    let Ok(index) = std::fs::read_to_string(refs.join("index.json")) else {
        eprintln!("skipping: {} not found", refs.display());
        return;
    };
    let index: serde_json::Value = serde_json::from_str(&index).expect("index.json parses");
    let entries = index.as_object().expect("index is an object");
    assert_eq!(entries.len(), 12);
    let cfg = MelConfig::default();
    let mut worst = 0.0f32;
    for (npy, meta) in entries {
        let src = data.join(meta["source"].as_str().unwrap());
        let (samples, sr) = read_wav(&src);
        assert_eq!(sr as u64, meta["sr"].as_u64().unwrap());
        assert_eq!(samples.len() as u64, meta["samples"].as_u64().unwrap());
        let want = read_npy(&refs.join(npy)).unwrap();
        let got = log_mel(&samples, sr, &cfg);
        assert_eq!(vec![got.n_mels, got.frames], want.shape, "{npy}");
        let err = max_abs_diff(&got.data, &want.data);
        println!("{npy:>28}: max |diff| {err:.2e} dB");
        assert!(err <= TOL_DB, "{npy}: max |diff| {err} dB > {TOL_DB}");
        worst = worst.max(err);
    }
    println!("EYASE worst: {worst:.2e} dB over 12 clips");
}

#[test]
fn npy_reader_reads_numpy_written_files() {
    let a = read_npy(&fixtures().join("npy_check_2d.npy")).unwrap();
    assert_eq!(a.shape, vec![3, 4]);
    let want: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
    assert_eq!(a.data, want);
    let b = read_npy(&fixtures().join("npy_check_1d.npy")).unwrap();
    assert_eq!(b.shape, vec![5]);
    assert_eq!(b.data, vec![0.0, 0.125, 0.25, 0.375, 0.5]);
}
