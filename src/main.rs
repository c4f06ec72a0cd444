use clap::{Parser, Subcommand};
use ser_engine::cli::{self, Global};

/// Train and run ArabEmoNet speech-emotion models on CPU or GPU.
#[derive(Parser)]
#[command(name = "ser-engine", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on a corpus (the built-in demo corpus without --data).
    Train(cli::train::TrainArgs),
    /// Stratified (or speaker-independent) k-fold cross-validation.
    Cv(cli::cv::CvArgs),
    /// A grid of training options x cross-validation folds (--table3: the paper's kernel sizes).
    Sweep(cli::sweep::SweepArgs),
    /// Metrics and confusion matrix of a trained model on a labelled corpus.
    Eval(cli::eval::EvalArgs),
    /// Emotion of each audio file, with class probabilities.
    Predict(cli::predict::PredictArgs),
    /// Write a trained model as an ONNX graph (opset 17) for onnxruntime and other runtimes.
    Export(cli::export::ExportArgs),
    /// Compute log-Mel spectrograms (librosa-exact) and write them as .npy (and .png).
    Features(cli::features::FeaturesArgs),
    /// Write the synthetic demo corpus of emotional prosody.
    Synth(cli::synth::SynthArgs),
    /// Show the build and devices, a corpus summary (--data), or the model summary.
    Info(cli::info::InfoArgs),
    /// Check every gradient of the CPU reference against finite differences (f64).
    Gradcheck(cli::gradcheck::GradcheckArgs),
    /// Every device-vs-CPU check (kernels, forward, gradients, training steps, front end) on --device sim|cuda.
    Check(cli::check::CheckArgs),
    /// Serve a local web app and JSON API: watch runs live, compare them, try a model.
    Serve(cli::serve::ServeArgs),
    /// Throughput: training and inference samples/s and peak memory (front end: features --bench).
    Bench(cli::bench::BenchArgs),
}

fn main() {
    // Reuse freed activation memory across training steps instead of page-faulting it back
    // in every step (see cpu::alloc).
    ser_engine::cpu::alloc::keep_freed_memory();
    // Output piped into `head` and closed: end quietly, as other Unix tools do, instead of
    // panicking on the failed print.
    // SAFETY: restoring the default action of a signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Err(e) = cli.global.validate() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
    if let Err(e) = ser_engine::cpu::bf16::set_precision(cli.global.cpu_precision()) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if let Some(n) = cli.global.threads {
        // Only fails if a pool was already built, which cannot happen this early.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global();
    }
    let result = match &cli.command {
        Command::Train(a) => cli::train::run(a, &cli.global),
        Command::Cv(a) => cli::cv::run(a, &cli.global),
        Command::Sweep(a) => cli::sweep::run(a, &cli.global),
        Command::Eval(a) => cli::eval::run(a, &cli.global),
        Command::Predict(a) => cli::predict::run(a, &cli.global),
        Command::Export(a) => cli::export::run(a, &cli.global),
        Command::Bench(a) => cli::bench::run(a, &cli.global),
        Command::Serve(a) => cli::serve::run(a, &cli.global),
        Command::Features(a) => cli::features::run(a, &cli.global),
        Command::Synth(a) => cli::synth::run(a, &cli.global),
        Command::Info(a) => cli::info::run(a, &cli.global),
        Command::Gradcheck(a) => cli::gradcheck::run(a, &cli.global),
        Command::Check(a) => cli::check::run(a, &cli.global),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
