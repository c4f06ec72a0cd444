//! A run folder: what `train` writes and `eval`/`predict`/`--resume` read.
//!
//! ```text
//! RUN_DIR/config.json         labels, sample rate, features, model, training settings
//! RUN_DIR/model.safetensors   best weights by validation loss (PyTorch state_dict names)
//! RUN_DIR/metrics.jsonl       one JSON line per epoch
//! RUN_DIR/resume/             last epoch's full state (weights, Adam moments, loop state)
//! ```
//! Every file is written to a temporary file in the same folder and renamed into place, so an
//! interrupted run never leaves a half-written file.

use crate::features::MelConfig;
use crate::model::{load_checkpoint, save_checkpoint, ModelConfig};
use crate::train::backend::{OptimConfig, TrainState};
use crate::train::fit::{FitConfig, FitProgress};
use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// config.json of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub ser_engine_version: String,
    pub labels: Vec<String>,
    /// Audio is resampled to this rate before the front end.
    pub sample_rate: u32,
    pub mel: MelConfig,
    pub model: ModelConfig,
    pub fit: FitConfig,
    pub optim: OptimConfig,
    /// Model input = (dB + offset) / scale.
    pub input_db_offset: f32,
    pub input_db_scale: f32,
    pub data: String,
    pub device: String,
}

/// Writes `bytes` to `path` atomically.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Creates (or reuses) the folder.
    pub fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path.join("resume"))
            .with_context(|| format!("{}: cannot create the run folder", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing run folder for reading.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("config.json").is_file() {
            bail!(
                "{}: not a run folder (no config.json; train one with `ser-engine train --out {}`)",
                path.display(),
                path.display()
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn config(&self) -> Result<RunConfig> {
        let p = self.path.join("config.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid run config", p.display()))
    }

    pub fn write_config(&self, cfg: &RunConfig) -> Result<()> {
        atomic_write(
            &self.path.join("config.json"),
            serde_json::to_string_pretty(cfg)?.as_bytes(),
        )
    }

    /// Rewrites metrics.jsonl from the whole history (so a resumed run stays consistent).
    pub fn write_metrics(&self, progress: &FitProgress) -> Result<()> {
        let mut s = String::new();
        for r in &progress.history {
            s += &serde_json::to_string(r)?;
            s.push('\n');
        }
        atomic_write(&self.path.join("metrics.jsonl"), s.as_bytes())
    }

    pub fn model_path(&self) -> PathBuf {
        self.path.join("model.safetensors")
    }

    pub fn save_best(&self, cfg: &RunConfig, state: &TrainState, epoch: usize) -> Result<()> {
        let mut meta = BTreeMap::new();
        meta.insert("epoch".to_string(), epoch.to_string());
        meta.insert("labels".to_string(), serde_json::to_string(&cfg.labels)?);
        save_checkpoint(
            &self.model_path(),
            &cfg.model,
            &state.params,
            &state.buffers,
            &meta,
        )
    }

    /// Best weights and BatchNorm buffers.
    pub fn load_best(&self, cfg: &RunConfig) -> Result<(Vec<f32>, Vec<f32>)> {
        let (p, b, _) = load_checkpoint(&self.model_path(), &cfg.model)?;
        Ok((p, b))
    }

    pub fn save_resume(&self, progress: &FitProgress, state: &TrainState) -> Result<()> {
        let views: Vec<(&str, &[f32])> = vec![
            ("params", &state.params),
            ("buffers", &state.buffers),
            ("adam_m", &state.adam_m),
            ("adam_v", &state.adam_v),
        ];
        let tensors: Vec<(String, TensorView)> = views
            .iter()
            .map(|(n, v)| {
                let bytes: &[u8] = bytemuck::cast_slice(v);
                (
                    n.to_string(),
                    TensorView::new(Dtype::F32, vec![v.len()], bytes).unwrap(),
                )
            })
            .collect();
        let mut meta = HashMap::new();
        meta.insert("adam_t".to_string(), state.adam_t.to_string());
        let bytes = safetensors::serialize(tensors, Some(meta))?;
        atomic_write(&self.path.join("resume/state.safetensors"), &bytes)?;
        atomic_write(
            &self.path.join("resume/progress.json"),
            serde_json::to_string(progress)?.as_bytes(),
        )
    }

    pub fn load_resume(&self) -> Result<(FitProgress, TrainState)> {
        let pj = self.path.join("resume/progress.json");
        let ps = self.path.join("resume/state.safetensors");
        if !pj.is_file() || !ps.is_file() {
            bail!(
                "{}: nothing to resume (no resume/progress.json; the run has not finished an epoch)",
                self.path.display()
            );
        }
        let progress: FitProgress = serde_json::from_str(
            &std::fs::read_to_string(&pj)
                .with_context(|| format!("{}: cannot read", pj.display()))?,
        )
        .with_context(|| format!("{}: corrupt", pj.display()))?;
        let bytes = std::fs::read(&ps).with_context(|| format!("{}: cannot read", ps.display()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: not a safetensors file", ps.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", ps.display()))?;
        let get = |n: &str| -> Result<Vec<f32>> {
            let t = st
                .tensor(n)
                .with_context(|| format!("{}: tensor '{n}' missing", ps.display()))?;
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let adam_t = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("adam_t"))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{}: adam_t missing", ps.display()))?;
        Ok((
            progress,
            TrainState {
                params: get("params")?,
                buffers: get("buffers")?,
                adam_m: get("adam_m")?,
                adam_v: get("adam_v")?,
                adam_t,
            },
        ))
    }
}

/// Reads a run's config and best weights into a backend ready for evaluation.
pub fn load_run(
    dir: &Path,
    device: crate::device::DeviceChoice,
) -> Result<(RunConfig, Box<dyn crate::train::backend::Backend>)> {
    let rd = RunDir::open(dir)?;
    let cfg = rd.config()?;
    let (params, buffers) = rd
        .load_best(&cfg)
        .with_context(|| format!("{}: cannot load the model", dir.display()))?;
    let mut backend = crate::train::backend::make_backend(device, &cfg.model, &cfg.optim, 0)?;
    let mut state = backend.state()?;
    state.params = params;
    state.buffers = buffers;
    backend.set_state(&state)?;
    Ok((cfg, backend))
}
