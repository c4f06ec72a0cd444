//! Train/validation splits and cross-validation folds: stratified by class (as the paper), or
//! speaker-independent. All deterministic in the seed.
//!
//! Layer: train (beside engine, below cli). May use `cpu`, `features`, `model`, `audio`,
//! `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`); never `cli`, and not
//! `engine` (the device backend is chosen above it).

use crate::rng::{Purpose, Stream};
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// Fisher–Yates shuffle driven by Philox, so a seed gives the same order everywhere.
pub fn shuffle<T>(items: &mut [T], seed: u64, purpose: Purpose, step: u32) {
    let s = Stream::new(seed, purpose, step);
    for i in (1..items.len()).rev() {
        let j = s.below(i as u64, (i + 1) as u32) as usize;
        items.swap(i, j);
    }
}

/// Indices of each class, in input order.
fn by_class(labels: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        out[l].push(i);
    }
    out
}

/// Stratified hold-out split: from every class of n clips, round(n * fraction) go to
/// validation (at least one when the class has two or more, never all of them).
/// Returns (train, validation) index lists, each sorted.
pub fn stratified_split(
    labels: &[usize],
    classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (c, mut idx) in by_class(labels, classes).into_iter().enumerate() {
        shuffle(&mut idx, seed, Purpose::Split, c as u32);
        let n = idx.len();
        let mut k = (n as f64 * fraction).round() as usize;
        if n >= 2 {
            k = k.clamp(1, n - 1);
        } else {
            k = 0;
        }
        val.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// Stratified k-fold: returns, for each fold, the sorted test indices. Each class is shuffled
/// and dealt round-robin, continuing where the previous class stopped so fold sizes stay
/// within one of each other.
pub fn stratified_kfold(
    labels: &[usize],
    class_names: &[String],
    k: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    if k < 2 {
        bail!("cross-validation needs at least 2 folds, got {k}");
    }
    let groups = by_class(labels, class_names.len());
    for (c, g) in groups.iter().enumerate() {
        if !g.is_empty() && g.len() < k {
            bail!(
                "class '{}' has {} clips, fewer than the {k} folds: every fold needs one \
                 (use fewer --folds)",
                class_names[c],
                g.len()
            );
        }
    }
    let mut folds = vec![Vec::new(); k];
    let mut next = 0usize;
    for (c, mut idx) in groups.into_iter().enumerate() {
        shuffle(&mut idx, seed, Purpose::Split, 1000 + c as u32);
        for i in idx {
            folds[next % k].push(i);
            next += 1;
        }
    }
    for f in &mut folds {
        f.sort_unstable();
    }
    Ok(folds)
}

/// Speaker-independent folds: every speaker's clips fall in exactly one fold. Speakers are
/// assigned largest first to the fold with the fewest clips so far (ties: lowest fold).
pub fn speaker_kfold(speakers: &[Option<String>], k: usize) -> Result<Vec<Vec<usize>>> {
    if k < 2 {
        bail!("cross-validation needs at least 2 folds, got {k}");
    }
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in speakers.iter().enumerate() {
        match s {
            Some(s) => groups.entry(s.as_str()).or_default().push(i),
            None => bail!(
                "--by-speaker needs a speaker for every clip, and clip {i} has none \
                 (use a corpus format that names speakers, a CSV with a speaker column, or \
                 --label-regex with a (?P<speaker>...) group)"
            ),
        }
    }
    if groups.len() < k {
        bail!(
            "--by-speaker with {k} folds needs at least {k} speakers; the corpus has {}",
            groups.len()
        );
    }
    let mut order: Vec<(&str, Vec<usize>)> = groups.into_iter().collect();
    order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut folds: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (_, idx) in order {
        let f = (0..k).min_by_key(|&f| (folds[f].len(), f)).unwrap();
        folds[f].extend(idx);
    }
    for f in &mut folds {
        f.sort_unstable();
    }
    Ok(folds)
}

/// Everything not in `test`, sorted.
pub fn complement(n: usize, test: &[usize]) -> Vec<usize> {
    let mut in_test = vec![false; n];
    for &i in test {
        in_test[i] = true;
    }
    (0..n).filter(|&i| !in_test[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn kfold_partitions_and_stratifies() {
        // 3 classes of 10, 7 and 13 clips.
        let labels: Vec<usize> = (0..30)
            .map(|i| {
                if i < 10 {
                    0
                } else if i < 17 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let folds = stratified_kfold(&labels, &names(3), 5, 1).unwrap();
        let mut all: Vec<usize> = folds.concat();
        all.sort_unstable();
        assert_eq!(all, (0..30).collect::<Vec<_>>());
        for f in &folds {
            assert!(
                f.len() == 6,
                "fold sizes {:?}",
                folds.iter().map(Vec::len).collect::<Vec<_>>()
            );
            for c in 0..3 {
                let n = f.iter().filter(|&&i| labels[i] == c).count();
                let total = labels.iter().filter(|&&l| l == c).count();
                // Each class spreads over folds within one clip of total / k.
                assert!(n >= total / 5 && n <= total.div_ceil(5), "class {c}: {n}");
            }
        }
        assert_ne!(folds, stratified_kfold(&labels, &names(3), 5, 2).unwrap());
    }

    #[test]
    fn kfold_rejects_small_class() {
        let labels = vec![0, 0, 0, 0, 0, 1, 1];
        let e = stratified_kfold(&labels, &names(2), 5, 0).unwrap_err();
        assert!(e.to_string().contains("'c1' has 2 clips"), "{e}");
    }

    #[test]
    fn split_keeps_each_class_on_both_sides() {
        let labels = vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2];
        let (tr, va) = stratified_split(&labels, 3, 0.2, 3);
        assert_eq!(tr.len() + va.len(), labels.len());
        assert_eq!(va.iter().filter(|&&i| labels[i] == 0).count(), 2);
        assert_eq!(va.iter().filter(|&&i| labels[i] == 1).count(), 1);
        assert_eq!(va.iter().filter(|&&i| labels[i] == 2).count(), 0);
    }

    #[test]
    fn speaker_folds_never_share_a_speaker() {
        let spk: Vec<Option<String>> = (0..40).map(|i| Some(format!("s{}", i % 7))).collect();
        let folds = speaker_kfold(&spk, 3).unwrap();
        for (a, fa) in folds.iter().enumerate() {
            for fb in folds.iter().skip(a + 1) {
                for &i in fa {
                    assert!(fb.iter().all(|&j| spk[i] != spk[j]));
                }
            }
        }
        assert_eq!(folds.iter().map(Vec::len).sum::<usize>(), 40);
        assert!(speaker_kfold(&spk, 8).is_err());
        let none = vec![Some("a".to_string()), None];
        assert!(speaker_kfold(&none, 2)
            .unwrap_err()
            .to_string()
            .contains("clip 1"));
    }
}
