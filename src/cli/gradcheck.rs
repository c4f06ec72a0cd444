//! `ser-engine gradcheck`: finite-difference gradient checks of the CPU reference (f64), every
//! op and the whole model, printed as a table; fails if any check fails.

use super::{DeviceChoice, Global};
use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct GradcheckArgs {}

pub fn run(_args: &GradcheckArgs, global: &Global) -> Result<()> {
    match global.device {
        DeviceChoice::Auto | DeviceChoice::Cpu => {}
        DeviceChoice::Sim | DeviceChoice::Cuda => bail!(
            "gradcheck on --device {} compares device gradients with the CPU reference and needs \
             the device engine, which this build does not include yet; use --device cpu",
            format!("{:?}", global.device).to_lowercase()
        ),
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
