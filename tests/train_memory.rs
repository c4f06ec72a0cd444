//! `train`'s memory pre-check against what training really takes: at the corners of the
//! options' ranges (those that run in seconds), with each CPU convolution algorithm, the
//! measured peak resident memory of `train` must not exceed the bound it checked before the
//! first step (`memory: one training step takes at most N MiB beyond the R MiB resident
//! now`, printed with -v), and the bound must stay within 3x the measured peak (plus its fixed
//! 64 MiB), so that it does not refuse work that fits.

mod common;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `ser-engine -v train` with `extra` options and `SER_CPU_CONV=algo`; returns the
/// bound (resident + step, bytes), the measured peak (bytes) and stderr.
fn train_measured(corpus: &Path, out: &Path, algo: &str, extra: &[&str]) -> (u64, u64, String) {
    let log = out.with_extension("log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ser-engine"));
    cmd.args(["-v", "train", "--epochs", "1", "--data"])
        .arg(corpus)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("SER_CPU_CONV", algo)
        .env("SER_CPU_TUNE_CACHE", "off")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // Reaped by wait4 below (std's wait would not give the rusage).
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data that wait4 fills; pid is our own child, not yet waited.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut ru) }, pid);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "train {extra:?} ({algo}) failed:\n{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("memory: "))
        .unwrap_or_else(|| panic!("no memory line in:\n{stderr}"));
    let mib: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(mib.len(), 2, "{line}");
    // ru_maxrss is in KiB on Linux.
    ((mib[0] + mib[1]) << 20, ru.ru_maxrss as u64 * 1024, stderr)
}

/// The bound's fixed part (`ser_engine::cpu::memory::FIXED_BYTES`): a tiny model's bound is
/// mostly this, so "within 3x" applies to the rest.
const FIXED: u64 = ser_engine::cpu::memory::FIXED_BYTES;

#[test]
fn training_peak_memory_stays_within_the_pre_checked_bound_at_the_range_corners() {
    let d = tempfile::tempdir().unwrap();
    // 5 classes x 2 clips of about 3 s at 16 kHz (common::cli::tiny_corpus's 30 clips would
    // make every corner slower).
    let corpus = {
        let root = d.path().join("corpus");
        let cfg = ser_engine::audio::synth::SynthConfig {
            per_class: 2,
            sample_rate: 16_000,
            seed: 7,
        };
        ser_engine::audio::synth::write_corpus(&root, &cfg, false).unwrap();
        root
    };
    // Each corner: one option (or two that only matter together) at an end of its range,
    // the rest at the paper's defaults; the largest ones use a short crop or a small batch
    // so that every run takes seconds.
    let corners: &[&[&str]] = &[
        &[],
        &["--batch-size", "4096"],
        &["--batch-size", "1"],
        &["--sample-rate", "192000", "--batch-size", "2"],
        &["--n-mels", "512", "--batch-size", "2", "--max-seconds", "1"],
        &["--n-mels", "8", "--freq-mask-max", "4"],
        &[
            "--kernel-size",
            "31",
            "--batch-size",
            "2",
            "--max-seconds",
            "1",
        ],
        &["--kernel-size", "1"],
        &[
            "--channels",
            "256,256,256",
            "--batch-size",
            "2",
            "--max-seconds",
            "1",
        ],
        &["--channels", "1,1,1"],
        &[
            "--hidden-size",
            "2048",
            "--batch-size",
            "2",
            "--max-seconds",
            "1",
        ],
        &[
            "--fc-size",
            "4096",
            "--batch-size",
            "2",
            "--max-seconds",
            "1",
        ],
        &["--max-seconds", "0.1"],
        &["--threads", "1"],
        &["--threads", "64"],
        &[
            "--dropout",
            "0",
            "--no-batchnorm",
            "--norm",
            "utterance",
            "--ema",
            "0.9",
        ],
        // the slowest speed factor doubles every clip's frames
        &["--speed", "0.5", "--mixup", "0.4", "--batch-size", "4"],
    ];
    // Options that size no convolution buffer run with one algorithm only.
    let conv_free = |extra: &[&str]| {
        ["--hidden-size", "--fc-size"]
            .iter()
            .any(|o| extra.contains(o))
    };
    let mut report = Vec::new();
    for algo in ["fft", "direct"] {
        for (i, extra) in corners.iter().enumerate() {
            if algo == "direct" && conv_free(extra) {
                continue;
            }
            let out = d.path().join(format!("run-{algo}-{i}"));
            let (bound, peak, _) = train_measured(&corpus, &out, algo, extra);
            let mib = |b: u64| b >> 20;
            eprintln!(
                "{algo:6} {extra:?}: peak {} MiB, bound {} MiB",
                mib(peak),
                mib(bound)
            );
            report.push(format!(
                "{algo:6} {extra:?}: peak {} MiB, bound {} MiB",
                mib(peak),
                mib(bound)
            ));
            assert!(
                peak <= bound,
                "{algo} {extra:?}: peak {} MiB above the pre-checked bound {} MiB",
                mib(peak),
                mib(bound)
            );
            assert!(
                bound <= 3 * peak + FIXED,
                "{algo} {extra:?}: bound {} MiB more than 3x the peak {} MiB + 64 MiB",
                mib(bound),
                mib(peak)
            );
        }
    }
    println!("{}", report.join("\n"));
}
