//! `--init RUN`: training that starts from another run's weights (docs/guide.md,
//! "Fine-tuning and several corpora"). The run's architecture, input normalisation, sample
//! rate and Mel settings are adopted (a flag that asks for something else is refused, naming
//! each differing setting); every tensor but the classifier head is copied; the head is kept,
//! reordered or drawn afresh depending on the labels ([`HeadInit`]).
//!
//! Layer: train (below cli). May use `backend`, `model`, `features` and the shared modules.

use crate::backend::batch::{DB_OFFSET, DB_SCALE};
use crate::model::{init_params, ModelConfig, ParamLayout};
use crate::train::options::TrainOpts;
use crate::train::run::{RunConfig, RunDir};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What `--init` did with the classifier head (the final FC: `classifier.weight`, `.bias`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInit {
    /// Same labels in the same order: the run's head as it is.
    Kept,
    /// Same labels in another order: the run's rows, reordered to this corpus's labels.
    Permuted,
    /// Other labels: drawn afresh from the seed (PyTorch's default init, as a new run).
    Reinitialised,
}

/// `init` in config.json: which run a fine-tuned run started from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitRecord {
    /// The run folder as given to `--init`.
    pub run: String,
    /// SHA-256 of its model.safetensors when it was read (64 hex digits), and its size.
    pub model_sha256: String,
    pub model_bytes: u64,
    pub head: HeadInit,
}

/// A run to start from: its config.json and best weights, read and checked once.
#[derive(Clone, Debug)]
pub struct InitSource {
    pub dir: PathBuf,
    pub cfg: RunConfig,
    params: Vec<f32>,
    buffers: Vec<f32>,
    sha256: String,
    bytes: u64,
}

impl InitSource {
    /// Reads `run`'s config.json and model.safetensors (the checkpoint loader refuses a file
    /// of another model than config.json's, and non-finite weights).
    pub fn open(run: &Path) -> Result<Self> {
        let ctx = || format!("--init {}", run.display());
        let rd = RunDir::open(run).with_context(ctx)?;
        let cfg = rd.config().with_context(ctx)?;
        let path = rd.model_path();
        let raw = std::fs::read(&path)
            .with_context(|| format!("{}: cannot read", path.display()))
            .with_context(ctx)?;
        let (params, buffers) = rd.load_best(&cfg).with_context(ctx)?;
        if cfg.input_db_offset != DB_OFFSET || cfg.input_db_scale != DB_SCALE {
            bail!(
                "--init {}: its model input is (dB + {}) / {}; this version's is (dB + {DB_OFFSET}) / {DB_SCALE}",
                run.display(),
                cfg.input_db_offset,
                cfg.input_db_scale
            );
        }
        Ok(Self {
            dir: run.to_path_buf(),
            cfg,
            params,
            buffers,
            sha256: crate::sha256::sha256_hex(&raw),
            bytes: raw.len() as u64,
        })
    }

