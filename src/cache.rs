//! The user's cache folder, shared by everything ser-engine keeps between runs (the demo
//! corpus, the CPU convolution timings).
//!
//! Shared module: may be used by every layer; uses nothing of the crate.

use std::path::PathBuf;

/// `$XDG_CACHE_HOME/ser-engine`, or `$HOME/.cache/ser-engine`, or `<temp>/ser-engine`.
pub fn user_cache_dir() -> PathBuf {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("ser-engine")
}
