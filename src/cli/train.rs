//! `ser-engine train`: one training run on a corpus (the demo corpus when no --data), writing
//! a run folder (see `train::run`).
//!
//! Layer: cli, the top. May use every other module.

use super::{DeviceChoice, Global};
use crate::backend::batch::{DB_OFFSET, DB_SCALE};
use crate::backend::set_weights;
use crate::train::data::{available_memory, check_batch_memory, load_datasets};
use crate::train::devices::make_backend;
use crate::train::fit::{evaluate, fit, Evaluation, FitProgress};
use crate::train::init::InitSource;
use crate::train::options::{check_range, Limit, TrainOpts};
use crate::train::run::{RunConfig, RunWriter};
use crate::train::split::stratified_split;
use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub opts: TrainOpts,
    /// Run folder to write (default: runs/ and the corpus folder's name). An existing run there is never
    /// overwritten unless --force is given.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing run in --out, whole, once the new run has finished its first epoch
    /// (until then the old run stays as it was).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Fraction of each class held out for validation: > 0 and < 1.
    #[arg(long, default_value_t = DEFAULT_VAL_SPLIT, allow_negative_numbers = true)]
    pub val_split: f64,
    /// A separate validation corpus instead of --val-split.
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Continue the interrupted run in this folder with its own settings; only --epochs may
    /// be given (to extend the run), other training flags are refused.
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

const DEFAULT_VAL_SPLIT: f64 = 0.2;

/// Refuses flags that `--resume` would ignore (the run's own settings are used).
fn check_resume_flags(
    args: &TrainArgs,
    dir: &Path,
    cfg: &RunConfig,
    global: &Global,
) -> Result<()> {
    let mut ignored = args.opts.given_flags(&["--epochs"]);
    if args.val_split != DEFAULT_VAL_SPLIT {
        ignored.push("--val-split".into());
    }
    if args.val_data.is_some() {
        ignored.push("--val-data".into());
    }
    if args.out.as_ref().is_some_and(|o| o != dir) {
        ignored.push("--out".into());
    }
    if global.seed != 42 && global.seed != cfg.fit.seed {
        ignored.push(format!("--seed (the run's is {})", cfg.fit.seed));
    }
    if global.device != DeviceChoice::Auto && global.device != run_device(cfg) {
        ignored.push(format!("--device (the run's is {})", cfg.device));
    }
    if !ignored.is_empty() {
        bail!(
            "--resume {} continues the run with the settings in its config.json; {} would be \
             ignored (only --epochs may be given, to extend the run)",
            dir.display(),
            ignored.join(", ")
        );
    }
    if let Some(e) = args.opts.epochs {
        check_range("epochs", e as f64, Limit::Incl(1.0), Limit::Incl(100_000.0))?;
    }
    Ok(())
}

fn run_device(cfg: &RunConfig) -> DeviceChoice {
    match cfg.device.as_str() {
        "cuda" => DeviceChoice::Cuda,
        "sim" => DeviceChoice::Sim,
        _ => DeviceChoice::Cpu,
    }
}