    /// Puts the run's architecture, input normalisation and sample rate into `opts`. A flag
    /// left at its default takes the run's value; a flag given with another value than the
    /// run's is refused, every such flag named in one message.
    pub fn adopt(&self, opts: &mut TrainOpts) -> Result<()> {
        let m = &self.cfg.model;
        let d = ModelConfig::default();
        let mut differ = Vec::new();
        let mut check = |flag: &str, given: Option<String>, run: String| {
            if let Some(g) = given.filter(|g| *g != run) {
                differ.push(format!("{flag} {g} (the run's: {run})"));
            }
        };
        let non_default = |v: usize, def: usize| (v != def).then(|| v.to_string());
        check(
            "--n-mels",
            non_default(opts.n_mels, d.n_mels),
            m.n_mels.to_string(),
        );
        check(
            "--kernel-size",
            non_default(opts.kernel_size, d.kernel),
            m.kernel.to_string(),
        );
        let join = |c: &[usize]| {
            c.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        check(
            "--channels",
            opts.channels.as_deref().map(join),
            join(&m.channels),
        );
        check(
            "--fc-size",
            opts.fc_size.map(|v| v.to_string()),
            m.fc.to_string(),
        );
        check(
            "--hidden-size",
            opts.hidden_size.map(|v| v.to_string()),
            m.hidden.to_string(),
        );
        let norm = |n: crate::model::InputNorm| format!("{n:?}").to_lowercase();
        check(
            "--norm",
            (!opts.norm.is_none()).then(|| norm(opts.norm)),
            norm(m.input_norm),
        );
        check(
            "--sample-rate",
            opts.sample_rate.map(|v| v.to_string()),
            self.cfg.sample_rate.to_string(),
        );
        if opts.no_batchnorm && m.batchnorm {
            differ.push("--no-batchnorm (the run's model has BatchNorm)".to_string());
        }
        if !differ.is_empty() {
            bail!(
                "--init {}: the run's model differs from what was asked: {}; leave these flags \
                 out to take the run's settings",
                self.dir.display(),
                differ.join(", ")
            );
        }
        opts.n_mels = m.n_mels;
        opts.kernel_size = m.kernel;
        opts.channels = Some(m.channels.to_vec());
        opts.fc_size = Some(m.fc);
        opts.hidden_size = Some(m.hidden);
        opts.no_batchnorm = !m.batchnorm;
        opts.norm = m.input_norm;
        opts.sample_rate = Some(self.cfg.sample_rate);
        Ok(())
    }

    /// The run's model for `classes` classes at `dropout` (dropout is a training setting,
    /// not part of the weights).
    pub fn model(&self, classes: usize, dropout: f32) -> ModelConfig {
        ModelConfig {
            classes,
            dropout,
            ..self.cfg.model.clone()
        }
    }

    /// Starting parameters and BatchNorm buffers for `model` (the run's with `labels`'
    /// classes): the run's tensors, with the head per [`HeadInit`] (afresh: from
    /// `init_params(model, seed)`, as a new run would draw it).
    pub fn weights(
        &self,
        model: &ModelConfig,
        labels: &[String],
        seed: u64,
    ) -> Result<(Vec<f32>, Vec<f32>, InitRecord)> {
        ensure!(
            labels.len() == model.classes,
            "{} labels for {} classes",
            labels.len(),
            model.classes
        );
        let old = ParamLayout::new(&self.cfg.model);
        let new = ParamLayout::new(model);
        let mut p = init_params(model, seed);
        for e in new.entries.iter() {
            if e.name.starts_with("classifier.") {
                continue;
            }
            let from = old.range(&e.name);
            ensure!(
                from.len() == e.len,
                "--init {}: tensor {} has {} values, this model's has {}",
                self.dir.display(),
                e.name,
                from.len(),
                e.len
            );
            p[e.offset..e.offset + e.len].copy_from_slice(&self.params[from]);
        }
        let run_labels = &self.cfg.labels;
        let mut a: Vec<&String> = run_labels.iter().collect();
        let mut b: Vec<&String> = labels.iter().collect();
        a.sort();
        b.sort();
        let head = if run_labels.as_slice() == labels {
            HeadInit::Kept
        } else if a == b {
            HeadInit::Permuted
        } else {
            HeadInit::Reinitialised
        };
        if head != HeadInit::Reinitialised {
            // row i of the new head is the run's row for labels[i]
            let width = new.get("classifier.weight").map_or(0, |e| e.shape[1]);
            let (ow, ob) = (old.range("classifier.weight"), old.range("classifier.bias"));
            let (nw, nb) = (new.range("classifier.weight"), new.range("classifier.bias"));
            for (i, l) in labels.iter().enumerate() {
                let j = run_labels
                    .iter()
                    .position(|r| r == l)
                    .context("label sets were compared above")?;
                p[nw.start + i * width..nw.start + (i + 1) * width].copy_from_slice(
                    &self.params[ow.start + j * width..ow.start + (j + 1) * width],
                );
                p[nb.start + i] = self.params[ob.start + j];
            }
        }
        let record = InitRecord {
            run: self.dir.display().to_string(),
            model_sha256: self.sha256.clone(),
            model_bytes: self.bytes,
            head,
        };
        Ok((p, self.buffers.clone(), record))
    }

    /// The line `train`/`cv` print about the start: which run, and what became of the head.
    pub fn describe(&self, record: &InitRecord, labels: &[String], seed: u64) -> String {
        let run = &self.cfg.labels;
        let head = match record.head {
            HeadInit::Kept => "classifier head kept (same labels)".to_string(),
            HeadInit::Permuted => format!(
                "classifier head rows reordered from the run's label order [{}] to [{}]",
                run.join(", "),
                labels.join(", ")
            ),
            HeadInit::Reinitialised => format!(
                "classifier head drawn afresh from seed {seed} (the run's labels [{}] differ from [{}])",
                run.join(", "),
                labels.join(", ")
            ),
        };
        format!(
            "starting from {} (model.safetensors sha256 {}…; architecture, input normalisation \
             and {} Hz sample rate taken from the run); {head}",
            self.dir.display(),
            &self.sha256[..12],
            self.cfg.sample_rate
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::MelConfig;

    fn source(labels: &[&str]) -> InitSource {
        let model = ModelConfig {
            n_mels: 16,
            kernel: 3,
            channels: [2, 3, 4],
            fc: 5,
            hidden: 3,
            classes: labels.len(),
            ..Default::default()
        };
        let n = ParamLayout::new(&model).total();
        let opts = crate::train::options::parse_opts(&["--n-mels", "16"]);
        InitSource {
            dir: PathBuf::from("runs/a"),
            cfg: RunConfig {
                ser_engine_version: "0".into(),
                labels: labels.iter().map(|s| s.to_string()).collect(),
                sample_rate: 16_000,
                mel: MelConfig {
                    n_mels: 16,
                    ..MelConfig::default()
                },
                model: model.clone(),
                fit: opts.fit(1),
                optim: opts.optim(&[], labels.len()),
                input_db_offset: DB_OFFSET,
                input_db_scale: DB_SCALE,
                data: vec!["demo".into()],
                label_map: None,
                device: "cpu".into(),
                val_split: None,
                val_data: None,
                recipe: None,
                init: None,
            },
            // distinct values, so every copied element can be traced to its source
            params: (0..n).map(|i| 1000.0 + i as f32).collect(),
            buffers: crate::model::init_buffers(&model),
            sha256: "0".repeat(64),
            bytes: 1,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn head_is_kept_reordered_or_drawn_afresh_and_the_rest_is_copied() {
        let src = source(&["anger", "joy", "sad"]);
        let layout = ParamLayout::new(&src.cfg.model);
        let (w, b) = (
            layout.range("classifier.weight"),
            layout.range("classifier.bias"),
        );
        let backbone = 0..w.start;
        // same labels, same order: every value is the run's
        let m = src.model(3, 0.1);
        let (p, buf, r) = src
            .weights(&m, &strings(&["anger", "joy", "sad"]), 5)
            .unwrap();
        assert_eq!(r.head, HeadInit::Kept);
        assert_eq!(p, src.params);
        assert_eq!(buf, src.buffers);
        // another order: rows follow their labels (new row 0 = "sad" = the run's row 2)
        let (p, _, r) = src
            .weights(&m, &strings(&["sad", "anger", "joy"]), 5)
            .unwrap();
        assert_eq!(r.head, HeadInit::Permuted);
        assert_eq!(p[backbone.clone()], src.params[backbone.clone()]);
        let width = w.len() / 3;
        let row = |v: &[f32], i: usize| v[w.start + i * width..w.start + (i + 1) * width].to_vec();
        assert_eq!(row(&p, 0), row(&src.params, 2));
        assert_eq!(row(&p, 1), row(&src.params, 0));
        assert_eq!(row(&p, 2), row(&src.params, 1));
        assert_eq!(p[b.start], src.params[b.start + 2]);
        assert_eq!(p[b.start + 1], src.params[b.start]);
        // other labels (and another count): the head a fresh run with this seed would draw
        let m4 = src.model(4, 0.1);
        let (p, _, r) = src
            .weights(&m4, &strings(&["a", "anger", "joy", "sad"]), 5)
            .unwrap();
        assert_eq!(r.head, HeadInit::Reinitialised);
        let fresh = init_params(&m4, 5);
        let l4 = ParamLayout::new(&m4);
        let h4 = l4.range("classifier.weight").start..l4.total();
        assert_eq!(p[h4.clone()], fresh[h4]);
        assert_eq!(p[backbone.clone()], src.params[backbone]);
        assert!(src
            .describe(&r, &strings(&["a"]), 5)
            .contains("drawn afresh from seed 5"));
    }

    #[test]
    fn differing_architecture_flags_are_named_and_defaults_take_the_runs() {
        let src = source(&["a", "b"]);
        let mut o =
            crate::train::options::parse_opts(&["--kernel-size", "5", "--hidden-size", "8"]);
        let e = format!("{:#}", src.adopt(&mut o).unwrap_err());
        assert!(e.contains("--kernel-size 5 (the run's: 3)"), "{e}");
        assert!(e.contains("--hidden-size 8 (the run's: 3)"), "{e}");
        assert!(!e.contains("--n-mels"), "{e}");
        // the run's own values may be repeated; the rest come from the run
        let mut o = crate::train::options::parse_opts(&["--kernel-size", "3"]);
        src.adopt(&mut o).unwrap();
        assert_eq!(o.model(2).unwrap(), src.model(2, o.dropout));
        assert_eq!(o.sample_rate, Some(16_000));
    }
}
