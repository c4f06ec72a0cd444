//! Many independent training runs: cross-validation folds, times a grid of trials for a sweep.
//! Each (trial, fold) is one unit of work with its own run folder, so units can be spread over
//! shards (separate processes or machines sharing the output folder) and devices, resumed, and
//! merged into one report.
//!
//! ```text
//! OUT/plan.json                  what is run: corpus, folds, trials and their settings
//! OUT/[trial-NN/]fold-K/         a run folder (train::run) + result.json when finished
//! OUT/cv.json, confusion.png, learning_curve.png                       (cv)
//! OUT/results.{md,csv,json}, results.png [, table3.md]                 (sweep)
//! ```
//! A unit's result.json is written last (atomically), so it marks the unit finished; a unit
//! with only resume/ continues from its last epoch. The report is built from the result files
//! alone, so a merged sharded run and an unsharded one give the same report.

use crate::backend::batch::{DB_OFFSET, DB_SCALE};
use crate::backend::set_weights;
use crate::device::DeviceChoice;
use crate::model::{ModelConfig, ParamLayout};
use crate::train::data::Dataset;
use crate::train::devices::{make_backend_on, DeviceSlot};
use crate::train::fit::{evaluate, fit, EpochRecord, FitConfig, FitProgress};
use crate::train::metrics::{mean_std, Confusion, Scores};
use crate::train::options::TrainOpts;
use crate::train::options::{check_range, Limit};
use crate::train::plot::{confusion_png, line_chart_png, Series, PALETTE};
use crate::train::recipe::Recipe;
use crate::train::run::{atomic_write, RunConfig, RunWriter, TMP_PREFIX};
use crate::train::schedule::Schedule;
use crate::train::shard::Shard;
use crate::train::split::{complement, speaker_kfold, stratified_kfold, stratified_split};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The training flags a sweep can vary (`--grid FLAG=V1,V2,...`). Flags that change the
/// features (n-mels, sample rate) are not among them: every trial shares one decoded corpus.
pub const GRID_FLAGS: &[&str] = &[
    "kernel-size",
    "lr",
    "seed",
    "dropout",
    "epochs",
    "batch-size",
    "weight-decay",
    "label-smoothing",
    "augment",
    "recipe",
    "schedule",
    "clip-grad",
    "noise-prob",
    "time-mask-frac",
];

/// One axis of the grid: a flag and its values as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    pub flag: String,
    pub values: Vec<String>,
}

/// Parses `FLAG=V1,V2,...`.
pub fn parse_axis(s: &str) -> Result<Axis> {
    let (flag, values) = s
        .split_once('=')
        .with_context(|| format!("--grid {s}: expected FLAG=V1,V2,..., e.g. lr=1e-3,3e-3"))?;
    let flag = flag.trim().trim_start_matches("--").to_string();
    if !GRID_FLAGS.contains(&flag.as_str()) {
        bail!(
            "--grid {s}: '{flag}' cannot be swept; one of: {}",
            GRID_FLAGS.join(", ")
        );
    }
    let values: Vec<String> = values
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        bail!("--grid {s}: no values");
    }
    // A repeated value would train the same trial twice (1e-3 and 0.001 are one value).
    let same = |a: &str, b: &str| {
        a.eq_ignore_ascii_case(b)
            || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if x == y)
    };
    for (i, v) in values.iter().enumerate() {
        if let Some(w) = values[..i].iter().find(|w| same(w, v)) {
            bail!("--grid {s}: '{v}' repeats '{w}'; each value gives one trial");
        }
    }
    Ok(Axis { flag, values })
}

/// Sets `flag` to `value` on `opts` (and the trial's seed for `seed`).
fn apply(opts: &mut TrainOpts, seed: &mut u64, flag: &str, value: &str) -> Result<()> {
    fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T> {
        v.parse()
            .map_err(|_| anyhow::anyhow!("--grid {flag}={v}: '{v}' is not a valid number"))
    }
    match flag {
        "kernel-size" => opts.kernel_size = num(flag, value)?,
        "lr" => opts.lr = Some(num(flag, value)?),
        "seed" => *seed = num(flag, value)?,
        "dropout" => opts.dropout = num(flag, value)?,
        "epochs" => opts.epochs = Some(num(flag, value)?),
        "batch-size" => opts.batch_size = Some(num(flag, value)?),
        "weight-decay" => opts.weight_decay = num(flag, value)?,
        "label-smoothing" => opts.label_smoothing = num(flag, value)?,
        "clip-grad" => opts.clip_grad = num(flag, value)?,
        "noise-prob" => opts.noise_prob = num(flag, value)?,
        "time-mask-frac" => opts.time_mask_frac = num(flag, value)?,
        "augment" => match value {
            "on" | "true" | "yes" => (opts.augment, opts.no_augment) = (true, false),
            "off" | "false" | "no" => (opts.augment, opts.no_augment) = (false, true),
            _ => bail!("--grid augment={value}: use on or off"),
        },
        "recipe" => {
            opts.recipe = Recipe::from_str(value, true)
                .map_err(|_| anyhow::anyhow!("--grid recipe={value}: use paper or strong"))?
        }
        "schedule" => {
            opts.schedule =
                Some(Schedule::from_str(value, true).map_err(|_| {
                    anyhow::anyhow!("--grid schedule={value}: use plateau or cosine")
                })?)
        }
        _ => bail!("--grid: '{flag}' cannot be swept"),
    }
    Ok(())
}