pub fn run(args: &TrainArgs, global: &Global) -> Result<()> {
    let t0 = std::time::Instant::now();
    // Every check before any work: options, then the run folder (locked from here on).
    let (opts, mut writer, resume_from, init) = match &args.resume {
        Some(dir) => {
            // Resuming: the options come from the run itself.
            let writer = RunWriter::resume(dir)?;
            let cfg = writer.dir().config()?;
            check_resume_flags(args, dir, &cfg, global)?;
            let mut o = args.opts.clone();
            o.data = if cfg.data == ["demo"] {
                Vec::new()
            } else {
                cfg.data.iter().map(PathBuf::from).collect()
            };
            o.label_map = cfg.label_map.as_ref().map(PathBuf::from);
            (o, writer, Some(cfg), None)
        }
        None => {
            args.opts.validate()?;
            if args.val_data.is_none() {
                check_range(
                    "val-split",
                    args.val_split,
                    Limit::Excl(0.0),
                    Limit::Excl(1.0),
                )?;
            }
            let mut o = args.opts.clone();
            let init = match &o.init {
                Some(run) => {
                    let src = InitSource::open(run)?;
                    src.adopt(&mut o)?;
                    Some(src)
                }
                None => None,
            };
            let writer = RunWriter::create(&default_out(args), args.force)?;
            (o, writer, None, init)
        }
    };
    let out = match &args.resume {
        Some(dir) => dir.clone(),
        None => default_out(args),
    };
    let max_seconds = match &resume_from {
        Some(c) => c
            .fit
            .max_seconds
            .unwrap_or(crate::train::options::DEFAULT_MAX_SECONDS),
        None => opts.max_seconds,
    };
    let (val_split, val_data) = match &resume_from {
        Some(c) => (
            c.val_split.unwrap_or(DEFAULT_VAL_SPLIT),
            c.val_data.as_ref().map(PathBuf::from),
        ),
        None => (args.val_split, args.val_data.clone()),
    };
    // A resumed run keeps its own seed (split, initialisation, dropout, augmentation).
    let seed = resume_from.as_ref().map_or(global.seed, |c| c.fit.seed);
    let mel = match (&resume_from, &init) {
        (Some(c), _) => c.mel.clone(),
        (None, Some(i)) => i.cfg.mel.clone(),
        (None, None) => opts.mel(),
    };
    let rate = resume_from
        .as_ref()
        .map(|c| c.sample_rate)
        .or(opts.sample_rate);
    let (_corpus, data) = load_datasets(
        &opts.data,
        opts.label_map.as_deref(),
        &opts.corpus,
        rate,
        &mel,
        max_seconds,
        global.quiet,
    )?;
    if let Some(c) = &resume_from {
        if data.labels != c.labels {
            bail!(
                "--resume {}: labels differ: the run was trained on [{}] but {} now has [{}]",
                out.display(),
                c.labels.join(", "),
                c.data_line(),
                data.labels.join(", ")
            );
        }
    }
    let all: Vec<usize> = (0..data.clips.len()).collect();
    let labels = data.labels_of(&all);
    let (data, train_idx, val_idx) = match &val_data {
        Some(vd) => {
            let (_, vdata) = load_datasets(
                std::slice::from_ref(vd),
                opts.label_map.as_deref(),
                &opts.corpus,
                Some(data.sample_rate),
                &mel,
                max_seconds,
                global.quiet,
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
            let (tr, va) = stratified_split(&labels, data.labels.len(), val_split, seed);
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
            match &init {
                Some(i) => i.model(classes, opts.dropout),
                None => opts.model(classes)?,
            },
            opts.fit(seed),
            opts.optim(&data.labels_of(&train_idx), classes),
        ),
    };
    let device = resume_from
        .as_ref()
        .map(run_device)
        .unwrap_or(global.device);
    let mut backend = make_backend(device, &model_cfg, &optim, seed)?;
    let step_bound = check_batch_memory(
        &|batch, t_max| backend.step_memory_bytes(batch, t_max),
        &data,
        train_idx.len(),
        fit_cfg.batch_size,
        fit_cfg.speed.as_deref(),
        available_memory(),
    )?;
    if global.verbose > 0 {
        eprintln!(
            "memory: one training step takes at most {} MiB beyond the {} MiB resident now",
            step_bound >> 20,
            crate::cpu::alloc::resident_bytes().unwrap_or(0) >> 20
        );
    }
    let init_weights = match &init {
        Some(i) => Some(i.weights(&model_cfg, &data.labels, seed)?),
        None => None,
    };
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
        data: opts.data_names(),
        label_map: opts.label_map.as_ref().map(|p| p.display().to_string()),
        device: backend.device().to_string(),
        val_split: val_data.is_none().then_some(val_split),
        val_data: val_data.as_ref().map(|p| p.display().to_string()),
        init: match (&resume_from, &init_weights) {
            (Some(c), _) => c.init.clone(),
            (None, w) => w.as_ref().map(|(_, _, r)| r.clone()),
        },
        // A resumed run keeps the recipe it was started with (none: an older run).
        recipe: match &resume_from {
            Some(c) => c.recipe,
            None => Some(opts.recipe),
        },
    };
    run_cfg.validate()?;
    let progress = match &resume_from {
        Some(_) => {
            let (p, state) = writer.dir().load_resume(&model_cfg)?;
            backend.set_state(&state)?;
            if !global.quiet {
                eprintln!("resuming {} after epoch {}", out.display(), p.epochs_done);
            }
            p
        }
        None => {
            if let (Some(i), Some((params, buffers, record))) = (&init, init_weights) {
                set_weights(backend.as_mut(), params, buffers)?;
                if !global.quiet {
                    eprintln!("{}", i.describe(&record, &data.labels, seed));
                }
            }
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
            let rd = writer.dir();
            if r.best {
                rd.save_best(&run_cfg, ev.state, r.epoch)?;
            }
            rd.write_metrics(ev.progress)?;
            rd.save_resume(ev.progress, ev.state)?;
            if resume_from.is_none() && r.epoch == 1 {
                // The new run has something to show: write its config and move it into
                // place (replacing the old run whole under --force).
                rd.write_config(&run_cfg)?;
                writer.publish()?;
            }
            if !quiet {
                eprintln!("{}", r.line());
            }
            Ok(())
        },
    )?;
    // Final report on the best weights.
    let rd = writer.dir();
    let (params, buffers) = rd.load_best(&run_cfg)?;
    set_weights(backend.as_mut(), params, buffers)?;
    let Evaluation {
        loss, confusion, ..
    } = evaluate(backend.as_mut(), &data, &val_idx, fit_cfg.batch_size)?;
    let s = confusion.scores();
    let best_epoch = progress.early.best_epoch + 1;
    println!(
        "best epoch {best_epoch} of {}: validation loss {loss:.4}, accuracy (WA) {:.2}%, UA {:.2}%, micro-F1 {:.2}%, macro-F1 {:.2}%",
        progress.epochs_done,
        100.0 * s.accuracy,
        100.0 * s.unweighted_accuracy,
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
    use crate::train::plot::{confusion_png, learning_curve_png};
    confusion_png(
        &out.join("confusion.png"),
        &confusion.counts,
        labels,
        "validation confusion (best epoch)",
    )?;
    learning_curve_png(&out.join("learning_curve.png"), &progress.history)
}

fn default_out(args: &TrainArgs) -> PathBuf {
    match &args.out {
        Some(o) => o.clone(),
        None => {
            let name = args
                .opts
                .data
                .first()
                .and_then(|d| d.file_stem())
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "demo".to_string());
            PathBuf::from("runs").join(name)
        }
    }
}
