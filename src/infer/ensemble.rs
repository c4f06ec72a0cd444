//! Several runs used as one model (an ensemble): which runs a `--model` names, and whether
//! they can share one input. Members must agree on the sample rate and the front end (every
//! log-Mel setting and the per-utterance normalisation), so one clip's features feed them all,
//! and on the set of classes (in any order: each member's outputs are permuted into the first
//! member's order by label name). Their probabilities are averaged (`Classifier`, the ONNX
//! export).
//!
//! Layer: infer (using a trained model; below cli). May use `train` (run folders), `backend`,
//! `cpu`, `features`, `model`, `audio`, `device` and the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); never `cli`.

use crate::train::run::RunConfig;
use crate::train::sweep::{read_plan, PlanKind};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Most runs in one ensemble (`--model` given this often, cv folds included).
pub const MAX_MEMBERS: usize = 32;

/// The run folders that `--model` values name: a run folder (or its model.safetensors) as
/// itself, a cv folder as every fold's run in fold order. A sweep folder is refused: its runs
/// are different settings, and which of them belong together is the user's choice.
pub fn member_dirs(models: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for m in models {
        if m.join("plan.json").is_file() {
            let plan = read_plan(m)?;
            if plan.kind != PlanKind::Cv {
                bail!(
                    "--model {}: is a sweep folder; its runs were trained with different \
                     settings, so name the ones to average with --model each (e.g. --model {})",
                    m.display(),
                    plan.unit_dir(m, 0).display()
                );
            }
            for u in 0..plan.units() {
                let d = plan.unit_dir(m, u);
                if !d.join("model.safetensors").is_file() {
                    bail!(
                        "--model {}: fold run {} has no model.safetensors yet (run or finish \
                         the cv first)",
                        m.display(),
                        d.display()
                    );
                }
                out.push(d);
            }
        } else {
            out.push(m.clone());
        }
    }
    if out.is_empty() {
        bail!("--model: give at least one run folder");
    }
    if out.len() > MAX_MEMBERS {
        bail!(
            "--model: {} runs; an ensemble has 1 to {MAX_MEMBERS}",
            out.len()
        );
    }
    for (i, a) in out.iter().enumerate() {
        let ca = std::fs::canonicalize(a).unwrap_or_else(|_| a.clone());
        for b in &out[..i] {
            let cb = std::fs::canonicalize(b).unwrap_or_else(|_| b.clone());
            if ca == cb {
                bail!(
                    "--model {}: named twice (as {}); each run counts once in an ensemble",
                    a.display(),
                    b.display()
                );
            }
        }
    }
    Ok(out)
}

/// Checks that every member can share the first one's input and classes; for each member, the
/// index of each of the first member's classes in its own output (`perm[c]`).
pub fn compatible(members: &[(&Path, &RunConfig)]) -> Result<Vec<Vec<usize>>> {
    let Some(&(first_dir, first)) = members.first() else {
        bail!("--model: give at least one run folder");
    };
    let mut perms = Vec::with_capacity(members.len());
    for &(dir, cfg) in members {
        let differ = |what: &str, mine: String, theirs: String| -> Result<()> {
            if mine != theirs {
                bail!(
                    "--model {}: {what} is {mine} where {} has {theirs}; an ensemble's runs \
                     must share the sample rate, the front end (log-Mel settings and --norm) \
                     and the classes",
                    dir.display(),
                    first_dir.display()
                );
            }
            Ok(())
        };
        differ(
            "the sample rate",
            format!("{} Hz", cfg.sample_rate),
            format!("{} Hz", first.sample_rate),
        )?;
        let (m, f) = (&cfg.mel, &first.mel);
        differ("n_mels", m.n_mels.to_string(), f.n_mels.to_string())?;
        differ("n_fft", m.n_fft.to_string(), f.n_fft.to_string())?;
        differ("hop", m.hop.to_string(), f.hop.to_string())?;
        differ("fmin", m.fmin.to_string(), f.fmin.to_string())?;
        differ("fmax", m.fmax.to_string(), f.fmax.to_string())?;
        differ("top_db", m.top_db.to_string(), f.top_db.to_string())?;
        differ(
            "the input normalisation (--norm)",
            format!("{:?}", cfg.model.input_norm).to_lowercase(),
            format!("{:?}", first.model.input_norm).to_lowercase(),
        )?;
        let mut sorted = cfg.labels.clone();
        sorted.sort();
        let mut want = first.labels.clone();
        want.sort();
        differ("the classes", sorted.join(", "), want.join(", "))?;
        perms.push(
            first
                .labels
                .iter()
                .map(|l| {
                    cfg.labels
                        .iter()
                        .position(|x| x == l)
                        .expect("same label sets")
                })
                .collect(),
        );
    }
    Ok(perms)
}

/// Start frames of the crops that test-time averaging takes of a clip of `frames` frames,
/// `crop` frames each: one view of the whole clip when it fits; else its middle crop when
/// `n == 1`, and otherwise `n` crops evenly spaced from the first frame to the last
/// (start k·spare/(n−1), rounded down, spare = frames − crop), so a clip only slightly longer
/// than the crop repeats some starts.
pub fn crop_starts(frames: usize, crop: usize, n: usize) -> Vec<usize> {
    let spare = frames.saturating_sub(crop);
    if spare == 0 {
        vec![0]
    } else if n <= 1 {
        vec![spare / 2]
    } else {
        (0..n).map(|k| k * spare / (n - 1)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_cover_the_clip_from_start_to_end() {
        assert_eq!(crop_starts(50, 100, 4), vec![0]);
        assert_eq!(crop_starts(100, 100, 4), vec![0]);
        // spare 30: the middle for one view, 0 / 10 / 20 / 30 for four
        assert_eq!(crop_starts(130, 100, 1), vec![15]);
        assert_eq!(crop_starts(130, 100, 4), vec![0, 10, 20, 30]);
        assert_eq!(crop_starts(101, 100, 3), vec![0, 0, 1]);
    }
}
