//! Labelled corpora: finding the audio files of a corpus, their emotion labels and speakers,
//! from the corpus's own layout (no conversion step needed).
//!
//! Layouts ([`CorpusFormat`]):
//! - `folders`: one folder per class directly under the root (audio found recursively inside
//!   each); no speakers. Files lying directly in the root are reported, not used.
//! - `csv`: a manifest `path,label[,speaker]` with a header row naming those columns; paths
//!   relative to the manifest's folder (absolute paths are kept).
//! - `ksu`: KSUEmotions' LDC layout `.../data/SPEECH/Phase_{1,2}/E0x/D05E0xPyyySzzTww.flac`
//!   (.flac or .wav): E00 neutral, E01 happiness, E02 sadness, E03 surprise, E04 questioning,
//!   E05 anger; speaker `Pyyy`. Only the file name is used, so the root may be any folder of
//!   that path.
//! - `kedas`: no public layout; read as `folders`, or as `regex` when `--label-regex` is given.
//! - `regex`: a regex with a named group `label` (and optionally `speaker`) searched in each
//!   file's path relative to the root, with `/` separators.
//! - `emodb` `03a01Fa.wav`: speaker = first 2 digits, emotion letter W anger, L boredom,
//!   E disgust, A fear, F happiness, T sadness, N neutral.
//! - `ravdess` `03-01-05-01-02-01-12.wav`: 3rd field emotion (01 neutral, 02 calm, 03
//!   happiness, 04 sadness, 05 anger, 06 fear, 07 disgust, 08 surprise), 7th field = speaker.
//! - `cremad` `1001_DFA_ANG_XX.wav`: ANG DIS FEA HAP NEU SAD, speaker = first field.
//! - `savee` `DC_a01.wav`, or `DC/a01.wav` (speaker = folder): a anger, d disgust, f fear,
//!   h happiness, n neutral, sa sadness, su surprise.
//! - `tess` `OAF_back_angry.wav`: speaker OAF/YAF, emotion = last token (angry, disgust,
//!   fear, happy, neutral, sad, ps = pleasant surprise -> surprise), case-insensitive.
//! - `baved`: the published naming `speaker-gender-age-word-level-record.wav`
//!   (e.g. `12-m-25-3-2-1.wav`), gender m/f, word 0..6, level 0 low, 1 neutral, 2 high;
//!   labels `low`, `neutral`, `high`; speaker = first field. (The emotion level is the FIFTH
//!   field; BAVED's README: "speakerid - speakergender - speakerage - spokenword -
//!   spokenemotion - recordid".)
//! - `eyase`: speaker = the FOLDER (Female01 ..), emotion from `<fm|ml>NN_<ang|hap|neu|sad>
//!   (K).wav` -> anger, happiness, neutral, sadness.
//!
//! Labels use one vocabulary across corpora: anger, boredom, calm, disgust, fear, happiness,
//! neutral, questioning, sadness, surprise (BAVED: low, neutral, high).
//!
//! `auto` picks: a `.csv` file -> csv; `--label-regex` -> regex; a naming convention that at
//! least 90% of the audio files follow (and no other convention does as well) -> that one;
//! otherwise class folders under the root -> folders. Otherwise it is an error asking for
//! `--format`.
//!
//! Audio files are `.wav .flac .mp3 .ogg` (any case); hidden files and folders (leading `.`,
//! e.g. macOS `._x.wav`) are skipped; symlinks are followed. Every file's header is probed (in
//! parallel); files that cannot be probed, or whose name does not give a label, are listed in
//! `unreadable` with the reason and left out of `clips`. Clips are sorted by path.
//!
//! Layer: audio (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

use super::decode::probe_audio;
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// One labelled audio file.
#[derive(Clone, Debug, PartialEq)]
pub struct Clip {
    pub path: PathBuf,
    pub label: String,
    pub speaker: Option<String>,
    pub duration_s: f64,
    pub sample_rate: u32,
}

