//! The runs the server knows: every train run folder (config.json) and every cv/sweep folder
//! (plan.json) under `--runs`, at any depth. A run's id is its path under `--runs` with `/`
//! separators; requests name runs by id and the id is only ever looked up here, never joined
//! onto a path. The index only reads: it never takes a run's lock and never writes.

use crate::train::fit::EpochRecord;
use crate::train::run::LOCK_FILE;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What kind of folder a run id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A `train` run (or one unit of a cv/sweep): config.json, metrics.jsonl, model.
    Run,
    /// A cv or sweep folder: plan.json and, when done, results.
    Sweep,
}

/// Whether a run is being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A live process holds the folder's lock.
    Running,
    /// The writer finished (train: its charts; a cv/sweep unit: result.json; a sweep: its
    /// results table).
    Finished,
    /// Neither: the writer was stopped (Ctrl-C, kill, a crash) before the end.
    Interrupted,
}

/// One indexed folder.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: String,
    pub kind: Kind,
    pub path: PathBuf,
    /// `--runs`, canonical: every file read must resolve inside it.
    pub root: PathBuf,
}

impl Entry {
    /// The path of `name` inside this folder if the name is whitelisted and the file
    /// resolves (symbolic links followed) to a regular file inside `--runs`.
    pub fn file(&self, name: &str) -> Result<PathBuf, FileRefusal> {
        if !SERVED_FILES.contains(&name) {
            return Err(FileRefusal::NotServed);
        }
        let real = self
            .path
            .join(name)
            .canonicalize()
            .map_err(|_| FileRefusal::Missing)?;
        if !real.starts_with(&self.root) {
            return Err(FileRefusal::Outside);
        }
        if !real.is_file() {
            return Err(FileRefusal::Missing);
        }
        Ok(real)
    }

    /// A whitelisted JSON file of this folder, parsed; None when missing, outside or bad.
    pub fn json(&self, name: &str) -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(self.file(name).ok()?).ok()?).ok()
    }

    /// metrics.jsonl: every complete line that parses (the file is replaced whole by
    /// rename, so a line is never half-written; an unreadable line is skipped, not fatal).
    pub fn metrics(&self) -> Vec<EpochRecord> {
        let Some(text) = self
            .file("metrics.jsonl")
            .ok()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The files a client may download from a run or sweep folder, by name. Weights
/// (model.safetensors), resume state and anything else are never served.
pub const SERVED_FILES: &[&str] = &[
    "config.json",
    "metrics.jsonl",
    "result.json",
    "confusion.png",
    "learning_curve.png",
    "plan.json",
    "cv.json",
    "results.json",
    "results.csv",
    "results.md",
    "results.png",
    "table3.md",
];

/// Run folders found under a root, by id.
pub struct Index {
    root: PathBuf,
    /// `root`, canonical: every file served must resolve inside it.
    canonical_root: PathBuf,
    pub entries: BTreeMap<String, Entry>,
}

impl Index {
    pub fn new(root: &Path) -> std::io::Result<Self> {
        let canonical_root = root.canonicalize()?;
        let mut index = Self {
            root: root.to_path_buf(),
            canonical_root,
            entries: BTreeMap::new(),
        };
        index.rescan();
        Ok(index)
    }

    /// Walks the root again. Symbolic links to folders are not followed (a link cannot bring
    /// a folder from outside `--runs` into the index); hidden folders (a run being staged,
    /// `.git`) are skipped.
    pub fn rescan(&mut self) {
        let mut entries = BTreeMap::new();
        let walk = walkdir::WalkDir::new(&self.root)
            .follow_links(false)
            .max_depth(12)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
        for e in walk.flatten() {
            if !e.file_type().is_dir() || e.depth() == 0 {
                continue;
            }
            let kind = if e.path().join("config.json").is_file() {
                Kind::Run
            } else if e.path().join("plan.json").is_file() {
                Kind::Sweep
            } else {
                continue;
            };
            let Ok(rel) = e.path().strip_prefix(&self.root) else {
                continue;
            };
            let Some(id) = id_of(rel) else { continue };
            entries.insert(
                id.clone(),
                Entry {
                    id,
                    kind,
                    path: e.path().to_path_buf(),
                    root: self.canonical_root.clone(),
                },
            );
        }
        self.entries = entries;
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }
}

/// Why a file is not served.
#[derive(Debug, PartialEq, Eq)]
pub enum FileRefusal {
    NotServed,
    Missing,
    Outside,
}

/// `a/b/c` from a relative path; None when a component is not valid UTF-8.
fn id_of(rel: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// The pid written in a run's lock file, if a live process holds that file's lock.
pub fn running_pid(dir: &Path) -> Option<u32> {
    let lock = dir.join(LOCK_FILE);
    let pid: u32 = std::fs::read_to_string(&lock).ok()?.trim().parse().ok()?;
    if pid == 0 || pid > i32::MAX as u32 {
        return None;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let alive = unsafe { libc::kill(pid as i32, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !alive {
        return None;
    }
    // A reused pid is told apart by the kernel's list of held locks, where available: the
    // lock file's inode must be locked by that pid. Reading it takes no lock.
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&lock).ok()?.ino();
    match std::fs::read_to_string("/proc/locks") {
        Ok(locks) => locks
            .lines()
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
                f.len() >= 6
                    && f[1] == "FLOCK"
                    && f[4] == pid.to_string()
                    && f[5].rsplit(':').next() == Some(&ino.to_string())
            })
            .then_some(pid),
        Err(_) => Some(pid),
    }
}

/// The state of a run or sweep folder.
pub fn state_of(entry: &Entry) -> State {
    let dir = &entry.path;
    if entry.kind == Kind::Run && running_pid(dir).is_some() {
        return State::Running;
    }
    let done = match entry.kind {
        Kind::Run => dir.join("learning_curve.png").is_file() || dir.join("result.json").is_file(),
        Kind::Sweep => dir.join("results.json").is_file() || dir.join("cv.json").is_file(),
    };
    if done {
        return State::Finished;
    }
    if entry.kind == Kind::Sweep {
        // A sweep runs while any of its units does.
        let running = walkdir::WalkDir::new(dir)
            .max_depth(4)
            .into_iter()
            .flatten()
            .any(|e| {
                e.file_name() == LOCK_FILE && e.path().parent().and_then(running_pid).is_some()
            });
        if running {
            return State::Running;
        }
    }
    State::Interrupted
}
