//! `ser-engine serve`: a local web app and JSON API to watch training runs and try models.
//!
//! - [`index`]: the run folders under `--runs`, their state, the files that may be served.
//! - [`http`]: access checks (Host, token, Origin), security headers, JSON errors.
//! - [`pool`]: inference on a bounded worker pool.
//! - [`events`]: Server-Sent Events, one per finished epoch.
//!
//! The server only reads `--runs`: it never writes there and never takes a run's lock.
//! Uploads go to temporary files in the system's temporary folder.

pub mod bench;
pub mod events;
pub mod http;
pub mod index;
pub mod live;
pub mod pool;

use crate::device::DeviceChoice;
use anyhow::{bail, Context, Result};
use http::{error, json, query, req_header, respond_bytes, split_url, Guard};
use index::{Entry, FileRefusal, Index, Kind};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiny_http::{Request, Server};

/// The page, compiled into the binary (no CDN, works offline).
const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE_CSS: &str = include_str!("web/style.css");
const WORKLET_JS: &str = include_str!("web/pcm-worklet.js");

/// Requests handled at once; past it the server answers 503 at once (each open event stream
/// holds one).
const MAX_HANDLERS: usize = 64;

/// What `serve` was asked for (checked by the CLI).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub runs: PathBuf,
    pub bind: IpAddr,
    pub port: u16,
    pub token: Option<String>,
    pub max_upload_bytes: u64,
    pub workers: usize,
    pub queue: usize,
    pub device: DeviceChoice,
    pub port_file: Option<PathBuf>,
}

/// Shared state of the request handlers.
pub struct App {
    pub cfg: ServeConfig,
    guard: Guard,
    index: Mutex<(Index, Instant)>,
    pool: pool::Pool,
    live: live::Sessions,
    stop: Arc<AtomicBool>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Binds, prints the URL (first line on stdout), and serves until Ctrl-C or SIGTERM.
pub fn serve(cfg: ServeConfig) -> Result<()> {
    if !cfg.runs.is_dir() {
        bail!(
            "--runs {}: no such folder (train a model first: `ser-engine train`, which writes runs/demo)",
            cfg.runs.display()
        );
    }
    let index = Index::new(&cfg.runs)
        .with_context(|| format!("--runs {}: cannot read", cfg.runs.display()))?;
    let addr = SocketAddr::new(cfg.bind, cfg.port);
    let server = Server::http(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .context("the server has no IP address")?;
    let host = match cfg.bind {
        IpAddr::V4(a) if a.is_unspecified() || a.is_loopback() => "127.0.0.1".to_string(),
        IpAddr::V6(a) if a.is_unspecified() || a.is_loopback() => "[::1]".to_string(),
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let mut extra_hosts = Vec::new();
    if !cfg.bind.is_loopback() && !cfg.bind.is_unspecified() {
        extra_hosts.push(host.clone());
    }
    let url = match &cfg.token {
        Some(t) => format!("http://{host}:{}/?token={t}", bound.port()),
        None => format!("http://{host}:{}/", bound.port()),
    };
    println!("{url}");
    std::io::stdout().flush().ok();
    if let Some(p) = &cfg.port_file {
        crate::atomic_file::atomic_write(p, format!("{}\n", bound.port()).as_bytes())
            .with_context(|| format!("--port-file {}: cannot write", p.display()))?;
    }
    eprintln!(
        "serving {} ({} runs) on {bound}; Ctrl-C stops",
        cfg.runs.display(),
        index.entries.len()
    );
    // SAFETY: the handler only stores to an atomic flag.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as usize);
        libc::signal(libc::SIGTERM, on_signal as *const () as usize);
    }
    let app = Arc::new(App {
        guard: Guard {
            token: cfg.token.clone(),
            extra_hosts,
            port: bound.port(),
        },
        index: Mutex::new((index, Instant::now())),
        pool: pool::Pool::new(cfg.workers, cfg.queue, cfg.device),
        live: live::Sessions::default(),
        stop: Arc::new(AtomicBool::new(false)),
        cfg,
    });
    let handlers = Arc::new(AtomicUsize::new(0));
    while !INTERRUPTED.load(Ordering::SeqCst) {
        let req = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("the server stopped"),
        };
        if handlers.fetch_add(1, Ordering::SeqCst) >= MAX_HANDLERS {
            handlers.fetch_sub(1, Ordering::SeqCst);
            let _ = req.respond(busy("too many requests at once"));
            continue;
        }
        let app = Arc::clone(&app);
        let handlers = Arc::clone(&handlers);
        let spawned = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                handle(&app, req);
                handlers.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // The request went with the closure; the client sees the connection close.
            eprintln!("warning: cannot start a thread for a request");
        }
    }
    app.stop.store(true, Ordering::SeqCst);
    eprintln!("stopped");
    Ok(())
}

