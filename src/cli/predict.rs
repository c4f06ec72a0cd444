//! `ser-engine predict`: the emotion of audio files, folders, lists of files, long recordings
//! window by window, or a live stream on standard input.
//!
//! Inputs: files; folders (searched recursively for .wav/.flac/.mp3/.ogg); `@LIST` or
//! `--list LIST` (a text file with one path or `@LIST` per line, `#` comments); `-` (standard input, WAV
//! or `--raw` PCM). Unreadable inputs are listed and skipped; the exit code is 1 when any were.
//!
//! Without `--window` every file is one clip (decoded in parallel); a file longer than
//! `--max-clip` seconds (or standard input) is classified in `--max-clip` windows and its
//! probabilities are the duration-weighted mean over the windows, so memory stays bounded.
//! With `--window S [--hop S]` every window gets its own row (start, end, label, all
//! probabilities); windows quieter than `--silence-db` are reported silent and skipped.
//! `--tta N` averages each clip's (or window's) probabilities over N crops of the model's
//! training length; several `--model`s (or a cv folder) average their runs' probabilities.
//! The streaming machinery, the crops and the ensembles live in `crate::infer`.
//!
//! Layer: cli, the top. May use every other module.

use super::Global;
use crate::backend::argmax;
use crate::infer::ensemble::member_dirs;
use crate::infer::file::{classify_long, decode_clip};
use crate::infer::source::{at_rate, open_file, PcmFormat, PcmStream, SampleSource};
use crate::infer::timeline::Timeline;
use crate::infer::{run_windows, Classifier, WindowConfig, WindowResult};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File extensions treated as audio when searching folders.
const AUDIO_EXTS: &[&str] = &["wav", "wave", "flac", "mp3", "ogg", "oga"];

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Run folder written by `ser-engine train`; repeat for an ensemble (probabilities
    /// averaged; 1 to 32 runs sharing sample rate, front end and classes); a cv folder stands
    /// for its fold runs.
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// Test-time averaging: a clip (or window) longer than the model's training crop
    /// (--max-seconds of its run) is classified as N crops of that length evenly spaced from
    /// start to end and the probabilities averaged; 1 to 16 (1: the whole clip in one piece).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub tta: usize,
    /// Audio files, folders (recursive), @LIST files of paths, or - for standard input.
    pub inputs: Vec<String>,
    /// A text file with one audio path per line (# starts a comment); may be repeated.
    #[arg(long)]
    pub list: Vec<PathBuf>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the rows as CSV here (one row per file, or per window with --window); - for
    /// standard output (instead of the text rows). Never one of the inputs or a file inside a
    /// run folder; the folder must exist.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Classify windows of this many seconds instead of whole files (> 0, at most 60).
    #[arg(long, allow_negative_numbers = true)]
    pub window: Option<f64>,
    /// Seconds between window starts (> 0, at most 60) [default: the window length].
    #[arg(long, requires = "window", allow_negative_numbers = true)]
    pub hop: Option<f64>,
    /// Windows whose RMS level is below this (dBFS, -200 to 0) are reported silent, not
    /// classified.
    #[arg(long, default_value_t = -50.0, allow_negative_numbers = true)]
    pub silence_db: f64,
    /// Classify every window, however quiet.
    #[arg(long)]
    pub keep_silence: bool,
    /// With --window: write a picture of the probabilities over time (waveform above); - for
    /// standard output. Never one of the inputs or a file inside a run folder.
    #[arg(long, requires = "window")]
    pub timeline_png: Option<PathBuf>,
    /// Longest clip classified in one piece, seconds (> 0, at most 60); longer files are
    /// averaged over windows this long.
    #[arg(long, default_value_t = 30.0, allow_negative_numbers = true)]
    pub max_clip: f64,
    /// Standard input is headerless PCM in this encoding (default: a WAV stream).
    #[arg(long, value_enum)]
    pub raw: Option<PcmFormat>,
    /// Sample rate of --raw input, 1000 to 192000 Hz.
    #[arg(long, default_value_t = 16_000, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<u32>::new())]
    pub rate: u32,
    /// Channels of --raw input (averaged to mono), 1 to 64.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<u16>::new())]
    pub channels: u16,
    /// Windows per model call for files, 1 to 64, lowered so that a call holds at most 64 s of
    /// audio (standard input always uses 1, for latency).
    #[arg(long, default_value_t = 16, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub batch_size: usize,
}