/// A corpus: its clips (sorted by path), the sorted unique labels, and the files left out.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub root: PathBuf,
    /// The layout used (never `Auto`: auto-detection fills in what it found).
    pub format: CorpusFormat,
    pub clips: Vec<Clip>,
    /// Sorted unique labels; a clip's class index is its label's position here.
    pub labels: Vec<String>,
    /// Files whose header could not be read or whose label could not be determined, with the
    /// reason; left out of `clips`.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl Corpus {
    /// Class index of `label`.
    pub fn label_index(&self, label: &str) -> Option<usize> {
        self.labels.binary_search_by(|l| l.as_str().cmp(label)).ok()
    }

    /// Clips per class, in `labels` order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.labels.len()];
        for c in &self.clips {
            if let Some(i) = self.label_index(&c.label) {
                counts[i] += 1;
            }
        }
        counts
    }

    /// Sorted unique speakers (clips without a speaker are not counted).
    pub fn speakers(&self) -> Vec<String> {
        self.clips
            .iter()
            .filter_map(|c| c.speaker.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Total duration of the clips in seconds.
    pub fn total_duration_s(&self) -> f64 {
        self.clips.iter().map(|c| c.duration_s).sum()
    }
}

/// Corpus layout (see the module documentation).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CorpusFormat {
    /// detect from the path and the file names
    Auto,
    /// one folder per class
    Folders,
    /// a CSV manifest: `path,label[,speaker]`
    Csv,
    /// KSUEmotions (LDC layout, D05E0xPyyySzzTww)
    Ksu,
    /// KEDAS: class folders, or --label-regex
    Kedas,
    /// --label-regex with named groups label (and speaker)
    Regex,
    /// Berlin EmoDB (03a01Fa.wav)
    Emodb,
    /// RAVDESS (03-01-05-01-02-01-12.wav)
    Ravdess,
    /// CREMA-D (1001_DFA_ANG_XX.wav)
    Cremad,
    /// SAVEE (DC_a01.wav or DC/a01.wav)
    Savee,
    /// TESS (OAF_back_angry.wav)
    Tess,
    /// BAVED (speaker-gender-age-word-level-record.wav)
    Baved,
    /// EYASE (speaker folder / fm01_ang (1).wav)
    Eyase,
}

/// How to read a corpus: also the `--format` and `--label-regex` flags of every command that
/// reads one (`train`, `cv`, `sweep`, `eval`, `info`), flattened into each.
#[derive(Clone, Debug, PartialEq, clap::Args, serde::Serialize)]
pub struct CorpusOptions {
    /// Corpus layout.
    #[arg(long, value_enum, default_value_t = CorpusFormat::Auto)]
    pub format: CorpusFormat,
    /// Regex with named groups `label` (and optionally `speaker`) over paths relative to --data
    /// (format `regex`, `kedas` or `auto`).
    #[arg(long)]
    pub label_regex: Option<String>,
}

/// File extensions read as audio (compared case-insensitively).
pub const AUDIO_EXTENSIONS: &[&str] = &["wav", "flac", "mp3", "ogg"];

/// The naming conventions auto-detection tries, in this order.
const NAMED: &[CorpusFormat] = &[
    CorpusFormat::Ksu,
    CorpusFormat::Eyase,
    CorpusFormat::Ravdess,
    CorpusFormat::Cremad,
    CorpusFormat::Emodb,
    CorpusFormat::Tess,
    CorpusFormat::Savee,
    CorpusFormat::Baved,
];

/// Share of the audio files a naming convention must explain for auto-detection to pick it
/// (a few stray files, e.g. a test recording, do not hide a known corpus).
const AUTO_SHARE: f64 = 0.9;

