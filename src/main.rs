//! The `ser-engine` binary: parses the command line ([`ser_engine::cli::Cli`]), applies the
//! global options (threads, precision) and dispatches to the subcommand's `run` in `cli`.
//! May use `cli` and the process-wide CPU settings (`cpu::alloc`, `cpu::bf16`).

use clap::Parser;
use ser_engine::cli::{self, Cli, Command};

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
    // Inference commands run on at most 32 threads, so their memory does not grow with the
    // machine's cores (cpu::conv::inference_threads).
    let threads = match &cli.command {
        Command::Predict(_) | Command::Eval(_) | Command::Serve(_) => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Some(ser_engine::cpu::conv::inference_threads(
                cli.global.threads,
                cores,
            ))
        }
        _ => cli.global.threads,
    };
    if let Some(n) = threads {
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
