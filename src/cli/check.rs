//! `ser-engine check --device sim|cuda [--quick]`: every device-versus-CPU check of the library
//! (`engine::checks`: each kernel family op by op at random unaligned sizes, the whole forward,
//! every gradient, three training steps, padding invariance, the front end, cuDNN), the same
//! bodies `cargo test` runs on sim. One line per check as it finishes, then a summary and the
//! kernels the run never launched; exit 1 when any check failed. This is what a new GPU
//! machine runs first (tools/gpu-check.sh does).
//!
//! Layer: cli, the top. May use every other module.

use super::{DeviceChoice, Global};
use crate::engine::checks::{self, Target, Verdict};
use anyhow::{bail, Result};
use clap::Args;
use std::io::Write;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Every check but the ~30 s launch census of the full-size model (still launches every
    /// kernel).
    #[arg(long)]
    pub quick: bool,
    /// Only the checks whose `module::name` contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// List the checks and exit.
    #[arg(long)]
    pub list: bool,
}

pub fn run(args: &CheckArgs, global: &Global) -> Result<()> {
    if args.list {
        for c in checks::CHECKS {
            println!(
                "{}::{}{}{}",
                c.module,
                c.name,
                if c.quick { "  [quick]" } else { "" },
                if c.runs == checks::Runs::SimOnly {
                    "  [sim only]"
                } else {
                    ""
                }
            );
        }
        return Ok(());
    }
    let target = match global.device {
        DeviceChoice::Sim => Target::Sim,
        DeviceChoice::Cuda => Target::Cuda,
        DeviceChoice::Auto | DeviceChoice::Cpu => {
            bail!(
                "check compares a device with the CPU reference: use --device sim or --device cuda"
            )
        }
    };
    // open the device once up front: a GPU that does not open is one clear error, not a
    // failure of every check
    let dev = checks::device(global.seed);
    println!("device: {}", dev.describe());
    drop(dev);
    let t0 = std::time::Instant::now();
    let outcomes = checks::run_checks(target, args.quick, args.filter.as_deref(), &mut |o| {
        println!("{}", checks::format_outcome(o));
        let _ = std::io::stdout().flush();
    });
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Failed(_)))
        .map(|o| format!("{}::{}", o.module, o.name))
        .collect();
    let skipped = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Skipped(_)))
        .count();
    let missing = checks::kernels_not_launched()?;
    println!(
        "checks: {} ok, {} failed, {skipped} skipped of {} in {:.1} s{}",
        outcomes.len() - failed.len() - skipped,
        failed.len(),
        outcomes.len(),
        t0.elapsed().as_secs_f64(),
        if args.quick { " (--quick)" } else { "" }
    );
    let ours = crate::device::kernels::KERNELS
        .iter()
        .filter(|k| k.file != "test_shim.cu")
        .count();
    println!(
        "kernels launched: {} of {ours} (the sim shim's test kernels not counted){}",
        ours - missing.len(),
        if missing.is_empty() {
            String::new()
        } else {
            format!("; never launched: {}", missing.join(", "))
        }
    );
    if !failed.is_empty() {
        bail!("{} check(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}
