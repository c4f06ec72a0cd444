//! Running the units (one (trial, fold) each): this shard's share of the plan spread over
//! the devices, one worker thread per device, each unit a resumable training run that ends
//! with its result.json. Uses `plan.rs`, `train::fit`, `train::run`, `train::devices`.

use super::plan::{FoldSplit, Plan};
use crate::backend::batch::{DB_OFFSET, DB_SCALE};
use crate::backend::set_weights;
use crate::device::DeviceChoice;
use crate::train::data::Dataset;
use crate::train::devices::{make_backend_on, DeviceSlot};
use crate::train::fit::{evaluate, fit, EpochRecord, FitProgress};
use crate::train::init::InitSource;
use crate::train::metrics::{Confusion, Scores};
use crate::train::options::TrainOpts;
use crate::train::run::{atomic_write, RunConfig, RunWriter};
use crate::train::shard::Shard;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A finished unit: `OUT/[trial]/fold-K/result.json`.
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
    /// `--init RUN`: every unit starts from this run's weights.
    pub init: Option<std::sync::Arc<InitSource>>,
}

impl Runner {
    pub fn single(device: DeviceChoice, quiet: bool, verbose: bool) -> Self {
        Self {
            shard: Shard::ALL,
            devices: vec![DeviceSlot::Choice(device)],
            quiet,
            verbose,
            init: None,
        }
    }
}

pub(super) fn read_result(dir: &Path) -> Result<Option<UnitResult>> {
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
pub(super) fn run_unit(
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
    let init = match &runner.init {
        Some(i) => Some(i.weights(&trial.model, &data.labels, trial.seed + k as u64)?),
        None => None,
    };
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
        data: trial_opts[t].data_names(),
        label_map: trial_opts[t]
            .label_map
            .as_ref()
            .map(|p| p.display().to_string()),
        device: backend.device().to_string(),
        val_split: Some(plan.val_split),
        val_data: None,
        init: init.as_ref().map(|(_, _, r)| r.clone()),
        recipe: Some(trial_opts[t].recipe),
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
        if old.model != run_cfg.model
            || old.fit != run_cfg.fit
            || old.optim != run_cfg.optim
            || old.init != run_cfg.init
        {
            bail!(
                "{}: holds a run with other settings; delete the folder to rerun it",
                dir.display()
            );
        }
        let (p, state) = rd.load_resume(&run_cfg.model)?;
        backend.set_state(&state)?;
        if !runner.quiet {
            eprintln!("{label}: resuming after epoch {}", p.epochs_done);
        }
        p
    } else {
        if let Some((params, buffers, record)) = init {
            crate::backend::set_weights(backend.as_mut(), params, buffers)?;
            if !runner.quiet && k == 0 {
                if let Some(i) = &runner.init {
                    eprintln!("{}", i.describe(&record, &data.labels, trial.seed));
                }
            }
        }
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