/// One trial: a point of the grid, fully resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// e.g. `kernel-size=5 lr=1e-3`; `base` without a grid.
    pub name: String,
    /// Folder under OUT holding its folds (empty for cv: the folds sit in OUT).
    pub dir: String,
    pub settings: Vec<(String, String)>,
    /// Seed of initialisation, shuffling, dropout and augmentation (folds and validation
    /// splits use the global seed, so every trial sees the same data).
    pub seed: u64,
    pub parameters: usize,
    pub model: ModelConfig,
    pub fit: FitConfig,
}

/// Which report a plan builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanKind {
    Cv,
    Sweep,
    Table3,
}

/// plan.json: everything that decides the results. Every shard writes the same plan; a shard
/// started with other settings on the same folder is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub kind: PlanKind,
    pub data: String,
    pub labels: Vec<String>,
    pub clips: usize,
    pub folds: usize,
    pub by_speaker: bool,
    pub val_split: f64,
    /// `I/K`: the folds are inside the training part of outer fold I of K (nested selection).
    pub within_fold: Option<String>,
    pub seed: u64,
    pub grid: Vec<Axis>,
    pub trials: Vec<Trial>,
}

impl Plan {
    pub fn units(&self) -> usize {
        self.trials.len() * self.folds
    }

    /// Folder of unit `u` (trial-major order).
    pub fn unit_dir(&self, out: &Path, u: usize) -> PathBuf {
        let t = &self.trials[u / self.folds];
        let fold = format!("fold-{}", u % self.folds + 1);
        if t.dir.is_empty() {
            out.join(fold)
        } else {
            out.join(&t.dir).join(fold)
        }
    }
}

/// Most trials a grid may have (the product of its axes' lengths).
pub const MAX_TRIALS: usize = 10_000;

/// The points of a grid, first axis slowest; at most [`MAX_TRIALS`].
fn grid_points(grid: &[Axis]) -> Result<Vec<Vec<(String, String)>>> {
    let count = grid
        .iter()
        .try_fold(1usize, |n, a| n.checked_mul(a.values.len()));
    if count.is_none_or(|n| n > MAX_TRIALS) {
        bail!(
            "--grid: {} trials (the product of the axes' lengths): at most {MAX_TRIALS}",
            count.map_or("too many".to_string(), |n| n.to_string())
        );
    }
    let mut points: Vec<Vec<(String, String)>> = vec![vec![]];
    for axis in grid {
        points = points
            .into_iter()
            .flat_map(|p| {
                axis.values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((axis.flag.clone(), v.clone()));
                    q
                })
            })
            .collect();
    }
    Ok(points)
}

/// The options and seed of one grid point. A grid value is an option value: it is checked
/// against the same ranges as on the command line.
fn resolve(base: &TrainOpts, seed: u64, settings: &[(String, String)]) -> Result<(TrainOpts, u64)> {
    let mut opts = base.clone();
    let mut s = seed;
    for (f, v) in settings {
        apply(&mut opts, &mut s, f, v)?;
    }
    if !settings.is_empty() {
        opts.validate()
            .with_context(|| format!("--grid: trial {}", settings_name(settings)))?;
    }
    Ok((opts, s))
}

/// Checks every trial's values (`resolve`) before any work starts.
pub fn check_grid(base: &TrainOpts, grid: &[Axis], seed: u64) -> Result<()> {
    for settings in grid_points(grid)? {
        resolve(base, seed, &settings)?;
    }
    Ok(())
}

/// The trials of a grid (first axis slowest), from the base options.
pub fn make_trials(
    base: &TrainOpts,
    grid: &[Axis],
    seed: u64,
    classes: usize,
    folds_in_out: bool,
) -> Result<Vec<(Trial, TrainOpts)>> {
    let points = grid_points(grid)?;
    let width = points.len().saturating_sub(1).to_string().len().max(2);
    points
        .into_iter()
        .enumerate()
        .map(|(i, settings)| {
            let (opts, s) = resolve(base, seed, &settings)?;
            let model = opts
                .model(classes)
                .with_context(|| format!("trial {}", settings_name(&settings)))?;
            let trial = Trial {
                name: settings_name(&settings),
                dir: if folds_in_out {
                    String::new()
                } else {
                    format!("trial-{i:0width$}")
                },
                parameters: ParamLayout::new(&model).total(),
                fit: opts.fit(s),
                model,
                seed: s,
                settings,
            };
            Ok((trial, opts))
        })
        .collect()
}

