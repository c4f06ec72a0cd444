//! `ser-engine features`: log-Mel spectrograms (librosa-exact) of audio files as float32 .npy
//! `[n_mels, frames]` (and optionally a PNG picture), or `--bench` for the front end's speed.
//!
//! Inputs may be files or folders (searched recursively for audio files). A file given
//! directly is written as `OUT/<stem>.npy`; files found in a folder keep their path relative to
//! that folder (`OUT/<sub>/<stem>.npy`) so equal names in different folders do not collide.
//! Each output is written to a temporary file in OUT and renamed, so a reader never sees a
//! half-written .npy. A failing file does not stop the others; failures are listed at the end
//! and the command then exits non-zero.
//!
//! Layer: cli, the top. May use every other module.

use crate::audio::load_audio;
use crate::device::DeviceChoice;
use crate::device::{Device, Selected};
use crate::engine::frontend::DeviceFrontEnd;
use crate::features::{npy, png, try_log_mel, LogMel, MelConfig};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File extensions treated as audio when searching folders.
const AUDIO_EXTS: &[&str] = &["wav", "wave", "flac", "mp3", "ogg", "oga"];

#[derive(Debug, Args)]
pub struct FeaturesArgs {
    /// Audio files or folders (searched recursively for .wav/.flac/.mp3/.ogg).
    #[arg(required_unless_present = "bench")]
    pub inputs: Vec<PathBuf>,
    /// Output folder (created if missing).
    #[arg(long, required_unless_present = "bench")]
    pub out: Option<PathBuf>,
    /// Also write a PNG picture of each spectrogram.
    #[arg(long)]
    pub png: bool,
    /// Resample to this rate first (default: keep each file's native rate).
    #[arg(long)]
    pub sample_rate: Option<u32>,
    /// FFT size (even).
    #[arg(long, default_value_t = 2048)]
    pub n_fft: usize,
    /// Hop between frames, samples.
    #[arg(long, default_value_t = 256)]
    pub hop: usize,
    /// Number of mel bands.
    #[arg(long, default_value_t = 128)]
    pub n_mels: usize,
    /// Lowest mel band edge, Hz.
    #[arg(long, default_value_t = 80.0)]
    pub fmin: f32,
    /// Highest mel band edge, Hz.
    #[arg(long, default_value_t = 7600.0)]
    pub fmax: f32,
    /// Dynamic range kept below the maximum, dB.
    #[arg(long, default_value_t = 80.0)]
    pub top_db: f32,
    /// Measure throughput (audio-seconds per second) on synthetic audio instead.
    #[arg(long)]
    pub bench: bool,
    /// Files longer than this (seconds) are processed in two streaming passes at bounded
    /// memory instead of decoded whole (same values; no PNG for them).
    #[arg(long, default_value_t = 600.0, hide = true)]
    pub stream_above: f64,
    /// Length of the synthetic clip for --bench, seconds.
    #[arg(long, default_value_t = 60.0, requires = "bench")]
    pub seconds: f64,
}

impl FeaturesArgs {
    /// The front-end configuration these flags describe.
    pub fn mel(&self) -> MelConfig {
        MelConfig {
            n_fft: self.n_fft,
            hop: self.hop,
            n_mels: self.n_mels,
            fmin: self.fmin,
            fmax: self.fmax,
            top_db: self.top_db,
        }
    }
}

