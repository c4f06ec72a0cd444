//! `ser-engine features`.

use clap::Args;

#[derive(Debug, Args)]
pub struct FeaturesArgs {}

pub fn run(_args: &FeaturesArgs, _global: &super::Global) -> anyhow::Result<()> {
    anyhow::bail!("'features' is being written")
}
