//! `ser-engine eval`: a trained model's metrics and confusion matrix on a labelled corpus; with
//! `--tta N` a long clip's probabilities are the mean over N crops, and several `--model`s (or
//! a cv folder) are scored as one ensemble (the mean of their probabilities) and one by one.
//!
//! Layer: cli, the top. May use every other module.

use super::Global;
use crate::audio::corpus::CorpusOptions;
use crate::infer::ensemble::member_dirs;
use crate::infer::{mean_over_members, most_probable, Classifier, Views};
use crate::train::data::bucketed_batches;
use crate::train::data::load_dataset;
use crate::train::metrics::{per_class_table, Confusion};
use crate::train::plot::confusion_png;
use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run folder written by `ser-engine train`; repeat for an ensemble (probabilities
    /// averaged; 1 to 32 runs sharing sample rate, front end and classes); a cv folder stands
    /// for its fold runs.
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// Labelled corpus to evaluate on.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub corpus: CorpusOptions,
    /// Also write the confusion matrix as a PNG here (- for standard output). Never one of the
    /// inputs or a file inside a run folder; the folder must exist.
    #[arg(long)]
    pub confusion_png: Option<PathBuf>,
    /// Clips per evaluation batch: 1 to 4096.
    #[arg(long, default_value_t = 32, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub batch_size: usize,
    /// Also write the scores, the per-class table and the confusion matrix as JSON here (- for
    /// standard output, which then carries the JSON alone). Never one of the inputs or a file
    /// inside a run folder; the folder must exist.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Longest stretch of a clip scored, seconds (its middle; > 0, at most 600) [default: each
    /// run's own --max-seconds].
    #[arg(long, allow_negative_numbers = true)]
    pub max_seconds: Option<f64>,
    /// Test-time averaging: a clip longer than --max-seconds is scored as N crops of that
    /// length evenly spaced from start to end, probabilities averaged; 1 to 16 (1: its
    /// middle).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub tta: usize,
}

