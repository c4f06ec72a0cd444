//! The files a command writes, checked before any work starts: an output is never one of the
//! command's inputs nor a file inside a run folder (compared as canonical paths, so symlinks
//! and `./` spellings are caught), its folder must exist, and `-` means standard output.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Whether `p` is `-` (standard output).
pub fn is_stdout(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// Where `p` would be written, as a canonical path: the file itself (through any symlink) when
/// it exists, else its canonical folder joined with its name. The folder must exist.
fn canonical_target(option: &str, p: &Path) -> Result<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        if c.is_dir() {
            bail!("{option} {}: is a folder; give a file name", p.display());
        }
        return Ok(c);
    }
    let name = p
        .file_name()
        .with_context(|| format!("{option} {}: not a file name", p.display()))?;
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "{option} {}: the folder {} does not exist (create it first)",
            p.display(),
            dir.display()
        );
    }
    let dir = std::fs::canonicalize(dir).with_context(|| format!("{option} {}", dir.display()))?;
    Ok(dir.join(name))
}

/// Whether `dir` is a run folder (`train --out`, a cv/sweep unit) or a cv/sweep folder.
fn is_run_folder(dir: &Path) -> bool {
    (dir.join("config.json").is_file()
        && (dir.join("model.safetensors").is_file() || dir.join("resume").is_dir()))
        || dir.join("plan.json").is_file()
}

/// Refuses `out` (the value of `option`) when it names one of `inputs`, lies inside one of
/// `runs` (run folders, or a run's model.safetensors standing for its folder) or inside any run
/// folder, or its folder is missing. `-` (standard output) always passes.
pub fn check_output(option: &str, out: &Path, inputs: &[&Path], runs: &[&Path]) -> Result<()> {
    if is_stdout(out) {
        return Ok(());
    }
    let target = canonical_target(option, out)?;
    for i in inputs {
        let Ok(c) = std::fs::canonicalize(i) else {
            continue;
        };
        if c == target {
            bail!(
                "{option} {}: is one of the inputs ({}); refusing to replace it",
                out.display(),
                i.display()
            );
        }
        if c.is_dir() && target.starts_with(&c) && target.exists() {
            bail!(
                "{option} {}: is a file of the input folder {}; refusing to replace it",
                out.display(),
                i.display()
            );
        }
    }
    for r in runs {
        let Ok(mut c) = std::fs::canonicalize(r) else {
            continue;
        };
        if c.is_file() {
            c.pop();
        }
        // (a folder that is not a run is reported as such by the command itself)
        if c.join("config.json").is_file() && target.starts_with(&c) {
            bail!(
                "{option} {}: lies inside the run folder {}; refusing to write into a run \
                 (choose a path outside it)",
                out.display(),
                r.display()
            );
        }
    }
    // any other run: the folder itself, or the run above its resume/ folder
    for dir in target.ancestors().skip(1).take(2) {
        if is_run_folder(dir) {
            bail!(
                "{option} {}: lies inside the run folder {}; refusing to write into a run \
                 (choose a path outside it)",
                out.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Checks every output of a command against the others too: two options naming one file would
/// have the second replace the first.
pub fn check_outputs(outs: &[(&str, &Path)], inputs: &[&Path], runs: &[&Path]) -> Result<()> {
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    let mut stdout: Option<&str> = None;
    for &(option, p) in outs {
        check_output(option, p, inputs, runs)?;
        if is_stdout(p) {
            if let Some(other) = stdout {
                bail!("{other} and {option} both name standard output (-); give one a file");
            }
            stdout = Some(option);
            continue;
        }
        let t = canonical_target(option, p)?;
        if let Some((other, _)) = seen.iter().find(|(_, s)| *s == t) {
            bail!("{other} and {option} name the same file {}", p.display());
        }
        seen.push((option, t));
    }
    Ok(())
}

pub use crate::atomic_file::write_output;

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn err(r: Result<()>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn an_output_that_names_an_input_is_refused_in_any_spelling() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.wav");
        std::fs::write(&a, b"RIFF").unwrap();
        let link = d.path().join("link.wav");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let dotted = sub.join("..").join(".").join("a.wav");
        for out in [&a, &link, &dotted] {
            let e = err(check_output("--csv", out, &[&a], &[]));
            assert!(
                e.contains("--csv") && e.contains("one of the inputs"),
                "{e}"
            );
        }
        // the input named through the link, the output plainly
        let e = err(check_output("--csv", &a, &[&link], &[]));
        assert!(e.contains("one of the inputs"), "{e}");
        check_output("--csv", &d.path().join("b.csv"), &[&a], &[]).unwrap();
        check_output("--csv", Path::new("-"), &[&a], &[]).unwrap();
        // the file's own contents untouched by the checks
        assert_eq!(std::fs::read(&a).unwrap(), b"RIFF");
    }

    #[test]
    fn outputs_inside_a_run_folder_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        std::fs::create_dir_all(run.join("resume")).unwrap();
        std::fs::write(run.join("config.json"), "{}").unwrap();
        std::fs::write(run.join("model.safetensors"), "x").unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "new.json",
            "resume/x.png",
        ] {
            // as the --model run, as the run's model file, and as any run folder
            let model = run.join("model.safetensors");
            for runs in [&[run.as_path()][..], &[model.as_path()][..], &[]] {
                let e = err(check_output("--json", &run.join(f), &[], runs));
                assert!(e.contains("inside the run folder"), "{f}: {e}");
            }
        }
        check_output("--json", &d.path().join("eval.json"), &[], &[&run]).unwrap();
    }

    #[test]
    fn a_missing_folder_a_folder_and_two_options_on_one_file_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = err(check_output(
            "--csv",
            &d.path().join("no/such/x.csv"),
            &[],
            &[],
        ));
        assert!(e.contains("does not exist") && e.contains("no/such"), "{e}");
        let e = err(check_output("--csv", d.path(), &[], &[]));
        assert!(e.contains("is a folder"), "{e}");
        let x = d.path().join("x");
        let e = err(check_outputs(
            &[("--csv", &x), ("--timeline-png", &x)],
            &[],
            &[],
        ));
        assert!(e.contains("--csv and --timeline-png"), "{e}");
        let dash = Path::new("-");
        let e = err(check_outputs(
            &[("--csv", dash), ("--json", dash)],
            &[],
            &[],
        ));
        assert!(e.contains("standard output"), "{e}");
    }
}
