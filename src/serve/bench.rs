//! `ser-engine bench serve`: the predict endpoint under load. Starts `serve` (this binary)
//! on 127.0.0.1 with a free port, then N clients each POST a clip in a loop for a fixed
//! time; prints requests/s, p50/p99 latency, 503 answers, and the server's peak resident
//! memory, with the CPU's name. Speed is measured here, never asserted in tests.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct BenchServe<'a> {
    pub model: &'a Path,
    pub clients: usize,
    pub seconds: f64,
    pub workers: usize,
    pub clip_seconds: f64,
    pub device: crate::device::DeviceChoice,
    pub threads: Option<usize>,
}

/// A 16-bit mono WAV of `secs` seconds at 16 kHz: a gliding tone with some noise (speech-like
/// loudness, so no window is skipped as silent).
fn clip(secs: f64) -> Vec<u8> {
    let n = (secs * 16_000.0) as usize;
    let mut out = Vec::with_capacity(44 + 2 * n);
    let mut put = |b: &[u8]| out.extend_from_slice(b);
    put(b"RIFF");
    put(&(36 + 2 * n as u32).to_le_bytes());
    put(b"WAVEfmt ");
    put(&16u32.to_le_bytes());
    put(&1u16.to_le_bytes());
    put(&1u16.to_le_bytes());
    put(&16_000u32.to_le_bytes());
    put(&32_000u32.to_le_bytes());
    put(&2u16.to_le_bytes());
    put(&16u16.to_le_bytes());
    put(b"data");
    put(&(2 * n as u32).to_le_bytes());
    let mut seed = 12345u32;
    for i in 0..n {
        let t = i as f64 / 16_000.0;
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (seed >> 8) as f64 / (1u32 << 24) as f64 - 0.5;
        let v = 0.3 * (2.0 * std::f64::consts::PI * (180.0 + 60.0 * t) * t).sin() + 0.05 * noise;
        out.extend_from_slice(&((v * 32767.0) as i16).to_le_bytes());
    }
    out
}

fn post(port: u16, path: &str, body: &[u8]) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut r = Vec::new();
    s.read_to_end(&mut r)?;
    let head = String::from_utf8_lossy(&r[..r.len().min(32)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad answer: {head}")))
}

/// The CPU's model name, as `lscpu` shows it.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

pub fn run(b: &BenchServe) -> Result<()> {
    crate::train::run::RunDir::open(b.model)?.config()?;
    let model = b.model.canonicalize()?;
    let (runs, id) = match (model.parent(), model.file_name()) {
        (Some(p), Some(n)) => (p.to_path_buf(), n.to_string_lossy().to_string()),
        _ => bail!("--model {}: give a run folder", b.model.display()),
    };
    let tmp = tempfile::tempdir()?;
    let port_file = tmp.path().join("port");
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["-q", "--device"])
        .arg(format!("{:?}", b.device).to_lowercase());
    if let Some(t) = b.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    let mut child = cmd
        .args(["serve", "--no-token", "--port", "0", "--queue", "1024"])
        .args(["--workers", &b.workers.to_string()])
        .arg("--runs")
        .arg(&runs)
        .arg("--port-file")
        .arg(&port_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("cannot start the server")?;
    let t0 = Instant::now();
    let port: u16 = loop {
        if let Some(p) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break p;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            bail!("the server did not start within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let body = clip(b.clip_seconds);
    let path = format!("/api/predict?run={id}");
    // One warm-up request per worker loads the model.
    for _ in 0..b.workers {
        post(port, &path, &body)?;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(b.seconds);
    let start = Instant::now();
    let results: Vec<(Vec<f64>, usize, usize)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..b.clients)
            .map(|_| {
                s.spawn(|| {
                    let (mut lat, mut busy, mut failed) = (Vec::new(), 0, 0);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        match post(port, &path, &body) {
                            Ok(200) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                            Ok(503) => busy += 1,
                            _ => failed += 1,
                        }
                    }
                    (lat, busy, failed)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("client")).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let rss = peak_rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let mut lat: Vec<f64> = results.iter().flat_map(|r| r.0.clone()).collect();
    let busy: usize = results.iter().map(|r| r.1).sum();
    let failed: usize = results.iter().map(|r| r.2).sum();
    if lat.is_empty() {
        bail!("no request succeeded ({busy} answered 503, {failed} failed)");
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((p * (lat.len() - 1) as f64).round() as usize).min(lat.len() - 1)];
    println!(
        "serve: {} clients x {:.0} s, {} workers, {:.1}-s clips, model {}",
        b.clients,
        b.seconds,
        b.workers,
        b.clip_seconds,
        b.model.display()
    );
    println!(
        "  {} requests in {wall:.1} s: {:.1} requests/s, {:.1} s of audio/s",
        lat.len(),
        lat.len() as f64 / wall,
        lat.len() as f64 * b.clip_seconds / wall
    );
    println!(
        "  latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {busy} answered 503, {failed} failed",
        q(0.5),
        q(0.99),
        lat[lat.len() - 1]
    );
    match rss {
        Some(m) => println!("  server peak resident memory {m:.0} MiB"),
        None => println!("  server peak resident memory: not available (no /proc)"),
    }
    println!("  CPU: {}", cpu_name());
    Ok(())
}