fn settings_name(settings: &[(String, String)]) -> String {
    if settings.is_empty() {
        return "base".into();
    }
    settings
        .iter()
        .map(|(f, v)| format!("{f}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Train, validation and test clips of one fold.
#[derive(Clone, Debug)]
pub struct FoldSplit {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// The folds: stratified (as the paper) or by speaker, over the whole corpus or, with
/// `within = Some((i, k))`, over the training part of outer fold i (0-based) of k, so that a
/// choice made on these folds never sees that outer test fold. In each fold `val_split` of
/// the non-test clips (per class) is held out for early stopping and the schedule.
pub fn plan_folds(
    data: &Dataset,
    folds: usize,
    by_speaker: bool,
    val_split: f64,
    seed: u64,
    within: Option<(usize, usize)>,
) -> Result<Vec<FoldSplit>> {
    let n = data.clips.len();
    let classes = data.labels.len();
    let kfold = |pool: &[usize], k: usize| -> Result<Vec<Vec<usize>>> {
        let local = if by_speaker {
            let spk: Vec<Option<String>> = pool
                .iter()
                .map(|&i| data.clips[i].speaker.clone())
                .collect();
            speaker_kfold(&spk, k)?
        } else {
            stratified_kfold(&data.labels_of(pool), &data.labels, k, seed)?
        };
        Ok(local
            .into_iter()
            .map(|f| f.into_iter().map(|j| pool[j]).collect())
            .collect())
    };
    let all: Vec<usize> = (0..n).collect();
    let pool = match within {
        None => all,
        Some((i, k)) => {
            let outer = kfold(&all, k).context("--within-fold: the outer folds")?;
            complement(n, &outer[i])
        }
    };
    let tests = kfold(&pool, folds)?;
    let mut in_pool = vec![false; n];
    for &i in &pool {
        in_pool[i] = true;
    }
    Ok(tests
        .into_iter()
        .enumerate()
        .map(|(k, test)| {
            let rest: Vec<usize> = complement(n, &test)
                .into_iter()
                .filter(|&i| in_pool[i])
                .collect();
            let rest_labels = data.labels_of(&rest);
            let (tr, va) = stratified_split(&rest_labels, classes, val_split, seed + k as u64);
            FoldSplit {
                train: tr.iter().map(|&i| rest[i]).collect(),
                val: va.iter().map(|&i| rest[i]).collect(),
                test,
            }
        })
        .collect())
}

/// A finished unit: OUT/[trial]/fold-K/result.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitResult {
    pub trial: String,
    pub fold: usize,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub scores: Scores,
    pub confusion: Confusion,
    pub history: Vec<EpochRecord>,
    /// Wall time of the training and test evaluation in the process that finished the unit
    /// (a resumed unit counts only its resumed part).
    pub train_seconds: f64,
    pub device: String,
}

/// How this process runs its units.
#[derive(Clone, Debug)]
pub struct Runner {
    pub shard: Shard,
    /// One worker thread per entry.
    pub devices: Vec<DeviceSlot>,
    pub quiet: bool,
    pub verbose: bool,
}

impl Runner {
    pub fn single(device: DeviceChoice, quiet: bool, verbose: bool) -> Self {
        Self {
            shard: Shard::ALL,
            devices: vec![DeviceSlot::Choice(device)],
            quiet,
            verbose,
        }
    }
}

/// The lock file of a cv/sweep output folder, held only while plan.json is checked or written
/// (each unit's run folder has its own lock, held while the unit trains).
pub const PLAN_LOCK: &str = "plan.lock";

/// Writes OUT/plan.json, or checks that the one there is the same plan. Under the folder's
/// plan lock, so that of two processes starting at once on an empty folder with different
/// settings the second is refused instead of both writing a plan. A folder that exists, is
/// not empty and holds no plan.json (a train run, an older cv report, anything else) is never
/// written into.
pub fn write_or_check_plan(out: &Path, plan: &Plan) -> Result<()> {
    let p = out.join("plan.json");
    // Checked before the lock too, so a foreign folder does not even get a lock file.
    if !p.is_file() {
        refuse_foreign(out)?;
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the folder", out.display()))?;
    let _lock = crate::train::run::lock_file_wait(&out.join(PLAN_LOCK))?;
    if p.is_file() {
        let old = read_plan(out)?;
        if &old != plan {
            bail!(
                "{}: this folder holds a {:?} run with other settings (corpus, folds, seed or \
                 training options differ); use another --out, or the same flags to resume",
                p.display(),
                old.kind
            );
        }
        return Ok(());
    }
    refuse_foreign(out)?;
    atomic_write(&p, serde_json::to_string_pretty(plan)?.as_bytes())
}

/// An error if `out` exists and holds anything but the plan lock and temporary files (called
/// when it has no plan.json).
fn refuse_foreign(out: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name != PLAN_LOCK && !name.starts_with(TMP_PREFIX) {
            bail!(
                "{}: exists, is not empty and is not a cv or sweep output folder (no plan.json; \
                 it holds {}); refusing to write into it, choose another --out",
                out.display(),
                e.path().display()
            );
        }
    }
    Ok(())
}

pub fn read_plan(out: &Path) -> Result<Plan> {
    let p = out.join("plan.json");
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "{}: cannot read (not a cv/sweep output folder, or no shard has started)",
            p.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid plan", p.display()))
}

fn read_result(dir: &Path) -> Result<Option<UnitResult>> {
    let p = dir.join("result.json");
    if !p.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{}: corrupt (delete it to rerun the unit)", p.display())
    })?))
}

/// Runs this shard's unfinished units over the runner's devices (one thread per device, each
/// taking the next unit when free). Returns how many units of the whole plan are finished.
pub fn run_units(
    out: &Path,
    plan: &Plan,
    trial_opts: &[TrainOpts],
    data: &Dataset,
    folds: &[FoldSplit],
    runner: &Runner,
) -> Result<usize> {
    let mine: Vec<usize> = (0..plan.units())
        .filter(|&u| runner.shard.owns(u))
        .collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let show_bars = !runner.quiet && runner.devices.len() == 1;
    let worker = |slot: DeviceSlot| {
        while !failed.load(Ordering::SeqCst) {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(&u) = mine.get(i) else { break };
            let r = run_unit(
                out, plan, trial_opts, data, folds, u, slot, runner, show_bars,
            );
            if let Err(e) = r {
                failed.store(true, Ordering::SeqCst);
                first_error.lock().unwrap().get_or_insert(e);
            }
        }
    };
    if runner.devices.len() == 1 {
        worker(runner.devices[0]);
    } else {
        std::thread::scope(|s| {
            for &slot in &runner.devices {
                s.spawn(move || worker(slot));
            }
        });
    }
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    let mut done = 0;
    for u in 0..plan.units() {
        if plan.unit_dir(out, u).join("result.json").is_file() {
            done += 1;
        }
    }
    Ok(done)
}

