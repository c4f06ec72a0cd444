//! `ser-engine cv`: k-fold cross-validation as the paper reports it (stratified), or
//! speaker-independent folds; per-fold and mean ± std UA, WA, micro-F1 and macro-F1, the
//! summed confusion matrix, cv.json and two PNGs in the output folder. Each fold is a unit of
//! `train::sweep`, so folds can be sharded (`--shard`, Slurm, Kubernetes), spread over
//! `--devices`, resumed and merged (`--merge`).
//!
//! Layer: cli, the top. May use every other module.

use super::Global;
use crate::train::options::TrainOpts;
use crate::train::sweep::{run_plan, FoldArgs, PlanKind, RunEnv};
use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct CvArgs {
    #[command(flatten)]
    pub opts: TrainOpts,
    #[command(flatten)]
    pub folds: FoldArgs,
}

pub fn run(args: &CvArgs, global: &Global) -> Result<()> {
    run_plan(PlanKind::Cv, &args.opts, &args.folds, &[], &env(global))
}

/// What `train::sweep` needs of the global options.
pub fn env(global: &Global) -> RunEnv {
    RunEnv {
        device: global.device,
        seed: global.seed,
        quiet: global.quiet,
        verbose: global.verbose > 0,
    }
}
