//! Live mode: the page records the microphone and POSTs it in chunks of 0.25–0.5 s
//! (`POST /api/live?run=ID&session=S&rate=HZ[&window=S]`, body: 16-bit little-endian mono
//! PCM). Each session keeps the last `window` seconds at the model's rate; every chunk is
//! answered with the emotion of that latest window and the time it took.
//! `DELETE /api/live?session=S` ends a session; idle sessions end by themselves.

use super::http::{error, json, query};
use super::{audio_content_type, body_to_temp, busy, run_param, seconds_param, App};
use crate::infer::source::{at_rate, PcmFormat, PcmStream, SampleSource};
use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tiny_http::Request;

/// Sessions at once; the oldest idle one makes room.
const MAX_SESSIONS: usize = 32;
/// A session unused this long is dropped.
const IDLE: Duration = Duration::from_secs(60);
/// Largest chunk accepted (10 s of 48 kHz 16-bit mono).
const MAX_CHUNK_BYTES: u64 = 960_000;
/// The window classified when none is asked for.
const DEFAULT_WINDOW_S: f64 = 2.0;

struct Session {
    run: String,
    rate: u32,
    /// The latest samples at the model's rate (at most the window).
    tail: Vec<f32>,
    /// Seconds of audio received.
    received_s: f64,
    used: Instant,
}

#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

fn session_id(q: &[(String, String)]) -> Result<String, (u16, String)> {
    let s = query(q, "session").unwrap_or("");
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err((
            400,
            "session must be 1 to 64 letters, digits, '-' or '_'".to_string(),
        ));
    }
    Ok(s.to_string())
}

pub fn end(app: &App, q: &[(String, String)]) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    match session_id(q) {
        Ok(s) => {
            let gone = app
                .live
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&s);
            json(200, &serde_json::json!({ "ended": gone.is_some() }))
        }
        Err((st, m)) => error(st, &m),
    }
}

pub fn chunk(app: &App, mut req: Request, q: &[(String, String)]) {
    let res = (|| {
        audio_content_type(&req)?;
        let e = run_param(app, q)?;
        let session = session_id(q)?;
        let rate: u32 = query(q, "rate")
            .and_then(|r| r.parse().ok())
            .filter(|r| (8_000..=192_000).contains(r))
            .ok_or((
                400,
                "rate must be the chunk's sample rate, 8000 to 192000 Hz".to_string(),
            ))?;
        let window_s = seconds_param(q, "window")?.unwrap_or(DEFAULT_WINDOW_S);
        if !(0.25..=10.0).contains(&window_s) {
            return Err((400, format!("window must be 0.25 to 10 s (got {window_s})")));
        }
        let permit = app.pool.try_admit().ok_or((
            503,
            "the inference queue is full; try again in a moment".to_string(),
        ))?;
        let limit = MAX_CHUNK_BYTES.min(app.cfg.max_upload_bytes);
        let mut tmp = body_to_temp(&mut req, limit)?;
        let mut bytes = Vec::new();
        tmp.as_file_mut()
            .rewind_read(&mut bytes)
            .map_err(|e| (500, format!("cannot read the chunk back: {e}")))?;
        let cfg = crate::train::run::RunDir::open(&e.path)
            .and_then(|d| d.config())
            .map_err(|e| (404, format!("{e:#}")))?;
        let model_rate = cfg.sample_rate;
        let samples = decode_chunk(bytes, rate, model_rate).map_err(|m| (400, m))?;
        let keep = (window_s * model_rate as f64).round() as usize;
        let (tail, received_s) = {
            let mut map = app.live.0.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, s| s.used.elapsed() < IDLE);
            if !map.contains_key(&session) && map.len() >= MAX_SESSIONS {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, s)| s.used)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
            let s = map.entry(session.clone()).or_insert_with(|| Session {
                run: e.id.clone(),
                rate,
                tail: Vec::new(),
                received_s: 0.0,
                used: Instant::now(),
            });
            if s.run != e.id || s.rate != rate {
                // Another model or rate: the session starts over.
                s.run = e.id.clone();
                s.rate = rate;
                s.tail.clear();
                s.received_s = 0.0;
            }
            s.tail.extend_from_slice(&samples);
            if s.tail.len() > keep {
                s.tail.drain(..s.tail.len() - keep);
            }
            s.received_s += samples.len() as f64 / model_rate as f64;
            s.used = Instant::now();
            (s.tail.clone(), s.received_s)
        };
        let min = crate::model::MIN_FRAMES * cfg.mel.hop;
        if tail.len() < min {
            return Ok(serde_json::json!({ "buffering": true, "received_s": received_s }));
        }
        let tail_s = tail.len() as f64 / model_rate as f64;
        let mut v = app
            .pool
            .run(&permit, &e.path, super::pool::Work::Samples(tail))?;
        v["start_s"] = serde_json::json!(received_s - tail_s);
        v["end_s"] = serde_json::json!(received_s);
        v["received_s"] = serde_json::json!(received_s);
        Ok(v)
    })();
    let r = match res {
        Ok(v) => json(200, &v),
        Err((503, m)) => busy(&m),
        Err((s, m)) => error(s, &m),
    };
    let _ = req.respond(r);
}

trait RewindRead {
    fn rewind_read(&mut self, out: &mut Vec<u8>) -> std::io::Result<usize>;
}

impl RewindRead for std::fs::File {
    fn rewind_read(&mut self, out: &mut Vec<u8>) -> std::io::Result<usize> {
        use std::io::Seek;
        self.rewind()?;
        self.read_to_end(out)
    }
}

/// 16-bit PCM bytes at `rate` → samples at `model_rate`.
fn decode_chunk(bytes: Vec<u8>, rate: u32, model_rate: u32) -> Result<Vec<f32>, String> {
    if !bytes.len().is_multiple_of(2) {
        return Err("a chunk must hold whole 16-bit samples (an even number of bytes)".into());
    }
    let src = PcmStream::raw(
        std::io::Cursor::new(bytes),
        "chunk",
        PcmFormat::S16le,
        rate,
        1,
    )
    .map_err(|e| format!("{e:#}"))?;
    let mut src = at_rate(Box::new(src), model_rate).map_err(|e| format!("{e:#}"))?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => out.extend_from_slice(&buf),
            Err(e) => return Err(format!("{e:#}")),
        }
    }
    Ok(out)
}