fn busy(msg: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    error(503, msg).with_header(http::header("Retry-After", "1"))
}

/// One request, start to end, on its own thread.
fn handle(app: &App, req: Request) {
    let (path, q) = split_url(req.url());
    let from_query = match app.guard.check(&req, &q) {
        Ok(f) => f,
        Err((status, msg)) => {
            let _ = req.respond(error(status, &msg));
            return;
        }
    };
    // Opened with ?token=: keep the token in a cookie and drop it from the address bar.
    if from_query && (path == "/" || path == "/index.html") {
        let token = app.guard.token.as_deref().unwrap_or_default();
        let r = respond_bytes(303, "text/plain", b"see /".to_vec())
            .with_header(http::header("Location", "/"))
            .with_header(http::token_cookie(token, app.guard.port));
        let _ = req.respond(r);
        return;
    }
    let method = req.method().as_str().to_ascii_uppercase();
    let r = match (method.as_str(), path.as_str()) {
        ("GET" | "HEAD", "/" | "/index.html") => respond_bytes(
            200,
            "text/html; charset=utf-8",
            INDEX_HTML.as_bytes().to_vec(),
        ),
        ("GET" | "HEAD", "/app.js") => respond_bytes(
            200,
            "text/javascript; charset=utf-8",
            APP_JS.as_bytes().to_vec(),
        ),
        ("GET" | "HEAD", "/pcm-worklet.js") => respond_bytes(
            200,
            "text/javascript; charset=utf-8",
            WORKLET_JS.as_bytes().to_vec(),
        ),
        ("GET" | "HEAD", "/style.css") => respond_bytes(
            200,
            "text/css; charset=utf-8",
            STYLE_CSS.as_bytes().to_vec(),
        ),
        ("GET" | "HEAD", "/DejaVuSans.ttf") => {
            respond_bytes(200, "font/ttf", crate::chart::FONT_TTF.to_vec())
        }
        ("GET" | "HEAD", "/api/runs") => json(200, &runs_json(app)),
        ("GET" | "HEAD", "/api/compare.svg") => compare_svg(app, &q),
        ("POST", "/api/predict") => return predict(app, req, &q),
        ("POST", "/api/live") => return live::chunk(app, req, &q),
        ("DELETE", "/api/live") => live::end(app, &q),
        (m, p) if p.starts_with("/api/runs/") => {
            if m != "GET" && m != "HEAD" {
                error(405, &format!("{m} is not allowed on {p}"))
            } else {
                return run_route(app, req, &p["/api/runs/".len()..]);
            }
        }
        (_, p) if p.starts_with("/api/") => error(404, &format!("no such endpoint: {p}")),
        _ => error(404, &format!("not found: {path}")),
    };
    let _ = req.respond(r);
}

/// The index, rescanned when older than `max_age` (runs appear while the server runs).
fn with_index<T>(app: &App, max_age: Duration, f: impl FnOnce(&Index) -> T) -> T {
    let mut g = app.index.lock().unwrap_or_else(|p| p.into_inner());
    if g.1.elapsed() >= max_age {
        g.0.rescan();
        g.1 = Instant::now();
    }
    f(&g.0)
}

/// The entry of `id`, rescanning once when it is not (yet) known.
fn lookup(app: &App, id: &str) -> Option<Entry> {
    with_index(app, Duration::from_secs(2), |ix| ix.get(id).cloned())
        .or_else(|| with_index(app, Duration::from_millis(250), |ix| ix.get(id).cloned()))
}

