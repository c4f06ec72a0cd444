//! `ser-engine synth`.

use clap::Args;

#[derive(Debug, Args)]
pub struct SynthArgs {}

pub fn run(_args: &SynthArgs, _global: &super::Global) -> anyhow::Result<()> {
    anyhow::bail!("'synth' is being written")
}
