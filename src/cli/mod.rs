//! One file per subcommand: its clap arguments and its `run`; the whole command line ([`Cli`]).
//! `main.rs` only parses and dispatches.
//!
//! Layer: cli, the top. May use every other module.

pub mod bench;
pub mod check;
pub mod cv;
pub mod eval;
pub mod export;
pub mod features;
pub mod gradcheck;
pub mod info;
pub mod outputs;
pub mod predict;
pub mod serve;
pub mod sweep;
pub mod synth;
pub mod train;

pub use crate::device::DeviceChoice;
use clap::Args;

/// Train and run ArabEmoNet speech-emotion models on CPU or GPU.
///
/// The whole command line: global options and one subcommand. `main.rs` parses it; the docs
/// test (`tests/docs_cli.rs`) parses every command line shown in the documentation with it.
#[derive(clap::Parser)]
#[command(name = "ser-engine", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, one file each in this module.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Train a model on a corpus (the built-in demo corpus without --data).
    Train(train::TrainArgs),
    /// Stratified (or speaker-independent) k-fold cross-validation.
    Cv(cv::CvArgs),
    /// A grid of training options x cross-validation folds (--table3: the paper's kernel sizes).
    Sweep(sweep::SweepArgs),
    /// Metrics and confusion matrix of a trained model on a labelled corpus.
    Eval(eval::EvalArgs),
    /// Emotion of each audio file, with class probabilities.
    Predict(predict::PredictArgs),
    /// Write a trained model as an ONNX graph (opset 17) for onnxruntime and other runtimes.
    Export(export::ExportArgs),
    /// Compute log-Mel spectrograms (librosa-exact) and write them as .npy (and .png).
    Features(features::FeaturesArgs),
    /// Write the synthetic demo corpus of emotional prosody.
    Synth(synth::SynthArgs),
    /// Show the build and devices, a corpus summary (--data), or the model summary.
    Info(info::InfoArgs),
    /// Check every gradient of the CPU reference against finite differences (f64).
    Gradcheck(gradcheck::GradcheckArgs),
    /// Every device-vs-CPU check (kernels, forward, gradients, training steps, front end) on --device sim|cuda.
    Check(check::CheckArgs),
    /// Serve a local web app and JSON API: watch runs live, compare them, try a model.
    Serve(serve::ServeArgs),
    /// Throughput: training and inference samples/s and peak memory (front end: features --bench).
    Bench(bench::BenchArgs),
}

/// Options every subcommand takes.
#[derive(Clone, Debug, Args)]
pub struct Global {
    /// Device to run on.
    #[arg(long, global = true, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Seed for every random choice (init, shuffling, dropout, augmentation, synthesis).
    #[arg(long, global = true, default_value_t = 42)]
    pub seed: u64,
    /// Worker threads for CPU work, 1 to 1024 (default: all cores; predict, eval and serve
    /// use at most 32, which bounds their memory).
    #[arg(long, global = true, allow_negative_numbers = true, value_parser = crate::train::options::Whole::<usize>::new())]
    pub threads: Option<usize>,
    /// Arithmetic of the CPU device's large GEMMs: fp32, or bf16 operands with fp32
    /// accumulation (fp32 weights and Adam; needs AVX512-BF16; cpu device only).
    #[arg(long, global = true, value_enum, default_value_t = PrecisionChoice::Fp32)]
    pub precision: PrecisionChoice,
    /// Print only results and errors (no progress bars).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print more detail.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `--precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum PrecisionChoice {
    /// fp32 everywhere
    #[default]
    Fp32,
    /// bf16 GEMM operands, fp32 accumulation, weights and optimizer (AVX512-BF16 CPUs)
    Bf16,
}

impl Global {
    /// Checks the numeric options every command takes (see `TrainOpts::validate` for the
    /// training ones), before any work starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        use crate::train::options::{check_range, Limit};
        if let Some(t) = self.threads {
            check_range("threads", t as f64, Limit::Incl(1.0), Limit::Incl(1024.0))?;
        }
        if self.precision == PrecisionChoice::Bf16 {
            if matches!(self.device, DeviceChoice::Sim | DeviceChoice::Cuda) {
                anyhow::bail!(
                    "--precision bf16 is implemented for the cpu device only (got --device {}); use --device cpu or --precision fp32",
                    format!("{:?}", self.device).to_lowercase()
                );
            }
            if let Some(why) = crate::cpu::bf16::unavailable_reason() {
                anyhow::bail!("{why}");
            }
        }
        Ok(())
    }

    /// The CPU precision this option selects.
    pub fn cpu_precision(&self) -> crate::cpu::bf16::Precision {
        match self.precision {
            PrecisionChoice::Fp32 => crate::cpu::bf16::Precision::Fp32,
            PrecisionChoice::Bf16 => crate::cpu::bf16::Precision::Bf16,
        }
    }

    /// Whether progress bars should be drawn.
    pub fn progress(&self) -> bool {
        !self.quiet
    }
}