fn runs_json(app: &App) -> serde_json::Value {
    let entries: Vec<Entry> = with_index(app, Duration::ZERO, |ix| {
        ix.entries.values().cloned().collect()
    });
    let mut rows: Vec<serde_json::Value> = entries.iter().map(summary).collect();
    // A sweep's recipe: those of its units (a grid may try several).
    for i in 0..rows.len() {
        if rows[i]["kind"] != "sweep" {
            continue;
        }
        let prefix = format!("{}/", rows[i]["id"].as_str().unwrap_or_default());
        let mut recipes: Vec<&str> = rows
            .iter()
            .filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with(&prefix)))
            .filter_map(|r| r["recipe"].as_str())
            .collect();
        recipes.sort_unstable();
        recipes.dedup();
        if !recipes.is_empty() {
            rows[i]["recipe"] = recipes.join(", ").into();
        }
    }
    serde_json::json!({ "runs": rows })
}

/// Modification time of a file, in seconds since 1970.
fn mtime(p: &Path) -> Option<f64> {
    let t = std::fs::metadata(p).and_then(|m| m.modified()).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
}

/// One row of the runs table.
fn summary(e: &Entry) -> serde_json::Value {
    let state = index::state_of(e);
    match e.kind {
        Kind::Run => {
            let cfg = e.json("config.json").unwrap_or_default();
            let hist = e.metrics();
            let best = hist.iter().rev().find(|r| r.best);
            serde_json::json!({
                "id": e.id, "kind": e.kind, "state": state,
                "pid": index::running_pid(&e.path),
                "epoch": hist.last().map(|r| r.epoch),
                "epochs": cfg["fit"]["epochs"],
                "best": best.map(|b| serde_json::json!({
                    "epoch": b.epoch, "val_accuracy": b.val_accuracy,
                    "val_unweighted_accuracy": b.val_unweighted_accuracy,
                    "val_macro_f1": b.val_macro_f1, "val_loss": b.val_loss,
                })),
                "data": cfg["data"], "device": cfg["device"], "labels": cfg["labels"],
                "lr": cfg["fit"]["lr"], "schedule": cfg["fit"]["schedule"],
                "recipe": cfg["recipe"],
                "kernel": cfg["model"]["kernel"],
                "date": mtime(&e.path.join("config.json")),
                "updated": mtime(&e.path.join("metrics.jsonl")),
            })
        }
        Kind::Sweep => {
            let plan = e.json("plan.json").unwrap_or_default();
            serde_json::json!({
                "id": e.id, "kind": e.kind, "state": state,
                "plan_kind": plan["kind"], "data": plan["data"], "labels": plan["labels"],
                "folds": plan["folds"],
                "trials": plan["trials"].as_array().map(|t| t.len()),
                "date": mtime(&e.path.join("plan.json")),
                "updated": mtime(&e.path.join("results.json")),
            })
        }
    }
}

/// `/api/runs/{id}`, `/api/runs/{id}/metrics.csv`, `/api/runs/{id}/events`,
/// `/api/runs/{id}/files/{name}`. The id may hold `/`: the whole rest is tried first.
fn run_route(app: &App, req: Request, rest: &str) {
    if let Some(e) = lookup(app, rest) {
        let _ = req.respond(json(200, &detail(app, &e)));
        return;
    }
    let split = |suffix: &str| rest.strip_suffix(suffix).and_then(|id| lookup(app, id));
    if let Some(e) = split("/metrics.csv") {
        let _ = req.respond(respond_bytes(
            200,
            "text/csv; charset=utf-8",
            metrics_csv(&e).into_bytes(),
        ));
        return;
    }
    if let Some(e) = split("/chart.svg") {
        let r = match chart_svg(&e) {
            Some(svg) => svg_response(svg),
            None => error(404, &format!("'{}' has no results to chart yet", e.id)),
        };
        let _ = req.respond(r);
        return;
    }
    if let Some(e) = split("/events") {
        events::stream(app, req, &e);
        return;
    }
    if let Some((id, name)) = rest.rsplit_once("/files/") {
        if let Some(e) = lookup(app, id) {
            let resp = match e.file(name) {
                Ok(p) => match std::fs::read(&p) {
                    Ok(bytes) => respond_bytes(200, content_type(name), bytes),
                    Err(_) => error(404, &format!("{name}: cannot be read")),
                },
                Err(FileRefusal::NotServed) => {
                    error(404, &format!("{name}: not a file the server serves"))
                }
                Err(FileRefusal::Missing) => error(404, &format!("{name}: not in this run")),
                Err(FileRefusal::Outside) => {
                    error(403, &format!("{name}: a link that leaves --runs; refused"))
                }
            };
            let _ = req.respond(resp);
            return;
        }
    }
    let _ = req.respond(error(404, &format!("no run with id '{rest}'")));
}

