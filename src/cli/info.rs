//! `ser-engine info`.

use clap::Args;

#[derive(Debug, Args)]
pub struct InfoArgs {}

pub fn run(_args: &InfoArgs, _global: &super::Global) -> anyhow::Result<()> {
    anyhow::bail!("'info' is being written")
}