/// Trains one (trial, fold) into its run folder, resuming it if interrupted, evaluates the
/// best weights on the test fold and writes result.json.
#[allow(clippy::too_many_arguments)]
fn run_unit(
    out: &Path,
    plan: &Plan,
    trial_opts: &[TrainOpts],
    data: &Dataset,
    folds: &[FoldSplit],
    u: usize,
    slot: DeviceSlot,
    runner: &Runner,
    show_bars: bool,
) -> Result<()> {
    let (t, k) = (u / plan.folds, u % plan.folds);
    let trial = &plan.trials[t];
    let dir = plan.unit_dir(out, u);
    let label = if trial.dir.is_empty() {
        format!("fold {}", k + 1)
    } else {
        format!("{} ({}) fold {}", trial.dir, trial.name, k + 1)
    };
    if let Some(r) = read_result(&dir)? {
        if !runner.quiet {
            eprintln!(
                "{label}: finished earlier (macro-F1 {:.2}%)",
                100.0 * r.scores.macro_f1
            );
        }
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let split = &folds[k];
    let classes = data.labels.len();
    let optim = trial_opts[t].optim(&data.labels_of(&split.train), classes);
    let mut backend = make_backend_on(slot, &trial.model, &optim, trial.seed + k as u64)
        .with_context(|| format!("{label}: device {slot}"))?;
    let run_cfg = RunConfig {
        ser_engine_version: env!("CARGO_PKG_VERSION").to_string(),
        labels: data.labels.clone(),
        sample_rate: data.sample_rate,
        mel: data.mel.clone(),
        model: trial.model.clone(),
        fit: trial.fit.clone(),
        optim,
        input_db_offset: DB_OFFSET,
        input_db_scale: DB_SCALE,
        data: plan.data.clone(),
        device: backend.device().to_string(),
        val_split: Some(plan.val_split),
        val_data: None,
    };
    run_cfg
        .validate()
        .with_context(|| format!("{label}: settings"))?;
    // The unit's folder is locked while it trains (as `train --out`): another process on the
    // same unit (a shard started twice, the same command run again meanwhile) is refused with
    // our pid. A new unit is written into a staging folder and moved into place after its
    // first epoch; an interrupted one (config.json present) is continued.
    let resuming = dir.join("config.json").is_file();
    let mut writer = if resuming {
        RunWriter::resume(&dir)?
    } else {
        RunWriter::create(&dir, false)?
    };
    // Another process may have finished the unit between the check above and the lock: a
    // finished unit is never trained or written again.
    if read_result(&dir)?.is_some() {
        return Ok(());
    }
    let progress = if resuming {
        let rd = writer.dir();
        let old = rd.config()?;
        if old.model != run_cfg.model || old.fit != run_cfg.fit || old.optim != run_cfg.optim {
            bail!(
                "{}: holds a run with other settings; delete the folder to rerun it",
                dir.display()
            );
        }
        let (p, state) = rd.load_resume()?;
        backend.set_state(&state)?;
        if !runner.quiet {
            eprintln!("{label}: resuming after epoch {}", p.epochs_done);
        }
        p
    } else {
        FitProgress::new(&trial.fit)
    };
    if !runner.quiet {
        eprintln!(
            "{label} on {}: {} train, {} validation, {} test clips",
            backend.device(),
            split.train.len(),
            split.val.len(),
            split.test.len()
        );
    }
    let progress = fit(
        backend.as_mut(),
        data,
        (&split.train, &split.val),
        &trial.fit,
        progress,
        show_bars,
        &mut |ev| {
            let rd = writer.dir();
            if ev.record.best {
                rd.save_best(&run_cfg, ev.state, ev.record.epoch)?;
            }
            rd.write_metrics(ev.progress)?;
            rd.save_resume(ev.progress, ev.state)?;
            if !resuming && ev.record.epoch == 1 {
                rd.write_config(&run_cfg)?;
                writer.publish()?;
            }
            if runner.verbose && !runner.quiet {
                eprintln!("{label} {}", ev.record.line());
            }
            Ok(())
        },
    )?;
    // The test fold is scored with the best weights by validation loss, read back from the
    // checkpoint so a resumed unit scores exactly what an uninterrupted one would.
    let rd = writer.dir();
    let (params, buffers) = rd.load_best(&run_cfg)?;
    set_weights(backend.as_mut(), params, buffers)?;
    let ev = evaluate(backend.as_mut(), data, &split.test, trial.fit.batch_size)?;
    let scores = ev.confusion.scores();
    let result = UnitResult {
        trial: trial.name.clone(),
        fold: k + 1,
        train: split.train.len(),
        validation: split.val.len(),
        test: split.test.len(),
        best_epoch: progress.early.best_epoch + 1,
        epochs_run: progress.epochs_done,
        scores,
        confusion: ev.confusion,
        history: progress.history,
        train_seconds: t0.elapsed().as_secs_f64(),
        device: backend.device().to_string(),
    };
    atomic_write(
        &dir.join("result.json"),
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )?;
    println!(
        "{label}: UA {:.2}%  WA {:.2}%  macro-F1 {:.2}%  (best epoch {} of {}, {:.1} s)",
        100.0 * scores.unweighted_accuracy,
        100.0 * scores.accuracy,
        100.0 * scores.macro_f1,
        result.best_epoch,
        result.epochs_run,
        result.train_seconds
    );
    Ok(())
}

/// Mean ± sample std over folds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

fn mean_std_of(results: &[UnitResult], f: fn(&Scores) -> f64) -> MeanStd {
    let (mean, std) = mean_std(&results.iter().map(|r| f(&r.scores)).collect::<Vec<_>>());
    MeanStd { mean, std }
}

/// One trial over its folds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrialSummary {
    pub name: String,
    pub dir: String,
    pub settings: Vec<(String, String)>,
    pub seed: u64,
    pub parameters: usize,
    pub kernel_size: usize,
    pub ua: MeanStd,
    pub wa: MeanStd,
    pub micro_f1: MeanStd,
    pub macro_f1: MeanStd,
    /// Summed over folds.
    pub confusion: Confusion,
    pub train_seconds: f64,
    pub folds: Vec<UnitResult>,
}

