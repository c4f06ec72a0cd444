//! Helpers of the tests that run the binary (cli_deploy, cli_robust, cli_long_clip, cli_train,
//! cli_sweep, fuzz_inputs): the command on the cpu device, a run that must succeed, 16-bit WAV
//! files, a tiny corpus and a tiny model.

use assert_cmd::Command;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The binary on the cpu device with 2 threads (so tests sharing a machine stay predictable),
/// without progress output.
pub fn ser() -> Command {
    let mut c = ser_loud();
    c.arg("-q");
    c
}

/// [`ser`] with the progress output and warnings a user sees.
pub fn ser_loud() -> Command {
    let mut c = Command::cargo_bin("ser-engine").unwrap();
    c.args(["--device", "cpu", "--threads", "2"]);
    c
}

/// Runs `cmd` and asserts that it succeeded, printing its stderr when not; its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A 16-bit mono WAV file whose header says `rate` Hz.
pub fn write_wav_i16(path: &Path, rate: u32, samples: impl IntoIterator<Item = i16>) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

/// A tiny model (hidden flags) so that one epoch on [`tiny_corpus`] takes well under a second
/// on the CPU.
pub const TINY_MODEL: &[&str] = &[
    "--channels",
    "4,8,8",
    "--fc-size",
    "16",
    "--hidden-size",
    "8",
    "--n-mels",
    "32",
    "--batch-size",
    "8",
];

/// 5 classes x 6 synthetic clips at 16 kHz (seed 7) in `dir/corpus`.
pub fn tiny_corpus(dir: &Path) -> PathBuf {
    let root = dir.join("corpus");
    let cfg = ser_engine::audio::synth::SynthConfig {
        per_class: 6,
        sample_rate: 16_000,
        seed: 7,
    };
    ser_engine::audio::synth::write_corpus(&root, &cfg, false).unwrap();
    root
}

/// Trains the tiny model ([`TINY_MODEL`]) on `corpus` for `epochs` epochs into `out`.
pub fn train_tiny(corpus: &Path, out: &Path, epochs: usize) {
    run_ok(
        ser()
            .args(["train", "--data"])
            .arg(corpus)
            .arg("--out")
            .arg(out)
            .args(["--epochs", &epochs.to_string()])
            .args(TINY_MODEL),
    );
}
