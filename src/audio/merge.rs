//! Several corpora as one (`--data a/ --data b/`), with a label map onto a common label set
//! (`--label-map FILE`; docs/guide.md, "Fine-tuning and several corpora").
//!
//! The label map is a text file, one entry a line, `#` starts a comment:
//!
//! ```text
//! angry -> anger          # every corpus
//! tess: ps -> surprise    # only the corpus whose folder (or manifest) is called `tess`
//! calm -> -               # leave these clips out (a warning says how many)
//! ```
//!
//! With a map, every label of every corpus must have an entry (`anger -> anger` keeps a
//! name): a label without one is an error naming the file, the corpus and the label. A
//! corpus's own entries win over the entries for every corpus. Without a map, the label sets
//! are merged by name (their union). Speakers are prefixed with their corpus's name
//! (`a/Female01`) when there are several corpora, so two corpora's `speaker 1` stay two
//! speakers in by-speaker folds.
//!
//! Layer: audio (below train, engine and cli). May use the shared modules; nothing else of
//! the crate.

use super::corpus::Corpus;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A parsed `--label-map` file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelMap {
    pub path: PathBuf,
    /// (corpus name or None for every corpus, label) → common label, or None to drop.
    entries: BTreeMap<(Option<String>, String), Option<String>>,
}

impl LabelMap {
    /// Reads and parses `path`; errors name the file and the line.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--label-map {}: cannot read", path.display()))?;
        Self::parse(path, &text)
    }

    /// Parses the text of a label map read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut entries = BTreeMap::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = || format!("--label-map {}:{}", path.display(), n + 1);
            let Some((lhs, to)) = line.split_once("->") else {
                bail!(
                    "{}: '{line}' is not `label -> common-label` (or `corpus: label -> \
                     common-label`, or `label -> -` to leave its clips out)",
                    at()
                );
            };
            let (corpus, from) = match lhs.split_once(':') {
                Some((c, f)) => (Some(c.trim().to_string()), f.trim()),
                None => (None, lhs.trim()),
            };
            let to = to.trim();
            if from.is_empty() || to.is_empty() || corpus.as_deref() == Some("") {
                bail!("{}: '{line}' has an empty corpus or label", at());
            }
            let to = (to != "-").then(|| to.to_string());
            let key = (corpus, from.to_string());
            if let Some(old) = entries.get(&key) {
                if *old != to {
                    bail!("{}: label '{from}' is mapped twice, differently", at());
                }
            }
            entries.insert(key, to);
        }
        if entries.is_empty() {
            bail!("--label-map {}: has no entries", path.display());
        }
        Ok(Self {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The common label of `label` in corpus `corpus`: `Some(Some(l))`, `Some(None)` when
    /// its clips are left out, `None` when the map has no entry.
    pub fn get(&self, corpus: &str, label: &str) -> Option<Option<String>> {
        self.entries
            .get(&(Some(corpus.to_string()), label.to_string()))
            .or_else(|| self.entries.get(&(None, label.to_string())))
            .cloned()
    }
}

/// The name a corpus goes by in speaker prefixes and label-map entries: its folder's (or
/// manifest's) last path component.
pub fn corpus_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string())
}