/// The merged report of a plan (cv.json, results.json).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub kind: PlanKind,
    pub data: String,
    pub labels: Vec<String>,
    pub folds: usize,
    pub by_speaker: bool,
    pub within_fold: Option<String>,
    pub trials: Vec<TrialSummary>,
}

/// Builds the report from the result files; errors listing the units not finished yet.
pub fn collect(out: &Path) -> Result<Report> {
    let plan = read_plan(out)?;
    let mut missing = Vec::new();
    let mut trials = Vec::new();
    for (t, trial) in plan.trials.iter().enumerate() {
        let mut results = Vec::new();
        for k in 0..plan.folds {
            let dir = plan.unit_dir(out, t * plan.folds + k);
            match read_result(&dir)? {
                Some(r) => results.push(r),
                None => missing.push(dir.display().to_string()),
            }
        }
        if results.len() < plan.folds {
            continue;
        }
        let mut confusion = Confusion::new(plan.labels.len());
        for r in &results {
            confusion.merge(&r.confusion);
        }
        trials.push(TrialSummary {
            name: trial.name.clone(),
            dir: trial.dir.clone(),
            settings: trial.settings.clone(),
            seed: trial.seed,
            parameters: trial.parameters,
            kernel_size: trial.model.kernel,
            ua: mean_std_of(&results, |s| s.unweighted_accuracy),
            wa: mean_std_of(&results, |s| s.accuracy),
            micro_f1: mean_std_of(&results, |s| s.micro_f1),
            macro_f1: mean_std_of(&results, |s| s.macro_f1),
            confusion,
            train_seconds: results.iter().map(|r| r.train_seconds).sum(),
            folds: results,
        });
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        bail!(
            "{}: {} of {} units are not finished ({}{}); run the remaining shards (or the same \
             command again to resume) before merging",
            out.display(),
            missing.len(),
            plan.units(),
            shown.join(", "),
            if missing.len() > 5 { ", ..." } else { "" }
        );
    }
    Ok(Report {
        kind: plan.kind,
        data: plan.data,
        labels: plan.labels,
        folds: plan.folds,
        by_speaker: plan.by_speaker,
        within_fold: plan.within_fold,
        trials,
    })
}

fn pct(m: &MeanStd) -> String {
    format!("{:.2} ± {:.2}", 100.0 * m.mean, 100.0 * m.std)
}

/// Writes the report files for `report` into `out` and prints its summary.
pub fn write_report(out: &Path, report: &Report) -> Result<()> {
    match report.kind {
        PlanKind::Cv => write_cv_report(out, report),
        PlanKind::Sweep | PlanKind::Table3 => write_sweep_report(out, report),
    }
}

fn split_name(r: &Report) -> String {
    let kind = if r.by_speaker {
        "speaker-independent"
    } else {
        "stratified"
    };
    match &r.within_fold {
        Some(w) => format!("{}-fold {kind} inside outer fold {w}", r.folds),
        None => format!("{}-fold {kind}", r.folds),
    }
}

/// cv.json: the one trial's folds and summary, in the layout cv.json always had (plus UA and
/// the fold plan's details).
#[derive(Serialize)]
struct CvJson<'a> {
    data: &'a str,
    labels: &'a [String],
    folds: &'a [UnitResult],
    by_speaker: bool,
    within_fold: &'a Option<String>,
    ua_mean: f64,
    ua_std: f64,
    accuracy_mean: f64,
    accuracy_std: f64,
    micro_f1_mean: f64,
    micro_f1_std: f64,
    macro_f1_mean: f64,
    macro_f1_std: f64,
    parameters: usize,
    train_seconds: f64,
    confusion: &'a Confusion,
}

fn write_cv_report(out: &Path, report: &Report) -> Result<()> {
    let t = &report.trials[0];
    println!(
        "{}: UA {}%  WA {}%  micro-F1 {}%  macro-F1 {}%",
        split_name(report),
        pct(&t.ua),
        pct(&t.wa),
        pct(&t.micro_f1),
        pct(&t.macro_f1)
    );
    println!("{}", t.confusion.to_table(&report.labels));
    confusion_png(
        &out.join("confusion.png"),
        &t.confusion.counts,
        &report.labels,
        "cross-validation: summed confusion",
    )?;
    let series: Vec<Series> = t
        .folds
        .iter()
        .enumerate()
        .map(|(k, r)| Series {
            name: format!("fold {} val acc", r.fold),
            points: r
                .history
                .iter()
                .map(|e| (e.epoch as f64, e.val_accuracy))
                .collect(),
            color: PALETTE[k % PALETTE.len()],
        })
        .collect();
    line_chart_png(
        &out.join("learning_curve.png"),
        "validation accuracy per fold",
        ("epoch", "accuracy"),
        &series,
    )?;
    let json = CvJson {
        data: &report.data,
        labels: &report.labels,
        folds: &t.folds,
        by_speaker: report.by_speaker,
        within_fold: &report.within_fold,
        ua_mean: t.ua.mean,
        ua_std: t.ua.std,
        accuracy_mean: t.wa.mean,
        accuracy_std: t.wa.std,
        micro_f1_mean: t.micro_f1.mean,
        micro_f1_std: t.micro_f1.std,
        macro_f1_mean: t.macro_f1.mean,
        macro_f1_std: t.macro_f1.std,
        parameters: t.parameters,
        train_seconds: t.train_seconds,
        confusion: &t.confusion,
    };
    atomic_write(
        &out.join("cv.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!(
        "wrote {}/cv.json, confusion.png, learning_curve.png",
        out.display()
    );
    Ok(())
}

/// results.md: one row per trial.
pub fn results_markdown(report: &Report) -> String {
    let mut s = format!(
        "# {} on {} ({})\n\n| trial | settings | parameters | UA % | WA % | macro-F1 % | train time s |\n|---|---|---|---|---|---|---|\n",
        match report.kind {
            PlanKind::Table3 => "Table 3 (kernel size)",
            _ => "Sweep",
        },
        report.data,
        split_name(report)
    );
    for t in &report.trials {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} |\n",
            t.dir,
            t.name,
            t.parameters,
            pct(&t.ua),
            pct(&t.wa),
            pct(&t.macro_f1),
            t.train_seconds
        );
    }
    s
}

