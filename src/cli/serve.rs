//! `ser-engine serve`: a local web app and JSON API over the runs under `--runs`
//! (see `crate::serve`).

use super::Global;
use crate::serve::{serve, ServeConfig};
use crate::train::options::{check_range, Limit};
use anyhow::{bail, Result};
use clap::Args;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Folder of runs, searched at any depth for train runs and cv/sweep folders.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Port to listen on, 0 to 65535 (0: any free port; see --port-file).
    #[arg(long, default_value_t = 8000)]
    pub port: u32,
    /// Address to listen on. Anything but loopback needs a token.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// The access token, 16 to 256 letters, digits, '-' or '_' [default: a random one].
    #[arg(long, conflicts_with = "no_token")]
    pub token: Option<String>,
    /// No token (loopback addresses only).
    #[arg(long)]
    pub no_token: bool,
    /// Largest upload accepted by the predict endpoint, 1 to 4096 MB.
    #[arg(long, default_value_t = 50)]
    pub max_upload_mb: u64,
    /// Inference worker threads, 1 to 64 (each keeps its own copy of the model it used last).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Predict requests waiting beyond the workers, 0 to 1024; past it the answer is 503.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Also write the bound port here (for scripts and tests).
    #[arg(long)]
    pub port_file: Option<PathBuf>,
}

impl ServeArgs {
    /// Checks every option against its documented range before anything starts.
    pub fn config(&self, global: &Global) -> Result<ServeConfig> {
        check_range(
            "port",
            self.port as f64,
            Limit::Incl(0.0),
            Limit::Incl(65535.0),
        )?;
        check_range(
            "max-upload-mb",
            self.max_upload_mb as f64,
            Limit::Incl(1.0),
            Limit::Incl(4096.0),
        )?;
        check_range(
            "workers",
            self.workers as f64,
            Limit::Incl(1.0),
            Limit::Incl(64.0),
        )?;
        check_range(
            "queue",
            self.queue as f64,
            Limit::Incl(0.0),
            Limit::Incl(1024.0),
        )?;
        if let Some(t) = &self.token {
            let ok_chars = t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !(16..=256).contains(&t.len()) || !ok_chars {
                bail!("--token must be 16 to 256 letters, digits, '-' or '_'");
            }
        }
        if self.no_token && !self.bind.is_loopback() {
            bail!(
                "--bind {} with --no-token would let anyone who can reach this machine use the \
                 server; keep a token, or bind 127.0.0.1 and reach it through `ssh -L`",
                self.bind
            );
        }
        let token = if self.no_token {
            None
        } else {
            match &self.token {
                Some(t) => Some(t.clone()),
                None => Some(crate::serve::http::random_token()?),
            }
        };
        Ok(ServeConfig {
            runs: self.runs.clone(),
            bind: self.bind,
            port: self.port as u16,
            token,
            max_upload_bytes: self.max_upload_mb * 1_000_000,
            workers: self.workers,
            queue: self.queue,
            device: global.device,
            port_file: self.port_file.clone(),
        })
    }
}

pub fn run(args: &ServeArgs, global: &Global) -> Result<()> {
    let config = args.config(global)?;
    // A long-lived server: each request's inference memory follows its audio, not the largest
    // clip any worker ever saw (as in predict and eval).
    crate::cpu::conv::bound_inference_memory();
    serve(config)
}