/// One input after expanding folders and lists.
#[derive(Clone, Debug)]
enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    fn name(&self) -> String {
        match self {
            Input::Stdin => "-".to_string(),
            Input::File(p) => p.display().to_string(),
        }
    }
}

/// Where rows go: stdout (text or JSON lines, unless stdout carries `--csv -` or
/// `--timeline-png -`) and optionally CSV.
struct Output {
    json: bool,
    /// Text or JSON lines on stdout.
    lines: bool,
    labels: Vec<String>,
    csv: Option<(csv::Writer<CsvSink>, PathBuf)>,
    bar: ProgressBar,
}

/// A CSV file being written (a temporary file renamed at the end), or standard output.
enum CsvSink {
    File(tempfile::NamedTempFile),
    Stdout(std::io::Stdout),
}

impl std::io::Write for CsvSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            CsvSink::File(f) => f.write(buf),
            CsvSink::Stdout(o) => o.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            CsvSink::File(f) => f.flush(),
            CsvSink::Stdout(o) => o.flush(),
        }
    }
}

impl Output {
    fn new(args: &PredictArgs, labels: &[String], windows: bool, bar: ProgressBar) -> Result<Self> {
        let csv = match &args.csv {
            None => None,
            Some(p) if super::outputs::is_stdout(p) => {
                let mut w = csv::Writer::from_writer(CsvSink::Stdout(std::io::stdout()));
                w.write_record(csv_head(labels, windows))
                    .context("cannot write to standard output")?;
                Some((w, p.clone()))
            }
            Some(p) => {
                let dir = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let mut builder = tempfile::Builder::new();
                // Temporary files are private (0600) by default; the CSV is an ordinary file.
                #[cfg(unix)]
                builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
                let tmp = builder
                    .tempfile_in(dir)
                    .with_context(|| format!("{}: cannot create a temporary file", p.display()))?;
                let mut w = csv::Writer::from_writer(CsvSink::File(tmp));
                w.write_record(csv_head(labels, windows))
                    .with_context(|| format!("{}: cannot write", p.display()))?;
                Some((w, p.clone()))
            }
        };
        let to_stdout = |p: &Option<PathBuf>| p.as_deref().is_some_and(super::outputs::is_stdout);
        Ok(Self {
            json: args.json,
            lines: !to_stdout(&args.csv) && !to_stdout(&args.timeline_png),
            labels: labels.to_vec(),
            csv,
            bar,
        })
    }

    /// One line to stdout, flushed at once (live use); a closed pipe is an error, not a panic.
    fn print(&self, line: String) -> Result<()> {
        use std::io::Write;
        if !self.lines {
            return Ok(());
        }
        self.bar
            .suspend(|| {
                let mut o = std::io::stdout().lock();
                writeln!(o, "{line}").and_then(|_| o.flush())
            })
            .context("cannot write to standard output")
    }