/// results.csv: one row per trial, numbers in full precision.
pub fn results_csv(report: &Report) -> String {
    let mut s = String::from(
        "trial,settings,seed,parameters,ua_mean,ua_std,wa_mean,wa_std,micro_f1_mean,micro_f1_std,macro_f1_mean,macro_f1_std,train_seconds\n",
    );
    for t in &report.trials {
        s += &format!(
            "{},\"{}\",{},{},{},{},{},{},{},{},{},{},{:.3}\n",
            t.dir,
            t.name,
            t.seed,
            t.parameters,
            t.ua.mean,
            t.ua.std,
            t.wa.mean,
            t.wa.std,
            t.micro_f1.mean,
            t.micro_f1.std,
            t.macro_f1.mean,
            t.macro_f1.std,
            t.train_seconds
        );
    }
    s
}

/// table3.md: the paper's Table 3 layout (kernel size, padding, accuracy, F1, parameters),
/// largest kernel first as in the paper.
pub fn table3_markdown(report: &Report) -> String {
    let mut s = format!(
        "| Kernel Size | Padding | Accuracy (%) | Macro F1 (%) | UA (%) | Params (M) |\n|---|---|---|---|---|---|\n<!-- {} on {} -->\n",
        split_name(report),
        report.data
    );
    let mut rows: Vec<&TrialSummary> = report.trials.iter().collect();
    rows.sort_by_key(|t| std::cmp::Reverse(t.kernel_size));
    for t in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {:.2} |\n",
            t.kernel_size,
            t.kernel_size / 2,
            pct(&t.wa),
            pct(&t.macro_f1),
            pct(&t.ua),
            t.parameters as f64 / 1e6
        );
    }
    s
}

