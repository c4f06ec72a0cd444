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
//!
//! Files: `grid.rs` (a sweep's axes and trials), `plan.rs` (what is run, plan.json),
//! `units.rs` (running this shard's units on its devices) and `report.rs` (the report from
//! the result files); this file holds the shared flags and [`run_plan`], which ties them
//! together. Uses the rest of `train` and [`crate::backend`]; only `cli` uses it.

mod grid;
mod plan;
mod report;
mod units;

pub use grid::{check_grid, make_trials, parse_axis, Axis, Trial, GRID_FLAGS, MAX_TRIALS};
pub use plan::{plan_folds, read_plan, write_or_check_plan, FoldSplit, Plan, PlanKind, PLAN_LOCK};
pub use report::{
    collect, folds_svg, results_csv, results_markdown, results_svg, table3_markdown, write_report,
    MeanStd, Report, TrialSummary,
};
pub use units::{run_units, Runner, UnitResult};

use crate::device::DeviceChoice;
use crate::train::devices::DeviceSlot;
use crate::train::options::TrainOpts;
use crate::train::options::{check_range, Limit};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

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
    /// Output folder (default: in runs/, the command and the corpus folder's name joined by '-').
    /// Shards share it; the same command again continues it, other settings or a folder that is
    /// not a cv/sweep folder are refused.
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
    // `--init`: the run's architecture, sample rate and Mel settings for every unit
    let mut adopted = opts.clone();
    let init = match &opts.init {
        Some(run) => {
            let src = crate::train::init::InitSource::open(run)?;
            src.adopt(&mut adopted)?;
            Some(std::sync::Arc::new(src))
        }
        None => None,
    };
    let opts = &adopted;
    let mel = match &init {
        Some(i) => i.cfg.mel.clone(),
        None => opts.mel(),
    };
    let shard = crate::train::shard::shard_from(args.shard.as_deref(), args.shard_count, &|k| {
        std::env::var(k).ok()
    })?;
    let devices = match &args.devices {
        Some(d) => crate::train::devices::parse_devices(d)?,
        None => vec![DeviceSlot::Choice(env.device)],
    };
    let within = args.within_fold.as_deref().map(parse_within).transpose()?;
    let (_corpus, data) = crate::train::data::load_datasets(
        &opts.data,
        opts.label_map.as_deref(),
        &opts.corpus,
        opts.sample_rate,
        &mel,
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
    if let Some(i) = &init {
        for (t, _) in &trials {
            if t.model != i.model(t.model.classes, t.model.dropout) {
                bail!(
                    "trial {}: its model differs from the --init run's ({}); a grid over \
                     architecture settings cannot start from one run",
                    t.name,
                    i.dir.display()
                );
            }
        }
    }
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
            &|batch, t_max| {
                crate::train::devices::host_step_bytes(&devices, &t.model, batch, t_max)
            },
            &data,
            train_clips,
            t.fit.batch_size,
            t.fit.speed.as_deref(),
            memory,
        )
        .with_context(|| format!("trial {}", t.name))?;
    }
    let data_name = opts.data_names().join(" + ");
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = opts
            .data
            .first()
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
        init,
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
