//! A run folder: what `train` writes and `eval`/`predict`/`--resume` read.
//!
//! ```text
//! RUN_DIR/config.json         labels, sample rate, features, model, training settings
//! RUN_DIR/model.safetensors   best weights by validation loss (PyTorch state_dict names)
//! RUN_DIR/metrics.jsonl       one JSON line per epoch
//! RUN_DIR/resume/state.safetensors  last epoch: weights, Adam moments and loop progress (one file)
//! ```
//! Every file is written to a temporary file in the same folder and renamed into place, so an
//! interrupted run never leaves a half-written file.
//!
//! Writers go through [`RunWriter`]: it holds an OS advisory lock on the folder (released by
//! the kernel when the process dies, even by kill -9) so a second writer is refused with the
//! holder's pid; it never writes into an existing run unless asked (`--force` swaps the new
//! run in whole once its first epoch is saved; `--resume` continues it); and it removes temp
//! files a killed writer left behind.
//!
//! Layer: train (below cli, above engine and cpu). May use `backend`, `cpu`, `features`,
//! `model`, `audio`, `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`);
//! never `cli`, and `engine` only in `devices.rs` (the one place a backend is chosen).

use crate::backend::{set_weights, Backend, OptimConfig, TrainState};
use crate::features::MelConfig;
use crate::model::{load_checkpoint, save_checkpoint, ModelConfig};
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
    /// The corpora trained on (`demo` for the demo corpus): one is written as a string, as
    /// before several could be given, more as a list.
    #[serde(with = "one_or_many")]
    pub data: Vec<String>,
    /// `--label-map`: the file that mapped the corpora's labels onto `labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_map: Option<String>,
    pub device: String,
    /// How the validation set was chosen (older run folders: not recorded, `--resume` then
    /// uses the 0.2 default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_split: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_data: Option<String>,
    /// The `--recipe` the defaults came from (older run folders: not recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<crate::train::recipe::Recipe>,
    /// `--init`: the run this one started from (none: a random initialisation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<crate::train::init::InitRecord>,
}

/// A list written as a plain string when it has one element; read from either form.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        match v {
            [one] => one.serialize(s),
            _ => v.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Form::deserialize(d)? {
            Form::One(s) => vec![s],
            Form::Many(v) => v,
        })
    }
}

impl RunConfig {
    /// The corpora as one line (`a + b`).
    pub fn data_line(&self) -> String {
        self.data.join(" + ")
    }