    fn probs_json(&self, p: &[f64]) -> serde_json::Value {
        self.labels
            .iter()
            .zip(p)
            .map(|(l, &v)| (l.clone(), serde_json::json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    fn probs_text(&self, p: &[f64]) -> String {
        self.labels
            .iter()
            .zip(p)
            .map(|(l, v)| format!("{l} {v:.3}"))
            .collect::<Vec<_>>()
            .join("  ")
    }

    fn csv_row(&mut self, mut row: Vec<String>, p: Option<&[f64]>) -> Result<()> {
        if let Some((w, path)) = &mut self.csv {
            match p {
                Some(p) => row.extend(p.iter().map(|v| format!("{v:.6}"))),
                None => row.extend(std::iter::repeat_n(String::new(), self.labels.len())),
            }
            w.write_record(&row)
                .with_context(|| format!("{}: cannot write", path.display()))?;
            if super::outputs::is_stdout(path) {
                // live use: each row as soon as it is known
                w.flush().context("cannot write to standard output")?;
            }
        }
        Ok(())
    }

    /// A whole file's result (`windows` > 1 when it was averaged over windows).
    fn file_row(
        &mut self,
        name: &str,
        duration: f64,
        windows: usize,
        p: Option<&[f64]>,
    ) -> Result<()> {
        let label = p.map(|p| self.labels[argmax_f64(p)].clone());
        if self.json {
            self.print(
                serde_json::json!({
                    "file": name, "duration_s": duration, "windows": windows,
                    "label": label, "probabilities": p.map(|p| self.probs_json(p)),
                })
                .to_string(),
            )?;
        } else {
            let what = match p {
                Some(p) => format!("{}\t{}", label.as_deref().unwrap_or(""), self.probs_text(p)),
                None => "(silent)".to_string(),
            };
            let avg = if windows > 1 {
                format!("\t(mean of {windows} windows)")
            } else {
                String::new()
            };
            self.print(format!("{name}\t{what}{avg}"))?;
        }
        let row = vec![
            name.to_string(),
            format!("{duration:.3}"),
            windows.to_string(),
            label.unwrap_or_default(),
        ];
        self.csv_row(row, p)
    }

    fn window_row(&mut self, name: &str, r: &WindowResult) -> Result<()> {
        let p = r.probabilities.as_deref();
        let label = p.map(|p| self.labels[argmax_f64(p)].clone());
        let rms = if r.rms_dbfs.is_finite() {
            format!("{:.1}", r.rms_dbfs)
        } else {
            "-inf".to_string()
        };
        if self.json {
            self.print(
                serde_json::json!({
                    "file": name, "start_s": r.start_s, "end_s": r.end_s,
                    "rms_dbfs": r.rms_dbfs.is_finite().then_some(r.rms_dbfs),
                    "silent": p.is_none(), "label": label,
                    "probabilities": p.map(|p| self.probs_json(p)),
                })
                .to_string(),
            )?;
        } else {
            let what = match p {
                Some(p) => format!("{}\t{}", label.as_deref().unwrap_or(""), self.probs_text(p)),
                None => format!("(silent, {rms} dBFS)"),
            };
            self.print(format!("{name}\t{:.2}-{:.2}\t{what}", r.start_s, r.end_s))?;
        }
        let row = vec![
            name.to_string(),
            format!("{:.3}", r.start_s),
            format!("{:.3}", r.end_s),
            rms,
            label.unwrap_or_default(),
        ];
        self.csv_row(row, p)
    }

    fn finish(self) -> Result<()> {
        if let Some((w, path)) = self.csv {
            let sink = w
                .into_inner()
                .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
            if let CsvSink::File(tmp) = sink {
                tmp.persist(&path)
                    .with_context(|| format!("{}: cannot write", path.display()))?;
            }
        }
        Ok(())
    }
}

/// The CSV header: per file or per window, then one column per label.
fn csv_head(labels: &[String], windows: bool) -> Vec<String> {
    let fixed: &[&str] = if windows {
        &["file", "start_s", "end_s", "rms_dbfs", "label"]
    } else {
        &["file", "duration_s", "windows", "label"]
    };
    fixed
        .iter()
        .map(|s| s.to_string())
        .chain(labels.iter().cloned())
        .collect()
}

/// Whether writing our own output failed (e.g. `| head` closed the pipe): stop, do not skip.
fn output_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn argmax_f64(p: &[f64]) -> usize {
    let f: Vec<f32> = p.iter().map(|&v| v as f32).collect();
    argmax(&f)
}

/// Expands folders (recursively, sorted) and list files (a list may name other lists with
/// `@LIST`); keeps the given order otherwise. A folder without audio files or a list without
/// entries is an error naming it.
fn expand_inputs(args: &PredictArgs) -> Result<Vec<Input>> {
    let mut out = Vec::new();
    let mut lists: std::collections::VecDeque<PathBuf> = args.list.iter().cloned().collect();
    let push_path = |out: &mut Vec<Input>, p: PathBuf| -> Result<()> {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(&p)
                .follow_links(true)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_file() && is_audio(e.path()))
                .map(|e| e.into_path())
                .collect();
            if found.is_empty() {
                bail!(
                    "{}: the folder holds no audio files (searched recursively for .{})",
                    p.display(),
                    AUDIO_EXTS.join(", .")
                );
            }
            found.sort();
            out.extend(found.into_iter().map(Input::File));
        } else {
            out.push(Input::File(p));
        }
        Ok(())
    };
    for a in &args.inputs {
        if a == "-" {
            out.push(Input::Stdin);
        } else if let Some(l) = a.strip_prefix('@') {
            lists.push_back(PathBuf::from(l));
        } else {
            push_path(&mut out, PathBuf::from(a))?;
        }
    }
    // lists already read (canonical), so a list naming itself or a cycle is read once
    let mut seen = std::collections::HashSet::new();
    while let Some(l) = lists.pop_front() {
        if !seen.insert(std::fs::canonicalize(&l).unwrap_or_else(|_| l.clone())) {
            continue;
        }
        let text = std::fs::read_to_string(&l)
            .with_context(|| format!("{}: cannot read the list of files", l.display()))?;
        let mut entries = 0;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            entries += 1;
            match line.strip_prefix('@') {
                Some(inner) => lists.push_back(PathBuf::from(inner)),
                None => push_path(&mut out, PathBuf::from(line))
                    .with_context(|| format!("{} (listed in {})", line, l.display()))?,
            }
        }
        if entries == 0 {
            bail!("{}: the list names no files", l.display());
        }
    }
    if out.is_empty() {
        bail!("no input: give audio files, folders, @LIST or - for standard input");
    }
    if out.iter().filter(|i| matches!(i, Input::Stdin)).count() > 1 {
        bail!("standard input (-) can be read only once");
    }
    Ok(out)
}

