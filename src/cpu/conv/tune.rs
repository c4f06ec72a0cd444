//! The CPU convolution algorithm per layer shape: `SER_CPU_CONV` ([`conv_policy`]), the cost
//! model ([`conv_algo_model`]), or (the default) timing both candidates on this machine the
//! first time a shape is seen (like cuDNN's benchmark mode) and caching the result on disk.
//! Sits above both algorithms ([`super::direct`], [`super::fft`]), which it runs to time them.
//!
//! Why measure: the direct/FFT crossover depends on the CPU (vector width, caches, cores);
//! a cost model fitted on one CPU picked wrongly on another. Timing a shape costs well under
//! a second once per machine; the result is kept in `<cache>/ser-engine/cpu-conv-tune.json`
//! (`SER_CPU_TUNE_CACHE=PATH` elsewhere, `=off` in memory only), keyed by the CPU model, its
//! vector ISA, the thread count and a hash of the convolution sources, so a new CPU, another
//! `--threads` or changed convolution code times again.
//!
//! A shape is keyed by its element type, channels, kernel, mel bins and its frame count
//! rounded up to a power of two (the bucket is timed at its largest length): training batches
//! vary in length and must not each trigger a timing. Shapes too small for the choice to
//! matter (< 2·10⁶ multiply-adds per clip, e.g. the tests' small models) use the cost model
//! ([`conv_algo_model`]) without timing, which keeps them deterministic.
//!
//! Determinism: a cached choice never changes, so runs on one machine reproduce; the two
//! algorithms differ only by rounding ([`super::fft`]).

use super::direct::{conv2d_backward_direct, conv2d_forward_direct};
use super::fft::{conv2d_backward_fft, conv2d_forward_fft_saving, Grid};
use super::shape::{ConvAlgo, ConvShape};
use crate::cpu::Float;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

/// How the algorithm of each convolution is decided (`SER_CPU_CONV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPolicy {
    /// `direct` or `fft`: always that one.
    Fixed(ConvAlgo),
    /// `model`: the cost model [`conv_algo_model`] (fitted on one AMD EPYC Zen 4).
    Model,
    /// `measure` / `auto` / unset (default): timed on this machine once per shape and cached
    /// (this module).
    Measure,
}

/// Parses a `SER_CPU_CONV` value: `direct`, `fft`, `model`, or `measure` / `auto` / empty.
pub fn parse_conv_policy(v: &str) -> Result<ConvPolicy, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "direct" => Ok(ConvPolicy::Fixed(ConvAlgo::Direct)),
        "fft" => Ok(ConvPolicy::Fixed(ConvAlgo::Fft)),
        "model" => Ok(ConvPolicy::Model),
        "measure" | "auto" | "" => Ok(ConvPolicy::Measure),
        other => Err(format!(
            "SER_CPU_CONV={other:?} is not direct|fft|model|measure|auto; using measure"
        )),
    }
}

/// The `SER_CPU_CONV` policy, read once per process; any other value falls back to
/// `measure` with a one-time warning on stderr (a speed knob must not abort a run).
pub fn conv_policy() -> ConvPolicy {
    static POLICY: std::sync::OnceLock<ConvPolicy> = std::sync::OnceLock::new();
    *POLICY.get_or_init(|| {
        let v = std::env::var("SER_CPU_CONV").unwrap_or_default();
        parse_conv_policy(&v).unwrap_or_else(|e| {
            eprintln!("warning: {e}");
            ConvPolicy::Measure
        })
    })
}

/// The algorithm the cost model picks. Fitted to `fft::timing` (f32, B = 16, 2 threads,
/// 16 shapes with k = 3…9, 1…128 channels; the model picks the faster one, forward +
/// backward, in all of them, two near-ties aside): the direct conv costs ∝ `cin·cout·k²·M·T`;
/// the FFT conv costs ∝ `(80·(cin + cout) + 6.5·cin·cout)·N1·N2` in the same units (plane
/// transforms + per-bin mixing on its `N1 × N2` grid). So the model's stage 1 (1 → 32
/// channels) and all k = 3 shapes measured stay direct; stages 2 and 3 (k = 7) go to the FFT
/// (measured 3.1× / 3.5× faster forward and backward at stage 2, 3.9× / 4.4× at stage 3).
pub fn conv_algo_model(s: &ConvShape) -> ConvAlgo {
    if s.k < 3 || s.m == 0 || s.t == 0 {
        return ConvAlgo::Direct;
    }
    let g = Grid::new(s, s.t);
    let (ci, co) = (s.cin as f64, s.cout as f64);
    let direct = ci * co * (s.k * s.k * s.m * s.t) as f64;
    let fft = (80.0 * (ci + co) + 6.5 * ci * co) * (g.n1 * g.n2) as f64;
    if direct > fft {
        ConvAlgo::Fft
    } else {
        ConvAlgo::Direct
    }
}