fn svg_response(svg: String) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    respond_bytes(200, "image/svg+xml; charset=utf-8", svg.into_bytes())
}

/// The chart the folder's command drew as PNG, as SVG from the same code: a run's
/// learning_curve.png, a sweep's results.png, a cv's learning_curve.png (its folds). None
/// when a cv/sweep has no results yet.
pub fn chart_svg(e: &Entry) -> Option<String> {
    match e.kind {
        Kind::Run => Some(crate::train::plot::learning_curve_svg(&e.metrics())),
        Kind::Sweep => {
            if let Some(r) = e.json("results.json") {
                let report: crate::train::sweep::Report = serde_json::from_value(r).ok()?;
                Some(crate::train::sweep::results_svg(&report))
            } else {
                #[derive(serde::Deserialize)]
                struct Cv {
                    folds: Vec<crate::train::sweep::UnitResult>,
                }
                let cv: Cv = serde_json::from_value(e.json("cv.json")?).ok()?;
                Some(crate::train::sweep::folds_svg(&cv.folds))
            }
        }
    }
}

/// Most runs one compare chart overlays (more would not be told apart).
const MAX_COMPARE: usize = 32;

/// `GET /api/compare.svg?ids=A,B,...`: validation loss, WA and macro-F1 of runs overlaid.
fn compare_svg(app: &App, q: &[(String, String)]) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let ids: Vec<&str> = query(q, "ids")
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .collect();
    if ids.is_empty() || ids.len() > MAX_COMPARE {
        return error(
            400,
            &format!(
                "ids=A,B,... must name 1 to {MAX_COMPARE} runs (got {})",
                ids.len()
            ),
        );
    }
    let mut runs = Vec::new();
    for id in ids {
        match lookup(app, id) {
            Some(e) if e.kind == Kind::Run => runs.push((e.id.clone(), e.metrics())),
            Some(_) => return error(400, &format!("'{id}' is a cv/sweep folder, not a run")),
            None => return error(404, &format!("no run with id '{id}'")),
        }
    }
    let refs: Vec<(String, &[crate::train::fit::EpochRecord])> = runs
        .iter()
        .map(|(id, h)| (id.clone(), h.as_slice()))
        .collect();
    svg_response(crate::train::plot::compare_svg(&refs))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("json") => "application/json",
        Some("jsonl") => "application/jsonl",
        Some("csv") => "text/csv; charset=utf-8",
        Some("md") => "text/markdown; charset=utf-8",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// Everything the page shows about one run or sweep.
