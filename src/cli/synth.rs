//! `ser-engine synth`: writes the synthetic demo corpus of emotional prosody (see
//! [`crate::audio::synth`]) to a folder, by default the one `train` uses when given no `--data`.
//!
//! Layer: cli, the top. May use every other module.

use crate::audio::synth::{demo_corpus_dir, write_corpus, SynthConfig, CLASSES};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder (default: the demo corpus folder that `train` uses without --data;
    /// $SER_ENGINE_DEMO_DIR or ser-engine/demo-v1 in the user's cache folder). An existing folder is replaced only
    /// if it is empty or an earlier synthetic corpus.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Clips per class.
    #[arg(long, default_value_t = 60)]
    pub per_class: usize,
    /// Sample rate of the clips, Hz.
    #[arg(long, default_value_t = 16_000)]
    pub sample_rate: u32,
}

pub fn run(args: &SynthArgs, global: &super::Global) -> anyhow::Result<()> {
    let cfg = SynthConfig {
        per_class: args.per_class,
        sample_rate: args.sample_rate,
        seed: global.seed,
    };
    let out = args.out.clone().unwrap_or_else(demo_corpus_dir);
    let t0 = std::time::Instant::now();
    write_corpus(&out, &cfg, global.progress())?;
    println!(
        "wrote {} clips ({} classes x {}, {} Hz, seed {}) to {} in {:.1} s",
        CLASSES.len() * cfg.per_class,
        CLASSES.len(),
        cfg.per_class,
        cfg.sample_rate,
        cfg.seed,
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
