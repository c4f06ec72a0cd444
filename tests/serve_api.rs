//! `ser-engine serve` through its HTTP API: a server on 127.0.0.1 (port 0, --port-file) and
//! a small raw HTTP/1.1 client, so that requests a browser or library would tidy up (odd Host
//! headers, `..` in paths, stalled or oversized uploads) reach the server as written.

mod common;

use common::cli::{run_ok, ser, tiny_corpus, train_tiny, write_wav_i16, TINY_MODEL};
use common::http::{read_response, start_serve as start, Resp};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token-0123456789abcdef";

/// One request; `headers` replace the defaults of the same name (Host, Authorization; an
/// empty value drops the header).
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let host = format!("127.0.0.1:{port}");
    let auth = format!("Bearer {TOKEN}");
    let mut h: Vec<(&str, &str)> = vec![("Host", &host), ("Authorization", &auth)];
    for (k, v) in headers {
        h.retain(|(hk, _)| !hk.eq_ignore_ascii_case(k));
        if !v.is_empty() {
            h.push((k, v));
        }
    }
    common::http::exchange(port, method, path, &h, body)
}

fn get(port: u16, path: &str) -> Resp {
    request(port, "GET", path, &[], b"")
}

fn post_audio(port: u16, path: &str, body: &[u8]) -> Resp {
    request(
        port,
        "POST",
        path,
        &[("Content-Type", "application/octet-stream")],
        body,
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    corpus: PathBuf,
    runs: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let corpus = tiny_corpus(&root);
    let runs = root.join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    Fixture {
        _dir: dir,
        root,
        corpus,
        runs,
    }
}

fn metrics_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn runs_at_any_depth_with_details_csv_and_only_whitelisted_files() {
    let f = fixture();
    train_tiny(&f.corpus, &f.runs.join("demo"), 3);
    train_tiny(&f.corpus, &f.runs.join("sweep1/k7/fold-1"), 2);
    let s = start(&f.runs, &["--token", TOKEN]);
    assert_eq!(
        s.url_line.trim(),
        format!("http://127.0.0.1:{}/?token={TOKEN}", s.port)
    );

    let r = get(s.port, "/api/runs");
    assert_eq!(r.status, 200);
    let runs = r.json()["runs"].as_array().unwrap().clone();
    let ids: Vec<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["demo", "sweep1/k7/fold-1"]);
    assert_eq!(runs[0]["state"], "finished");
    assert_eq!(runs[0]["epoch"], 3);
    assert_eq!(runs[1]["epoch"], 2);
    // Security headers on every answer; never a CORS header.
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    let csp = r.header("Content-Security-Policy").unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(r.header("Referrer-Policy"), Some("no-referrer"));
    assert!(r.header("Access-Control-Allow-Origin").is_none());

    // One run: config, every epoch's record with its confusion counts, as on disk.
    let d = get(s.port, "/api/runs/demo").json();
    let on_disk = metrics_lines(&f.runs.join("demo"));
    assert_eq!(d["metrics"].as_array().unwrap(), &on_disk);
    assert_eq!(d["config"]["labels"].as_array().unwrap().len(), 5);
    for m in &on_disk {
        let cm: Vec<Vec<u64>> = serde_json::from_value(m["val_confusion"].clone()).unwrap();
        assert_eq!(cm.len(), 5);
        let total: u64 = cm.iter().flatten().sum();
        let correct: u64 = (0..5).map(|i| cm[i][i]).sum();
        assert!(total > 0);
        // WA of the record is the matrix's trace over its total (both written by train).
        let wa = m["val_accuracy"].as_f64().unwrap();
        assert!(
            (wa - correct as f64 / total as f64).abs() < 1e-12,
            "{wa} vs {correct}/{total}"
        );
    }
    let nested = get(s.port, "/api/runs/sweep1/k7/fold-1");
    assert_eq!(nested.status, 200);
    assert_eq!(nested.json()["id"], "sweep1/k7/fold-1");

    // CSV: a header and one row per epoch with the file's numbers.
    let csv = get(s.port, "/api/runs/demo/metrics.csv");
    assert_eq!(csv.status, 200);
    assert!(csv.header("Content-Type").unwrap().starts_with("text/csv"));
    let text = csv.text();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 4);
    assert!(rows[0].starts_with("epoch,lr,train_loss"));
    for (row, m) in rows[1..].iter().zip(&on_disk) {
        let cols: Vec<&str> = row.split(',').collect();
        assert_eq!(cols[0], m["epoch"].to_string());
        assert_eq!(
            cols[4].parse::<f64>().unwrap(),
            m["val_loss"].as_f64().unwrap()
        );
    }

    // Whitelisted files only.
    let cfg = get(s.port, "/api/runs/demo/files/config.json");
    assert_eq!(cfg.status, 200);
    assert_eq!(
        cfg.body,
        std::fs::read(f.runs.join("demo/config.json")).unwrap()
    );
    for name in [
        "model.safetensors",
        "lock",
        "resume",
        "resume/progress.json",
    ] {
        let r = get(s.port, &format!("/api/runs/demo/files/{name}"));
        assert_eq!(r.status, 404, "{name}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    // Ids are looked up, never joined onto a path.
    for p in [
        "/api/runs/nope",
        "/api/runs/../runs/demo",
        "/api/runs/demo/../demo",
        "/api/runs/%2e%2e/runs/demo",
        "/api/runs/demo/files/../model.safetensors",
        "/api/runs/demo/files/..%2fdemo%2fmodel.safetensors",
        "/api/runs//etc/passwd",
        "/api/nothing",
        "/nothing",
    ] {
        let r = get(s.port, p);
        assert_eq!(r.status, 404, "{p}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{p}");
    }
    assert_eq!(
        request(s.port, "POST", "/api/runs/demo", &[], b"").status,
        405
    );

    // The page and its scripts come from the binary.
    let page = get(s.port, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("Content-Type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("app.js"));
    assert_eq!(get(s.port, "/app.js").status, 200);
    assert_eq!(get(s.port, "/style.css").status, 200);

    // The server never wrote into --runs.
    let before: Vec<_> = walk(&f.runs);
    drop(s);
    assert_eq!(walk(&f.runs), before);
}

/// The text of each `<text class="CLASS">` of an SVG chart (src/chart/ writes one per line).
fn svg_texts(svg: &str, class: &str) -> Vec<String> {
    let key = format!("class=\"{class}\"");
    svg.lines()
        .filter(|l| l.starts_with("<text") && l.contains(&key))
        .filter_map(|l| Some(l[l.find('>')? + 1..l.find("</text>")?].to_string()))
        .collect()
}

/// The part of a figure's SVG that draws panel `id`.
fn svg_panel<'a>(svg: &'a str, id: &str) -> &'a str {
    let start = svg.find(&format!("<g id=\"{id}\"")).expect(id);
    &svg[start..start + svg[start..].find("</g>").unwrap()]
}

/// Tick labels that are numbers k × s for consecutive k, with s of 1, 2 or 5 × 10^n.
fn assert_1_2_5(labels: &[String], what: &str) {
    let v: Vec<f64> = labels
        .iter()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("{what}: tick '{l}'")))
        .collect();
    assert!(v.len() >= 2, "{what}: {labels:?}");
    let step = v[1] - v[0];
    let mant = step / 10f64.powf(step.log10().floor());
    assert!(
        [1.0, 2.0, 5.0].iter().any(|m| (mant - m).abs() < 1e-6),
        "{what}: step {step} in {labels:?}"
    );
    for w in v.windows(2) {
        assert!(
            (w[1] - w[0] - step).abs() < 1e-6 * step,
            "{what}: {labels:?}"
        );
    }
    for x in &v {
        assert!(
            (x / step - (x / step).round()).abs() < 1e-6,
            "{what}: {labels:?}"
        );
    }
}

