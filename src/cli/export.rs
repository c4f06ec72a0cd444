//! `ser-engine export --onnx FILE --model RUN`: the trained model as a standard ONNX graph
//! (`model::onnx`), with the run's labels and front-end settings as metadata, so onnxruntime
//! users can deploy it without this project. Several runs (an ensemble) become one graph that
//! averages their probabilities.
//!
//! Layer: cli, the top. May use every other module.

use super::Global;
use crate::infer::ensemble::{compatible, member_dirs};
use crate::model::onnx::{export_onnx, export_onnx_ensemble, OnnxMember, OPSET};
use crate::train::run::{RunConfig, RunDir};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Run folder written by `ser-engine train`; repeat for an ensemble, written as ONE graph
    /// that averages the runs' probabilities (1 to 32 runs sharing sample rate, front end and
    /// classes); a cv folder stands for its fold runs.
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// Write the ONNX model here (- for standard output). Never a file inside a run folder;
    /// the folder must exist.
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
    let members = member_dirs(&args.model)?;
    let runs: Vec<&Path> = members.iter().map(|m| m.as_path()).collect();
    super::outputs::check_output("--onnx", &args.onnx, &[], &runs)?;
    let mut loaded = Vec::with_capacity(members.len());
    for dir in &members {
        let rd = RunDir::open(dir)?;
        let cfg = rd.config()?;
        let (params, buffers) = rd
            .load_best(&cfg)
            .with_context(|| format!("{}: cannot load the model", dir.display()))?;
        loaded.push((cfg, params, buffers));
    }
    let with_dirs: Vec<(&Path, &RunConfig)> = members
        .iter()
        .zip(&loaded)
        .map(|(d, (c, _, _))| (d.as_path(), c))
        .collect();
    let perms = compatible(&with_dirs)?;
    let cfg = &loaded[0].0;
    let mut metadata = onnx_metadata(cfg)?;
    let bytes = if let [(cfg, params, buffers)] = &loaded[..] {
        export_onnx(
            &cfg.model,
            params,
            buffers,
            cfg.input_db_offset,
            cfg.input_db_scale,
            &metadata,
        )?
    } else {
        // each member's model and input scaling, in subgraph order (m0., m1., ...)
        let each: Vec<serde_json::Value> = members
            .iter()
            .zip(&loaded)
            .map(|(d, (c, _, _))| {
                serde_json::json!({
                    "run": d.display().to_string(),
                    "model": c.model,
                    "input_scaling": format!("(dB + {}) / {}", c.input_db_offset, c.input_db_scale),
                })
            })
            .collect();
        metadata.push(("ensemble".into(), serde_json::to_string(&each)?));
        let parts: Vec<OnnxMember> = loaded
            .iter()
            .zip(perms)
            .map(|((c, params, buffers), perm)| OnnxMember {
                cfg: &c.model,
                params,
                buffers,
                db_offset: c.input_db_offset,
                db_scale: c.input_db_scale,
                perm,
            })
            .collect();
        export_onnx_ensemble(&parts, &metadata)?
    };
    super::outputs::write_output(&args.onnx, &bytes)?;
    if !global.quiet && !super::outputs::is_stdout(&args.onnx) {
        let what = match members.len() {
            1 => String::new(),
            n => format!(", the mean of {n} runs"),
        };
        println!(
            "wrote {} ({} bytes, ONNX opset {OPSET}): input log_mel [batch, 1, {}, frames], outputs logits and probabilities [batch, {}] ({}){what}",
            args.onnx.display(),
            bytes.len(),
            cfg.model.n_mels,
            cfg.model.classes,
            cfg.labels.join(", ")
        );
    }
    Ok(())
}