/// How [`super::conv2d_forward`] / [`super::conv2d_backward`] compute `s` in element type `T`,
/// and why.
pub fn conv_choice<T: Float>(s: &ConvShape) -> Choice {
    match conv_policy() {
        ConvPolicy::Fixed(a) => Choice::Fixed(a),
        ConvPolicy::Model => Choice::Model(conv_algo_model(s)),
        ConvPolicy::Measure => measured_choice::<T>(s),
    }
}

/// The algorithm [`super::conv2d_forward`] / [`super::conv2d_backward`] use for `s` ([`conv_choice`]).
pub fn conv_algo<T: Float>(s: &ConvShape) -> ConvAlgo {
    conv_choice::<T>(s).algo()
}

/// Below this many multiply-adds per clip the cost model decides (timing would be noise).
const MIN_MACS_TO_TIME: f64 = 2e6;

/// One shape's timing: forward + backward per clip, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub algo: ConvAlgo,
    pub direct_ms: f64,
    pub fft_ms: f64,
}

/// How the algorithm of a shape was decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Choice {
    /// `SER_CPU_CONV=direct|fft`.
    Fixed(ConvAlgo),
    /// The cost model: `SER_CPU_CONV=model`, or a shape too small to time.
    Model(ConvAlgo),
    /// Timed on this machine (now or in an earlier run).
    Measured(Measured),
}

impl Choice {
    pub fn algo(&self) -> ConvAlgo {
        match *self {
            Choice::Fixed(a) | Choice::Model(a) => a,
            Choice::Measured(m) => m.algo,
        }
    }

    /// `fft (measured: direct 12.1 ms/clip, fft 3.9 ms/clip)`, for `bench`.
    pub fn describe(&self) -> String {
        match self {
            Choice::Fixed(a) => format!("{} (SER_CPU_CONV)", a.name()),
            Choice::Model(a) => format!("{} (cost model)", a.name()),
            Choice::Measured(m) => format!(
                "{} (measured fwd+bwd: direct {:.2} ms/clip, fft {:.2} ms/clip)",
                m.algo.name(),
                m.direct_ms,
                m.fft_ms
            ),
        }
    }
}

/// The cache key of a shape: element type, channels, kernel, mel bins, frame bucket.
pub fn shape_key<T: Float>(s: &ConvShape) -> String {
    format!(
        "{} {}->{} k{} m{} t<={}",
        std::any::type_name::<T>(),
        s.cin,
        s.cout,
        s.k,
        s.m,
        frame_bucket(s.t)
    )
}

/// Frames rounded up to a power of two (at least 16).
fn frame_bucket(t: usize) -> usize {
    t.max(16).next_power_of_two()
}

/// What a cached timing is only valid for: this CPU, its vector ISA, the thread count and
/// this build's convolution code.
pub fn machine_key() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let isa = format!(
        "{}{}",
        crate::isa::active().name(),
        if crate::isa::GEMM_AVX512_COMPILED {
            ""
        } else {
            " (gemm without avx512)"
        }
    );
    format!(
        "{cpu} | {isa} | {} threads | {} | ser-engine {} conv {:016x}",
        rayon::current_num_threads(),
        crate::cpu::bf16::precision().name(),
        env!("CARGO_PKG_VERSION"),
        source_hash()
    )
}