pub fn run(args: &EvalArgs, global: &Global) -> Result<()> {
    use crate::train::options::{check_range, Limit, MAX_SECONDS};
    check_range(
        "batch-size",
        args.batch_size as f64,
        Limit::Incl(1.0),
        Limit::Incl(4096.0),
    )?;
    if let Some(m) = args.max_seconds {
        check_range("max-seconds", m, Limit::Excl(0.0), Limit::Incl(MAX_SECONDS))?;
    }
    check_range(
        "tta",
        args.tta as f64,
        Limit::Incl(1.0),
        Limit::Incl(super::predict::MAX_TTA as f64),
    )?;
    let outs: Vec<(&str, &std::path::Path)> = [
        ("--confusion-png", &args.confusion_png),
        ("--json", &args.json),
    ]
    .into_iter()
    .filter_map(|(o, p)| p.as_deref().map(|p| (o, p)))
    .collect();
    let members = member_dirs(&args.model)?;
    let runs: Vec<&Path> = members.iter().map(|m| m.as_path()).collect();
    super::outputs::check_outputs(&outs, &[&args.data], &runs)?;
    // `--json -`: standard output carries the JSON report alone
    let json_to_stdout = args.json.as_deref().is_some_and(super::outputs::is_stdout);
    if json_to_stdout
        && args
            .confusion_png
            .as_deref()
            .is_some_and(super::outputs::is_stdout)
    {
        bail!("--json - and --confusion-png - both name standard output; give one a file");
    }
    warn_if_cv_saw_the_data(&args.model, &args.data);
    crate::cpu::conv::bound_inference_memory();
    let mut clf = Classifier::load_ensemble(&members, global.device)?;
    let cfg = clf.cfg.clone();
    let max_seconds = args
        .max_seconds
        .or(cfg.fit.max_seconds)
        .unwrap_or(crate::train::options::DEFAULT_MAX_SECONDS);
    let (_, mut data) = load_dataset(
        std::slice::from_ref(&args.data),
        &args.corpus,
        Some(cfg.sample_rate),
        &cfg.mel,
        max_seconds,
        global.quiet,
    )?;
    // Map the corpus's labels onto the model's classes.
    let mut map = Vec::new();
    for l in &data.labels {
        match cfg.labels.iter().position(|m| m == l) {
            Some(i) => map.push(i),
            None => bail!(
                "{}: class '{l}' is not one the model knows ({})",
                args.data.display(),
                cfg.labels.join(", ")
            ),
        }
    }
    for c in &mut data.clips {
        c.label = map[c.label];
    }
    data.labels = cfg.labels.clone();
    // Each run sees crops of its own training length unless --max-seconds sets one for all.
    let crop = args.max_seconds.map(|_| data.max_frames);
    if crop.is_none() {
        data.max_frames = clf.longest_training_crop();
    }
    clf.views = Views::Crops { n: args.tta, crop };
    clf.crops_per_call = args.batch_size;
    let idx: Vec<usize> = (0..data.clips.len()).collect();
    crate::train::data::check_batch_memory(
        &|batch, t_max| clf.step_memory_bytes(batch, t_max),
        &data,
        idx.len(),
        args.batch_size,
        None,
        crate::train::data::available_memory(),
    )?;
    // [member][clip] probabilities, in the classifier's label order
    let mut per_member: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); idx.len()]; clf.members()];
    for b in bucketed_batches(&data.model_frames(), &idx, args.batch_size, None) {
        let feats: Vec<(&[f32], usize)> = b
            .iter()
            .map(|&i| (&data.clips[i].mel[..], data.clips[i].frames))
            .collect();
        for (m, rows) in clf.member_probabilities(&feats)?.into_iter().enumerate() {
            for (&i, row) in b.iter().zip(rows) {
                per_member[m][i] = row;
            }
        }
    }
    let truth: Vec<usize> = idx.iter().map(|&i| data.clips[i].label).collect();
    let members_scored: Vec<(f64, Confusion)> = if per_member.len() > 1 {
        per_member
            .iter()
            .map(|p| score(p, &truth, cfg.labels.len()))
            .collect()
    } else {
        Vec::new()
    };
    let (loss, confusion) = score(&mean_over_members(per_member), &truth, cfg.labels.len());
    let s = confusion.scores();
    let summary = format!(
        "{} clips: loss {loss:.4}  accuracy (WA) {:.2}%  UA {:.2}%  micro-F1 {:.2}%  macro-F1 {:.2}%",
        idx.len(),
        100.0 * s.accuracy,
        100.0 * s.unweighted_accuracy,
        100.0 * s.micro_f1,
        100.0 * s.macro_f1
    );
    let mut lines = Vec::new();
    for (dir, (l, c)) in members.iter().zip(&members_scored) {
        let ms = c.scores();
        lines.push(format!(
            "  member {}: loss {l:.4}  WA {:.2}%  UA {:.2}%",
            dir.display(),
            100.0 * ms.accuracy,
            100.0 * ms.unweighted_accuracy
        ));
    }
    if members.len() > 1 {
        lines.insert(0, format!("ensemble of {} runs:", members.len()));
    }
    lines.push(summary);
    for l in &lines {
        if json_to_stdout {
            eprintln!("{l}");
        } else {
            println!("{l}");
        }
    }
    let per_class = confusion.per_class(&cfg.labels);
    if !json_to_stdout {
        println!("{}", per_class_table(&per_class));
        println!("{}", confusion.to_table(&cfg.labels));
    }
    if let Some(p) = &args.confusion_png {
        confusion_png(p, &confusion.counts, &cfg.labels, "evaluation")?;
    }
    if let Some(p) = &args.json {
        let model = match &members[..] {
            [one] => serde_json::json!(one.display().to_string()),
            many => serde_json::json!(many
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()),
        };
        let mut report = serde_json::json!({
            "model": model,
            "data": args.data.display().to_string(),
            "clips": idx.len(),
            "tta": args.tta,
            "loss": loss,
            "scores": s,
            "per_class": per_class,
            "labels": cfg.labels,
            "confusion": confusion.counts,
        });
        if !members_scored.is_empty() {
            report["members"] = members
                .iter()
                .zip(&members_scored)
                .map(|(d, (l, c))| {
                    serde_json::json!({
                        "model": d.display().to_string(),
                        "loss": l,
                        "scores": c.scores(),
                        "confusion": c.counts,
                    })
                })
                .collect();
        }
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        super::outputs::write_output(p, text.as_bytes())?;
    }
    Ok(())
}

/// Mean cross-entropy of the probabilities against the true classes, and the confusion of
/// their most probable classes (first on ties).
fn score(probs: &[Vec<f64>], truth: &[usize], classes: usize) -> (f64, Confusion) {
    let mut confusion = Confusion::new(classes);
    let mut loss = 0.0;
    for (p, &y) in probs.iter().zip(truth) {
        // a probability that underflowed to 0 counts as the smallest positive one, not +inf
        loss -= p[y].max(f64::MIN_POSITIVE).ln();
        confusion.add(y, most_probable(p));
    }
    (loss / truth.len().max(1) as f64, confusion)
}

/// A cv folder's fold runs have trained on most of its corpus: their ensemble's score on that
/// corpus is not a held-out one. Says so (a warning: the user may mean it).
fn warn_if_cv_saw_the_data(models: &[PathBuf], data: &Path) {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    for m in models.iter().filter(|m| m.join("plan.json").is_file()) {
        if let Ok(plan) = crate::train::sweep::read_plan(m) {
            if canon(Path::new(&plan.data)).is_some() && canon(Path::new(&plan.data)) == canon(data)
            {
                eprintln!(
                    "warning: --model {} is a cv of {} itself: each fold's run trained on the \
                     other folds' test clips, so this score is not a held-out one",
                    m.display(),
                    data.display()
                );
            }
        }
    }
}