pub fn run(args: &FeaturesArgs, global: &super::Global) -> Result<()> {
    // --device sim|cuda: the kernels (engine::frontend); cpu and auto: the CPU reference.
    let device = match global.device {
        DeviceChoice::Sim | DeviceChoice::Cuda => match crate::device::select(global.device)? {
            Selected::Device(d) => Some(d),
            Selected::Cpu => None,
        },
        _ => None,
    };
    if args.bench {
        return match &device {
            Some(dev) => bench_device(args, dev),
            None => bench(args, global),
        };
    }
    let out_dir = args.out.as_ref().context("--out is required")?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create output folder", out_dir.display()))?;
    let cfg = args.mel();
    if let Some(sr) = args.sample_rate {
        cfg.validate(sr)?;
    }

    let (jobs, mut failures) = collect_jobs(&args.inputs, out_dir);
    let bar = if global.progress() && !jobs.is_empty() {
        let b = ProgressBar::new(jobs.len() as u64);
        b.set_style(
            ProgressStyle::with_template("features {bar:30} {pos}/{len} files {elapsed}")
                .expect("valid template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let results: Vec<(PathBuf, Result<()>)> = match &device {
        // One device, one file at a time (decoding is the CPU's share).
        Some(dev) => {
            let mut fronts = HashMap::new();
            jobs.iter()
                .map(|(src, dst)| {
                    let r = process_device(src, dst, &cfg, args, dev, &mut fronts);
                    bar.inc(1);
                    (src.clone(), r)
                })
                .collect()
        }
        None => jobs
            .par_iter()
            .map(|(src, dst)| {
                let r = process(src, dst, &cfg, args);
                bar.inc(1);
                (src.clone(), r)
            })
            .collect(),
    };
    bar.finish_and_clear();
    let written = results.iter().filter(|r| r.1.is_ok()).count();
    failures.extend(
        results
            .into_iter()
            .filter_map(|(p, r)| r.err().map(|e| (p, format!("{e:#}")))),
    );
    if !global.quiet {
        println!("wrote {written} spectrograms to {}", out_dir.display());
    }
    if !failures.is_empty() {
        for (p, e) in &failures {
            eprintln!("failed: {}: {e}", p.display());
        }
        bail!(
            "{} of {} inputs failed (listed above)",
            failures.len(),
            failures.len() + written
        );
    }
    Ok(())
}

/// (source, destination .npy) pairs, and the inputs that could not be used.
#[allow(clippy::type_complexity)]
fn collect_jobs(
    inputs: &[PathBuf],
    out_dir: &Path,
) -> (Vec<(PathBuf, PathBuf)>, Vec<(PathBuf, String)>) {
    let mut jobs = Vec::new();
    let mut failures = Vec::new();
    let mut claimed: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut add = |src: PathBuf, rel: PathBuf, jobs: &mut Vec<_>, failures: &mut Vec<_>| {
        let dst = out_dir.join(rel).with_extension("npy");
        match claimed.get(&dst) {
            Some(first) => failures.push((
                src,
                format!(
                    "output {} is already taken by {}",
                    dst.display(),
                    first.display()
                ),
            )),
            None => {
                claimed.insert(dst.clone(), src.clone());
                jobs.push((src, dst));
            }
        }
    };
    for input in inputs {
        if input.is_dir() {
            let mut found = 0;
            for entry in walkdir::WalkDir::new(input).sort_by_file_name() {
                match entry {
                    Ok(e) if e.file_type().is_file() && is_audio(e.path()) => {
                        let rel = e
                            .path()
                            .strip_prefix(input)
                            .unwrap_or(e.path())
                            .to_path_buf();
                        add(e.path().to_path_buf(), rel, &mut jobs, &mut failures);
                        found += 1;
                    }
                    Ok(_) => {}
                    Err(err) => failures.push((input.clone(), format!("cannot list: {err}"))),
                }
            }
            if found == 0 {
                failures.push((input.clone(), "folder holds no audio files".into()));
            }
        } else if input.is_file() {
            let name = input.file_name().map(PathBuf::from).unwrap_or_default();
            add(input.clone(), name, &mut jobs, &mut failures);
        } else {
            failures.push((input.clone(), "no such file or folder".into()));
        }
    }
    (jobs, failures)
}

fn is_audio(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decode, compute, write `dst` (and its .png) atomically.
fn process(src: &Path, dst: &Path, cfg: &MelConfig, args: &FeaturesArgs) -> Result<()> {
    if crate::audio::probe_audio(src)?.duration_s > args.stream_above {
        return process_long(src, dst, cfg, args);
    }
    let audio = load_audio(src, args.sample_rate)?;
    cfg.validate(audio.sample_rate)
        .with_context(|| format!("{}: at {} Hz", src.display(), audio.sample_rate))?;
    let lm = try_log_mel(&audio.samples, audio.sample_rate, cfg)
        .with_context(|| format!("{}", src.display()))?;
    write_outputs(dst, &lm, args)
}

/// `process` for a long recording: two streaming passes (features::long), the .npy written
/// block by block into its place (the header first, then each block's rows by seeking).
fn process_long(src: &Path, dst: &Path, cfg: &MelConfig, args: &FeaturesArgs) -> Result<()> {
    use crate::features::long::{db_reference, log_mel_blocks, BLOCK_FRAMES};
    use crate::infer::source::{at_rate, open_file, SampleSource};
    use std::io::{Seek, SeekFrom};
    let open = || -> Result<Box<dyn SampleSource>> {
        let s = open_file(src)?;
        match args.sample_rate {
            Some(r) => at_rate(s, r),
            None => Ok(s),
        }
    };
    let mut s1 = open()?;
    let sr = s1.sample_rate();
    cfg.validate(sr)
        .with_context(|| format!("{}: at {} Hz", src.display(), sr))?;
    let ex = crate::features::extractor(sr, cfg)?;
    let r = db_reference(&ex, &mut |out: &mut Vec<f32>| s1.read(out), BLOCK_FRAMES)
        .with_context(|| format!("{}", src.display()))?;
    drop(s1);
    let mut s2 = open()?;
    let frames = r.frames;
    write_atomic(dst, |w| {
        let header = npy::write_npy_header(&mut *w, &[cfg.n_mels, frames])? as u64;
        w.flush()?;
        // Past the buffer (now empty): the rows are written in place by seeking.
        let mut f: &std::fs::File = w.get_ref();
        f.set_len(header + (cfg.n_mels * frames * 4) as u64)?;
        let mut bytes = Vec::new();
        log_mel_blocks(
            &ex,
            &mut |out: &mut Vec<f32>| s2.read(out),
            &r,
            BLOCK_FRAMES,
            |t0, nf, tile| {
                for m in 0..cfg.n_mels {
                    bytes.clear();
                    bytes.extend(
                        tile[m * nf..(m + 1) * nf]
                            .iter()
                            .flat_map(|v| v.to_le_bytes()),
                    );
                    f.seek(SeekFrom::Start(header + ((m * frames + t0) * 4) as u64))?;
                    f.write_all(&bytes)?;
                }
                Ok(())
            },
        )
        .with_context(|| format!("{}", src.display()))?;
        Ok(())
    })?;
    if args.png {
        eprintln!(
            "note: {}: no PNG for a recording longer than {} s ({} frames wide)",
            src.display(),
            args.stream_above,
            frames
        );
    }
    Ok(())
}

/// `process` on a device: one clip as a batch of one through the device front end (built once
/// per sample rate).
fn process_device(
    src: &Path,
    dst: &Path,
    cfg: &MelConfig,
    args: &FeaturesArgs,
    dev: &Device,
    fronts: &mut HashMap<u32, DeviceFrontEnd>,
) -> Result<()> {
    let audio = load_audio(src, args.sample_rate)?;
    let sr = audio.sample_rate;
    cfg.validate(sr)
        .with_context(|| format!("{}: at {} Hz", src.display(), sr))?;
    if let Some(i) = audio.samples.iter().position(|x| !x.is_finite()) {
        bail!("{}: sample {i} is not a finite number", src.display());
    }
    let fe = match fronts.entry(sr) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(DeviceFrontEnd::new(dev, sr, cfg)?)
        }
    };
    let pcm = dev.htod(&audio.samples)?;
    let (out, frames) = fe
        .log_mel_batch(dev, &pcm, &[audio.samples.len()], None)
        .with_context(|| format!("{}", src.display()))?;
    let lm = LogMel {
        data: dev.dtoh(&out)?,
        n_mels: cfg.n_mels,
        frames: frames[0],
    };
    write_outputs(dst, &lm, args)
}

/// Writes the .npy (and .png) of one spectrogram.
fn write_outputs(dst: &Path, lm: &LogMel, args: &FeaturesArgs) -> Result<()> {
    // Shape [n_mels, frames], row 0 = lowest band: what librosa returns.
    write_atomic(dst, |w| {
        npy::write_npy_to(w, &[lm.n_mels, lm.frames], &lm.data)
    })?;
    if args.png {
        write_atomic(&dst.with_extension("png"), |w| {
            png::write_png_to(w, &lm.data, lm.n_mels, lm.frames, 2)
        })?;
    }
    Ok(())
}

/// Writes through a temporary file in the destination's folder, then renames it into place.
fn write_atomic(
    dst: &Path,
    body: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> Result<()>,
) -> Result<()> {
    let dir = dst.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".features-").suffix(".tmp");
    // Temporary files are private (0600) by default; outputs should be ordinary files (open(2)
    // applies the umask to this mode, as for File::create).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file());
        body(&mut w).with_context(|| format!("{}: write", dst.display()))?;
        w.flush()
            .with_context(|| format!("{}: write", dst.display()))?;
    }
    tmp.persist(dst)
        .with_context(|| format!("{}: cannot rename into place", dst.display()))?;
    Ok(())
}