/// One corpus made of `corpora` (in order), labels mapped by `map` (or merged by name), and
/// the warnings to print (clips left out by `-` entries). Names must differ (two corpora in
/// folders of the same name are refused: their speakers could not be told apart).
pub fn merge_corpora(
    corpora: Vec<Corpus>,
    map: Option<&LabelMap>,
) -> Result<(Corpus, Vec<String>)> {
    let names: Vec<String> = corpora.iter().map(|c| corpus_name(&c.root)).collect();
    let mut seen = BTreeSet::new();
    for (n, c) in names.iter().zip(&corpora) {
        if !seen.insert(n) {
            bail!(
                "--data {}: another corpus is also called '{n}'; corpora are told apart by \
                 their folder's name (speakers are prefixed with it), so rename one",
                c.root.display()
            );
        }
    }
    let several = corpora.len() > 1;
    let mut warnings = Vec::new();
    let mut missing = Vec::new();
    let mut clips = Vec::new();
    let mut unreadable = Vec::new();
    let root = corpora
        .iter()
        .map(|c| c.root.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let format = corpora.first().context("no corpus given")?.format;
    for (name, c) in names.iter().zip(corpora) {
        let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
        for mut clip in c.clips {
            if let Some(m) = map {
                match m.get(name, &clip.label) {
                    Some(Some(to)) => clip.label = to,
                    Some(None) => {
                        *dropped.entry(clip.label.clone()).or_default() += 1;
                        continue;
                    }
                    None => {
                        let k = format!("'{}' of corpus {name}", clip.label);
                        if !missing.contains(&k) {
                            missing.push(k);
                        }
                        continue;
                    }
                }
            }
            if several {
                clip.speaker = clip.speaker.map(|s| format!("{name}/{s}"));
            }
            clips.push(clip);
        }
        for (label, n) in dropped {
            warnings.push(format!(
                "warning: {}: leaving out {n} clip(s) labelled '{label}' in corpus {name} \
                 (mapped to -)",
                map.map(|m| m.path.display().to_string())
                    .unwrap_or_default()
            ));
        }
        unreadable.extend(c.unreadable);
    }
    if let (Some(m), false) = (map, missing.is_empty()) {
        bail!(
            "--label-map {}: no entry for label {} (add `label -> common-label`, or \
             `label -> -` to leave its clips out)",
            m.path.display(),
            missing.join(", ")
        );
    }
    let labels: Vec<String> = clips
        .iter()
        .map(|c| c.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    Ok((
        Corpus {
            root: PathBuf::from(root),
            format,
            clips,
            labels,
            unreadable,
        },
        warnings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::corpus::{Clip, CorpusFormat};

    fn corpus(root: &str, clips: &[(&str, &str, Option<&str>)]) -> Corpus {
        let clips: Vec<Clip> = clips
            .iter()
            .map(|(p, l, s)| Clip {
                path: PathBuf::from(root).join(p),
                label: l.to_string(),
                speaker: s.map(|s| s.to_string()),
                duration_s: 1.0,
                sample_rate: 16_000,
            })
            .collect();
        let labels = clips
            .iter()
            .map(|c| c.label.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Corpus {
            root: PathBuf::from(root),
            format: CorpusFormat::Folders,
            clips,
            labels,
            unreadable: Vec::new(),
        }
    }

    #[test]
    fn union_by_name_prefixes_speakers_of_several_corpora() {
        let a = corpus(
            "x/a",
            &[("1.wav", "anger", Some("s1")), ("2.wav", "sad", Some("s2"))],
        );
        let b = corpus(
            "y/b",
            &[("1.wav", "anger", Some("s1")), ("2.wav", "joy", None)],
        );
        let (m, w) = merge_corpora(vec![a.clone(), b], None).unwrap();
        assert!(w.is_empty());
        assert_eq!(m.labels, vec!["anger", "joy", "sad"]);
        assert_eq!(m.root, PathBuf::from("x/a + y/b"));
        let spk: Vec<Option<&str>> = m.clips.iter().map(|c| c.speaker.as_deref()).collect();
        assert_eq!(spk, vec![Some("a/s1"), Some("a/s2"), Some("b/s1"), None]);
        // one corpus alone is left as it is
        let (one, _) = merge_corpora(vec![a.clone()], None).unwrap();
        assert_eq!(one.clips, a.clips);
        // two corpora of the same folder name are refused
        let e = merge_corpora(vec![a.clone(), corpus("z/a", &[])], None).unwrap_err();
        assert!(format!("{e:#}").contains("also called 'a'"), "{e:#}");
    }

    #[test]
    fn the_map_renames_drops_and_names_what_it_lacks() {
        let a = corpus("x/a", &[("1.wav", "angry", None), ("2.wav", "calm", None)]);
        let b = corpus("y/b", &[("1.wav", "ang", None), ("2.wav", "neutral", None)]);
        let map = LabelMap::parse(
            Path::new("m.txt"),
            "# common labels\nangry -> anger\nb: ang -> anger  # b spells it short\n\
             calm -> -\nneutral -> neutral\n",
        )
        .unwrap();
        let (m, w) = merge_corpora(vec![a.clone(), b.clone()], Some(&map)).unwrap();
        assert_eq!(m.labels, vec!["anger", "neutral"]);
        assert_eq!(m.clips.len(), 3);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("leaving out 1 clip(s) labelled 'calm' in corpus a"),
            "{}",
            w[0]
        );
        // the per-corpus entry is only for b
        let only_b = LabelMap::parse(Path::new("m.txt"), "b: angry -> anger\n").unwrap();
        let e = merge_corpora(vec![a], Some(&only_b)).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("m.txt: no entry for label 'angry' of corpus a"),
            "{e}"
        );
        assert!(e.contains("'calm' of corpus a"), "{e}");
        // syntax errors name the file and line
        for (text, want) in [
            ("angry anger\n", "m.txt:1: 'angry anger' is not"),
            ("# x\n -> anger\n", "m.txt:2: '-> anger' has an empty"),
            ("a -> b\na -> c\n", "m.txt:2: label 'a' is mapped twice"),
            ("# nothing\n", "has no entries"),
        ] {
            let e = format!(
                "{:#}",
                LabelMap::parse(Path::new("m.txt"), text).unwrap_err()
            );
            assert!(e.contains(want), "{e}");
        }
    }
}
