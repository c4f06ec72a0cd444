//! `ser-engine export --onnx FILE --model RUN`: the trained model as a standard ONNX graph
//! (`model::onnx`), with the run's labels and front-end settings as metadata, so onnxruntime
//! users can deploy it without this project.
//!
//! Layer: cli, the top. May use every other module.

use super::Global;
use crate::model::onnx::{export_onnx, OPSET};
use crate::train::run::{atomic_write, RunConfig, RunDir};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Run folder written by `ser-engine train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Write the ONNX model here.
    #[arg(long)]
    pub onnx: PathBuf,
}

/// The run's settings a deployment needs, as ONNX `metadata_props` (values are strings;
/// `labels` is a JSON array in output order, `mel` the front end's settings as JSON).
pub fn onnx_metadata(cfg: &RunConfig) -> Result<Vec<(String, String)>> {
    Ok(vec![
        ("labels".into(), serde_json::to_string(&cfg.labels)?),
        ("sample_rate".into(), cfg.sample_rate.to_string()),
        ("mel".into(), serde_json::to_string(&cfg.mel)?),
        (
            "front_end".into(),
            format!(
                "librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr={}, n_fft={}, \
                 hop_length={}, n_mels={}, fmin={}, fmax={}, center=True, pad_mode='constant', \
                 power=2.0), ref=np.max, amin=1e-10, top_db={}) with y mono float in [-1, 1]",
                cfg.sample_rate,
                cfg.mel.n_fft,
                cfg.mel.hop,
                cfg.mel.n_mels,
                cfg.mel.fmin,
                cfg.mel.fmax,
                cfg.mel.top_db
            ),
        ),
        (
            "input".into(),
            "log_mel [batch, 1, n_mels, frames] in dB, frames >= 8".into(),
        ),
        (
            "input_scaling".into(),
            format!(
                "inside the graph: (dB + {}) / {}",
                cfg.input_db_offset, cfg.input_db_scale
            ),
        ),
        ("model".into(), serde_json::to_string(&cfg.model)?),
    ])
}

pub fn run(args: &ExportArgs, global: &Global) -> Result<()> {
    let rd = RunDir::open(&args.model)?;
    let cfg = rd.config()?;
    let (params, buffers) = rd
        .load_best(&cfg)
        .with_context(|| format!("{}: cannot load the model", args.model.display()))?;
    let bytes = export_onnx(
        &cfg.model,
        &params,
        &buffers,
        cfg.input_db_offset,
        cfg.input_db_scale,
        &onnx_metadata(&cfg)?,
    )?;
    atomic_write(&args.onnx, &bytes)?;
    if !global.quiet {
        println!(
            "wrote {} ({} bytes, ONNX opset {OPSET}): input log_mel [batch, 1, {}, frames], outputs logits and probabilities [batch, {}] ({})",
            args.onnx.display(),
            bytes.len(),
            cfg.model.n_mels,
            cfg.model.classes,
            cfg.labels.join(", ")
        );
    }
    Ok(())
}
