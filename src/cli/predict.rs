//! `ser-engine predict`: the emotion of audio files, folders, lists of files, long recordings
//! window by window, or a live stream on standard input.
//!
//! Inputs: files; folders (searched recursively for .wav/.flac/.mp3/.ogg); `@LIST` or
//! `--list LIST` (a text file with one path per line, `#` comments); `-` (standard input, WAV
//! or `--raw` PCM). Unreadable inputs are listed and skipped; the exit code is 1 when any were.
//!
//! Without `--window` every file is one clip (decoded in parallel); a file longer than
//! `--max-clip` seconds (or standard input) is classified in `--max-clip` windows and its
//! probabilities are the duration-weighted mean over the windows, so memory stays bounded.
//! With `--window S [--hop S]` every window gets its own row (start, end, label, all
//! probabilities); windows quieter than `--silence-db` are reported silent and skipped.
//! The streaming machinery lives in `crate::infer`.
//!
//! Layer: cli, the top. May use every other module.

use super::Global;
use crate::audio::{load_audio, probe_audio};
use crate::infer::source::{at_rate, open_file, PcmFormat, PcmStream, SampleSource};
use crate::infer::timeline::Timeline;
use crate::infer::{mean_probabilities, run_windows, Classifier, WindowConfig, WindowResult};
use crate::train::backend::argmax;
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
    /// Run folder written by `ser-engine train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Audio files, folders (recursive), @LIST files of paths, or - for standard input.
    pub inputs: Vec<String>,
    /// A text file with one audio path per line (# starts a comment); may be repeated.
    #[arg(long)]
    pub list: Vec<PathBuf>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the rows as CSV here (one row per file, or per window with --window).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Classify windows of this many seconds instead of whole files.
    #[arg(long, allow_negative_numbers = true)]
    pub window: Option<f64>,
    /// Seconds between window starts [default: the window length].
    #[arg(long, requires = "window", allow_negative_numbers = true)]
    pub hop: Option<f64>,
    /// Windows whose RMS level is below this (dBFS) are reported silent, not classified.
    #[arg(long, default_value_t = -50.0, allow_negative_numbers = true)]
    pub silence_db: f64,
    /// Classify every window, however quiet.
    #[arg(long)]
    pub keep_silence: bool,
    /// With --window: write a picture of the probabilities over time (waveform above).
    #[arg(long, requires = "window")]
    pub timeline_png: Option<PathBuf>,
    /// Longest clip classified in one piece; longer files are averaged over windows this long.
    #[arg(long, default_value_t = 30.0)]
    pub max_clip: f64,
    /// Standard input is headerless PCM in this encoding (default: a WAV stream).
    #[arg(long, value_enum)]
    pub raw: Option<PcmFormat>,
    /// Sample rate of --raw input.
    #[arg(long, default_value_t = 16_000)]
    pub rate: u32,
    /// Channels of --raw input (averaged to mono).
    #[arg(long, default_value_t = 1)]
    pub channels: u16,
    /// Windows per model call for files (standard input always uses 1, for latency).
    #[arg(long, default_value_t = 16)]
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

/// Where rows go: stdout (text or JSON lines) and optionally a CSV file.
struct Output {
    json: bool,
    labels: Vec<String>,
    csv: Option<(csv::Writer<tempfile::NamedTempFile>, PathBuf)>,
    bar: ProgressBar,
}

impl Output {
    fn new(args: &PredictArgs, labels: &[String], windows: bool, bar: ProgressBar) -> Result<Self> {
        let csv = match &args.csv {
            None => None,
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
                let mut w = csv::Writer::from_writer(tmp);
                let mut head: Vec<String> = if windows {
                    ["file", "start_s", "end_s", "rms_dbfs", "label"]
                } else {
                    ["file", "duration_s", "windows", "label", ""]
                }
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.to_string())
                .collect();
                head.extend(labels.iter().cloned());
                w.write_record(&head)
                    .with_context(|| format!("{}: cannot write", p.display()))?;
                Some((w, p.clone()))
            }
        };
        Ok(Self {
            json: args.json,
            labels: labels.to_vec(),
            csv,
            bar,
        })
    }

    /// One line to stdout, flushed at once (live use); a closed pipe is an error, not a panic.
    fn print(&self, line: String) -> Result<()> {
        use std::io::Write;
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
            let tmp = w
                .into_inner()
                .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))?;
            tmp.persist(&path)
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
        Ok(())
    }
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

/// Expands folders (recursively, sorted) and list files; keeps the given order otherwise.
fn expand_inputs(args: &PredictArgs) -> Result<Vec<Input>> {
    let mut out = Vec::new();
    let mut lists: Vec<PathBuf> = args.list.clone();
    let push_path = |out: &mut Vec<Input>, p: PathBuf| {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(&p)
                .follow_links(true)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_file() && is_audio(e.path()))
                .map(|e| e.into_path())
                .collect();
            found.sort();
            out.extend(found.into_iter().map(Input::File));
        } else {
            out.push(Input::File(p));
        }
    };
    for a in &args.inputs {
        if a == "-" {
            out.push(Input::Stdin);
        } else if let Some(l) = a.strip_prefix('@') {
            lists.push(PathBuf::from(l));
        } else {
            push_path(&mut out, PathBuf::from(a));
        }
    }
    for l in &lists {
        let text = std::fs::read_to_string(l)
            .with_context(|| format!("{}: cannot read the list of files", l.display()))?;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            push_path(&mut out, PathBuf::from(line));
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

pub fn run(args: &PredictArgs, global: &Global) -> Result<()> {
    for (name, v) in [
        ("--window", args.window),
        ("--hop", args.hop),
        ("--max-clip", Some(args.max_clip)),
    ] {
        if let Some(v) = v {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} must be a positive number of seconds (got {v})");
            }
        }
    }
    let inputs = expand_inputs(args)?;
    if args.timeline_png.is_some() && inputs.len() != 1 {
        bail!(
            "--timeline-png draws one recording; {} inputs were given",
            inputs.len()
        );
    }
    let mut clf = Classifier::load(&args.model, global.device)?;
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
                batch: args.batch_size,
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
                        Input::File(p) => {
                            let info = probe_audio(p)?;
                            if info.duration_s > args.max_clip {
                                return Ok(None);
                            }
                            let a = load_audio(p, Some(cfg.sample_rate))?;
                            let lm = Classifier::features(cfg, &a.samples)
                                .with_context(|| p.display().to_string())?;
                            Ok(Some((a.samples.len() as f64 / cfg.sample_rate as f64, lm)))
                        }
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
                            let wc = WindowConfig {
                                window_s: args.max_clip,
                                hop_s: args.max_clip,
                                silence_dbfs: None,
                                batch: 1,
                            };
                            let mut rows = Vec::new();
                            let mut src = open_input(input, args, clf.cfg.sample_rate)?;
                            let dur = run_windows(
                                &mut clf,
                                src.as_mut(),
                                &wc,
                                |_| {},
                                |r| {
                                    rows.push(r);
                                    Ok(())
                                },
                            )?;
                            let p = mean_probabilities(&rows);
                            out.file_row(&name, dur, rows.len(), p.as_deref())?;
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
