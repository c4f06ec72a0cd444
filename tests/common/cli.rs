//! Helpers of the tests that run the binary (cli_deploy, cli_robust, cli_long_clip, cli_train,
//! fuzz_inputs): the command on the cpu device, a run that must succeed, 16-bit WAV files.

use assert_cmd::Command;
use std::path::Path;
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
