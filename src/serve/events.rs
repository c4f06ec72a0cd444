//! `GET /api/runs/{id}/events`: Server-Sent Events, one `epoch` event per finished epoch
//! (its metrics.jsonl record; the event id is the epoch) and a `state` event when the run's
//! state changes. The folder is polled, since its files are replaced by rename (a watch on
//! the old file would see nothing). `Last-Event-ID` or `?after=N` skips epochs already seen.

use super::http::{query, req_header, split_url, stream_head};
use super::index::{self, Entry};
use super::App;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use tiny_http::Request;

/// How often the folder is looked at: an epoch shows within this (plus the write).
const POLL: Duration = Duration::from_millis(500);
/// A comment line this often, so a closed client is noticed and proxies keep the stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub fn stream(app: &App, req: Request, e: &Entry) {
    let (_, q) = split_url(req.url());
    let mut sent: usize = req_header(&req, "Last-Event-ID")
        .or_else(|| query(&q, "after"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut w = req.into_writer();
    if w.write_all(stream_head("text/event-stream").as_bytes())
        .and_then(|_| w.write_all(b"retry: 2000\n\n"))
        .and_then(|_| w.flush())
        .is_err()
    {
        return;
    }
    let metrics = e.path.join("metrics.jsonl");
    let mut seen: Option<(SystemTime, u64)> = None;
    let mut state = None;
    let mut last_write = Instant::now();
    while !app.stop.load(Ordering::SeqCst) {
        let mut out = String::new();
        let stamp = std::fs::metadata(&metrics)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if stamp != seen {
            seen = stamp;
            let hist = e.metrics();
            if hist.len() < sent {
                // The run was replaced (train --force): start over.
                out += "event: reset\ndata: {}\n\n";
                sent = 0;
            }
            let new: Vec<_> = hist.iter().filter(|r| r.epoch > sent).collect();
            for r in new {
                let data = serde_json::to_string(r).unwrap_or_default();
                out += &format!("id: {}\nevent: epoch\ndata: {data}\n\n", r.epoch);
                sent = r.epoch;
            }
        }
        let now = index::state_of(e);
        if state != Some(now) {
            state = Some(now);
            out += &format!(
                "event: state\ndata: {}\n\n",
                serde_json::json!({ "state": now, "pid": index::running_pid(&e.path) })
            );
        }
        if out.is_empty() && last_write.elapsed() >= KEEPALIVE {
            out += ": keep-alive\n\n";
        }
        if !out.is_empty() {
            if w.write_all(out.as_bytes()).and_then(|_| w.flush()).is_err() {
                return; // the client went away
            }
            last_write = Instant::now();
        }
        std::thread::sleep(POLL);
    }
}
