//! `ser-engine train`: one training run on a corpus (the demo corpus when no --data), writing
//! a run folder (see `train::run`). Also holds the options `cv` shares.

use super::{DeviceChoice, Global};
use crate::audio::corpus::{load_corpus, Corpus, CorpusFormat, CorpusOptions};
use crate::features::augment::AugmentConfig;
use crate::features::MelConfig;
use crate::model::ModelConfig;
use crate::train::backend::{Backend, OptimConfig};
use crate::train::cpu_backend::CpuBackend;
use crate::train::data::{choose_sample_rate, Dataset, DB_OFFSET, DB_SCALE};
use crate::train::fit::{evaluate, fit, Evaluation, FitConfig, FitProgress};
use crate::train::run::{RunConfig, RunDir};
use crate::train::split::stratified_split;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// Corpus, features, model and training options shared by `train` and `cv`.
#[derive(Debug, Args, Clone)]
pub struct TrainOpts {
    /// Corpus folder (or CSV manifest). Without it: the built-in demo corpus.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Corpus layout.
    #[arg(long, value_enum, default_value_t = CorpusFormat::Auto)]
    pub format: CorpusFormat,
    /// Regex with named groups `label` (and optionally `speaker`) over paths relative to --data.
    #[arg(long)]
    pub label_regex: Option<String>,
    /// Resample audio to this rate (default: the corpus's native rate).
    #[arg(long)]
    pub sample_rate: Option<u32>,
    /// Mel bands.
    #[arg(long, default_value_t = 128)]
    pub n_mels: usize,
    /// Convolution kernel size (3, 5, 7, 9, 11 in the paper).
    #[arg(long, default_value_t = 7)]
    pub kernel_size: usize,
    /// Leave out BatchNorm after each convolution.
    #[arg(long)]
    pub no_batchnorm: bool,
    /// Advanced (tests, experiments): channels of the three conv stages, e.g. 4,8,8
    /// [default: 32,64,128 as the paper].
    #[arg(long, hide = true, value_delimiter = ',')]
    pub channels: Option<Vec<usize>>,
    /// Advanced: width of the per-frame FC layer [default: 128].
    #[arg(long, hide = true)]
    pub fc_size: Option<usize>,
    /// Advanced: LSTM hidden size per direction [default: 64].
    #[arg(long, hide = true)]
    pub hidden_size: Option<usize>,
    /// Dropout probability (conv stages, FC, between LSTM layers).
    #[arg(long, default_value_t = 0.3)]
    pub dropout: f32,
    /// Maximum number of epochs [default: 100; 20 on the demo corpus]. With --resume, a
    /// larger value extends the run.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Clips per batch [default: 32, as the paper; 16 on the demo corpus].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Adam learning rate [default: 1e-4, as the paper; 1e-3 on the demo corpus].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adam weight decay (L2 added to the gradient, as torch.optim.Adam).
    #[arg(long, default_value_t = 1e-5)]
    pub weight_decay: f64,
    /// Decoupled weight decay (AdamW) instead of L2.
    #[arg(long)]
    pub adamw: bool,
    /// Learning-rate schedule: `plateau` (the paper's reduce-on-plateau) or `cosine` (warmup
    /// over the first epoch, then cosine decay to zero at the last epoch)
    /// [default: plateau; cosine on the demo corpus].
    #[arg(long, value_enum)]
    pub schedule: Option<crate::train::schedule::Schedule>,
    /// Reduce-on-plateau factor and patience (epochs) on validation loss.
    #[arg(long, default_value_t = 0.5)]
    pub plateau_factor: f64,
    #[arg(long, default_value_t = 5)]
    pub plateau_patience: usize,
    /// Stop after this many epochs without a better validation loss.
    #[arg(long, default_value_t = 10)]
    pub early_stop: usize,
    /// Clip the global gradient norm to this value (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub clip_grad: f64,
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Weight the loss by inverse class frequency.
    #[arg(long)]
    pub class_weights: bool,
    /// No augmentation at all (no noise, no SpecAugment) [default on the demo corpus].
    #[arg(long)]
    pub no_augment: bool,
    /// Augment (noise + SpecAugment) even on the demo corpus.
    #[arg(long, conflicts_with = "no_augment")]
    pub augment: bool,
    /// Probability that a training clip gets Gaussian noise, and its SNR range in dB.
    #[arg(long, default_value_t = 0.5)]
    pub noise_prob: f32,
    #[arg(long, default_value_t = 10.0)]
    pub snr_min: f32,
    #[arg(long, default_value_t = 30.0)]
    pub snr_max: f32,
    /// SpecAugment: number and widest width of frequency masks (bins) and time masks
    /// (fraction of the clip's frames).
    #[arg(long, default_value_t = 2)]
    pub freq_masks: usize,
    #[arg(long, default_value_t = 15)]
    pub freq_mask_max: usize,
    #[arg(long, default_value_t = 2)]
    pub time_masks: usize,
    #[arg(long, default_value_t = 0.1)]
    pub time_mask_frac: f32,
}