    /// Checks the settings against each other and against sane ranges, so a hand-edited or
    /// foreign config.json is refused with the field at fault instead of crashing later.
    /// Errors are "FIELD: problem"; the caller adds the file.
    pub fn validate(&self) -> Result<()> {
        use crate::train::options::SAMPLE_RATE_RANGE;
        let (lo, hi) = SAMPLE_RATE_RANGE;
        if !(lo..=hi).contains(&self.sample_rate) {
            bail!(
                "sample_rate: {} Hz is outside {lo}..={hi} Hz",
                self.sample_rate
            );
        }
        self.model.validate().context("model")?;
        if self.labels.len() != self.model.classes {
            bail!(
                "labels: lists {} label(s) ({}) but the model has {} classes (model.classes)",
                self.labels.len(),
                self.labels.join(", "),
                self.model.classes
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for l in &self.labels {
            if l.is_empty() || !seen.insert(l) {
                bail!("labels: '{l}' is empty or listed twice");
            }
        }
        self.mel.validate(self.sample_rate).context("mel")?;
        // Sizes the front end allocates per frame: bounded so a hand-edited file cannot ask
        // for gigabytes.
        if self.mel.n_fft > 1 << 16 || self.mel.hop > self.mel.n_fft {
            bail!(
                "mel.n_fft / mel.hop: {} / {} (need n_fft ≤ 65536 and hop ≤ n_fft)",
                self.mel.n_fft,
                self.mel.hop
            );
        }
        if self.mel.n_mels != self.model.n_mels {
            bail!(
                "mel.n_mels: {} differs from model.n_mels {}",
                self.mel.n_mels,
                self.model.n_mels
            );
        }
        if !(self.input_db_offset.is_finite()
            && self.input_db_scale.is_finite()
            && self.input_db_scale > 0.0)
        {
            bail!(
                "input_db_offset / input_db_scale: {} / {} (need finite numbers, scale > 0)",
                self.input_db_offset,
                self.input_db_scale
            );
        }
        if self.fit.batch_size == 0 || self.fit.epochs == 0 {
            bail!(
                "fit: batch_size ({}) and epochs ({}) must be ≥ 1",
                self.fit.batch_size,
                self.fit.epochs
            );
        }
        if let Some(m) = self.fit.max_seconds {
            if !(m > 0.0 && m <= crate::train::options::MAX_SECONDS) {
                bail!(
                    "fit.max_seconds: {m} is outside (0, {}]",
                    crate::train::options::MAX_SECONDS
                );
            }
        }
        if let Some(d) = self.fit.ema {
            if !(d > 0.0 && d < 1.0) {
                bail!("fit.ema: {d} is outside (0, 1)");
            }
        }
        for (name, v) in [
            ("fit.lr", self.fit.lr),
            ("optim.lr", self.optim.lr),
            ("optim.weight_decay", self.optim.weight_decay),
            ("optim.clip_grad_norm", self.optim.clip_grad_norm),
            ("optim.label_smoothing", self.optim.label_smoothing),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{name}: {v} (need a finite number ≥ 0)");
            }
        }
        if let Some(w) = &self.optim.class_weights {
            if w.len() != self.model.classes || w.iter().any(|x| !x.is_finite()) {
                bail!(
                    "optim.class_weights: {} finite weight(s) needed, one per class",
                    self.model.classes
                );
            }
        }
        Ok(())
    }
}

pub use crate::atomic_file::{atomic_write, TMP_PREFIX};

/// The lock file inside a run folder; it holds the writer's pid.
pub const LOCK_FILE: &str = "lock";

/// An exclusive advisory lock (flock) on `dir/lock`, held while the returned file is open.
/// `target` is the run folder named in errors.
fn lock_folder(dir: &Path, target: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let p = dir.join(LOCK_FILE);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .with_context(|| format!("{}: cannot create the lock file", p.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return Err(err).with_context(|| format!("{}: cannot lock", p.display()));
        }
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        let pid = pid.trim();
        bail!(
            "{}: another process (pid {}) is writing this run folder; wait for it to finish \
             or choose another --out",
            target.display(),
            if pid.is_empty() { "unknown" } else { pid }
        );
    }
    // The folder may have been swapped (a --force publish) between open and flock.
    let on_disk = std::fs::metadata(&p).map(|m| m.ino()).ok();
    if on_disk != Some(f.metadata()?.ino()) {
        bail!(
            "{}: the run folder was replaced while locking it; try again",
            target.display()
        );
    }
    f.set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| write!(f, "{}", std::process::id()))
        .with_context(|| format!("{}: cannot write", p.display()))?;
    Ok(f)
}

/// An exclusive advisory lock (flock) on the file `path`, waiting for a holder to let go; for
/// short critical sections (a cv/sweep folder's plan.json), not for whole runs.
pub fn lock_file_wait(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("{}: cannot create the lock file", path.display()))?;
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).with_context(|| format!("{}: cannot lock", path.display()));
        }
    }
}

/// Removes the temporary files a killed writer left in `dir` (not recursive).
fn remove_stale_temp_files(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(TMP_PREFIX)
            && e.file_type().is_ok_and(|t| t.is_file())
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What `dir` holds, ignoring the lock file and stale temporary files.
enum Existing {
    Nothing,
    Run,
    /// Not a run folder: one of its entries, for the error message.
    Other(PathBuf),
}

fn existing(dir: &Path) -> Result<Existing> {
    if !dir.exists() {
        return Ok(Existing::Nothing);
    }
    if !dir.is_dir() {
        bail!("{}: exists and is not a folder", dir.display());
    }
    if dir.join("config.json").is_file() {
        return Ok(Existing::Run);
    }
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot read", dir.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name != LOCK_FILE && !name.starts_with(TMP_PREFIX) {
            return Ok(Existing::Other(e.path()));
        }
    }
    Ok(Existing::Nothing)
}

/// A run folder locked for writing. A new run is written into a hidden staging folder beside
/// the target (`.NAME.partial`) and moved into place by [`RunWriter::publish`] once its first
/// epoch is saved, so the target never holds a mix of two runs.
pub struct RunWriter {
    target: PathBuf,
    rd: RunDir,
    staging: Option<PathBuf>,
    _lock: std::fs::File,
    /// The lock on a run being replaced (--force), held until it is gone.
    old_lock: Option<std::fs::File>,
}