fn write_sweep_report(out: &Path, report: &Report) -> Result<()> {
    let md = results_markdown(report);
    print!("{md}");
    atomic_write(&out.join("results.md"), md.as_bytes())?;
    atomic_write(&out.join("results.csv"), results_csv(report).as_bytes())?;
    atomic_write(
        &out.join("results.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    // x: the kernel size for Table 3, else the trial number.
    let x = |i: usize, t: &TrialSummary| {
        if report.kind == PlanKind::Table3 {
            t.kernel_size as f64
        } else {
            i as f64
        }
    };
    let series = |name: &str, k: usize, f: fn(&TrialSummary) -> f64| Series {
        name: name.to_string(),
        points: report
            .trials
            .iter()
            .enumerate()
            .map(|(i, t)| (x(i, t), f(t)))
            .collect(),
        color: PALETTE[k % PALETTE.len()],
    };
    let (title, x_label) = if report.kind == PlanKind::Table3 {
        ("mean over folds vs kernel size", "kernel size")
    } else {
        ("mean over folds vs trial", "trial")
    };
    line_chart_png(
        &out.join("results.png"),
        title,
        (x_label, "score"),
        &[
            series("UA", 0, |t| t.ua.mean),
            series("WA", 1, |t| t.wa.mean),
            series("macro-F1", 2, |t| t.macro_f1.mean),
        ],
    )?;
    let mut wrote = "results.md, results.csv, results.json, results.png".to_string();
    if report.kind == PlanKind::Table3 {
        let t3 = table3_markdown(report);
        print!("{t3}");
        atomic_write(&out.join("table3.md"), t3.as_bytes())?;
        wrote += ", table3.md";
    }
    println!("wrote {}: {wrote}", out.display());
    Ok(())
}

/// The flags `cv` and `sweep` share: folds, where results go, which share of the work this
/// process runs and on which devices.
#[derive(Debug, Args, Clone)]
pub struct FoldArgs {
    /// Number of folds: 2 to 100.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Speaker-independent folds (every speaker's clips in one fold).
    #[arg(long)]
    pub by_speaker: bool,
    /// Fraction of each training fold held out for validation, > 0 and < 1 (early stopping
    /// and the learning-rate schedule never see the test fold).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub val_split: f64,
    /// Nested selection: run the folds inside the training part of outer fold I of K (same
    /// seed and fold kind; K from 2 to 100), so nothing chosen on them has seen outer test
    /// fold I.
    #[arg(long, value_name = "I/K")]
    pub within_fold: Option<String>,
    /// Output folder (default: runs/<command>-<corpus>). Shards share it; the same command
    /// again continues it, other settings or a folder that is not a cv/sweep folder are refused.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run only share I of N (N up to 100000) of the (trial, fold) units. Default: from a
    /// Slurm job array
    /// (SLURM_ARRAY_TASK_ID/MIN/MAX) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX), else
    /// everything.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Number of shards of a Kubernetes Indexed Job (its `completions`; or SER_SHARD_COUNT),
    /// 1 to 100000.
    #[arg(long)]
    pub shard_count: Option<usize>,
    /// Run units concurrently, one per device: GPU ordinals `0,1,...` (cuda), or `sim,sim` /
    /// `cpu,cpu`; 1 to 64 entries. Results are the same as on one device.
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
    /// Only build the report of DIR from its finished units (after all shards are done).
    #[arg(long, value_name = "DIR")]
    pub merge: Option<PathBuf>,
}

/// Most folds `--folds` and `--within-fold I/K` take.
pub const MAX_FOLDS: usize = 100;

impl FoldArgs {
    /// Checks the fold, shard and device options against their ranges (as
    /// `TrainOpts::validate`), before any work starts.
    pub fn validate(&self) -> Result<()> {
        use Limit::{Excl, Incl};
        check_range(
            "folds",
            self.folds as f64,
            Incl(2.0),
            Incl(MAX_FOLDS as f64),
        )?;
        check_range("val-split", self.val_split, Excl(0.0), Excl(1.0))?;
        if let Some(w) = &self.within_fold {
            parse_within(w)?;
        }
        if let Some(n) = self.shard_count {
            check_range(
                "shard-count",
                n as f64,
                Incl(1.0),
                Incl(crate::train::shard::MAX_SHARDS as f64),
            )?;
        }
        if let Some(s) = &self.shard {
            crate::train::shard::Shard::parse(s)?;
        }
        if let Some(d) = &self.devices {
            crate::train::devices::parse_devices(d)?;
        }
        Ok(())
    }
}

/// The global options a plan needs (cli's `Global`, without reaching up into cli).
pub struct RunEnv {
    pub device: DeviceChoice,
    pub seed: u64,
    pub quiet: bool,
    pub verbose: bool,
}

fn parse_within(s: &str) -> Result<(usize, usize)> {
    let bad = || format!("--within-fold {s}: expected I/K with 1 ≤ I ≤ K and 2 ≤ K ≤ {MAX_FOLDS}");
    let (i, k) = s.split_once('/').with_context(bad)?;
    let (i, k): (usize, usize) = (
        i.trim().parse().with_context(bad)?,
        k.trim().parse().with_context(bad)?,
    );
    if !(2..=MAX_FOLDS).contains(&k) || i == 0 || i > k {
        bail!(bad());
    }
    Ok((i - 1, k))
}

/// `cv` and `sweep`: plans the units, runs this shard's share, and writes the report when
/// every unit is finished (or only merges, with `--merge`).
pub fn run_plan(
    kind: PlanKind,
    opts: &TrainOpts,
    args: &FoldArgs,
    grid: &[Axis],
    env: &RunEnv,
) -> Result<()> {
    if let Some(dir) = &args.merge {
        let report = collect(dir)?;
        return write_report(dir, &report);
    }
    // Every option before any work (README, "Bad input").
    opts.validate()?;
    args.validate()?;
    check_grid(opts, grid, env.seed)?;
    let shard = crate::train::shard::shard_from(args.shard.as_deref(), args.shard_count, &|k| {
        std::env::var(k).ok()
    })?;
    let devices = match &args.devices {
        Some(d) => crate::train::devices::parse_devices(d)?,
        None => vec![DeviceSlot::Choice(env.device)],
    };
    let within = args.within_fold.as_deref().map(parse_within).transpose()?;
    let (_corpus, data) = crate::train::data::load_dataset(
        opts.data.as_deref(),
        &opts.corpus,
        opts.sample_rate,
        &opts.mel(),
        opts.max_seconds,
        env.quiet,
    )?;
    let folds = plan_folds(
        &data,
        args.folds,
        args.by_speaker,
        args.val_split,
        env.seed,
        within,
    )?;
    let trials = make_trials(
        opts,
        grid,
        env.seed,
        data.labels.len(),
        kind == PlanKind::Cv,
    )?;
    // Each worker on the host holds one batch at a time: the memory a batch may use is shared
    // among them.
    let host_workers = devices
        .iter()
        .filter(|d| !matches!(d, DeviceSlot::Cuda(_)))
        .count()
        .max(1) as u64;
    let memory = crate::train::data::available_memory().map(|m| m / host_workers);
    for (t, _) in &trials {
        let train_clips = folds.iter().map(|f| f.train.len()).max().unwrap_or(0);
        crate::train::data::check_batch_memory(
            &t.model,
            &data,
            train_clips,
            t.fit.batch_size,
            memory,
        )
        .with_context(|| format!("trial {}", t.name))?;
    }
    let data_name = opts
        .data
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "demo".to_string());
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = opts
            .data
            .as_ref()
            .and_then(|d| d.file_stem())
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "demo".into());
        let cmd = match kind {
            PlanKind::Cv => "cv",
            PlanKind::Sweep => "sweep",
            PlanKind::Table3 => "table3",
        };
        PathBuf::from("runs").join(format!("{cmd}-{stem}"))
    });
    let plan = Plan {
        kind,
        data: data_name,
        labels: data.labels.clone(),
        clips: data.clips.len(),
        folds: args.folds,
        by_speaker: args.by_speaker,
        val_split: args.val_split,
        within_fold: args.within_fold.clone(),
        seed: env.seed,
        grid: grid.to_vec(),
        trials: trials.iter().map(|(t, _)| t.clone()).collect(),
    };
    write_or_check_plan(&out, &plan)?;
    let trial_opts: Vec<TrainOpts> = trials.into_iter().map(|(_, o)| o).collect();
    let runner = Runner {
        shard,
        devices,
        quiet: env.quiet,
        verbose: env.verbose,
    };
    if !env.quiet {
        eprintln!(
            "{} trial(s) x {} folds = {} units in {}; this process: shard {}, devices {}",
            plan.trials.len(),
            plan.folds,
            plan.units(),
            out.display(),
            shard.label(),
            runner
                .devices
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    let done = run_units(&out, &plan, &trial_opts, &data, &folds, &runner)?;
    if done == plan.units() {
        let report = collect(&out)?;
        write_report(&out, &report)
    } else {
        println!(
            "shard {} finished its units; {} of {} units are done in {}. When every shard is \
             done: ser-engine {} --merge {}",
            shard.label(),
            done,
            plan.units(),
            out.display(),
            if kind == PlanKind::Cv { "cv" } else { "sweep" },
            out.display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::options::parse_opts;

    #[test]
    fn grid_is_a_product_first_axis_slowest() {
        let base = parse_opts(&["--data", "x"]);
        let grid = vec![
            parse_axis("kernel-size=3,5").unwrap(),
            parse_axis("--lr=1e-3,3e-3,1e-2").unwrap(),
        ];
        let trials = make_trials(&base, &grid, 42, 4, false).unwrap();
        assert_eq!(trials.len(), 6);
        let names: Vec<&str> = trials.iter().map(|(t, _)| t.name.as_str()).collect();
        assert_eq!(names[0], "kernel-size=3 lr=1e-3");
        assert_eq!(names[5], "kernel-size=5 lr=1e-2");
        assert_eq!(trials[4].0.model.kernel, 5);
        assert_eq!(trials[4].0.fit.lr, 3e-3);
        assert_eq!(trials[4].0.dir, "trial-04");
        // a bigger kernel has more parameters (paper Table 3: 0.55 M at 3, 0.71 M at 5)
        assert!(trials[3].0.parameters > trials[0].0.parameters);
        let seeds = make_trials(&base, &[parse_axis("seed=1,2").unwrap()], 42, 4, false).unwrap();
        assert_eq!((seeds[0].0.seed, seeds[1].0.fit.seed), (1, 2));
        assert!(parse_axis("n-mels=64,128").is_err());
        assert!(parse_axis("lr").is_err());
        for dup in [
            "lr=1e-3,3e-3,0.001",
            "recipe=paper,Paper",
            "kernel-size=3,3",
        ] {
            let e = parse_axis(dup).unwrap_err();
            assert!(format!("{e:#}").contains("repeats"), "{dup}: {e:#}");
        }
        assert!(make_trials(&base, &[parse_axis("lr=fast").unwrap()], 42, 4, false).is_err());
        let recipes = make_trials(
            &base,
            &[parse_axis("recipe=paper,strong").unwrap()],
            1,
            4,
            true,
        )
        .unwrap();
        assert_eq!(recipes[1].0.fit.schedule, Schedule::Cosine);
        assert_eq!(recipes[0].0.fit.schedule, Schedule::Plateau);
        assert_eq!(recipes[0].0.dir, "");
    }

    #[test]
    fn grid_values_are_checked_and_the_grid_is_bounded() {
        let base = parse_opts(&["--data", "x"]);
        let axis = |f: &str, n: usize| Axis {
            flag: f.into(),
            values: (1..=n).map(|v| v.to_string()).collect(),
        };
        assert!(check_grid(&base, &[axis("seed", 100), axis("epochs", 100)], 1).is_ok());
        let e = check_grid(&base, &[axis("seed", 101), axis("epochs", 100)], 1).unwrap_err();
        assert!(format!("{e:#}").contains("10100 trials"), "{e:#}");
        let huge = vec![axis("seed", 1000); 8];
        assert!(format!("{:#}", check_grid(&base, &huge, 1).unwrap_err()).contains("too many"));
        let e = check_grid(&base, &[parse_axis("batch-size=8,0").unwrap()], 1).unwrap_err();
        assert!(
            format!("{e:#}").contains("trial batch-size=0: --batch-size 0: must be ≥ 1"),
            "{e:#}"
        );
    }

    #[test]
    fn paper_table3_parameter_counts() {
        // Only the conv weights depend on the kernel size: k²·(1·32 + 32·64 + 64·128) of them.
        let base = parse_opts(&["--data", "x"]);
        let ks = [3usize, 5, 7, 9, 11];
        let trials = make_trials(
            &base,
            &[parse_axis("kernel-size=3,5,7,9,11").unwrap()],
            42,
            6,
            false,
        )
        .unwrap();
        let p: Vec<usize> = trials.iter().map(|(t, _)| t.parameters).collect();
        for i in 1..5 {
            assert_eq!(
                p[i] - p[i - 1],
                (ks[i] * ks[i] - ks[i - 1] * ks[i - 1]) * 10_272
            );
        }
        // The paper's Table 3 (KSUEmotion, 6 classes): 0.55, 0.71, 0.97, 1.29, 1.71 M; ours
        // agree to 0.01 M (0.719 M at k = 5, which the paper prints as 0.71).
        for (n, paper) in p.iter().zip([0.55, 0.71, 0.97, 1.29, 1.71]) {
            assert!((*n as f64 / 1e6 - paper).abs() < 0.01, "{n} vs {paper} M");
        }
    }
}
