//! `ser-engine eval`: a trained model's metrics and confusion matrix on a labelled corpus.
//!
//! Layer: cli, the top. May use every other module.

use super::Global;
use crate::audio::corpus::CorpusOptions;
use crate::train::data::load_dataset;
use crate::train::fit::evaluate;
use crate::train::metrics::per_class_table;
use crate::train::plot::confusion_png;
use crate::train::run::load_run;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run folder written by `ser-engine train`.
    #[arg(long)]
    pub model: PathBuf,
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
    /// Longest stretch of a clip scored, seconds (its middle; > 0, at most 600) [default: the
    /// run's --max-seconds].
    #[arg(long, allow_negative_numbers = true)]
    pub max_seconds: Option<f64>,
}

pub fn run(args: &EvalArgs, global: &Global) -> Result<()> {
    use crate::train::options::{check_range, Limit, DEFAULT_MAX_SECONDS, MAX_SECONDS};
    check_range(
        "batch-size",
        args.batch_size as f64,
        Limit::Incl(1.0),
        Limit::Incl(4096.0),
    )?;
    if let Some(m) = args.max_seconds {
        check_range("max-seconds", m, Limit::Excl(0.0), Limit::Incl(MAX_SECONDS))?;
    }
    let outs: Vec<(&str, &std::path::Path)> = [
        ("--confusion-png", &args.confusion_png),
        ("--json", &args.json),
    ]
    .into_iter()
    .filter_map(|(o, p)| p.as_deref().map(|p| (o, p)))
    .collect();
    super::outputs::check_outputs(&outs, &[&args.data], &[&args.model])?;
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
    crate::cpu::conv::bound_inference_memory();
    let (cfg, mut backend) = load_run(&args.model, global.device)?;
    let max_seconds = args
        .max_seconds
        .or(cfg.fit.max_seconds)
        .unwrap_or(DEFAULT_MAX_SECONDS);
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
    let idx: Vec<usize> = (0..data.clips.len()).collect();
    crate::train::data::check_batch_memory(
        &|batch, t_max| backend.step_memory_bytes(batch, t_max),
        &data,
        idx.len(),
        args.batch_size,
        None,
        crate::train::data::available_memory(),
    )?;
    let crate::train::fit::Evaluation {
        loss, confusion, ..
    } = evaluate(backend.as_mut(), &data, &idx, args.batch_size)?;
    let s = confusion.scores();
    let summary = format!(
        "{} clips: loss {loss:.4}  accuracy (WA) {:.2}%  UA {:.2}%  micro-F1 {:.2}%  macro-F1 {:.2}%",
        idx.len(),
        100.0 * s.accuracy,
        100.0 * s.unweighted_accuracy,
        100.0 * s.micro_f1,
        100.0 * s.macro_f1
    );
    if json_to_stdout {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
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
        let report = serde_json::json!({
            "model": args.model.display().to_string(),
            "data": args.data.display().to_string(),
            "clips": idx.len(),
            "loss": loss,
            "scores": s,
            "per_class": per_class,
            "labels": cfg.labels,
            "confusion": confusion.counts,
        });
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        super::outputs::write_output(p, text.as_bytes())?;
    }
    Ok(())
}
