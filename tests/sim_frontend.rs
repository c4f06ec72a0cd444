//! The device front end (kernels/stft.cu, mel.cu, augment.cu through engine::frontend) on the
//! `sim` device with shuffled thread order (or the GPU with SER_TEST_DEVICE=cuda), against the
//! CPU reference in `features`: each kernel alone with sizes that are not multiples of the
//! block or hop, the whole pipeline on random signals, short clips, silence and real speech,
//! and augmentation with the same Philox numbers as the CPU.
//!
//! The checks themselves live in src/engine/checks/frontend.rs (one body for `cargo test` and
//! `ser-engine check --device sim|cuda`); these are thin wrappers. SER_TEST_DEVICE=cuda runs
//! them on the GPU.

mod common;

use common::max_abs_diff;
use ser_engine::device::Device;
use ser_engine::engine::checks::frontend::{compare_log_mel, pad_batch, signal};
use ser_engine::engine::frontend::DeviceFrontEnd;
use ser_engine::features::{log_mel, MelConfig};

fn device() -> Device {
    common::device(11)
}

fn run(name: &str) {
    ser_engine::engine::checks::run_test("frontend", name);
}

#[test]
fn stft_power_matches_cpu() {
    run("stft_power_matches_cpu");
}

#[test]
fn mel_power_and_db_match_cpu() {
    run("mel_power_and_db_match_cpu");
}

#[test]
fn pipeline_matches_cpu_on_random_signals_short_clips_and_silence() {
    run("pipeline_matches_cpu_on_random_signals_short_clips_and_silence");
}

#[test]
fn augmentation_matches_cpu() {
    run("augmentation_matches_cpu");
}

// ---- not device-vs-cpu checks of the library: CLI runs and data on disk

#[test]
fn pipeline_matches_cpu_on_real_speech() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/eyase");
    let mut files: Vec<_> = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "wav"))
        .map(|e| e.path().to_path_buf())
        .take(4)
        .collect();
    if files.len() < 3 {
        eprintln!("skipping: {root} not found (real-speech front-end test)");
        return;
    }
    files.truncate(4);
    let dev = device();
    let mut clips = Vec::new();
    let mut sr = 0;
    // Mixed lengths: up to 2.0 s, 1.6 s, 1.2 s, 0.8 s (+ odd offsets, none a multiple of hop).
    for (i, f) in files.iter().enumerate() {
        let a = ser_engine::audio::load_audio(f, None).unwrap();
        sr = a.sample_rate;
        let n = (((2.0 - 0.4 * i as f64) * sr as f64) as usize + 13 * i + 1).min(a.samples.len());
        let start = (a.samples.len() - n) / 2;
        clips.push(a.samples[start..start + n].to_vec());
    }
    let cfg = MelConfig::default();
    let fe = DeviceFrontEnd::new(&dev, sr, &cfg).unwrap();
    let (pcm, _, lengths) = pad_batch(&clips);
    let dpcm = dev.htod(&pcm).unwrap();
    let t0 = std::time::Instant::now();
    let (out, frames) = fe.log_mel_batch(&dev, &dpcm, &lengths, None).unwrap();
    let got = dev.dtoh(&out).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let want: Vec<_> = clips.iter().map(|c| log_mel(c, sr, &cfg)).collect();
    let err = compare_log_mel(&got, &frames, &want, cfg.n_mels);
    eprintln!(
        "real speech ({} clips, {:?} samples at {sr} Hz): max abs error {err:.3e} dB ({secs:.2} s on {})",
        clips.len(),
        lengths,
        dev.describe()
    );
    assert!(err <= 1e-3, "max abs error {err} dB");
}

#[test]
fn cli_features_on_sim_writes_what_the_cpu_writes() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for (i, x) in signal(31, 7_001, 16000.0).iter().enumerate() {
        w.write_sample(((x * 32767.0).round() as i16).wrapping_add((i % 3) as i16))
            .unwrap();
    }
    w.finalize().unwrap();
    let mut outs = Vec::new();
    for device in ["cpu", "sim"] {
        let out = dir.path().join(device);
        assert_cmd::Command::cargo_bin("ser-engine")
            .unwrap()
            .args(["--quiet", "--device", device, "features"])
            .arg(&wav)
            .arg("--out")
            .arg(&out)
            .arg("--png")
            .assert()
            .success();
        assert!(out.join("tone.png").is_file());
        outs.push(ser_engine::features::npy::read_npy(&out.join("tone.npy")).unwrap());
    }
    assert_eq!(outs[0].shape, outs[1].shape);
    let err = max_abs_diff(&outs[0].data, &outs[1].data);
    // the same 1e-3 dB the library-level comparison uses
    assert!(err <= 1e-3, "cli sim vs cpu: {err} dB");
}