/// Throughput on synthetic audio at 22.05 and 44.1 kHz, one thread and all threads.
fn bench(args: &FeaturesArgs, global: &super::Global) -> Result<()> {
    use crate::rng::{Purpose, Stream};
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600]");
    }
    let cfg = args.mel();
    let all = global
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    println!(
        "log-Mel throughput, {} s synthetic clip, n_fft {} hop {} n_mels {} (audio-seconds per second)",
        args.seconds, cfg.n_fft, cfg.hop, cfg.n_mels
    );
    for sr in [22050u32, 44100] {
        cfg.validate(sr)?;
        let n = (args.seconds * sr as f64) as usize;
        // A tone plus noise: content does not change the cost, only the length does.
        let noise = Stream::new(global.seed, Purpose::Synth, sr);
        let x: Vec<f32> = (0..n)
            .map(|i| {
                let tone = (2.0 * std::f32::consts::PI * 220.0 * i as f32 / sr as f32).sin();
                0.3 * tone + 0.05 * noise.normal(i as u64)
            })
            .collect();
        let mut threads = vec![1];
        if all > 1 {
            threads.push(all);
        }
        for t in threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
            let (wall, cpu) = pool.install(|| {
                try_log_mel(&x, sr, &cfg)?; // warm-up: plans, filterbank, page faults
                let (mut wall, mut cpu) = (Vec::new(), Vec::new());
                let start = Instant::now();
                while wall.len() < 3 || (start.elapsed().as_secs_f64() < 2.0 && wall.len() < 50) {
                    let (t0, c0) = (Instant::now(), thread_cpu_seconds());
                    std::hint::black_box(try_log_mel(&x, sr, &cfg)?);
                    wall.push(t0.elapsed().as_secs_f64());
                    if let (Some(c0), Some(c1)) = (c0, thread_cpu_seconds()) {
                        cpu.push(c1 - c0);
                    }
                }
                Ok::<_, anyhow::Error>((wall, cpu))
            })?;
            let med = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                (v[0], v[v.len() / 2])
            };
            let (best, median) = med(wall);
            print!(
                "{sr:>6} Hz  {t:>2} thread(s): {:>8.1} best  {:>8.1} median wall",
                args.seconds / best,
                args.seconds / median,
            );
            // On one thread, CPU time of that thread is robust to other processes sharing
            // the machine (time spent descheduled is not counted).
            if t == 1 && !cpu.is_empty() {
                let (_, cpu_med) = med(cpu);
                print!("  {:>8.1} median CPU-time", args.seconds / cpu_med);
            }
            println!("  ({:.2} ms best per clip)", best * 1e3);
        }
    }
    Ok(())
}