/// The page's charts are the PNGs the commands wrote: the server's SVG of a run, a cv and a
/// `sweep --table3`, rasterised by the library, is byte for byte the PNG in the folder; its
/// ticks are on 1-2-5 steps; the table3 chart has the kernel sizes and mean ± std bars. The
/// runs table has each run's recipe.
#[test]
fn charts_are_the_pngs_the_commands_wrote_and_runs_have_their_recipe() {
    let f = fixture();
    train_tiny(&f.corpus, &f.runs.join("demo"), 3);
    let folds = ["--folds", "2", "--epochs", "1"];
    for (cmd, out) in [(&["cv"][..], "cv1"), (&["sweep", "--table3"][..], "t3")] {
        run_ok(
            ser()
                .args(cmd)
                .arg("--data")
                .arg(&f.corpus)
                .arg("--out")
                .arg(f.runs.join(out))
                .args(folds)
                .args(TINY_MODEL),
        );
    }
    // A run written before config.json had the recipe.
    let old = f.runs.join("old");
    std::fs::create_dir_all(&old).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.runs.join("demo/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["recipe"], "paper");
    cfg.as_object_mut().unwrap().remove("recipe");
    std::fs::write(old.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(f.runs.join("demo/metrics.jsonl"), old.join("metrics.jsonl")).unwrap();

    let s = start(&f.runs, &["--token", TOKEN]);
    let chart = |id: &str, png: &str| {
        let r = get(s.port, &format!("/api/runs/{id}/chart.svg"));
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert!(r
            .header("Content-Type")
            .unwrap()
            .starts_with("image/svg+xml"));
        let svg = r.text();
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{id}");
        let drawn = ser_engine::chart::png(&svg).unwrap();
        let written = std::fs::read(f.runs.join(id).join(png)).unwrap();
        assert!(drawn == written, "{id}: the page's chart is not {png}");
        svg
    };

    let run = chart("demo", "learning_curve.png");
    let best = metrics_lines(&f.runs.join("demo"))
        .iter()
        .rev()
        .find(|m| m["best"] == true)
        .unwrap()["epoch"]
        .clone();
    for id in ["chart-loss", "chart-acc", "chart-lr"] {
        let p = svg_panel(&run, id);
        assert_eq!(svg_texts(p, "tick-x"), ["1", "2", "3"], "{id}");
        assert_eq!(svg_texts(p, "best-label"), [format!("best {best}")], "{id}");
        if id != "chart-lr" {
            assert_1_2_5(&svg_texts(p, "tick-y"), id);
        }
    }
    assert_eq!(
        svg_texts(svg_panel(&run, "chart-loss"), "legend"),
        ["train", "validation"]
    );
    assert_eq!(
        svg_texts(svg_panel(&run, "chart-acc"), "legend"),
        ["train acc", "val WA", "val UA", "val macro-F1"]
    );
    assert_eq!(run.matches(r#"data-series="val WA""#).count(), 3);

    let cv = chart("cv1", "learning_curve.png");
    assert_eq!(
        svg_texts(svg_panel(&cv, "cmp-wa"), "legend"),
        ["fold 1", "fold 2"]
    );

    let t3 = chart("t3", "results.png");
    assert_eq!(svg_texts(&t3, "tick-x"), ["3", "5", "7", "9", "11"]);
    assert_eq!(svg_texts(&t3, "legend"), ["UA", "WA", "macro-F1"]);
    // Mean ± std: a bar per kernel size and score.
    assert_eq!(t3.matches(r#"class="err""#).count(), 15);
    assert_1_2_5(&svg_texts(&t3, "tick-y"), "t3");

    // Compare: runs overlaid; errors for what is not a run.
    let c = get(s.port, "/api/compare.svg?ids=demo,cv1/fold-2");
    assert_eq!(c.status, 200, "{}", c.text());
    let c = c.text();
    assert_eq!(c.matches(r#"class="pt" data-series="demo""#).count(), 9);
    assert_eq!(
        c.matches(r#"class="pt" data-series="cv1/fold-2""#).count(),
        3
    );
    // Each run's best epoch marked on each panel, as on the run's own chart.
    for id in ["demo", "cv1/fold-2"] {
        let ring = format!(r#"class="best-pt" data-series="{id}""#);
        let line = format!(r#"class="best" data-series="{id}""#);
        assert_eq!(c.matches(&ring).count(), 3, "{id}");
        assert_eq!(c.matches(&line).count(), 3, "{id}");
    }
    for (q, status) in [("ids=", 400), ("ids=demo,nope", 404), ("ids=t3", 400)] {
        let r = get(s.port, &format!("/api/compare.svg?{q}"));
        assert_eq!(r.status, status, "{q}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }

    // Recipes: each run's, a sweep's from its units, none for the old run.
    let runs = get(s.port, "/api/runs").json()["runs"]
        .as_array()
        .unwrap()
        .clone();
    let recipe = |id: &str| {
        runs.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id}"))["recipe"]
            .clone()
    };
    for id in ["demo", "cv1", "cv1/fold-1", "t3"] {
        assert_eq!(recipe(id), "paper", "{id}");
    }
    assert!(recipe("old").is_null());
}

/// Every path under `dir` with its length and modification time.
fn walk(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .map(|e| {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            (e.path().to_path_buf(), m.len(), m.modified().unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn token_host_and_origin_checks() {
    let f = fixture();
    train_tiny(&f.corpus, &f.runs.join("demo"), 1);
    let s = start(&f.runs, &["--token", TOKEN]);
    let p = s.port;

    let none = request(p, "GET", "/api/runs", &[("Authorization", "")], b"");
    assert_eq!(none.status, 401);
    assert!(none.json()["error"].as_str().unwrap().contains("token"));
    assert_eq!(
        request(p, "GET", "/", &[("Authorization", "")], b"").status,
        401
    );
    let wrong = request(
        p,
        "GET",
        "/api/runs",
        &[("Authorization", "Bearer nope")],
        b"",
    );
    assert_eq!(wrong.status, 403);
    assert_eq!(get(p, "/api/runs").status, 200);

    // ?token= sets an HttpOnly cookie and sends the page's address without the token.
    let open = request(
        p,
        "GET",
        &format!("/?token={TOKEN}"),
        &[("Authorization", "")],
        b"",
    );
    assert_eq!(open.status, 303);
    assert_eq!(open.header("Location"), Some("/"));
    let cookie = open.header("Set-Cookie").unwrap();
    // Named after the port: another server on this host keeps its own.
    assert!(
        cookie.starts_with(&format!("ser_engine_token_{p}=")),
        "{cookie}"
    );
    assert!(
        cookie.contains(TOKEN) && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let with_cookie = request(
        p,
        "GET",
        "/api/runs",
        &[("Authorization", ""), ("Cookie", pair)],
        b"",
    );
    assert_eq!(with_cookie.status, 200);
    let bad_query = request(
        p,
        "GET",
        "/api/runs?token=nope",
        &[("Authorization", "")],
        b"",
    );
    assert_eq!(bad_query.status, 403);

    // DNS rebinding: only loopback names, whatever the token.
    for host in ["evil.example", "evil.example:80", "127.0.0.1.evil.example"] {
        let r = request(p, "GET", "/api/runs", &[("Host", host)], b"");
        assert_eq!(r.status, 403, "{host}");
    }
    for host in [
        format!("localhost:{p}"),
        format!("[::1]:{p}"),
        "127.0.0.1".into(),
    ] {
        assert_eq!(
            request(p, "GET", "/api/runs", &[("Host", &host)], b"").status,
            200,
            "{host}"
        );
    }
    // Another origin cannot post, even with the token (the cookie would come along).
    let foreign = request(
        p,
        "POST",
        "/api/predict?run=demo",
        &[
            ("Origin", "http://evil.example"),
            ("Content-Type", "audio/wav"),
        ],
        b"RIFF",
    );
    assert_eq!(foreign.status, 403);
    let same = request(
        p,
        "POST",
        "/api/predict?run=demo",
        &[
            ("Origin", &format!("http://127.0.0.1:{p}")),
            ("Content-Type", "audio/wav"),
        ],
        b"RIFF",
    );
    assert_eq!(same.status, 400, "{}", same.text());

    // --no-token on loopback: no token needed.
    let open_server = start(&f.runs, &["--no-token"]);
    assert!(!open_server.url_line.contains("token"));
    assert_eq!(
        request(
            open_server.port,
            "GET",
            "/api/runs",
            &[("Authorization", "")],
            b""
        )
        .status,
        200
    );
}

#[test]
fn options_are_checked_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let runs_s = runs.to_str().unwrap();
    for (args, expect) in [
        (
            vec!["--runs", runs_s, "--bind", "0.0.0.0", "--no-token"],
            "--no-token",
        ),
        (vec!["--runs", runs_s, "--workers", "0"], "workers"),
        (vec!["--runs", runs_s, "--workers", "65"], "workers"),
        (
            vec!["--runs", runs_s, "--max-upload-mb", "0"],
            "max-upload-mb",
        ),
        (vec!["--runs", runs_s, "--queue", "1025"], "queue"),
        (vec!["--runs", runs_s, "--port", "70000"], "port"),
        (vec!["--runs", runs_s, "--token", "short"], "--token"),
        (vec!["--runs", "/nonexistent/runs"], "no such folder"),
    ] {
        let out = ser()
            .args(["serve", "--port", "0"])
            .args(&args)
            .timeout(Duration::from_secs(10))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn links_that_leave_runs_are_refused() {
    let f = fixture();
    train_tiny(&f.corpus, &f.runs.join("demo"), 1);
    let outside = f.root.join("outside");
    train_tiny(&f.corpus, &outside, 1);
    std::os::unix::fs::symlink(&outside, f.runs.join("linked")).unwrap();
    // A folder inside --runs whose files point outside.
    let esc = f.runs.join("esc");
    std::fs::create_dir_all(&esc).unwrap();
    for n in ["config.json", "metrics.jsonl"] {
        std::os::unix::fs::symlink(outside.join(n), esc.join(n)).unwrap();
    }
    // A link to a file inside --runs is fine.
    let inner = f.runs.join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    std::os::unix::fs::symlink(f.runs.join("demo/config.json"), inner.join("config.json")).unwrap();
    let s = start(&f.runs, &["--token", TOKEN]);

    let ids: Vec<String> = get(s.port, "/api/runs").json()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!ids.contains(&"linked".to_string()), "{ids:?}");
    assert_eq!(get(s.port, "/api/runs/linked").status, 404);
    assert_eq!(
        get(s.port, "/api/runs/linked/files/config.json").status,
        404
    );
    let r = get(s.port, "/api/runs/esc/files/config.json");
    assert_eq!(r.status, 403, "{}", r.text());
    let d = get(s.port, "/api/runs/esc").json();
    assert!(d["config"].is_null(), "{d}");
    assert_eq!(d["metrics"], serde_json::json!([]));
    assert_eq!(
        get(s.port, "/api/runs/esc/metrics.csv")
            .text()
            .lines()
            .count(),
        1
    );
    assert_eq!(get(s.port, "/api/runs/inner/files/config.json").status, 200);
}

/// A 16-bit WAV of `secs` seconds: a 220 Hz tone with a slow vibrato.
fn tone_wav(path: &Path, secs: f64) {
    let n = (secs * 16_000.0) as usize;
    write_wav_i16(
        path,
        16_000,
        (0..n).map(|i| {
            let t = i as f64 / 16_000.0;
            (8000.0 * (2.0 * std::f64::consts::PI * (220.0 + 20.0 * (3.0 * t).sin()) * t).sin())
                as i16
        }),
    );
}

#[test]
fn predict_answers_as_the_cli_does_and_refuses_bad_uploads() {
    let f = fixture();
    let run = f.runs.join("demo");
    train_tiny(&f.corpus, &run, 2);
    let wav = f.root.join("clip.wav");
    tone_wav(&wav, 2.0);
    let cli = run_ok(
        ser()
            .args(["predict", "--json", "--model"])
            .arg(&run)
            .arg(&wav),
    );
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    // a run trained on 0.5-s crops, so tta= has crops of the 2-s clip to average
    let short = f.runs.join("short");
    run_ok(
        ser()
            .args(["train", "--epochs", "1", "--max-seconds", "0.5", "--data"])
            .arg(&f.corpus)
            .arg("--out")
            .arg(&short)
            .args(TINY_MODEL),
    );
    let cli_tta = |n: &str| -> serde_json::Value {
        let o = run_ok(
            ser()
                .args(["predict", "--json", "--tta", n, "--model"])
                .arg(&short)
                .arg(&wav),
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (cli_tta1, cli_tta4) = (cli_tta("1"), cli_tta("4"));
    assert_ne!(cli_tta1["probabilities"], cli_tta4["probabilities"]);
    let timeline_png = f.root.join("timeline.png");
    let cli_win = run_ok(
        ser()
            .args([
                "predict", "--json", "--window", "0.5", "--hop", "0.25", "--model",
            ])
            .arg(&run)
            .arg("--timeline-png")
            .arg(&timeline_png)
            .arg(&wav),
    );
    let cli_win: Vec<serde_json::Value> = String::from_utf8_lossy(&cli_win.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let s = start(
        &f.runs,
        &[
            "--token",
            TOKEN,
            "--max-upload-mb",
            "1",
            "--workers",
            "1",
            "--queue",
            "0",
        ],
    );
    let p = s.port;
    let bytes = std::fs::read(&wav).unwrap();
    let r = post_audio(p, "/api/predict?run=demo", &bytes);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["label"], cli["label"]);
    assert!((v["duration_s"].as_f64().unwrap() - cli["duration_s"].as_f64().unwrap()).abs() < 1e-9);
    // The same model on the same samples: equal to the last bit the JSON keeps.
    assert_eq!(v["probabilities"], cli["probabilities"]);
    assert!(v.get("windows").is_none() && v.get("timeline_svg").is_none());
    // tta=N as `predict --tta N`; the worker's model goes back to whole clips after it
    for (q, want) in [
        ("&tta=4", &cli_tta4),
        ("", &cli_tta1),
        ("&tta=1", &cli_tta1),
    ] {
        let r = post_audio(p, &format!("/api/predict?run=short{q}"), &bytes);
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        assert_eq!(r.json()["probabilities"], want["probabilities"], "{q}");
    }

    let r = post_audio(
        p,
        "/api/predict?run=demo&window=0.5&hop=0.25&name=clip.wav",
        &bytes,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let w = r.json()["windows"].as_array().unwrap().clone();
    // The page's timeline is the picture `predict --timeline-png` wrote, to the byte.
    let svg = r.json()["timeline_svg"].as_str().unwrap().to_string();
    assert!(svg.starts_with("<svg") && svg.contains(">clip.wav</text>"));
    let drawn = ser_engine::chart::png(&svg).unwrap();
    assert!(
        drawn == std::fs::read(&timeline_png).unwrap(),
        "the timeline_svg is not the PNG of predict --timeline-png"
    );
    assert_eq!(w.len(), cli_win.len());
    for (a, b) in w.iter().zip(&cli_win) {
        assert_eq!(a["start_s"], b["start_s"]);
        assert_eq!(a["label"], b["label"]);
        assert_eq!(a["probabilities"], b["probabilities"]);
    }

    // Bad audio: 400 with the CLI's message, without the server's temporary path.
    let bad = post_audio(p, "/api/predict?run=demo", b"this is not audio at all");
    assert_eq!(bad.status, 400);
    let msg = bad.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("not a recognised audio file"), "{msg}");
    assert!(
        !msg.contains("/tmp") && !msg.contains("ser-engine-upload"),
        "{msg}"
    );
    let long_name = format!("/api/predict?run=demo&name={}", "x".repeat(201));
    for (path, status) in [
        ("/api/predict?run=nope", 404),
        ("/api/predict", 400),
        ("/api/predict?run=demo&window=-1", 400),
        ("/api/predict?run=demo&window=abc", 400),
        ("/api/predict?run=demo&hop=0.5", 400),
        ("/api/predict?run=demo&tta=0", 400),
        ("/api/predict?run=demo&tta=17", 400),
        ("/api/predict?run=demo&tta=abc", 400),
        ("/api/predict?run=demo&name=a%0Ab", 400),
        (long_name.as_str(), 400),
    ] {
        let r = post_audio(p, path, &bytes);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    let form = request(
        p,
        "POST",
        "/api/predict?run=demo",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &bytes,
    );
    assert_eq!(form.status, 415);

    // Over --max-upload-mb: refused from the declared length...
    let mut s1 = TcpStream::connect(("127.0.0.1", p)).unwrap();
    write!(
        s1,
        "POST /api/predict?run=demo HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: audio/wav\r\nContent-Length: 1000001\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_response(&mut s1).status, 413);
    // ...and, without one, when the streamed body passes the limit.
    let mut s2 = TcpStream::connect(("127.0.0.1", p)).unwrap();
    write!(
        s2,
        "POST /api/predict?run=demo HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: audio/wav\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let block = vec![0u8; 64 * 1024];
    for _ in 0..20 {
        if write!(s2, "{:x}\r\n", block.len()).is_err()
            || s2.write_all(&block).is_err()
            || s2.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s2.write_all(b"0\r\n\r\n");
    let big = read_response(&mut s2);
    assert_eq!(big.status, 413, "{}", big.text());

    // One worker, no queue: while an upload is in flight, another request gets 503.
    let mut slow = TcpStream::connect(("127.0.0.1", p)).unwrap();
    write!(
        slow,
        "POST /api/predict?run=demo HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: audio/wav\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    )
    .unwrap();
    slow.write_all(&bytes[..100]).unwrap();
    slow.flush().unwrap();
    // Give the slow request time to take the only permit before any other request runs: a
    // request admitted first would hold the permit for its inference, and the slow one,
    // arriving then, would itself be answered 503 (seen on a loaded 2-core CI machine).
    std::thread::sleep(Duration::from_millis(1000));
    let t0 = Instant::now();
    let full = loop {
        let r = post_audio(p, "/api/predict?run=demo", &bytes);
        // The server may not have admitted the slow request yet.
        if r.status == 503 || t0.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(full.status, 503, "{}", full.text());
    assert!(full.header("Retry-After").is_some());
    slow.write_all(&bytes[100..]).unwrap();
    let done = read_response(&mut slow);
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json()["label"], cli["label"]);
    assert_eq!(post_audio(p, "/api/predict?run=demo", &bytes).status, 200);
}

#[test]
fn live_chunks_give_the_latest_window() {
    let f = fixture();
    train_tiny(&f.corpus, &f.runs.join("demo"), 1);
    let s = start(&f.runs, &["--token", TOKEN]);
    let pcm: Vec<u8> = (0..8000)
        .flat_map(|i| {
            let t = i as f64 / 16_000.0;
            ((6000.0 * (2.0 * std::f64::consts::PI * 200.0 * t).sin()) as i16).to_le_bytes()
        })
        .collect();
    let path = "/api/live?run=demo&session=abc-1&rate=16000&window=1";
    let mut last = serde_json::Value::Null;
    for k in 1..=4 {
        let r = post_audio(s.port, path, &pcm);
        assert_eq!(r.status, 200, "{}", r.text());
        last = r.json();
        assert!((last["received_s"].as_f64().unwrap() - 0.5 * k as f64).abs() < 1e-9);
    }
    assert!(last["label"].is_string(), "{last}");
    assert!(
        (last["end_s"].as_f64().unwrap() - last["start_s"].as_f64().unwrap() - 1.0).abs() < 1e-9
    );
    assert!(last["latency_ms"].as_f64().unwrap() >= 0.0);
    for bad in [
        "/api/live?run=demo&session=&rate=16000",
        "/api/live?run=demo&session=a/b&rate=16000",
        "/api/live?run=demo&session=x&rate=10",
        "/api/live?run=demo&session=x&rate=16000&window=60",
    ] {
        assert_eq!(post_audio(s.port, bad, &pcm).status, 400, "{bad}");
    }
    assert_eq!(post_audio(s.port, path, &pcm[..3]).status, 400);
    let end = request(s.port, "DELETE", "/api/live?session=abc-1", &[], b"");
    assert_eq!(end.json()["ended"], true);
}

/// Reads SSE events from `s` until `done` holds or 60 s pass; returns (event, data) pairs.
fn read_events(
    r: &mut BufReader<TcpStream>,
    seen: &mut Vec<(String, serde_json::Value)>,
    done: impl Fn(&[(String, serde_json::Value)]) -> bool,
) {
    let t0 = Instant::now();
    let mut event = String::new();
    while !done(seen) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "events so far: {seen:?}"
        );
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            panic!("the stream ended; events: {seen:?}");
        }
        let line = line.trim_end();
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            seen.push((event.clone(), serde_json::from_str(d).unwrap()));
        }
    }
}

#[test]
fn new_runs_appear_and_training_streams_its_epochs() {
    let f = fixture();
    let s = start(&f.runs, &["--token", TOKEN]);
    assert_eq!(
        get(s.port, "/api/runs").json()["runs"],
        serde_json::json!([])
    );
    assert_eq!(get(s.port, "/api/runs/live/events").status, 404);

    // A run made while the server runs.
    let run = f.runs.join("live");
    train_tiny(&f.corpus, &run, 2);
    let ids = get(s.port, "/api/runs").json()["runs"][0]["id"].clone();
    assert_eq!(ids, "live");

    let mut sock = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        sock,
        "GET /api/runs/live/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(sock);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut seen = Vec::new();
    let epochs = |seen: &[(String, serde_json::Value)]| -> Vec<u64> {
        seen.iter()
            .filter(|(e, _)| e == "epoch")
            .map(|(_, d)| d["epoch"].as_u64().unwrap())
            .collect()
    };
    read_events(&mut r, &mut seen, |s| {
        epochs(s).len() == 2 && s.iter().any(|(e, _)| e == "state")
    });
    assert!(seen
        .iter()
        .any(|(e, d)| e == "state" && d["state"] == "finished"));

    // Training goes on while the stream is open: its new epochs arrive on it.
    let mut more = Command::new(env!("CARGO_BIN_EXE_ser-engine"))
        .args([
            "-q",
            "--device",
            "cpu",
            "--threads",
            "2",
            "train",
            "--resume",
        ])
        .arg(&run)
        .args(["--epochs", "4"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    read_events(&mut r, &mut seen, |s| epochs(s).len() >= 4);
    assert!(more.wait().unwrap().success());
    assert_eq!(epochs(&seen), [1, 2, 3, 4]);
    let on_disk = metrics_lines(&run);
    let streamed: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|(e, _)| e == "epoch")
        .map(|(_, d)| d)
        .collect();
    for (a, b) in streamed.iter().zip(&on_disk) {
        assert_eq!(*a, b);
    }
}
