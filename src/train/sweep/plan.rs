//! The plan of a cv or sweep: what is run (corpus, folds and trials), the folds' splits, and
//! OUT/plan.json, written once and checked by every later process (under the plan lock).
//! Uses `grid.rs`, `train::split` and `train::run`'s atomic writes.

use super::grid::{Axis, Trial};
use crate::train::data::Dataset;
use crate::train::run::{atomic_write, TMP_PREFIX};
use crate::train::split::{complement, speaker_kfold, stratified_kfold, stratified_split};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which report a plan builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanKind {
    Cv,
    Sweep,
    Table3,
}

/// plan.json: everything that decides the results. Every shard writes the same plan; a shard
/// started with other settings on the same folder is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub kind: PlanKind,
    pub data: String,
    pub labels: Vec<String>,
    pub clips: usize,
    pub folds: usize,
    pub by_speaker: bool,
    pub val_split: f64,
    /// `I/K`: the folds are inside the training part of outer fold I of K (nested selection).
    pub within_fold: Option<String>,
    pub seed: u64,
    pub grid: Vec<Axis>,
    pub trials: Vec<Trial>,
}

impl Plan {
    pub fn units(&self) -> usize {
        self.trials.len() * self.folds
    }

    /// Folder of unit `u` (trial-major order).
    pub fn unit_dir(&self, out: &Path, u: usize) -> PathBuf {
        let t = &self.trials[u / self.folds];
        let fold = format!("fold-{}", u % self.folds + 1);
        if t.dir.is_empty() {
            out.join(fold)
        } else {
            out.join(&t.dir).join(fold)
        }
    }
}

/// Train, validation and test clips of one fold.
#[derive(Clone, Debug)]
pub struct FoldSplit {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// The folds: stratified (as the paper) or by speaker, over the whole corpus or, with
/// `within = Some((i, k))`, over the training part of outer fold i (0-based) of k, so that a
/// choice made on these folds never sees that outer test fold. In each fold `val_split` of
/// the non-test clips (per class) is held out for early stopping and the schedule.
pub fn plan_folds(
    data: &Dataset,
    folds: usize,
    by_speaker: bool,
    val_split: f64,
    seed: u64,
    within: Option<(usize, usize)>,
) -> Result<Vec<FoldSplit>> {
    let n = data.clips.len();
    let classes = data.labels.len();
    let kfold = |pool: &[usize], k: usize| -> Result<Vec<Vec<usize>>> {
        let local = if by_speaker {
            let spk: Vec<Option<String>> = pool
                .iter()
                .map(|&i| data.clips[i].speaker.clone())
                .collect();
            speaker_kfold(&spk, k)?
        } else {
            stratified_kfold(&data.labels_of(pool), &data.labels, k, seed)?
        };
        Ok(local
            .into_iter()
            .map(|f| f.into_iter().map(|j| pool[j]).collect())
            .collect())
    };
    let all: Vec<usize> = (0..n).collect();
    let pool = match within {
        None => all,
        Some((i, k)) => {
            let outer = kfold(&all, k).context("--within-fold: the outer folds")?;
            complement(n, &outer[i])
        }
    };
    let tests = kfold(&pool, folds)?;
    let mut in_pool = vec![false; n];
    for &i in &pool {
        in_pool[i] = true;
    }
    Ok(tests
        .into_iter()
        .enumerate()
        .map(|(k, test)| {
            let rest: Vec<usize> = complement(n, &test)
                .into_iter()
                .filter(|&i| in_pool[i])
                .collect();
            let rest_labels = data.labels_of(&rest);
            let (tr, va) = stratified_split(&rest_labels, classes, val_split, seed + k as u64);
            FoldSplit {
                train: tr.iter().map(|&i| rest[i]).collect(),
                val: va.iter().map(|&i| rest[i]).collect(),
                test,
            }
        })
        .collect())
}

/// The lock file of a cv/sweep output folder, held only while plan.json is checked or written
/// (each unit's run folder has its own lock, held while the unit trains).
pub const PLAN_LOCK: &str = "plan.lock";

/// Writes OUT/plan.json, or checks that the one there is the same plan. Under the folder's
/// plan lock, so that of two processes starting at once on an empty folder with different
/// settings the second is refused instead of both writing a plan. A folder that exists, is
/// not empty and holds no plan.json (a train run, an older cv report, anything else) is never
/// written into.
pub fn write_or_check_plan(out: &Path, plan: &Plan) -> Result<()> {
    let p = out.join("plan.json");
    // Checked before the lock too, so a foreign folder does not even get a lock file.
    if !p.is_file() {
        refuse_foreign(out)?;
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the folder", out.display()))?;
    let _lock = crate::train::run::lock_file_wait(&out.join(PLAN_LOCK))?;
    if p.is_file() {
        let old = read_plan(out)?;
        if &old != plan {
            bail!(
                "{}: this folder holds a {:?} run with other settings (corpus, folds, seed or \
                 training options differ); use another --out, or the same flags to resume",
                p.display(),
                old.kind
            );
        }
        return Ok(());
    }
    refuse_foreign(out)?;
    atomic_write(&p, serde_json::to_string_pretty(plan)?.as_bytes())
}

/// An error if `out` exists and holds anything but the plan lock and temporary files (called
/// when it has no plan.json).
pub(super) fn refuse_foreign(out: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name != PLAN_LOCK && !name.starts_with(TMP_PREFIX) {
            bail!(
                "{}: exists, is not empty and is not a cv or sweep output folder (no plan.json; \
                 it holds {}); refusing to write into it, choose another --out",
                out.display(),
                e.path().display()
            );
        }
    }
    Ok(())
}

pub fn read_plan(out: &Path) -> Result<Plan> {
    let p = out.join("plan.json");
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "{}: cannot read (not a cv/sweep output folder, or no shard has started)",
            p.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid plan", p.display()))
}