/// CPU time consumed by the calling thread so far, from Linux's /proc/thread-self/schedstat
/// (nanoseconds on the CPU); `None` elsewhere.
fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns * 1e-9)
}

/// `--bench` on a device: a batch of 8 clips of mixed lengths (about `--seconds` of audio in
/// all) through `log_mel_batch`; prints audio-seconds per second and each kernel's FLOPs and
/// DRAM bytes, so the achieved rate can be set against the device's bandwidth.
fn bench_device(args: &FeaturesArgs, dev: &Device) -> Result<()> {
    use crate::rng::{Purpose, Stream};
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600]");
    }
    let cfg = args.mel();
    println!(
        "log-Mel throughput on {}, batch of 8 clips, {} s of audio, n_fft {} hop {} n_mels {}",
        dev.describe(),
        args.seconds,
        cfg.n_fft,
        cfg.hop,
        cfg.n_mels
    );
    for sr in [22050u32, 44100] {
        let fe = DeviceFrontEnd::new(dev, sr, &cfg)?;
        // lengths 0.75x .. 1.25x of the mean, so the padding path runs too
        let mean = args.seconds * sr as f64 / 8.0;
        let lengths: Vec<usize> = (0..8)
            .map(|i| ((0.75 + 0.5 * i as f64 / 7.0) * mean).max(1.0) as usize)
            .collect();
        let total: usize = lengths.iter().sum();
        let max = *lengths.iter().max().unwrap_or(&1);
        let noise = Stream::new(1, Purpose::Synth, sr);
        let mut pcm = vec![0.0f32; 8 * max];
        for (b, &l) in lengths.iter().enumerate() {
            for i in 0..l {
                let tone = (2.0 * std::f32::consts::PI * 220.0 * i as f32 / sr as f32).sin();
                pcm[b * max + i] = 0.3 * tone + 0.05 * noise.normal((b * max + i) as u64);
            }
        }
        let dpcm = dev.htod(&pcm)?;
        let aug = crate::features::augment::AugmentConfig {
            noise_prob: 1.0,
            ..Default::default()
        };
        let ids: Vec<usize> = (0..8).collect();
        for (label, a) in [
            ("plain", None),
            ("augmented", Some((&aug, 1u64, 0u32, &ids[..]))),
        ] {
            fe.log_mel_batch(dev, &dpcm, &lengths, a)?; // warm-up (module load, allocations)
            dev.synchronize()?;
            let mut times = Vec::new();
            let start = Instant::now();
            while times.is_empty() || (start.elapsed().as_secs_f64() < 2.0 && times.len() < 50) {
                let t0 = Instant::now();
                std::hint::black_box(fe.log_mel_batch(dev, &dpcm, &lengths, a)?);
                dev.synchronize()?;
                times.push(t0.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let best = times[0];
            let costs = fe.costs(&lengths, a.is_some());
            let (flops, bytes) = costs
                .iter()
                .fold((0.0, 0.0), |(f, b), c| (f + c.flops, b + c.bytes));
            println!(
                "{sr:>6} Hz {label:>9}: {:>10.1} audio-s/s best ({:.3} ms per batch; {:.1} GFLOP/s, {:.1} GB/s of the DRAM floor)",
                total as f64 / sr as f64 / best,
                best * 1e3,
                flops / best / 1e9,
                bytes / best / 1e9
            );
            for c in &costs {
                println!(
                    "        {:<15} {:>10.3} MFLOP {:>10.3} MB  ({:.1} FLOP/byte)",
                    c.name,
                    c.flops / 1e6,
                    c.bytes / 1e6,
                    c.flops / c.bytes.max(1.0)
                );
            }
        }
    }
    Ok(())
}