/// FNV-1a of the convolution sources: timings are stale once that code changes.
fn source_hash() -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in include_str!("mod.rs")
        .bytes()
        .chain(include_str!("shape.rs").bytes())
        .chain(include_str!("direct.rs").bytes())
        .chain(include_str!("fft/mod.rs").bytes())
        .chain(include_str!("fft/transform.rs").bytes())
        .chain(include_str!("fft/weights.rs").bytes())
        .chain(include_str!("fft/forward.rs").bytes())
        .chain(include_str!("fft/backward.rs").bytes())
        .chain(include_str!("../bf16.rs").bytes())
    {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The cache file: `{machine key: {shape key: Measured}}`.
type CacheFile = BTreeMap<String, BTreeMap<String, Measured>>;

/// Where timings persist: `SER_CPU_TUNE_CACHE` (`off`: nowhere) or the user's cache folder.
fn cache_path() -> Option<PathBuf> {
    match std::env::var("SER_CPU_TUNE_CACHE") {
        Ok(v) if v == "off" => None,
        Ok(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => Some(crate::cache::user_cache_dir().join("cpu-conv-tune.json")),
    }
}

/// Timings of one machine key, backed by an optional file.
pub struct Tuner {
    machine: String,
    path: Option<PathBuf>,
    entries: HashMap<String, Measured>,
    /// Shapes timed by this tuner (not loaded): for tests and `bench`.
    pub timed: usize,
    warned: bool,
}

impl Tuner {
    /// Loads the entries of `machine` from `path`; an unreadable or corrupt file counts as
    /// empty (it is a cache) and is replaced on the next write.
    pub fn new(machine: String, path: Option<PathBuf>) -> Self {
        let entries = path
            .as_ref()
            .and_then(|p| read_cache(p).remove(&machine))
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        Self {
            machine,
            path,
            entries,
            timed: 0,
            warned: false,
        }
    }

    /// The cached timing of `s`, or times it now (and persists it). Across processes the
    /// first timing written wins, so concurrent runs on one machine agree on every choice.
    pub fn measure<T: Float>(&mut self, s: &ConvShape) -> Measured {
        let key = shape_key::<T>(s);
        if let Some(m) = self.entries.get(&key) {
            return *m;
        }
        // Another process may have timed it since this one started.
        let on_disk = self
            .path
            .as_ref()
            .and_then(|p| read_cache(p).remove(&self.machine))
            .and_then(|mut m| m.remove(&key));
        let m = match on_disk {
            Some(m) => m,
            None => {
                self.timed += 1;
                let m = time_shape::<T>(s);
                self.persist(&key, m).unwrap_or_else(|e| {
                    if !self.warned {
                        eprintln!("warning: cannot keep CPU convolution timings: {e:#}");
                        self.warned = true;
                    }
                    m
                })
            }
        };
        self.entries.insert(key, m);
        m
    }

    /// Adds one entry to the file, keeping what other processes wrote meanwhile; returns the
    /// entry the file holds for `key` afterwards (an earlier writer's wins).
    fn persist(&self, key: &str, m: Measured) -> anyhow::Result<Measured> {
        use anyhow::Context;
        let Some(path) = &self.path else {
            return Ok(m);
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        // One writer at a time across processes (an flock on `<file>.lock`, released when
        // `_lock` drops), so this read-modify-write never drops an entry written meanwhile.
        // The lock file stays: deleting it would let two writers lock different files.
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let _lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .and_then(|f| f.lock().map(|_| f))
            .with_context(|| format!("{}: cannot lock", PathBuf::from(&lock_path).display()))?;
        let mut file = read_cache(path);
        let entries = file.entry(self.machine.clone()).or_default();
        if let Some(earlier) = entries.get(key) {
            return Ok(*earlier);
        }
        entries.insert(key.to_string(), m);
        // a reader without the lock sees the old file or the new one, never half of one
        crate::atomic_file::atomic_write(path, &serde_json::to_vec_pretty(&file)?)?;
        Ok(m)
    }
}

fn read_cache(path: &std::path::Path) -> CacheFile {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Times forward + backward of both algorithms on `s` at its frame bucket, a few clips at
/// once (enough to use every thread): one warm-up, then the best of two runs each.
fn time_shape<T: Float>(s: &ConvShape) -> Measured {
    let threads = rayon::current_num_threads();
    let sh = ConvShape {
        batch: (2 * threads).clamp(2, 8),
        t: frame_bucket(s.t),
        ..*s
    };
    let lens = vec![sh.t; sh.batch];
    let x: Vec<T> = (0..sh.x_len())
        .map(|i| T::cst((i % 7) as f64 - 3.0))
        .collect();
    let w: Vec<T> = (0..sh.w_len())
        .map(|i| T::cst(0.1 * ((i % 5) as f64 - 2.0)))
        .collect();
    let bias = vec![T::cst(0.5); sh.cout];
    let dy: Vec<T> = (0..sh.y_len())
        .map(|i| T::cst((i % 3) as f64 - 1.0))
        .collect();
    let mut y = vec![T::zero(); sh.y_len()];
    let mut dx = vec![T::zero(); sh.x_len()];
    let mut dw = vec![T::zero(); sh.w_len()];
    let mut db = vec![T::zero(); sh.cout];
    let best = |f: &mut dyn FnMut()| {
        f();
        (0..2)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    };
    let direct = best(&mut || {
        conv2d_forward_direct(&x, &w, &bias, &lens, &sh, &mut y);
        conv2d_backward_direct(&x, &w, &dy, &lens, &sh, Some(&mut dx), &mut dw, &mut db);
    });
    let fft = best(&mut || {
        // As a training step runs it: the backward reuses the forward's spectra.
        let saved = conv2d_forward_fft_saving(&x, &w, &bias, &lens, &sh, &mut y);
        let (x, w) = (&x, &w);
        conv2d_backward_fft(
            saved.as_ref(),
            x,
            w,
            &dy,
            &lens,
            &sh,
            Some(&mut dx),
            &mut dw,
            &mut db,
        );
    });
    let n = sh.batch as f64;
    let (direct_ms, fft_ms) = (direct / n, fft / n);
    // Within 3% the model's choice stands: a near-tie must not flip between machines' noise.
    let algo = if (direct_ms - fft_ms).abs() <= 0.03 * direct_ms.min(fft_ms) {
        conv_algo_model(s)
    } else if fft_ms < direct_ms {
        ConvAlgo::Fft
    } else {
        ConvAlgo::Direct
    };
    Measured {
        algo,
        direct_ms,
        fft_ms,
    }
}

/// Multiply-adds per clip of the direct convolution at the shape's frame bucket.
fn macs_per_clip(s: &ConvShape) -> f64 {
    (s.cin * s.cout * s.k * s.k * s.m * frame_bucket(s.t)) as f64
}

/// The process-wide tuner for this machine (created on first use).
fn global_tuner() -> &'static Mutex<Tuner> {
    static TUNER: std::sync::OnceLock<Mutex<Tuner>> = std::sync::OnceLock::new();
    TUNER.get_or_init(|| Mutex::new(Tuner::new(machine_key(), cache_path())))
}

/// The measured choice for `s` ([`Choice::Model`] for shapes too small to time).
pub fn measured_choice<T: Float>(s: &ConvShape) -> Choice {
    if s.k < 3 || s.m == 0 || s.t == 0 || macs_per_clip(s) < MIN_MACS_TO_TIME {
        return Choice::Model(conv_algo_model(s));
    }
    let mut tuner = global_tuner().lock().unwrap_or_else(|p| p.into_inner());
    Choice::Measured(tuner.measure::<T>(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage2() -> ConvShape {
        // big enough to be timed, small enough to time quickly
        ConvShape {
            batch: 3,
            cin: 8,
            cout: 16,
            k: 5,
            m: 32,
            t: 40,
        }
    }

    #[test]
    fn keys_bucket_frames_and_separate_types() {
        let s = stage2();
        assert_eq!(shape_key::<f32>(&s), "f32 8->16 k5 m32 t<=64");
        assert_eq!(
            shape_key::<f32>(&ConvShape { t: 64, ..s }),
            shape_key::<f32>(&s)
        );
        assert_ne!(
            shape_key::<f32>(&ConvShape { t: 65, ..s }),
            shape_key::<f32>(&s)
        );
        assert_ne!(shape_key::<f64>(&s), shape_key::<f32>(&s));
        assert_eq!(frame_bucket(3), 16);
        assert!(machine_key().contains("threads"));
    }

    #[test]
    fn timed_once_then_cached_on_disk_per_machine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("tune.json");
        let s = stage2();
        let mut a = Tuner::new("machine A".into(), Some(path.clone()));
        let m = a.measure::<f32>(&s);
        assert!(m.direct_ms > 0.0 && m.fft_ms > 0.0, "{m:?}");
        assert_eq!(a.measure::<f32>(&ConvShape { t: 50, ..s }), m); // same bucket
        assert_eq!(a.timed, 1);
        // a new process on the same machine reads it back without timing
        let mut b = Tuner::new("machine A".into(), Some(path.clone()));
        assert_eq!(b.measure::<f32>(&s), m);
        assert_eq!(b.timed, 0);
        // another machine key (CPU, threads or code) times again, and both are kept
        let mut c = Tuner::new("machine B".into(), Some(path.clone()));
        c.measure::<f32>(&s);
        assert_eq!(c.timed, 1);
        let file = read_cache(&path);
        assert_eq!(file.len(), 2, "{file:?}");
        // a tuner started before the file had the shape takes the file's timing, not its own
        let mut late = Tuner::new("machine C".into(), Some(path.clone()));
        let mut early = Tuner::new("machine C".into(), Some(path.clone()));
        let first = early.measure::<f32>(&s);
        assert_eq!(late.measure::<f32>(&s), first);
        assert_eq!(late.timed, 0);
    }

    #[test]
    fn concurrent_writers_keep_every_entry() {
        // Writers racing on one file (as processes would: each its own Tuner and open files):
        // every entry must survive, so no read-modify-write overwrote another's.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tune.json");
        let (writers, each) = (6, 15);
        std::thread::scope(|s| {
            for w in 0..writers {
                let path = path.clone();
                s.spawn(move || {
                    let t = Tuner::new("m".into(), Some(path));
                    for i in 0..each {
                        let m = Measured {
                            algo: ConvAlgo::Direct,
                            direct_ms: w as f64,
                            fft_ms: i as f64,
                        };
                        assert_eq!(t.persist(&format!("w{w} s{i}"), m).unwrap(), m);
                    }
                });
            }
        });
        let file = read_cache(&path);
        assert_eq!(file["m"].len(), writers * each, "{:?}", file["m"].keys());
    }

    #[test]
    fn corrupt_cache_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tune.json");
        std::fs::write(&path, b"{not json").unwrap();
        let mut t = Tuner::new("m".into(), Some(path.clone()));
        t.measure::<f32>(&stage2());
        assert_eq!(t.timed, 1);
        assert_eq!(read_cache(&path)["m"].len(), 1);
        // an unwritable location is a warning, not an error
        let mut u = Tuner::new("m".into(), Some(path.join("below-a-file.json")));
        u.measure::<f32>(&stage2());
        assert_eq!(u.timed, 1);
    }

    #[test]
    fn small_shapes_use_the_model_without_timing() {
        let s = ConvShape {
            batch: 2,
            cin: 2,
            cout: 3,
            k: 3,
            m: 8,
            t: 20,
        };
        assert_eq!(
            measured_choice::<f64>(&s),
            Choice::Model(conv_algo_model(&s))
        );
    }

    #[test]
    fn algo_choice_and_override_parsing() {
        let sh = |cin, cout, k, m, t| ConvShape {
            batch: 16,
            cin,
            cout,
            k,
            m,
            t,
        };
        // the model's three stages (measured: direct, FFT, FFT)
        assert_eq!(conv_algo_model(&sh(1, 32, 7, 128, 126)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(32, 64, 7, 64, 63)), ConvAlgo::Fft);
        assert_eq!(conv_algo_model(&sh(64, 128, 7, 32, 31)), ConvAlgo::Fft);
        // measured faster direct: few channels, or k = 3; and the gradcheck shapes
        assert_eq!(conv_algo_model(&sh(8, 8, 5, 64, 63)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(8, 16, 5, 32, 31)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(16, 16, 3, 64, 63)), ConvAlgo::Direct);
        // measured faster with the FFT
        assert_eq!(conv_algo_model(&sh(4, 8, 7, 64, 63)), ConvAlgo::Fft);
        assert_eq!(conv_algo_model(&sh(8, 8, 9, 64, 63)), ConvAlgo::Fft);
        assert_eq!(conv_algo_model(&sh(32, 32, 5, 64, 63)), ConvAlgo::Fft);
        assert_eq!(conv_algo_model(&sh(32, 64, 3, 64, 63)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(2, 3, 7, 6, 9)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(32, 64, 1, 64, 63)), ConvAlgo::Direct);
        assert_eq!(conv_algo_model(&sh(32, 64, 7, 64, 0)), ConvAlgo::Direct);
        assert_eq!(
            parse_conv_policy("fft"),
            Ok(ConvPolicy::Fixed(ConvAlgo::Fft))
        );
        assert_eq!(
            parse_conv_policy(" Direct "),
            Ok(ConvPolicy::Fixed(ConvAlgo::Direct))
        );
        assert_eq!(parse_conv_policy("model"), Ok(ConvPolicy::Model));
        assert_eq!(parse_conv_policy("auto"), Ok(ConvPolicy::Measure));
        assert_eq!(parse_conv_policy("measure"), Ok(ConvPolicy::Measure));
        assert_eq!(parse_conv_policy(""), Ok(ConvPolicy::Measure));
        assert!(parse_conv_policy("fast").is_err());
    }
}