fn is_audio(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

fn open_input(input: &Input, args: &PredictArgs, rate: u32) -> Result<Box<dyn SampleSource>> {
    let src: Box<dyn SampleSource> = match input {
        Input::Stdin => {
            let stdin = std::io::stdin().lock();
            match args.raw {
                Some(f) => Box::new(PcmStream::raw(
                    stdin,
                    "standard input",
                    f,
                    args.rate,
                    args.channels,
                )?),
                None => Box::new(PcmStream::wav(stdin, "standard input")?),
            }
        }
        Input::File(p) => open_file(p)?,
    };
    at_rate(src, rate)
}

/// Longest `--window`, `--hop` and `--max-clip`, seconds: bounds the samples, features and
/// activations of one window (README, "Bad input").
pub const MAX_WINDOW_S: f64 = 60.0;
/// Largest `--batch-size` (windows per model call).
pub const MAX_BATCH: usize = 64;
/// Audio per model call, seconds: `--batch-size` is lowered to fit (16 windows of 4 s, 2 of
/// 30 s, 1 of 60 s).
pub const MAX_BATCH_AUDIO_S: f64 = crate::infer::MAX_CALL_AUDIO_S;
pub use crate::infer::MAX_TTA;
/// Most `--channels` of `--raw` input.
pub const MAX_CHANNELS: u16 = 64;

/// Checks every numeric option against its range before any work starts.
fn validate(args: &PredictArgs) -> Result<()> {
    use crate::train::options::{check_range, Limit::*, SAMPLE_RATE_RANGE};
    for (name, v) in [
        ("window", args.window),
        ("hop", args.hop),
        ("max-clip", Some(args.max_clip)),
    ] {
        if let Some(v) = v {
            check_range(name, v, Excl(0.0), Incl(MAX_WINDOW_S))?;
        }
    }
    check_range("silence-db", args.silence_db, Incl(-200.0), Incl(0.0))?;
    let (lo, hi) = SAMPLE_RATE_RANGE;
    check_range("rate", args.rate.into(), Incl(lo.into()), Incl(hi.into()))?;
    check_range(
        "channels",
        args.channels.into(),
        Incl(1.0),
        Incl(MAX_CHANNELS.into()),
    )?;
    check_range(
        "batch-size",
        args.batch_size as f64,
        Incl(1.0),
        Incl(MAX_BATCH as f64),
    )?;
    check_range("tta", args.tta as f64, Incl(1.0), Incl(MAX_TTA as f64))?;
    let to_stdout = |p: &Option<PathBuf>| p.as_deref().is_some_and(super::outputs::is_stdout);
    if args.json && (to_stdout(&args.csv) || to_stdout(&args.timeline_png)) {
        bail!(
            "--json prints rows on standard output, which --csv - or --timeline-png - would \
             share; give that option a file"
        );
    }
    Ok(())
}

pub fn run(args: &PredictArgs, global: &Global) -> Result<()> {
    validate(args)?;
    crate::cpu::conv::bound_inference_memory();
    let inputs = expand_inputs(args)?;
    if args.timeline_png.is_some() && inputs.len() != 1 {
        bail!(
            "--timeline-png draws one recording; {} inputs were given",
            inputs.len()
        );
    }
    // Outputs are checked against every input (files, lists) and the model's run folder
    // before anything is read or written.
    let mut read: Vec<&Path> = inputs
        .iter()
        .filter_map(|i| match i {
            Input::File(p) => Some(p.as_path()),
            Input::Stdin => None,
        })
        .collect();
    read.extend(args.list.iter().map(|p| p.as_path()));
    read.extend(
        args.inputs
            .iter()
            .filter_map(|a| a.strip_prefix('@'))
            .map(Path::new),
    );
    let outs: Vec<(&str, &Path)> = [("--csv", &args.csv), ("--timeline-png", &args.timeline_png)]
        .into_iter()
        .filter_map(|(o, p)| p.as_deref().map(|p| (o, p)))
        .collect();
    let members = member_dirs(&args.model)?;
    let runs: Vec<&Path> = members.iter().map(|m| m.as_path()).collect();
    super::outputs::check_outputs(&outs, &read, &runs)?;
    let mut clf = Classifier::load_ensemble(&members, global.device)?;
    clf.set_tta(args.tta);
    // The shortest window the model takes depends on the run's hop and rate.
    let min_s = (crate::model::MIN_FRAMES * clf.cfg.mel.hop) as f64 / clf.cfg.sample_rate as f64;
    for (name, v) in [
        ("--window", args.window),
        ("--max-clip", Some(args.max_clip)),
    ] {
        if let Some(v) = v.filter(|&v| v < min_s) {
            bail!(
                "{name} {v}: shorter than the model's shortest input ({} frames = {min_s:.3} s \
                 at {} Hz); the range is {min_s:.3} to {MAX_WINDOW_S} s for this model",
                crate::model::MIN_FRAMES,
                clf.cfg.sample_rate
            );
        }
    }
    let labels = clf.cfg.labels.clone();
    let bar = if global.progress() && !(inputs.len() == 1 && matches!(inputs[0], Input::Stdin)) {
        ProgressBar::new(inputs.len() as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} files  {msg}")
                .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut out = Output::new(args, &labels, args.window.is_some(), bar.clone())?;
    let t0 = Instant::now();
    let mut audio_s = 0.0f64;
    let mut failed: Vec<String> = Vec::new();
    let note = |bar: &ProgressBar, audio_s: f64| {
        let el = t0.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{:.0} audio-s/s", audio_s / el));
        bar.inc(1);
    };
    match args.window {
        Some(window_s) => {
            let wc = WindowConfig {
                window_s,
                hop_s: args.hop.unwrap_or(window_s),
                silence_dbfs: (!args.keep_silence).then_some(args.silence_db),
                // at most MAX_BATCH_AUDIO_S of audio per model call: memory grows with
                // windows × length
                batch: args
                    .batch_size
                    .min(((MAX_BATCH_AUDIO_S / window_s) as usize).max(1)),
            };
            for input in &inputs {
                let name = input.name();
                let timeline = std::cell::RefCell::new(
                    args.timeline_png
                        .as_ref()
                        .map(|_| Timeline::new(clf.cfg.sample_rate)),
                );
                let mut wc = wc.clone();
                if matches!(input, Input::Stdin) {
                    wc.batch = 1; // a line per window as soon as it is complete
                }
                let res = open_input(input, args, clf.cfg.sample_rate).and_then(|mut src| {
                    run_windows(
                        &mut clf,
                        src.as_mut(),
                        &wc,
                        |s| {
                            if let Some(t) = timeline.borrow_mut().as_mut() {
                                t.add_samples(s)
                            }
                        },
                        |r| {
                            if let Some(t) = timeline.borrow_mut().as_mut() {
                                t.add_window(&r);
                            }
                            out.window_row(&name, &r)
                        },
                    )
                });
                match res {
                    Ok(d) => audio_s += d,
                    Err(e) if output_closed(&e) => return Err(e),
                    Err(e) => {
                        bar.suspend(|| eprintln!("error: {e:#}"));
                        failed.push(name.clone());
                    }
                }
                if let (Some(t), Some(p)) = (timeline.borrow().as_ref(), &args.timeline_png) {
                    let title = Path::new(&name)
                        .file_name()
                        .map_or(name.clone(), |f| f.to_string_lossy().to_string());
                    t.save(p, &title, &labels)?;
                }
                note(&bar, audio_s);
            }
        }
        None => {
            // Files decoded in parallel, a few per thread at a time (bounded memory), then
            // classified in order on the one model.
            let group = 4 * rayon::current_num_threads().max(1);
            for chunk in inputs.chunks(group) {
                let cfg = &clf.cfg;
                let decoded: Vec<Result<Option<(f64, crate::features::LogMel)>>> = chunk
                    .par_iter()
                    .map(|input| match input {
                        Input::Stdin => Ok(None),
                        Input::File(p) => decode_clip(cfg, p, args.max_clip),
                    })
                    .collect();
                for (input, d) in chunk.iter().zip(decoded) {
                    let name = input.name();
                    let res = d.and_then(|d| match d {
                        Some((dur, lm)) => {
                            let p = clf.probabilities(&[&lm])?.remove(0);
                            out.file_row(&name, dur, 1, Some(&p))?;
                            Ok(dur)
                        }
                        // Long (or unknown-length) input: windows of --max-clip, averaged.
                        None => {
                            let mut src = open_input(input, args, clf.cfg.sample_rate)?;
                            let (dur, n, p) = classify_long(&mut clf, src.as_mut(), args.max_clip)?;
                            out.file_row(&name, dur, n, p.as_deref())?;
                            Ok(dur)
                        }
                    });
                    match res {
                        Ok(d) => audio_s += d,
                        Err(e) if output_closed(&e) => return Err(e),
                        Err(e) => {
                            bar.suspend(|| eprintln!("error: {e:#}"));
                            failed.push(name);
                        }
                    }
                    note(&bar, audio_s);
                }
            }
        }
    }
    bar.finish_and_clear();
    out.finish()?;
    if !global.quiet {
        let el = t0.elapsed().as_secs_f64();
        eprintln!(
            "{} input(s), {:.1} s of audio in {:.1} s ({:.0} audio-s/s)",
            inputs.len(),
            audio_s,
            el,
            audio_s / el.max(1e-9)
        );
    }
    if !failed.is_empty() {
        eprintln!("skipped (unreadable):");
        for f in &failed {
            eprintln!("  {f}");
        }
        bail!(
            "{} of {} input(s) could not be read",
            failed.len(),
            inputs.len()
        );
    }
    Ok(())
}
