//! Property tests over what a user's files feed the engine (issue 14): the audio decoders and
//! WAV header parsing (mutated and truncated WAVs, random bytes behind each container's
//! magic), corpus file-name parsing, and run-folder loading (mutated config.json beside a
//! real checkpoint). Each case must return (Ok or a clear Err), never panic, and never ask
//! for more than ALLOC_LIMIT bytes in one allocation or hold more than PEAK_LIMIT at once.
//! A bounded number of cases (CASES per property) keeps this a few seconds in `cargo test`.

mod common;

use common::cli::{run_ok, ser};
use proptest::prelude::*;
use ser_engine::audio::corpus::{parse_named, CorpusFormat};
use ser_engine::audio::decode::{load_audio, probe_audio};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// Largest single allocation a case may ask for (inputs here are at most a few KiB; a
/// decoder trusting a header's sizes asks for gigabytes).
const ALLOC_LIMIT: usize = 64 << 20;
/// Most bytes a case may hold at once, above what was live when it started.
const PEAK_LIMIT: usize = 256 << 20;
const CASES: u32 = 150;

/// The cases' seed: $FUZZ_SEED, else a fixed one.
fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14)
}

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > ALLOC_LIMIT {
            // Refused: the test aborts with "memory allocation of N bytes failed".
            return std::ptr::null_mut();
        }
        let p = System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        System.dealloc(p, l)
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The properties run one at a time so the peak belongs to one case.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` and checks the memory it held at its peak.
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    let peak = PEAK.load(Relaxed).saturating_sub(base);
    prop_assert!(peak <= PEAK_LIMIT, "{what}: held {peak} bytes at once");
    Ok(out)
}

fn wav_bytes(rate: u32, channels: u16, bits: u16, samples: usize) -> Vec<u8> {
    let mut c = std::io::Cursor::new(Vec::new());
    {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::new(&mut c, spec).unwrap();
        for i in 0..samples * channels as usize {
            let v = ((i * 7919) % 200) as i32 - 100;
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
    }
    c.into_inner()
}

fn decode_all(path: &Path) {
    // Err is fine; a panic or a huge allocation fails the property.
    let _ = probe_audio(path);
    let _ = load_audio(path, None);
    let _ = load_audio(path, Some(16_000));
}

proptest! {
    // A fixed seed: the same cases on every run (CI stays reproducible); FUZZ_SEED=n and
    // PROPTEST_CASES=n explore others.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(CASES),
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed()),
        ..ProptestConfig::default()
    })]

    /// A valid WAV with some header or data bytes overwritten and maybe cut short.
    #[test]
    fn mutated_wavs_decode_or_fail_cleanly(
        rate in prop_oneof![Just(16_000u32), Just(44_100), Just(1), any::<u32>()],
        channels in 1u16..4,
        bits in prop_oneof![Just(8u16), Just(16), Just(24), Just(32)],
        samples in 1usize..400,
        edits in prop::collection::vec((0usize..64, any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = wav_bytes(rate.max(1), channels, bits, samples);
        for (pos, b) in edits {
            let i = pos % bytes.len();
            bytes[i] = b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()).max(1));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wav");
        std::fs::write(&path, &bytes).unwrap();
        bounded("wav", || decode_all(&path))?;
    }

    /// Random bytes behind each container's magic (symphonia's probes and demuxers).
    #[test]
    fn random_bytes_after_a_magic_fail_cleanly(
        magic in prop_oneof![
            Just(b"RIFF\x24\x00\x00\x00WAVEfmt ".to_vec()),
            Just(b"fLaC".to_vec()),
            Just(b"OggS".to_vec()),
            Just(b"ID3\x03\x00".to_vec()),
            Just(vec![0xFFu8, 0xFB]),
            Just(Vec::new()),
        ],
        tail in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let mut bytes = magic;
        bytes.extend(tail);
        std::fs::write(&path, &bytes).unwrap();
        bounded("container", || decode_all(&path))?;
    }

    /// Corpus file-name parsing under every named convention.
    #[test]
    fn corpus_name_parsing_never_panics(
        name in "[A-Za-z0-9_\\-\\. ]{0,40}",
        dir in prop_oneof![Just(""), Just("Actor_01/"), Just("angry/"), Just("a/b/")],
    ) {
        let rel = std::path::PathBuf::from(format!("{dir}{name}"));
        for f in [
            CorpusFormat::Ksu, CorpusFormat::Eyase, CorpusFormat::Ravdess, CorpusFormat::Cremad,
            CorpusFormat::Emodb, CorpusFormat::Tess, CorpusFormat::Savee, CorpusFormat::Baved,
        ] {
            bounded("name", || { let _ = parse_named(f, &rel); })?;
        }
    }

    /// config.json with one field replaced by an arbitrary JSON value, beside the real
    /// checkpoint: `load_run` refuses it or loads a consistent run, never panics.
    #[test]
    fn edited_run_configs_load_or_fail_cleanly(
        field in 0usize..64,
        value in prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
            "[a-z]{0,6}".prop_map(serde_json::Value::from),
            Just(serde_json::json!([])),
            Just(serde_json::json!(["a"])),
            Just(serde_json::json!(5000)),
            Just(serde_json::json!(0)),
        ],
    ) {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let run = run_folder();
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(run.join(f), dir.path().join(f)).unwrap();
        }
        let text = std::fs::read_to_string(run.join("config.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut leaves = Vec::new();
        collect_leaves(&v, String::new(), &mut leaves);
        let ptr = &leaves[field % leaves.len()];
        *v.pointer_mut(ptr).unwrap() = value;
        std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
        bounded("config", || {
            if let Ok((cfg, _)) = ser_engine::train::run::load_run(dir.path(), ser_engine::device::DeviceChoice::Cpu) {
                assert_eq!(cfg.labels.len(), cfg.model.classes);
            }
        })?;
    }
}

/// JSON pointers of every leaf (and every array) of `v`.
fn collect_leaves(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                collect_leaves(x, format!("{at}/{k}"), out);
            }
        }
        serde_json::Value::Array(a) => {
            out.push(at.clone());
            for (i, x) in a.iter().enumerate() {
                collect_leaves(x, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

/// A tiny real run folder, trained once per test binary.
fn run_folder() -> std::path::PathBuf {
    static RUN: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("corpus");
        ser_engine::audio::synth::write_corpus(
            &data,
            &ser_engine::audio::synth::SynthConfig {
                per_class: 3,
                sample_rate: 16_000,
                seed: 1,
            },
            false,
        )
        .unwrap();
        run_ok(
            ser()
                .args(["train", "--data"])
                .arg(&data)
                .arg("--out")
                .arg(d.path().join("run"))
                .args(["--epochs", "1", "--channels", "4,8,8", "--fc-size", "8"])
                .args([
                    "--hidden-size",
                    "4",
                    "--n-mels",
                    "16",
                    "--batch-size",
                    "8",
                    "--val-split",
                    "0.4",
                ]),
        );
        d
    })
    .path()
    .join("run")
}
