//! `ser-engine cv`: k-fold cross-validation as the paper reports it (stratified), or
//! speaker-independent folds; per-fold and mean ± std accuracy, micro-F1 and macro-F1, the
//! summed confusion matrix, cv.json and two PNGs in the run folder.

use super::Global;
use crate::train::backend::make_backend;
use crate::train::data::load_dataset;
use crate::train::fit::{evaluate, fit, EpochRecord, Evaluation, FitProgress};
use crate::train::metrics::{mean_std, Confusion, Scores};
use crate::train::options::TrainOpts;
use crate::train::plot::{confusion_png, line_chart_png, Series, PALETTE};
use crate::train::run::atomic_write;
use crate::train::split::{complement, speaker_kfold, stratified_kfold, stratified_split};
use anyhow::Result;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct CvArgs {
    #[command(flatten)]
    pub opts: TrainOpts,
    /// Number of folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Speaker-independent folds (every speaker's clips in one fold).
    #[arg(long)]
    pub by_speaker: bool,
    /// Fraction of each training fold held out for validation (early stopping and the
    /// learning-rate schedule never see the test fold).
    #[arg(long, default_value_t = 0.1)]
    pub val_split: f64,
    /// Folder for cv.json, confusion.png and learning_curve.png (default: runs/cv-<corpus>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct FoldResult {
    fold: usize,
    train: usize,
    validation: usize,
    test: usize,
    best_epoch: usize,
    scores: Scores,
    confusion: Confusion,
    history: Vec<EpochRecord>,
}

#[derive(Serialize)]
struct CvReport {
    labels: Vec<String>,
    folds: Vec<FoldResult>,
    by_speaker: bool,
    accuracy_mean: f64,
    accuracy_std: f64,
    micro_f1_mean: f64,
    micro_f1_std: f64,
    macro_f1_mean: f64,
    macro_f1_std: f64,
    confusion: Confusion,
}

pub fn run(args: &CvArgs, global: &Global) -> Result<()> {
    let opts = &args.opts;
    opts.validate()?;
    crate::train::options::check_range(
        "val-split",
        args.val_split,
        crate::train::options::Limit::Excl(0.0),
        crate::train::options::Limit::Excl(1.0),
    )?;
    let (_corpus, data) = load_dataset(
        opts.data.as_deref(),
        opts.format,
        opts.label_regex.as_deref(),
        opts.sample_rate,
        &opts.mel(),
        opts.max_seconds,
        global.quiet,
    )?;
    let n = data.clips.len();
    let memory = crate::train::data::available_memory();
    crate::train::data::check_batch_memory(
        &opts.model(data.labels.len())?,
        &data,
        n,
        opts.batch_size(),
        memory,
    )?;
    let all: Vec<usize> = (0..n).collect();
    let labels = data.labels_of(&all);
    let classes = data.labels.len();
    let folds = if args.by_speaker {
        let spk: Vec<Option<String>> = data.clips.iter().map(|c| c.speaker.clone()).collect();
        speaker_kfold(&spk, args.folds)?
    } else {
        stratified_kfold(&labels, &data.labels, args.folds, global.seed)?
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let name = opts
            .data
            .as_ref()
            .and_then(|d| d.file_stem())
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "demo".into());
        PathBuf::from("runs").join(format!("cv-{name}"))
    });
    std::fs::create_dir_all(&out)?;
    let model_cfg = opts.model(classes)?;
    let fit_cfg = opts.fit(global.seed);
    let mut results = Vec::new();
    let mut total = Confusion::new(classes);
    for (k, test) in folds.iter().enumerate() {
        let rest = complement(n, test);
        let rest_labels: Vec<usize> = rest.iter().map(|&i| labels[i]).collect();
        let (tr, va) = stratified_split(
            &rest_labels,
            classes,
            args.val_split,
            global.seed + k as u64,
        );
        let train_idx: Vec<usize> = tr.iter().map(|&i| rest[i]).collect();
        let val_idx: Vec<usize> = va.iter().map(|&i| rest[i]).collect();
        let optim = opts.optim(&data.labels_of(&train_idx), classes);
        let mut backend = make_backend(global.device, &model_cfg, &optim, global.seed + k as u64)?;
        if !global.quiet {
            eprintln!(
                "fold {}/{}: {} train, {} validation, {} test clips",
                k + 1,
                folds.len(),
                train_idx.len(),
                val_idx.len(),
                test.len()
            );
        }
        let mut best_state = None;
        let progress = fit(
            backend.as_mut(),
            &data,
            (&train_idx, &val_idx),
            &fit_cfg,
            FitProgress::new(&fit_cfg),
            global.progress(),
            &mut |ev| {
                if ev.record.best {
                    best_state = Some(ev.state.clone());
                }
                if global.verbose > 0 && !global.quiet {
                    eprintln!("fold {} {}", k + 1, ev.record.line());
                }
                Ok(())
            },
        )?;
        if let Some(s) = &best_state {
            backend.set_state(s)?;
        }
        let Evaluation { confusion, .. } =
            evaluate(backend.as_mut(), &data, test, fit_cfg.batch_size)?;
        let scores = confusion.scores();
        println!(
            "fold {}: accuracy {:.2}%  micro-F1 {:.2}%  macro-F1 {:.2}%  (best epoch {})",
            k + 1,
            100.0 * scores.accuracy,
            100.0 * scores.micro_f1,
            100.0 * scores.macro_f1,
            progress.early.best_epoch + 1
        );
        total.merge(&confusion);
        results.push(FoldResult {
            fold: k + 1,
            train: train_idx.len(),
            validation: val_idx.len(),
            test: test.len(),
            best_epoch: progress.early.best_epoch + 1,
            scores,
            confusion,
            history: progress.history,
        });
    }
    let col = |f: fn(&Scores) -> f64| -> (f64, f64) {
        mean_std(&results.iter().map(|r| f(&r.scores)).collect::<Vec<_>>())
    };
    let (am, asd) = col(|s| s.accuracy);
    let (mim, misd) = col(|s| s.micro_f1);
    let (mam, masd) = col(|s| s.macro_f1);
    println!(
        "{}-fold {}: accuracy {:.2} ± {:.2}%  micro-F1 {:.2} ± {:.2}%  macro-F1 {:.2} ± {:.2}%",
        folds.len(),
        if args.by_speaker {
            "speaker-independent"
        } else {
            "stratified"
        },
        100.0 * am,
        100.0 * asd,
        100.0 * mim,
        100.0 * misd,
        100.0 * mam,
        100.0 * masd
    );
    println!("{}", total.to_table(&data.labels));
    confusion_png(
        &out.join("confusion.png"),
        &total.counts,
        &data.labels,
        "cross-validation: summed confusion",
    )?;
    let series: Vec<Series> = results
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
        "accuracy",
        &series,
    )?;
    let report = CvReport {
        labels: data.labels.clone(),
        folds: results,
        by_speaker: args.by_speaker,
        accuracy_mean: am,
        accuracy_std: asd,
        micro_f1_mean: mim,
        micro_f1_std: misd,
        macro_f1_mean: mam,
        macro_f1_std: masd,
        confusion: total,
    };
    atomic_write(
        &out.join("cv.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    println!(
        "wrote {}/cv.json, confusion.png, learning_curve.png",
        out.display()
    );
    Ok(())
}