impl RunWriter {
    /// A new run for `target`. An existing run there is an error unless `force`; a folder
    /// that is neither empty nor a run is always an error.
    pub fn create(target: &Path, force: bool) -> Result<Self> {
        let name = target
            .file_name()
            .with_context(|| format!("{}: not a folder name", target.display()))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("{}: cannot create the folder", parent.display()))?;
        let mut old_lock = None;
        match existing(target)? {
            Existing::Nothing => {}
            Existing::Run => {
                let lock = lock_folder(target, target)?;
                if !force {
                    bail!(
                        "{}: already holds a run; pass --force to replace it (once the new run \
                         has finished its first epoch), --resume {} to continue it, or choose \
                         another --out",
                        target.display(),
                        target.display()
                    );
                }
                old_lock = Some(lock);
            }
            Existing::Other(entry) => bail!(
                "{}: exists, is not empty and is not a run folder (it holds {}); refusing to \
                 write into it even with --force; choose another --out",
                target.display(),
                entry.display()
            ),
        }
        let staging = parent.join(format!(".{}.partial", name.to_string_lossy()));
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("{}: cannot create", staging.display()))?;
        let lock = lock_folder(&staging, target)?;
        // Another writer may have published its run between the check above and our lock.
        if old_lock.is_none() && matches!(existing(target)?, Existing::Run) {
            bail!(
                "{}: another process has just started a run here; choose another --out",
                target.display()
            );
        }
        // Whatever a killed writer left here is stale: we hold the lock.
        for e in std::fs::read_dir(&staging)
            .with_context(|| format!("{}: cannot read", staging.display()))?
            .flatten()
        {
            if e.file_name() != LOCK_FILE {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        std::fs::create_dir_all(staging.join("resume"))
            .with_context(|| format!("{}: cannot create", staging.display()))?;
        Ok(Self {
            target: target.to_path_buf(),
            rd: RunDir {
                path: staging.clone(),
            },
            staging: Some(staging),
            _lock: lock,
            old_lock,
        })
    }

    /// The run in `target`, to continue it (`--resume`).
    pub fn resume(target: &Path) -> Result<Self> {
        let rd = RunDir::open(target)?;
        let lock = lock_folder(target, target)?;
        remove_stale_temp_files(target);
        remove_stale_temp_files(&target.join("resume"));
        std::fs::create_dir_all(target.join("resume"))
            .with_context(|| format!("{}: cannot create", target.display()))?;
        Ok(Self {
            target: target.to_path_buf(),
            rd,
            staging: None,
            _lock: lock,
            old_lock: None,
        })
    }

    /// Where files are written now (the staging folder until published).
    pub fn dir(&self) -> &RunDir {
        &self.rd
    }

    /// Moves a new run into place (replacing the old one whole, under --force); a no-op once
    /// published. Call after the first epoch's files are written.
    pub fn publish(&mut self) -> Result<()> {
        if self.staging.is_none() {
            return Ok(());
        }
        // Without --force (no lock on an old run), a run that appeared since `create` belongs
        // to another writer: never swap it away (this run's staging folder is dropped).
        if self.old_lock.is_none() && matches!(existing(&self.target)?, Existing::Run) {
            bail!(
                "{}: another process published a run here while this one was starting; \
                 choose another --out",
                self.target.display()
            );
        }
        let Some(staging) = self.staging.take() else {
            return Ok(());
        };
        let fail = |e: std::io::Error| {
            anyhow::Error::new(e).context(format!(
                "{}: cannot move the new run into place from {}",
                self.target.display(),
                staging.display()
            ))
        };
        if self.target.exists() {
            swap_folders(&staging, &self.target).map_err(fail)?;
            // `staging` now holds the old run (or an empty folder).
            std::fs::remove_dir_all(&staging).with_context(|| {
                format!("{}: cannot remove the replaced run", staging.display())
            })?;
        } else {
            std::fs::rename(&staging, &self.target).map_err(fail)?;
        }
        self.old_lock = None;
        self.rd.path = self.target.clone();
        Ok(())
    }
}

impl Drop for RunWriter {
    /// A run that never got to publish (an error before its first epoch was saved) leaves
    /// nothing behind.
    fn drop(&mut self) {
        if let Some(s) = &self.staging {
            let _ = std::fs::remove_dir_all(s);
        }
    }
}