fn detail(app: &App, e: &Entry) -> serde_json::Value {
    let mut v = summary(e);
    let files: Vec<&str> = index::SERVED_FILES
        .iter()
        .copied()
        .filter(|n| e.file(n).is_ok())
        .collect();
    v["files"] = serde_json::json!(files);
    let safe_json = |name: &str| e.json(name);
    match e.kind {
        Kind::Run => {
            v["config"] = safe_json("config.json").unwrap_or_default();
            v["metrics"] = serde_json::to_value(e.metrics()).unwrap_or_default();
            if let Some(r) = safe_json("result.json") {
                v["result"] = r;
            }
        }
        Kind::Sweep => {
            v["plan"] = safe_json("plan.json").unwrap_or_default();
            v["results"] = safe_json("results.json")
                .or_else(|| safe_json("cv.json"))
                .unwrap_or_default();
            let prefix = format!("{}/", e.id);
            v["units"] = with_index(app, Duration::from_secs(3600), |ix| {
                ix.entries
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .into();
        }
    }
    v
}

/// All metrics of a run as CSV, one row per epoch.
pub fn metrics_csv(e: &Entry) -> String {
    let mut s = String::from(
        "epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,val_unweighted_accuracy,val_micro_f1,val_macro_f1,best\n",
    );
    for r in e.metrics() {
        s += &format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            r.epoch,
            r.lr,
            r.train_loss,
            r.train_accuracy,
            r.val_loss,
            r.val_accuracy,
            r.val_unweighted_accuracy,
            r.val_micro_f1,
            r.val_macro_f1,
            r.best
        );
    }
    s
}

/// Reads a request body into a temporary file, at most `limit` bytes; Err((413, …)) past it.
pub fn body_to_temp(
    req: &mut Request,
    limit: u64,
) -> std::result::Result<tempfile::NamedTempFile, (u16, String)> {
    let too_big = || {
        (
            413,
            format!(
                "the upload is larger than --max-upload-mb ({} MB)",
                limit / 1_000_000
            ),
        )
    };
    if req.body_length().is_some_and(|n| n as u64 > limit) {
        return Err(too_big());
    }
    let mut tmp = tempfile::Builder::new()
        .prefix("ser-engine-upload-")
        .tempfile()
        .map_err(|e| (500, format!("cannot create a temporary file: {e}")))?;
    let mut reader = req.as_reader().take(limit + 1);
    let n = std::io::copy(&mut reader, tmp.as_file_mut())
        .map_err(|e| (400, format!("the upload was cut short: {e}")))?;
    if n > limit {
        return Err(too_big());
    }
    Ok(tmp)
}

/// Content types accepted for audio bodies (never forms: a page elsewhere cannot post one
/// without a CORS preflight, which this server never grants).
pub fn audio_content_type(req: &Request) -> std::result::Result<(), (u16, String)> {
    let ct = req_header(req, "Content-Type").unwrap_or("");
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if base == "application/octet-stream" || base.starts_with("audio/") {
        Ok(())
    } else {
        Err((
            415,
            format!(
                "Content-Type '{ct}' is not accepted: send the audio bytes as application/octet-stream or audio/*"
            ),
        ))
    }
}

fn seconds_param(
    q: &[(String, String)],
    key: &str,
) -> std::result::Result<Option<f64>, (u16, String)> {
    match query(q, key) {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 && x <= 3600.0 => Ok(Some(x)),
            _ => Err((
                400,
                format!("{key} must be a number of seconds in (0, 3600] (got '{v}')"),
            )),
        },
    }
}

/// The run named by `?run=` (404 when unknown, 400 when missing or a sweep).
fn run_param(app: &App, q: &[(String, String)]) -> std::result::Result<Entry, (u16, String)> {
    let id = query(q, "run").ok_or((400, "run=ID is required".to_string()))?;
    let e = lookup(app, id).ok_or((404, format!("no run with id '{id}'")))?;
    if e.kind != Kind::Run {
        return Err((
            400,
            format!("'{id}' is a cv/sweep folder; pick one of its runs"),
        ));
    }
    Ok(e)
}

/// Longest `name=` of an upload (the timeline's title).
const MAX_NAME_CHARS: usize = 200;

/// `POST /api/predict?run=ID[&window=S&hop=S][&tta=N][&name=FILE]`, body: the audio file's
/// bytes.
fn predict(app: &App, mut req: Request, q: &[(String, String)]) {
    let res = (|| {
        audio_content_type(&req)?;
        let e = run_param(app, q)?;
        let window = seconds_param(q, "window")?;
        let hop = seconds_param(q, "hop")?;
        if hop.is_some() && window.is_none() {
            return Err((400, "hop needs window".to_string()));
        }
        let tta = match query(q, "tta") {
            None | Some("") => 1,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=crate::infer::MAX_TTA).contains(&n) => n,
                _ => {
                    return Err((
                        400,
                        format!(
                            "tta must be a whole number from 1 to {} (got '{v}')",
                            crate::infer::MAX_TTA
                        ),
                    ))
                }
            },
        };
        let name = query(q, "name")
            .filter(|n| !n.is_empty())
            .unwrap_or("upload");
        if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err((
                400,
                format!(
                    "name must be 1 to {MAX_NAME_CHARS} characters, none of them a control character"
                ),
            ));
        }
        let permit = app.pool.try_admit().ok_or((
            503,
            "the inference queue is full; try again in a moment".to_string(),
        ))?;
        let tmp = body_to_temp(&mut req, app.cfg.max_upload_bytes)?;
        app.pool.run(
            &permit,
            &e.path,
            pool::Work::File {
                path: tmp.path().to_path_buf(),
                window: window.map(|w| (w, hop.unwrap_or(w))),
                tta,
                name: name.to_string(),
            },
        )
    })();
    let r = match res {
        Ok(v) => json(200, &v),
        Err((503, m)) => busy(&m),
        Err((s, m)) => error(s, &m),
    };
    let _ = req.respond(r);
}