impl TrainOpts {
    pub fn mel(&self) -> MelConfig {
        MelConfig {
            n_mels: self.n_mels,
            ..MelConfig::default()
        }
    }

    pub fn augment(&self) -> AugmentConfig {
        // The demo corpus already varies speakers and background noise; augmentation only
        // slowed its 20-epoch run (README, "Quick start").
        if self.no_augment || (self.on_demo() && !self.augment) {
            return AugmentConfig::none();
        }
        AugmentConfig {
            noise_prob: self.noise_prob,
            snr_min_db: self.snr_min,
            snr_max_db: self.snr_max,
            freq_masks: self.freq_masks,
            freq_mask_max: self.freq_mask_max,
            time_masks: self.time_masks,
            time_mask_max_frac: self.time_mask_frac,
        }
    }

    pub fn model(&self, classes: usize) -> Result<ModelConfig> {
        let d = ModelConfig::default();
        let channels = match self.channels.as_deref() {
            None => d.channels,
            Some(&[a, b, c]) => [a, b, c],
            Some(v) => bail!("--channels takes three values, got {}", v.len()),
        };
        let cfg = ModelConfig {
            n_mels: self.n_mels,
            kernel: self.kernel_size,
            channels,
            fc: self.fc_size.unwrap_or(d.fc),
            hidden: self.hidden_size.unwrap_or(d.hidden),
            classes,
            dropout: self.dropout,
            batchnorm: !self.no_batchnorm,
            ..d
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The demo corpus (no --data) is small and synthetic: it trains with a larger step,
    /// smaller batches, a cosine schedule and no augmentation, so that the first run finishes
    /// in minutes on two cores (each choice measured: README, "Quick start").
    fn on_demo(&self) -> bool {
        self.data.is_none()
    }

    pub fn epochs(&self) -> usize {
        self.epochs.unwrap_or(if self.on_demo() { 20 } else { 100 })
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
            .unwrap_or(if self.on_demo() { 16 } else { 32 })
            .max(1)
    }

    pub fn schedule(&self) -> crate::train::schedule::Schedule {
        use crate::train::schedule::Schedule;
        self.schedule.unwrap_or(if self.on_demo() {
            Schedule::Cosine
        } else {
            Schedule::Plateau
        })
    }

    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or(if self.on_demo() { 1e-3 } else { 1e-4 })
    }

    pub fn fit(&self, seed: u64) -> FitConfig {
        FitConfig {
            epochs: self.epochs(),
            batch_size: self.batch_size(),
            lr: self.lr(),
            plateau_factor: self.plateau_factor,
            plateau_patience: self.plateau_patience,
            schedule: self.schedule(),
            early_stop_patience: self.early_stop,
            augment: self.augment(),
            seed,
        }
    }

    /// Optimizer settings; class weights from the training labels when asked.
    pub fn optim(&self, train_labels: &[usize], classes: usize) -> OptimConfig {
        let class_weights = self.class_weights.then(|| {
            let mut counts = vec![0usize; classes];
            for &l in train_labels {
                counts[l] += 1;
            }
            let n = train_labels.len() as f32;
            counts
                .iter()
                .map(|&c| {
                    if c == 0 {
                        0.0
                    } else {
                        n / (classes as f32 * c as f32)
                    }
                })
                .collect()
        });
        OptimConfig {
            lr: self.lr(),
            weight_decay: self.weight_decay,
            decoupled_weight_decay: self.adamw,
            clip_grad_norm: self.clip_grad,
            label_smoothing: self.label_smoothing,
            class_weights,
        }
    }
}

/// Loads the corpus named by the options (the demo corpus when none), checks it can be
/// trained on, and decodes it into features; warns about and lists files it skips.
pub fn load_dataset(
    data: Option<&Path>,
    format: CorpusFormat,
    label_regex: Option<&str>,
    sample_rate: Option<u32>,
    mel: &MelConfig,
    global: &Global,
) -> Result<(Corpus, Dataset)> {
    let root = match data {
        Some(d) => d.to_path_buf(),
        None => {
            let dir = crate::audio::synth::ensure_demo_corpus(global.progress())?;
            if !global.quiet {
                eprintln!(
                    "no --data given: using the demo corpus in {}",
                    dir.display()
                );
            }
            dir
        }
    };
    let corpus = load_corpus(
        &root,
        &CorpusOptions {
            format,
            label_regex: label_regex.map(str::to_string),
        },
    )?;
    if !global.quiet {
        eprintln!(
            "corpus {}: {} clips, {} classes, format {:?}",
            root.display(),
            corpus.clips.len(),
            corpus.labels.len(),
            corpus.format
        );
    }
    if corpus.clips.is_empty() {
        bail!("{}: the corpus has no readable audio clips", root.display());
    }
    if corpus.labels.len() < 2 {
        bail!(
            "{}: the corpus has only one class ({}); a classifier needs at least two",
            root.display(),
            corpus.labels.join(", ")
        );
    }
    let (rate, mixed) = choose_sample_rate(&corpus, sample_rate)?;
    if mixed && !global.quiet {
        eprintln!(
            "warning: the corpus mixes sample rates; resampling everything to {rate} Hz \
             (choose with --sample-rate)"
        );
    }
    mel.validate(rate).with_context(|| {
        format!(
            "{}: the feature settings do not fit {rate} Hz audio (resample with --sample-rate, \
             e.g. 16000)",
            root.display()
        )
    })?;
    let data = Dataset::load(&corpus, rate, mel, global.progress())?;
    if !data.skipped.is_empty() {
        eprintln!(
            "warning: skipped {} unreadable file(s):",
            data.skipped.len()
        );
        for (p, why) in &data.skipped {
            eprintln!("  {}: {why}", p.display());
        }
    }
    Ok((corpus, data))
}

/// Makes the training backend for the chosen device.
pub fn make_backend(
    device: DeviceChoice,
    model: &ModelConfig,
    optim: &OptimConfig,
    seed: u64,
) -> Result<Box<dyn Backend>> {
    use crate::device::{select, Selected};
    use crate::engine::step::DeviceBackend;
    match device {
        DeviceChoice::Cpu => Ok(Box::new(CpuBackend::new(model, optim, seed))),
        // select(Auto) is cuda when a usable GPU is present, else cpu.
        DeviceChoice::Auto | DeviceChoice::Cuda | DeviceChoice::Sim => match select(device)? {
            Selected::Cpu => Ok(Box::new(CpuBackend::new(model, optim, seed))),
            Selected::Device(dev) => Ok(Box::new(DeviceBackend::new(dev, model, optim, seed)?)),
        },
    }
}

pub fn device_name(device: DeviceChoice) -> &'static str {
    match device {
        DeviceChoice::Auto | DeviceChoice::Cpu => "cpu",
        DeviceChoice::Cuda => "cuda",
        DeviceChoice::Sim => "sim",
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub opts: TrainOpts,
    /// Run folder to write (default: runs/<corpus name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fraction of each class held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub val_split: f64,
    /// A separate validation corpus instead of --val-split.
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Continue the interrupted run in this folder (its own settings are used).
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

pub fn run(args: &TrainArgs, global: &Global) -> Result<()> {
    let t0 = std::time::Instant::now();
    let (opts, out, resume_from) = match &args.resume {
        Some(dir) => {
            // Resuming: the options come from the run itself.
            let rd = RunDir::open(dir)?;
            let cfg = rd.config()?;
            let mut o = args.opts.clone();
            o.data = (cfg.data != "demo").then(|| PathBuf::from(&cfg.data));
            (o, dir.clone(), Some(cfg))
        }
        None => (args.opts.clone(), default_out(args), None),
    };
    // A resumed run keeps its own seed (split, initialisation, dropout, augmentation).
    let seed = resume_from.as_ref().map_or(global.seed, |c| c.fit.seed);
    let mel = match &resume_from {
        Some(c) => c.mel.clone(),
        None => opts.mel(),
    };
    let rate = resume_from
        .as_ref()
        .map(|c| c.sample_rate)
        .or(opts.sample_rate);
    let (_corpus, data) = load_dataset(
        opts.data.as_deref(),
        opts.format,
        opts.label_regex.as_deref(),
        rate,
        &mel,
        global,
    )?;
    let all: Vec<usize> = (0..data.clips.len()).collect();
    let labels = data.labels_of(&all);
    let (data, train_idx, val_idx) = match &args.val_data {
        Some(vd) => {
            let (_, vdata) = load_dataset(
                Some(vd),
                opts.format,
                opts.label_regex.as_deref(),
                Some(data.sample_rate),
                &mel,
                global,
            )?;
            if vdata.labels != data.labels {
                bail!(
                    "{}: validation classes {:?} differ from the training classes {:?}",
                    vd.display(),
                    vdata.labels,
                    data.labels
                );
            }
            let n = data.clips.len();
            let mut merged = data;
            merged.clips.extend(vdata.clips);
            let val: Vec<usize> = (n..merged.clips.len()).collect();
            (merged, all, val)
        }
        None => {
            let (tr, va) = stratified_split(&labels, data.labels.len(), args.val_split, seed);
            (data, tr, va)
        }
    };
    let classes = data.labels.len();
    let (model_cfg, fit_cfg, optim) = match &resume_from {
        Some(c) => {
            let mut fit_cfg = c.fit.clone();
            if let Some(e) = args.opts.epochs {
                fit_cfg.epochs = e;
            }
            (c.model.clone(), fit_cfg, c.optim.clone())
        }
        None => (
            opts.model(classes)?,
            opts.fit(seed),
            opts.optim(&data.labels_of(&train_idx), classes),
        ),
    };
    let device = resume_from
        .as_ref()
        .map(|c| match c.device.as_str() {
            "cuda" => DeviceChoice::Cuda,
            "sim" => DeviceChoice::Sim,
            _ => DeviceChoice::Cpu,
        })
        .unwrap_or(global.device);
    let mut backend = make_backend(device, &model_cfg, &optim, seed)?;
    let rd = RunDir::create(&out)?;
    let run_cfg = RunConfig {
        ser_engine_version: env!("CARGO_PKG_VERSION").to_string(),
        labels: data.labels.clone(),
        sample_rate: data.sample_rate,
        mel: mel.clone(),
        model: model_cfg.clone(),
        fit: fit_cfg.clone(),
        optim: optim.clone(),
        input_db_offset: DB_OFFSET,
        input_db_scale: DB_SCALE,
        data: opts
            .data
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "demo".to_string()),
        device: backend.device().to_string(),
    };
    let progress = match &resume_from {
        Some(_) => {
            let (p, state) = rd.load_resume()?;
            backend.set_state(&state)?;
            if !global.quiet {
                eprintln!("resuming {} after epoch {}", out.display(), p.epochs_done);
            }
            p
        }
        None => {
            rd.write_config(&run_cfg)?;
            FitProgress::new(&fit_cfg)
        }
    };
    if !global.quiet {
        eprintln!(
            "training on {}: {} train / {} validation clips, {} classes ({}), {} Hz, run folder {}",
            backend.device(),
            train_idx.len(),
            val_idx.len(),
            classes,
            data.labels.join(", "),
            data.sample_rate,
            out.display()
        );
    }
    let quiet = global.quiet;
    let progress = fit(
        backend.as_mut(),
        &data,
        (&train_idx, &val_idx),
        &fit_cfg,
        progress,
        global.progress(),
        &mut |ev| {
            let r = ev.record;
            if r.best {
                rd.save_best(&run_cfg, ev.state, r.epoch)?;
            }
            rd.write_metrics(ev.progress)?;
            rd.save_resume(ev.progress, ev.state)?;
            if !quiet {
                eprintln!("{}", r.line());
            }
            Ok(())
        },
    )?;
    // Final report on the best weights.
    let (params, buffers) = rd.load_best(&run_cfg)?;
    let mut state = backend.state()?;
    state.params = params;
    state.buffers = buffers;
    backend.set_state(&state)?;
    let Evaluation {
        loss, confusion, ..
    } = evaluate(backend.as_mut(), &data, &val_idx, fit_cfg.batch_size)?;
    let s = confusion.scores();
    let best_epoch = progress.early.best_epoch + 1;
    println!(
        "best epoch {best_epoch} of {}: validation loss {loss:.4}, accuracy {:.2}%, micro-F1 {:.2}%, macro-F1 {:.2}%",
        progress.epochs_done,
        100.0 * s.accuracy,
        100.0 * s.micro_f1,
        100.0 * s.macro_f1
    );
    println!("{}", confusion.to_table(&data.labels));
    write_charts(&out, &progress, &confusion, &data.labels)?;
    println!(
        "model written to {} ({:.1} s)",
        rd.model_path().display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// RUN_DIR/confusion.png (validation, best weights) and RUN_DIR/learning_curve.png.
fn write_charts(
    out: &Path,
    progress: &FitProgress,
    confusion: &crate::train::metrics::Confusion,
    labels: &[String],
) -> Result<()> {
    use crate::train::plot::{confusion_png, line_chart_png, Series, PALETTE};
    confusion_png(
        &out.join("confusion.png"),
        &confusion.counts,
        labels,
        "validation confusion (best epoch)",
    )?;
    let curve = |name: &str, k: usize, f: fn(&crate::train::fit::EpochRecord) -> f64| Series {
        name: name.to_string(),
        points: progress
            .history
            .iter()
            .map(|r| (r.epoch as f64, f(r)))
            .collect(),
        color: PALETTE[k % PALETTE.len()],
    };
    line_chart_png(
        &out.join("learning_curve.png"),
        "accuracy per epoch",
        "accuracy",
        &[
            curve("train", 0, |r| r.train_accuracy),
            curve("validation", 1, |r| r.val_accuracy),
        ],
    )
}

fn default_out(args: &TrainArgs) -> PathBuf {
    match &args.out {
        Some(o) => o.clone(),
        None => {
            let name = args
                .opts
                .data
                .as_ref()
                .and_then(|d| d.file_stem())
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "demo".to_string());
            PathBuf::from("runs").join(name)
        }
    }
}

/// Reads a run's config and best weights into a backend ready for evaluation.
pub fn load_run(dir: &Path, device: DeviceChoice) -> Result<(RunConfig, Box<dyn Backend>)> {
    let rd = RunDir::open(dir)?;
    let cfg = rd.config()?;
    let (params, buffers) = rd
        .load_best(&cfg)
        .with_context(|| format!("{}: cannot load the model", dir.display()))?;
    let mut backend = make_backend(device, &cfg.model, &cfg.optim, 0)?;
    let mut state = backend.state()?;
    state.params = params;
    state.buffers = buffers;
    backend.set_state(&state)?;
    Ok((cfg, backend))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::schedule::Schedule;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: TrainOpts,
    }

    fn opts(args: &[&str]) -> TrainOpts {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .opts
    }

    #[test]
    fn demo_preset_and_paper_defaults() {
        let demo = opts(&[]);
        assert_eq!(
            (demo.epochs(), demo.batch_size(), demo.lr()),
            (20, 16, 1e-3)
        );
        assert_eq!(demo.schedule(), Schedule::Cosine);
        assert_eq!(demo.augment(), AugmentConfig::none());

        let paper = opts(&["--data", "x"]);
        assert_eq!(
            (paper.epochs(), paper.batch_size(), paper.lr()),
            (100, 32, 1e-4)
        );
        assert_eq!(paper.schedule(), Schedule::Plateau);
        let a = paper.augment();
        assert_eq!((a.noise_prob, a.freq_masks, a.time_masks), (0.5, 2, 2));

        // every preset choice can be overridden either way
        let demo_aug = opts(&["--augment", "--schedule", "plateau"]);
        assert_ne!(demo_aug.augment(), AugmentConfig::none());
        assert_eq!(demo_aug.schedule(), Schedule::Plateau);
        let paper_off = opts(&["--data", "x", "--no-augment", "--schedule", "cosine"]);
        assert_eq!(paper_off.augment(), AugmentConfig::none());
        assert_eq!(paper_off.schedule(), Schedule::Cosine);
        assert!(Cli::try_parse_from(["t", "--augment", "--no-augment"]).is_err());
    }
}