/// Exchanges two folders atomically (Linux renameat2 RENAME_EXCHANGE), so `b` is never
/// missing; elsewhere, two renames.
fn swap_folders(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let ca = CString::new(a.as_os_str().as_bytes())?;
        let cb = CString::new(b.as_os_str().as_bytes())?;
        // SAFETY: two valid NUL-terminated paths relative to the current directory.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        // Filesystems without RENAME_EXCHANGE fall through to the two renames.
        if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(err);
        }
    }
    let aside = a.with_extension("old");
    std::fs::rename(b, &aside)?;
    if let Err(e) = std::fs::rename(a, b) {
        let _ = std::fs::rename(&aside, b);
        return Err(e);
    }
    std::fs::rename(&aside, a)
}

pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Opens an existing run folder for reading.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            bail!(
                "{}: is a file; give the run folder that holds config.json and \
                 model.safetensors",
                path.display()
            );
        }
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

    /// config.json, parsed and checked ([`RunConfig::validate`]); errors name the file.
    pub fn config(&self) -> Result<RunConfig> {
        let p = self.path.join("config.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        let cfg: RunConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid run config", p.display()))?;
        cfg.validate()
            .with_context(|| format!("{}: invalid run config", p.display()))?;
        Ok(cfg)
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
        // with --ema the saved model is the average (validation chose it on the average too)
        let params = if state.ema.is_empty() {
            &state.params
        } else {
            &state.ema
        };
        save_checkpoint(
            &self.model_path(),
            &cfg.model,
            params,
            &state.buffers,
            &meta,
        )
    }

    /// Best weights and BatchNorm buffers; the checkpoint must be the one config.json
    /// describes (same model, same labels).
    pub fn load_best(&self, cfg: &RunConfig) -> Result<(Vec<f32>, Vec<f32>)> {
        let path = self.model_path();
        // the checkpoint's own errors name the file and say what is wrong (missing, empty,
        // corrupt, another model than config.json's, non-finite weights)
        let (p, b, meta) = load_checkpoint(&path, &cfg.model)?;
        if let Some(l) = meta.get("labels") {
            let labels: Vec<String> = serde_json::from_str(l)
                .with_context(|| format!("{}: bad 'labels' metadata", path.display()))?;
            if labels != cfg.labels {
                bail!(
                    "{}: trained with labels [{}] but config.json lists [{}]",
                    path.display(),
                    labels.join(", "),
                    cfg.labels.join(", ")
                );
            }
        }
        Ok((p, b))
    }

    /// The resume checkpoint: the state's tensors and, in the same file's metadata, the loop's
    /// progress (one file, one rename: a kill leaves either the old epoch or the new one,
    /// never one's state beside the other's progress).
    pub fn save_resume(&self, progress: &FitProgress, state: &TrainState) -> Result<()> {
        let mut views: Vec<(&str, &[f32])> = vec![
            ("params", &state.params),
            ("buffers", &state.buffers),
            ("adam_m", &state.adam_m),
            ("adam_v", &state.adam_v),
        ];
        if !state.ema.is_empty() {
            views.push(("ema", &state.ema));
        }
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
        meta.insert(PROGRESS_KEY.to_string(), serde_json::to_string(progress)?);
        let mut bytes = safetensors::serialize(tensors, Some(meta))?;
        // the same state gives the same bytes
        crate::model::checkpoint::sort_header_keys(&mut bytes)?;
        atomic_write(&self.resume_path(), &bytes)?;
        // A run folder from before the single-file format: its separate progress file is stale
        // from now on.
        let legacy = self.path.join(LEGACY_PROGRESS);
        if legacy.exists() {
            std::fs::remove_file(&legacy)
                .with_context(|| format!("{}: cannot remove", legacy.display()))?;
        }
        Ok(())
    }

    /// The resume checkpoint's path (`resume/state.safetensors`).
    pub fn resume_path(&self) -> PathBuf {
        self.path.join("resume/state.safetensors")
    }

    /// The resume checkpoint, checked before it is believed: the model size of `model`, finite
    /// values, Adam's step count equal to the loop's, one history record per epoch done.
    /// Errors name the file.
    pub fn load_resume(&self, model: &ModelConfig) -> Result<(FitProgress, TrainState)> {
        let ps = self.resume_path();
        if !ps.is_file() {
            bail!(
                "{}: nothing to resume: the file is missing (the run has not finished an epoch, or \
                 the file was removed)",
                ps.display()
            );
        }
        let bytes = std::fs::read(&ps).with_context(|| format!("{}: cannot read", ps.display()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: not a safetensors file", ps.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", ps.display()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let (progress_text, progress_file) = match meta.get(PROGRESS_KEY) {
            Some(t) => (t.clone(), ps.clone()),
            None => {
                // Run folders written before the single-file format.
                let pj = self.path.join(LEGACY_PROGRESS);
                let t = std::fs::read_to_string(&pj).with_context(|| {
                    format!(
                        "{}: holds no progress and {} cannot be read",
                        ps.display(),
                        pj.display()
                    )
                })?;
                (t, pj)
            }
        };
        let progress: FitProgress = serde_json::from_str(&progress_text)
            .with_context(|| format!("{}: corrupt progress record", progress_file.display()))?;
        let get = |n: &str| -> Result<Vec<f32>> {
            let t = st
                .tensor(n)
                .with_context(|| format!("{}: tensor '{n}' missing", ps.display()))?;
            if t.dtype() != Dtype::F32 {
                bail!("{}: tensor '{n}' is not f32", ps.display());
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let adam_t = meta
            .get("adam_t")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{}: adam_t missing", ps.display()))?;
        let state = TrainState {
            params: get("params")?,
            buffers: get("buffers")?,
            adam_m: get("adam_m")?,
            adam_v: get("adam_v")?,
            adam_t,
            // only runs with --ema have one
            ema: if st.names().contains(&"ema") {
                get("ema")?
            } else {
                Vec::new()
            },
        };
        check_resume(&progress, &state, model).with_context(|| {
            if progress_file == ps {
                format!("{}: refusing to resume", ps.display())
            } else {
                format!(
                    "{} and {}: refusing to resume",
                    ps.display(),
                    progress_file.display()
                )
            }
        })?;
        Ok((progress, state))
    }
}

/// Metadata key of the resume checkpoint that holds the loop's progress (JSON).
const PROGRESS_KEY: &str = "progress";
/// Where run folders written before the single-file resume checkpoint kept the progress.
const LEGACY_PROGRESS: &str = "resume/progress.json";

/// The cross-checks of a resume checkpoint (see [`RunDir::load_resume`]).
fn check_resume(p: &FitProgress, s: &TrainState, model: &ModelConfig) -> Result<()> {
    use crate::model::{BufferLayout, ParamLayout};
    let (np, nb) = (
        ParamLayout::new(model).total(),
        BufferLayout::new(model).total(),
    );
    if s.params.len() != np || s.buffers.len() != nb {
        bail!(
            "it holds {} parameters and {} BatchNorm values, but the model in config.json \
             (channels {:?}, kernel {}, fc {}, hidden {}, n_mels {}, classes {}) has {np} and {nb}: \
             the state is from another model size",
            s.params.len(),
            s.buffers.len(),
            model.channels,
            model.kernel,
            model.fc,
            model.hidden,
            model.n_mels,
            model.classes
        );
    }
    if !s.ema.is_empty() && s.ema.len() != np {
        bail!(
            "tensor 'ema' holds {} values for {np} parameters",
            s.ema.len()
        );
    }
    if s.adam_m.len() != np || s.adam_v.len() != np {
        bail!(
            "Adam moments hold {} and {} values for {np} parameters",
            s.adam_m.len(),
            s.adam_v.len()
        );
    }
    for (name, v) in [
        ("params", &s.params),
        ("buffers", &s.buffers),
        ("adam_m", &s.adam_m),
        ("adam_v", &s.adam_v),
        ("ema", &s.ema),
    ] {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!("tensor '{name}' holds a non-finite value ({}) at {i}", v[i]);
        }
    }
    if let Some(i) = s.adam_v.iter().position(|&x| x < 0.0) {
        bail!("tensor 'adam_v' holds a negative second moment at {i}");
    }
    if s.adam_t != p.step as u64 {
        bail!(
            "Adam has taken {} steps but the progress record says {}: state and progress are \
             from different epochs",
            s.adam_t,
            p.step
        );
    }
    if p.epochs_done == 0 || p.history.len() != p.epochs_done {
        bail!(
            "the progress record says {} epochs done with {} history records",
            p.epochs_done,
            p.history.len()
        );
    }
    for (i, r) in p.history.iter().enumerate() {
        let numbers = [
            r.lr,
            r.train_loss,
            r.train_accuracy,
            r.val_loss,
            r.val_accuracy,
            r.val_micro_f1,
            r.val_macro_f1,
            r.val_unweighted_accuracy,
        ];
        if r.epoch != i + 1 || numbers.iter().any(|x| !x.is_finite()) {
            bail!(
                "history record {} is epoch {} or holds a non-finite number",
                i + 1,
                r.epoch
            );
        }
    }
    if !(p.lr.is_finite() && p.lr >= 0.0) {
        bail!("the progress record's learning rate is {}", p.lr);
    }
    Ok(())
}

/// Reads a run's config and best weights into a backend ready for evaluation, after checking
/// config.json and the checkpoint against each other. `dir` may also name the run's
/// model.safetensors.
pub fn load_run(
    dir: &Path,
    device: crate::device::DeviceChoice,
) -> Result<(RunConfig, Box<dyn Backend>)> {
    let dir = match dir.parent() {
        Some(p) if dir.is_file() && p.join("config.json").is_file() => p,
        _ => dir,
    };
    let rd = RunDir::open(dir)?;
    let cfg = rd.config()?;
    // the checkpoint is checked against config.json before a backend of that size is built
    let (params, buffers) = rd.load_best(&cfg)?;
    let mut backend = crate::train::devices::make_backend(device, &cfg.model, &cfg.optim, 0)?;
    set_weights(backend.as_mut(), params, buffers)?;
    Ok((cfg, backend))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BufferLayout, ParamLayout};
    use crate::train::fit::EpochRecord;
    use crate::train::schedule::{EarlyStopping, ReduceOnPlateau};

    fn small() -> ModelConfig {
        ModelConfig {
            n_mels: 16,
            channels: [4, 8, 8],
            fc: 8,
            hidden: 6,
            classes: 3,
            ..Default::default()
        }
    }

    /// A consistent (progress, state) after `epochs` epochs of 5 steps.
    fn saved(epochs: usize) -> (FitProgress, TrainState) {
        let m = small();
        let (np, nb) = (ParamLayout::new(&m).total(), BufferLayout::new(&m).total());
        let history = (1..=epochs)
            .map(|e| EpochRecord {
                epoch: e,
                lr: 1e-3,
                train_loss: 1.0,
                train_accuracy: 0.5,
                val_loss: 1.1,
                val_accuracy: 0.4,
                val_micro_f1: 0.4,
                val_macro_f1: 0.3,
                val_unweighted_accuracy: 0.35,
                best: e == 1,
                val_confusion: None,
            })
            .collect();
        let mut p = FitProgress {
            epochs_done: epochs,
            step: 5 * epochs as u32,
            lr: 1e-3,
            plateau: ReduceOnPlateau::new(0.5, 3),
            early: EarlyStopping::new(5),
            history,
        };
        p.early.observe(0, 1.1);
        p.plateau.step(1.1, p.lr);
        let s = TrainState {
            params: (0..np).map(|i| i as f32 * 1e-3).collect(),
            buffers: vec![1.0; nb],
            adam_m: vec![0.1; np],
            adam_v: vec![0.2; np],
            adam_t: 5 * epochs as u64,
            ema: Vec::new(),
        };
        (p, s)
    }

    fn run_dir() -> (tempfile::TempDir, RunDir) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("resume")).unwrap();
        let rd = RunDir {
            path: d.path().to_path_buf(),
        };
        (d, rd)
    }

    fn refusal(rd: &RunDir, m: &ModelConfig) -> String {
        format!("{:#}", rd.load_resume(m).unwrap_err())
    }

    #[test]
    fn resume_round_trip_is_exact() {
        let (_d, rd) = run_dir();
        let (p, s) = saved(3);
        rd.save_resume(&p, &s).unwrap();
        let (p2, s2) = rd.load_resume(&small()).unwrap();
        assert_eq!(
            (p2.epochs_done, p2.step, p2.history),
            (p.epochs_done, p.step, p.history)
        );
        assert_eq!(
            (s2.params, s2.buffers, s2.adam_m, s2.adam_v, s2.adam_t),
            (s.params, s.buffers, s.adam_m, s.adam_v, s.adam_t)
        );
        // one file: no separate progress file to fall out of step with the state
        assert!(!rd.path.join(LEGACY_PROGRESS).exists());
    }

    #[test]
    fn a_missing_state_file_is_named() {
        let (_d, rd) = run_dir();
        let e = refusal(&rd, &small());
        assert!(
            e.contains("state.safetensors") && e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn state_of_another_model_size_names_the_file_and_the_settings() {
        let (_d, rd) = run_dir();
        let (p, s) = saved(1);
        rd.save_resume(&p, &s).unwrap();
        let bigger = ModelConfig {
            hidden: 7,
            ..small()
        };
        let e = refusal(&rd, &bigger);
        assert!(
            e.contains("state.safetensors") && e.contains("hidden 7") && e.contains("model size"),
            "{e}"
        );
    }

    #[test]
    fn non_finite_values_in_the_state_are_refused() {
        for (tensor, value) in [
            ("params", f32::NAN),
            ("buffers", f32::INFINITY),
            ("adam_m", f32::NAN),
            ("adam_v", -1.0),
        ] {
            let (_d, rd) = run_dir();
            let (p, mut s) = saved(2);
            let v = match tensor {
                "params" => &mut s.params,
                "buffers" => &mut s.buffers,
                "adam_m" => &mut s.adam_m,
                _ => &mut s.adam_v,
            };
            v[3] = value;
            rd.save_resume(&p, &s).unwrap();
            let e = refusal(&rd, &small());
            assert!(
                e.contains("state.safetensors") && e.contains(tensor),
                "{tensor}: {e}"
            );
        }
    }

    #[test]
    fn progress_that_disagrees_with_the_state_is_refused() {
        // epochs_done edited to 50 (history and steps not), Adam one epoch ahead of the loop,
        // a history record missing
        // (JSON has no NaN: a non-finite number is written as null, which does not parse)
        type Edit = Box<dyn Fn(&mut FitProgress, &mut TrainState)>;
        let cases: Vec<(&str, Edit, &str)> = vec![
            ("50 epochs", Box::new(|p, _| p.epochs_done = 50), "history"),
            ("Adam", Box::new(|_, s| s.adam_t += 5), "different epochs"),
            ("history", Box::new(|p, _| p.history.truncate(1)), "history"),
            (
                "non-finite",
                Box::new(|p, _| p.history[0].val_loss = f64::NAN),
                "corrupt progress",
            ),
        ];
        for (what, edit, why) in cases {
            let (_d, rd) = run_dir();
            let (mut p, mut s) = saved(2);
            edit(&mut p, &mut s);
            rd.save_resume(&p, &s).unwrap();
            let e = refusal(&rd, &small());
            assert!(
                e.contains("state.safetensors") && e.contains(why),
                "{what}: {e}"
            );
        }
    }

    /// A run folder of the two-file format killed between its renames: epoch-2 state beside
    /// epoch-1 progress. Read, it is refused, naming both files.
    #[test]
    fn legacy_state_beside_older_progress_is_refused() {
        let (_d, rd) = run_dir();
        let (p1, _) = saved(1);
        let (_, s2) = saved(2);
        let tensors: Vec<(String, TensorView)> = [
            ("params", &s2.params),
            ("buffers", &s2.buffers),
            ("adam_m", &s2.adam_m),
            ("adam_v", &s2.adam_v),
        ]
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                TensorView::new(Dtype::F32, vec![v.len()], bytemuck::cast_slice(v)).unwrap(),
            )
        })
        .collect();
        let meta = HashMap::from([("adam_t".to_string(), s2.adam_t.to_string())]);
        std::fs::write(
            rd.resume_path(),
            safetensors::serialize(tensors, Some(meta)).unwrap(),
        )
        .unwrap();
        std::fs::write(
            rd.path.join(LEGACY_PROGRESS),
            serde_json::to_string(&p1).unwrap(),
        )
        .unwrap();
        let e = refusal(&rd, &small());
        assert!(
            e.contains("progress.json") && e.contains("different epochs"),
            "{e}"
        );
        // the same legacy pair from one epoch is read
        std::fs::write(
            rd.path.join(LEGACY_PROGRESS),
            serde_json::to_string(&saved(2).0).unwrap(),
        )
        .unwrap();
        assert_eq!(rd.load_resume(&small()).unwrap().0.epochs_done, 2);
    }
}
