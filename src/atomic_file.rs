//! Files replaced whole: written to a temporary file beside the destination and renamed into
//! place, so a reader (or a crash) never sees a cut-short file.
//!
//! Shared module: may be used by every layer; uses nothing of the crate.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Prefix of the temporary files [`atomic_write`] creates (a run folder's next writer cleans
/// up any left by a crash).
pub const TMP_PREFIX: &str = ".tmp";

/// Writes `bytes` to `path` atomically (a temporary file beside it, synced, renamed into
/// place). The file gets the permissions of any new file (0666 less the umask, usually 0644),
/// not the temporary file's private 0600. Errors name `path`, not the temporary file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(TMP_PREFIX);
    // open(2) applies the umask to this mode, as for File::create
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", path.display()))?;
    let kill_at = kill_point(path, bytes.len());
    if let Some(KillPoint::After(n)) = kill_at {
        let _ = tmp
            .write_all(&bytes[..n])
            .and_then(|_| tmp.as_file().sync_all());
        kill_self();
    }
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    if let Some(KillPoint::Renamed) = kill_at {
        kill_self();
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically ([`atomic_write`]), or to standard output when `path`
/// is `-`.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.as_os_str() == "-" {
        let mut o = std::io::stdout().lock();
        return o
            .write_all(bytes)
            .and_then(|_| o.flush())
            .context("cannot write to standard output");
    }
    atomic_write(path, bytes)
}

/// Test hook for the kill-during-save tests: with `SER_ENGINE_KILL_AT=K` in the environment the
/// process kills itself (SIGKILL, as `kill -9` would) at point K of its atomic writes, counted
/// over the whole process: a file of L bytes has the points "after j bytes of the temporary
/// file" (j = 0..=L, before the rename) and "just after the rename". With
/// `SER_ENGINE_KILL_LOG=FILE`, each write appends "FIRST_POINT POINTS PATH" to FILE, so a test
/// can aim at every write's first and last point. Unset (always, outside tests), it costs one
/// environment look-up per process.
enum KillPoint {
    After(usize),
    Renamed,
}

fn kill_point(path: &Path, len: usize) -> Option<KillPoint> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static HOOK: OnceLock<(Option<u64>, Option<std::path::PathBuf>)> = OnceLock::new();
    static POINTS: AtomicU64 = AtomicU64::new(0);
    let (at, log) = HOOK.get_or_init(|| {
        (
            std::env::var("SER_ENGINE_KILL_AT")
                .ok()
                .and_then(|v| v.parse().ok()),
            std::env::var_os("SER_ENGINE_KILL_LOG").map(Into::into),
        )
    });
    if at.is_none() && log.is_none() {
        return None;
    }
    let n = len as u64 + 2;
    let first = POINTS.fetch_add(n, Ordering::SeqCst);
    if let Some(log) = log {
        let line = format!("{first} {n} {}\n", path.display());
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
    let j = at.and_then(|at| at.checked_sub(first)).filter(|&j| j < n)?;
    Some(if j == n - 1 {
        KillPoint::Renamed
    } else {
        KillPoint::After(j as usize)
    })
}

fn kill_self() -> ! {
    // SAFETY: sends a signal to this process; no memory is involved.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn written_files_get_the_permissions_of_a_new_file_not_0600() {
        let d = tempfile::tempdir().unwrap();
        // what File::create gives under this process's umask (usually 0644)
        let reference = d.path().join("reference");
        std::fs::File::create(&reference).unwrap();
        let want = mode(&reference);
        assert_ne!(
            want, 0o600,
            "umask 077: this test cannot tell the modes apart"
        );
        let p = d.path().join("out.json");
        atomic_write(&p, b"{}").unwrap();
        assert_eq!(mode(&p), want, "new file: {:o}", mode(&p));
        // replacing an existing file too
        atomic_write(&p, b"[]").unwrap();
        assert_eq!(mode(&p), want, "replaced file: {:o}", mode(&p));
        assert_eq!(std::fs::read(&p).unwrap(), b"[]");
    }
}