/// Reads the corpus at `path` (a folder, or a `.csv` manifest).
pub fn load_corpus(path: &Path, opts: &CorpusOptions) -> Result<Corpus> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{}: no such file or folder", path.display()),
        _ => anyhow!("{}: cannot read: {e}", path.display()),
    })?;
    let regex = match &opts.label_regex {
        Some(r) => {
            if !matches!(
                opts.format,
                CorpusFormat::Auto | CorpusFormat::Regex | CorpusFormat::Kedas
            ) {
                bail!(
                    "--label-regex is used with --format regex, kedas or auto, not {:?}",
                    opts.format
                );
            }
            Some(compile_label_regex(r)?)
        }
        None => None,
    };
    let is_csv = meta.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    match opts.format {
        CorpusFormat::Csv => {
            if !meta.is_file() {
                bail!(
                    "{}: --format csv needs the manifest file, not a folder",
                    path.display()
                );
            }
            return load_csv(path);
        }
        CorpusFormat::Auto if is_csv => return load_csv(path),
        _ => {}
    }
    if meta.is_file() {
        bail!(
            "{}: is a file; a corpus is a folder of audio files or a .csv manifest",
            path.display()
        );
    }
    if opts.format == CorpusFormat::Regex && regex.is_none() {
        bail!("--format regex needs --label-regex");
    }

    let (files, mut unreadable) = find_audio(path);
    if files.is_empty() {
        bail!(
            "{}: no audio files found (looked for {} files, recursively, skipping hidden ones)",
            path.display(),
            AUDIO_EXTENSIONS
                .iter()
                .map(|e| format!(".{e}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let rels: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(path).unwrap_or(f).to_path_buf())
        .collect();

    let format = match (opts.format, &regex) {
        (CorpusFormat::Auto | CorpusFormat::Kedas | CorpusFormat::Regex, Some(_)) => {
            CorpusFormat::Regex
        }
        (CorpusFormat::Auto, None) => detect(path, &rels)?,
        (f, _) => f,
    };
    // Kedas without a regex is read as class folders but reported as kedas.
    let mut labelled = Vec::with_capacity(files.len());
    for (file, rel) in files.iter().zip(&rels) {
        let parsed = match format {
            CorpusFormat::Regex => parse_regex(regex.as_ref().expect("checked"), rel),
            CorpusFormat::Folders | CorpusFormat::Kedas => parse_folders(rel),
            f => parse_named(f, rel).ok_or_else(|| {
                format!(
                    "the file name does not follow the {} naming convention",
                    format_name(f)
                )
            }),
        };
        match parsed {
            Ok((label, speaker)) => labelled.push((file.clone(), label, speaker)),
            Err(why) => unreadable.push((file.clone(), why)),
        }
    }
    if labelled.is_empty() && NAMED.contains(&format) {
        bail!(
            "{}: none of the {} audio file names follow the {} naming convention, e.g. {} \
             (check --format, or use --format folders / --label-regex)",
            path.display(),
            rels.len(),
            format_name(format),
            rels[0].display()
        );
    }
    let mut corpus = probe_all(path, format, labelled, unreadable);
    corpus.unreadable.sort();
    Ok(corpus)
}

fn format_name(f: CorpusFormat) -> String {
    format!("{f:?}").to_lowercase()
}

fn compile_label_regex(r: &str) -> Result<Regex> {
    let re = Regex::new(r).with_context(|| format!("--label-regex '{r}' is not a valid regex"))?;
    if !re.capture_names().any(|n| n == Some("label")) {
        bail!(
            "--label-regex '{r}' has no named group 'label' (write it as (?P<label>...)); \
             a group 'speaker' is optional"
        );
    }
    Ok(re)
}

/// Audio files under `root` (sorted), and walk errors as unreadable entries.
fn find_audio(root: &Path) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        match entry {
            Ok(e) => {
                if e.file_type().is_file() && is_audio(e.path()) {
                    files.push(e.into_path());
                }
            }
            Err(err) => {
                let p = err.path().unwrap_or(root).to_path_buf();
                errors.push((p, format!("cannot list: {err}")));
            }
        }
    }
    files.sort();
    (files, errors)
}

fn is_audio(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO_EXTENSIONS.iter().any(|a| e.eq_ignore_ascii_case(a)))
}

/// Picks a naming convention most files follow, else class folders.
fn detect(root: &Path, rels: &[PathBuf]) -> Result<CorpusFormat> {
    let n = rels.len();
    let mut scores: Vec<(CorpusFormat, usize)> = NAMED
        .iter()
        .map(|&f| {
            (
                f,
                rels.iter().filter(|r| parse_named(f, r).is_some()).count(),
            )
        })
        .filter(|&(_, k)| k as f64 >= AUTO_SHARE * n as f64)
        .collect();
    scores.sort_by_key(|&(_, k)| std::cmp::Reverse(k));
    match scores.as_slice() {
        [(f, _)] => return Ok(*f),
        [(f, a), (_, b), ..] if a > b => return Ok(*f),
        [(f, _), (g, _), ..] => bail!(
            "{}: the file names fit both the {} and {} conventions; choose with --format",
            root.display(),
            format_name(*f),
            format_name(*g)
        ),
        [] => {}
    }
    if rels.iter().any(|r| r.components().count() >= 2) {
        return Ok(CorpusFormat::Folders);
    }
    bail!(
        "{}: cannot tell the corpus layout: the file names follow none of the known conventions \
         (ksu, eyase, ravdess, cremad, emodb, tess, savee, baved) and there are no class \
         folders; choose with --format or give --label-regex",
        root.display()
    )
}

type Parsed = std::result::Result<(String, Option<String>), String>;

fn parse_folders(rel: &Path) -> Parsed {
    let mut comps = rel.components();
    let first = comps
        .next()
        .map(|c| c.as_os_str().to_string_lossy().to_string());
    match (first, comps.next()) {
        (Some(class), Some(_)) => Ok((class, None)),
        _ => Err("not inside a class folder (class folders go directly under the root)".into()),
    }
}

