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
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
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
