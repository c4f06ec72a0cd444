//! `ser-engine predict`: each file's predicted emotion and class probabilities.

use super::Global;
use crate::audio::load_audio;
use crate::features::try_log_mel;
use crate::train::backend::{argmax, softmax};
use crate::train::data::Batch;
use crate::train::run::load_run;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Run folder written by `ser-engine train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Audio files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &PredictArgs, global: &Global) -> Result<()> {
    let (cfg, mut backend) = load_run(&args.model, global.device)?;
    let mut failed = Vec::new();
    for path in &args.files {
        // Resampled to the model's rate when the file's differs.
        let audio = match load_audio(path, Some(cfg.sample_rate)) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e:#}");
                failed.push(path.clone());
                continue;
            }
        };
        let lm = try_log_mel(&audio.samples, cfg.sample_rate, &cfg.mel)?;
        let batch = Batch::from_features(
            &[(&lm.data, lm.frames)],
            &[0],
            &[0],
            lm.n_mels,
            -cfg.mel.top_db,
        );
        let logits = backend.eval_logits(&batch)?;
        let p = softmax(&logits);
        let best = argmax(&logits);
        if args.json {
            let probs: serde_json::Map<String, serde_json::Value> = cfg
                .labels
                .iter()
                .zip(&p)
                .map(|(l, &v)| (l.clone(), serde_json::json!(v)))
                .collect();
            println!(
                "{}",
                serde_json::json!({"file": path.display().to_string(), "label": cfg.labels[best], "probabilities": probs})
            );
        } else {
            let probs: Vec<String> = cfg
                .labels
                .iter()
                .zip(&p)
                .map(|(l, v)| format!("{l} {:.3}", v))
                .collect();
            println!(
                "{}\t{}\t{}",
                path.display(),
                cfg.labels[best],
                probs.join("  ")
            );
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} file(s) could not be read",
            failed.len(),
            args.files.len()
        );
    }
    Ok(())
}