/// `rel` with `/` separators, as the regex sees it.
fn slash_path(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn parse_regex(re: &Regex, rel: &Path) -> Parsed {
    let s = slash_path(rel);
    let caps = re
        .captures(&s)
        .ok_or_else(|| format!("'{s}' does not match --label-regex"))?;
    let label = caps
        .name("label")
        .map(|m| m.as_str().to_string())
        .filter(|l| !l.is_empty())
        .ok_or_else(|| format!("'{s}': --label-regex matched an empty label"))?;
    let speaker = caps
        .name("speaker")
        .map(|m| m.as_str().to_string())
        .filter(|s| !s.is_empty());
    Ok((label, speaker))
}

fn stem(rel: &Path) -> Option<&str> {
    rel.file_stem().and_then(|s| s.to_str())
}

fn parent_name(rel: &Path) -> Option<String> {
    rel.parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
}

macro_rules! re {
    ($name:ident, $pat:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| Regex::new($pat).expect("constant regex"));
    };
}

re!(KSU, r"^D\d{2}E0([0-5])(P\d{3})S\d{2}T\d{2}$");
re!(EYASE, r"^(?:fm|ml)\d{2}_(ang|hap|neu|sad) ?\(\d+\)$");
re!(RAVDESS, r"^\d{2}-\d{2}-(0[1-8])-\d{2}-\d{2}-\d{2}-(\d{2})$");
re!(
    CREMAD,
    r"^(\d{4})_[A-Z]{3}_(ANG|DIS|FEA|HAP|NEU|SAD)_[A-Z]{2}$"
);
re!(EMODB, r"^(\d{2})[a-z]\d{2}([WLEAFTN])[a-z]{1,2}$");
re!(
    TESS,
    r"(?i)^(OAF|YAF)_.+_(angry|disgust|fear|happy|neutral|sad|ps|pleasant_surprised?)$"
);
re!(SAVEE_NAME, r"^([A-Z]{2})_(sa|su|a|d|f|h|n)\d{2}$");
re!(SAVEE_FOLDER, r"^(sa|su|a|d|f|h|n)\d{2}$");
re!(BAVED, r"^(\d+)-[mfMF]-\d+-[0-6]-([0-2])-\d+$");

/// (label, speaker) from a file's path under a known naming convention; `None` when the name
/// does not follow it.
pub fn parse_named(format: CorpusFormat, rel: &Path) -> Option<(String, Option<String>)> {
    let s = stem(rel)?;
    let owned = |l: &str, sp: Option<String>| Some((l.to_string(), sp));
    match format {
        CorpusFormat::Ksu => {
            let c = KSU.captures(s)?;
            let label = match &c[1] {
                "0" => "neutral",
                "1" => "happiness",
                "2" => "sadness",
                "3" => "surprise",
                "4" => "questioning",
                _ => "anger",
            };
            owned(label, Some(c[2].to_string()))
        }
        CorpusFormat::Eyase => {
            let c = EYASE.captures(s)?;
            let speaker = parent_name(rel)?;
            owned(short_emotion(&c[1])?, Some(speaker))
        }
        CorpusFormat::Ravdess => {
            let c = RAVDESS.captures(s)?;
            let label = match &c[1] {
                "01" => "neutral",
                "02" => "calm",
                "03" => "happiness",
                "04" => "sadness",
                "05" => "anger",
                "06" => "fear",
                "07" => "disgust",
                _ => "surprise",
            };
            owned(label, Some(c[2].to_string()))
        }
        CorpusFormat::Cremad => {
            let c = CREMAD.captures(s)?;
            owned(short_emotion(&c[2].to_lowercase())?, Some(c[1].to_string()))
        }
        CorpusFormat::Emodb => {
            let c = EMODB.captures(s)?;
            let label = match &c[2] {
                "W" => "anger",
                "L" => "boredom",
                "E" => "disgust",
                "A" => "fear",
                "F" => "happiness",
                "T" => "sadness",
                _ => "neutral",
            };
            owned(label, Some(c[1].to_string()))
        }
        CorpusFormat::Tess => {
            let c = TESS.captures(s)?;
            let label = match c[2].to_lowercase().as_str() {
                "angry" => "anger",
                "disgust" => "disgust",
                "fear" => "fear",
                "happy" => "happiness",
                "neutral" => "neutral",
                "sad" => "sadness",
                _ => "surprise",
            };
            owned(label, Some(c[1].to_uppercase()))
        }
        CorpusFormat::Savee => {
            let (speaker, code) = if let Some(c) = SAVEE_NAME.captures(s) {
                (c[1].to_string(), c[2].to_string())
            } else {
                let c = SAVEE_FOLDER.captures(s)?;
                (parent_name(rel)?, c[1].to_string())
            };
            let label = match code.as_str() {
                "a" => "anger",
                "d" => "disgust",
                "f" => "fear",
                "h" => "happiness",
                "n" => "neutral",
                "sa" => "sadness",
                _ => "surprise",
            };
            owned(label, Some(speaker))
        }
        CorpusFormat::Baved => {
            let c = BAVED.captures(s)?;
            let label = match &c[2] {
                "0" => "low",
                "1" => "neutral",
                _ => "high",
            };
            owned(label, Some(c[1].to_string()))
        }
        _ => None,
    }
}

