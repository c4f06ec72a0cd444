//! `ser-engine gradcheck`: finite-difference gradient checks of the CPU reference (f64), every
//! op and the whole model, printed as a table; fails if any check fails. With `--device
//! sim|cuda`: the device's logits, loss and every parameter gradient against the CPU reference
//! (`engine::check`).
//!
//! Layer: cli, the top. May use every other module.

use super::{DeviceChoice, Global};
use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct GradcheckArgs {}

pub fn run(_args: &GradcheckArgs, global: &Global) -> Result<()> {
    match global.device {
        DeviceChoice::Auto | DeviceChoice::Cpu => {}
        DeviceChoice::Sim | DeviceChoice::Cuda => {
            let dev = match crate::device::select(global.device)? {
                crate::device::Selected::Device(d) => d,
                crate::device::Selected::Cpu => bail!("no device selected"),
            };
            println!("device: {}", dev.describe());
            let rows = crate::engine::check::device_vs_cpu(dev)?;
            print!("{}", crate::engine::check::format_table(&rows));
            let failed: Vec<&str> = rows
                .iter()
                .filter(|r| !r.ok)
                .map(|r| r.what.as_str())
                .collect();
            if !failed.is_empty() {
                bail!(
                    "{} device-vs-cpu check(s) failed: {}",
                    failed.len(),
                    failed.join("; ")
                );
            }
            return Ok(());
        }
    }
    let rows = crate::cpu::gradcheck::run_all();
    print!("{}", crate::cpu::gradcheck::format_table(&rows));
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.op.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} gradient check(s) failed: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(())
}
