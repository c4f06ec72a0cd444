//! `ser-engine sweep`: a grid over training options times cross-validation folds, one run
//! folder per (trial, fold), a results table (md, csv, json) and a chart; `--table3` is the
//! paper's kernel-size sweep (Table 3). Shards, devices, resume and merge as in `cv`.
//!
//! Layer: cli, the top. May use every other module.

use super::Global;
use crate::train::options::TrainOpts;
use crate::train::sweep::{parse_axis, run_plan, Axis, FoldArgs, PlanKind, GRID_FLAGS};
use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub opts: TrainOpts,
    #[command(flatten)]
    pub folds: FoldArgs,
    /// One axis of the grid, FLAG=V1,V2,... (repeat for more axes; trials are the product):
    /// kernel-size, lr, seed, dropout, epochs, batch-size, weight-decay, label-smoothing,
    /// augment (on/off), recipe (paper/strong), schedule, clip-grad, noise-prob,
    /// time-mask-frac. Other training flags set the base every trial starts from.
    #[arg(long, value_name = "FLAG=V1,V2,...")]
    pub grid: Vec<String>,
    /// The paper's Table 3: kernel sizes 3, 5, 7, 9, 11 (padding k/2), with parameters,
    /// accuracy and F1; also writes table3.md.
    #[arg(long, conflicts_with_all = ["grid", "kernel_size"])]
    pub table3: bool,
}

pub fn run(args: &SweepArgs, global: &Global) -> Result<()> {
    let env = super::cv::env(global);
    if args.table3 {
        let axis = parse_axis("kernel-size=3,5,7,9,11")?;
        return run_plan(PlanKind::Table3, &args.opts, &args.folds, &[axis], &env);
    }
    let grid: Vec<Axis> = args
        .grid
        .iter()
        .map(|g| parse_axis(g))
        .collect::<Result<_>>()?;
    if grid.is_empty() && args.folds.merge.is_none() {
        bail!(
            "sweep needs at least one --grid FLAG=V1,V2,... (flags: {}) or --table3; for one \
             setting use `cv`",
            GRID_FLAGS.join(", ")
        );
    }
    if let Some(dup) = grid
        .iter()
        .enumerate()
        .find(|(i, a)| grid[..*i].iter().any(|b| b.flag == a.flag))
    {
        bail!("--grid {} is given twice", dup.1.flag);
    }
    run_plan(PlanKind::Sweep, &args.opts, &args.folds, &grid, &env)
}