/// Three-letter emotion codes (EYASE, CREMA-D) to the shared label words.
fn short_emotion(code: &str) -> Option<&'static str> {
    Some(match code {
        "ang" => "anger",
        "hap" => "happiness",
        "neu" => "neutral",
        "sad" => "sadness",
        "dis" => "disgust",
        "fea" => "fear",
        _ => return None,
    })
}

/// Probes every labelled file's header in parallel and builds the corpus.
fn probe_all(
    root: &Path,
    format: CorpusFormat,
    labelled: Vec<(PathBuf, String, Option<String>)>,
    mut unreadable: Vec<(PathBuf, String)>,
) -> Corpus {
    let probed: Vec<std::result::Result<Clip, (PathBuf, String)>> = labelled
        .into_par_iter()
        .map(|(path, label, speaker)| match probe_audio(&path) {
            Ok(info) => Ok(Clip {
                path,
                label,
                speaker,
                duration_s: info.duration_s,
                sample_rate: info.sample_rate,
            }),
            Err(e) => {
                let why = reason(&e, &path);
                Err((path, why))
            }
        })
        .collect();
    let mut clips = Vec::with_capacity(probed.len());
    for p in probed {
        match p {
            Ok(c) => clips.push(c),
            Err(u) => unreadable.push(u),
        }
    }
    clips.sort_by(|a, b| a.path.cmp(&b.path));
    let labels: Vec<String> = clips
        .iter()
        .map(|c| c.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    Corpus {
        root: root.to_path_buf(),
        format,
        clips,
        labels,
        unreadable,
    }
}

/// An error's text without the leading "path: " (the path is listed beside it).
fn reason(e: &anyhow::Error, path: &Path) -> String {
    let s = format!("{e:#}");
    let prefix = format!("{}: ", path.display());
    s.strip_prefix(&prefix).map(str::to_string).unwrap_or(s)
}

/// Reads a CSV manifest `path,label[,speaker]` (header row required).
fn load_csv(csv_path: &Path) -> Result<Corpus> {
    let base = csv_path.parent().unwrap_or(Path::new("."));
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(csv_path)
        .with_context(|| format!("{}: cannot open", csv_path.display()))?;
    let headers = rdr
        .headers()
        .with_context(|| format!("{}: line 1: cannot read the header row", csv_path.display()))?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim_start_matches('\u{feff}').eq_ignore_ascii_case(name))
    };
    let (Some(pi), Some(li)) = (col("path"), col("label")) else {
        bail!(
            "{}: line 1: the header row must name the columns path and label (and optionally \
             speaker); found: {}",
            csv_path.display(),
            headers.iter().collect::<Vec<_>>().join(",")
        );
    };
    let si = col("speaker");
    let mut labelled = Vec::new();
    let mut unreadable = Vec::new();
    let mut seen: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            anyhow!("{}: line {line}: malformed CSV: {e}", csv_path.display())
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        let field = |i: usize, what: &str| -> Result<String> {
            match rec.get(i) {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => bail!("{}: line {line}: the {what} is missing", csv_path.display()),
            }
        };
        let rel = PathBuf::from(field(pi, "path")?);
        let label = field(li, "label")?;
        let speaker = si.and_then(|i| rec.get(i)).filter(|s| !s.is_empty());
        let path = if rel.is_absolute() {
            rel
        } else {
            base.join(rel)
        };
        if let Some(prev) = seen.insert(path.clone(), line) {
            bail!(
                "{}: line {line}: {} is listed twice (also on line {prev})",
                csv_path.display(),
                path.display()
            );
        }
        if path.is_dir() {
            unreadable.push((
                path,
                format!("listed on line {line} but is a folder, not an audio file"),
            ));
            continue;
        }
        if !path.is_file() {
            unreadable.push((path, format!("listed on line {line} but not found")));
            continue;
        }
        labelled.push((path, label, speaker.map(str::to_string)));
    }
    if labelled.is_empty() && unreadable.is_empty() {
        bail!("{}: the manifest lists no files", csv_path.display());
    }
    let mut corpus = probe_all(csv_path, CorpusFormat::Csv, labelled, unreadable);
    corpus.unreadable.sort();
    Ok(corpus)
}
