//! The page of `ser-engine serve` in a real browser: Debian's chromium driven over WebDriver
//! (chromedriver, plain JSON over HTTP). Loads the page, sees the runs, opens a run and its 20
//! epochs, sees a training's new epoch arrive without a reload, uploads a WAV and records from
//! a fake microphone, and checks the labels against `predict`. Screenshots go to
//! target/serve-browser/. Without chromium and chromedriver (tools/install-chromium.sh) the
//! test prints a notice and skips.

mod common;

use common::cli::{run_ok, ser, tiny_corpus, train_tiny, write_wav_i16, TINY_MODEL};
use common::http::{exchange, Resp};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "browser-token-0123456789";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A WebDriver session on chromedriver at `port`.
struct Browser {
    port: u16,
    session: String,
}

impl Browser {
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("/session/{}{path}", self.session);
        let r = wd(self.port, method, &url, &body);
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        r.json()["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    /// Runs `script` until it returns something other than null/false, for up to `secs`.
    fn wait_for(&self, what: &str, secs: u64, script: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == json!(false)) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "waited {secs} s for {what}; page: {}",
                self.js("return document.getElementById('app').innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .unwrap()
            .to_string()
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/click"), json!({}));
    }

    fn screenshot(&self, name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/serve-browser");
        self.screenshot_to(&dir.join(name));
    }

    fn screenshot_to(&self, path: &Path) {
        let b64 = self.call("GET", "/screenshot", json!(null));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, base64_decode(b64.as_str().unwrap())).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = wd(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            &json!(null),
        );
    }
}

fn wd(port: u16, method: &str, path: &str, body: &Value) -> Resp {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let host = format!("127.0.0.1:{port}");
    exchange(
        port,
        method,
        path,
        &[("Host", &host), ("Content-Type", "application/json")],
        &bytes,
    )
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= (val(c) as u32) << (18 - 6 * i);
        }
        let bytes = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

fn predict_label(run: &Path, wav: &Path) -> String {
    let out = run_ok(
        ser()
            .args(["predict", "--json", "--model"])
            .arg(run)
            .arg(wav),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["label"].as_str().unwrap().to_string()
}

/// chromedriver on a free port and a headless chromium session with a fake microphone that
/// plays `clip` once.
fn open_chromium(
    chromium: &Path,
    driver: &Path,
    profile: &Path,
    clip: &Path,
    window: (u32, u32),
) -> (Killed, Browser) {
    let dport = free_port();
    let driver_proc = Killed(
        Command::new(driver)
            .arg(format!("--port={dport}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", dport)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        format!("--window-size={},{}", window.0, window.1),
        format!("--user-data-dir={}", profile.display()),
        "--use-fake-device-for-media-stream".into(),
        "--use-fake-ui-for-media-stream".into(),
        format!(
            "--use-file-for-fake-audio-capture={}%noloop",
            clip.display()
        ),
    ];
    eprintln!("starting chromium ({:.1} s)", t0.elapsed().as_secs_f64());
    let r = wd(
        dport,
        "POST",
        "/session",
        &json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium.to_str().unwrap(), "args": args },
        }}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let b = Browser {
        port: dport,
        session: r.json()["value"]["sessionId"].as_str().unwrap().to_string(),
    };
    (driver_proc, b)
}

#[test]
fn the_page_in_chromium() {
    let (Some(chromium), Some(driver)) = (which("chromium"), which("chromedriver")) else {
        eprintln!(
            "skipped: chromium and chromedriver not installed (bash tools/install-chromium.sh)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let corpus = tiny_corpus(root);
    let runs = root.join("runs");
    train_tiny(&corpus, &runs.join("demo"), 20);
    train_tiny(&corpus, &runs.join("live"), 2);
    // The paper's Table 3 on two folds, one epoch each: the kernel-size chart.
    run_ok(
        ser()
            .args(["sweep", "--table3", "--data"])
            .arg(&corpus)
            .arg("--out")
            .arg(runs.join("table3"))
            .args(["--folds", "2", "--epochs", "1"])
            .args(TINY_MODEL),
    );
    // The clip the page uploads and the fake microphone plays: 2 s of one class's voice.
    let clip = root.join("clip.wav");
    let first = std::fs::read_dir(corpus.join("anger"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .min()
        .unwrap();
    let a = hound::WavReader::open(&first)
        .unwrap()
        .into_samples::<i16>()
        .map(|s| s.unwrap())
        .collect::<Vec<_>>();
    write_wav_i16(&clip, 16_000, a.iter().chain(a.iter()).copied());

    let server = common::http::start_serve(&runs, &["--token", TOKEN]);
    let url = server.url_line.trim().to_string();
    let base = url.split("/?").next().unwrap().to_string();

    let (_driver, b) = open_chromium(
        &chromium,
        &driver,
        &root.join("profile"),
        &clip,
        (1100, 800),
    );

    // Runs: opened with the printed URL (token → cookie), both runs listed.
    b.goto(&url);
    b.wait_for(
        "the runs table",
        20,
        "return document.querySelector('#runs-table tr[data-id=\"demo\"]') !== null \
         && document.querySelector('#runs-table tr[data-id=\"live\"]') !== null",
    );
    assert_eq!(b.js("return location.search"), json!(""));
    assert_eq!(
        b.js("return document.querySelector('#runs-table tr[data-id=\"demo\"] td.recipe').textContent"),
        json!("paper")
    );
    b.screenshot("runs.png");

    // One run: 20 epochs on the curves, the best epoch marked, a confusion matrix.
    b.goto(&format!("{base}/#/run/demo"));
    b.wait_for(
        "20 points of validation WA",
        20,
        "return document.querySelectorAll('#chart-acc circle[data-series=\"val WA\"]').length === 20",
    );
    assert_eq!(
        b.js("return document.querySelectorAll('#chart-loss circle[data-series=\"validation\"]').length"),
        json!(20)
    );
    assert!(b.js("return document.querySelector('#chart-acc .best') !== null") == json!(true));
    assert_eq!(
        b.js("return document.querySelectorAll('#confusion tr').length"),
        json!(6)
    );
    // The table's shades are those of `eval --confusion-png`: chart::heat_fill of the row share.
    let cells = b.js(
        "return [...document.querySelectorAll('#confusion tr')].slice(1).map(tr =>          [...tr.querySelectorAll('td')].map(td => [+td.textContent, getComputedStyle(td).backgroundColor, getComputedStyle(td).color]))",
    );
    let rgb = |hex: &str| {
        let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap();
        format!("rgb({}, {}, {})", c(1), c(3), c(5))
    };
    let rows = cells.as_array().unwrap();
    assert_eq!(rows.len(), 5);
    for row in rows {
        let row = row.as_array().unwrap();
        let total: f64 = row.iter().map(|c| c[0].as_f64().unwrap()).sum();
        for c in row {
            let share = c[0].as_f64().unwrap() / total.max(1.0);
            assert_eq!(
                c[1],
                json!(rgb(&ser_engine::chart::heat_fill(share))),
                "{row:?}"
            );
            assert_eq!(
                c[2],
                json!(rgb(ser_engine::chart::heat_ink(share))),
                "{row:?}"
            );
        }
    }
    b.screenshot("run.png");

    // A training goes on while the page is open: a new point without a reload.
    b.goto(&format!("{base}/#/run/live"));
    b.wait_for(
        "2 points",
        20,
        "return document.querySelectorAll('#chart-acc circle[data-series=\"val WA\"]').length === 2",
    );
    b.js("window.stillTheSamePage = true; return null");
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
        .arg(runs.join("live"))
        .args(["--epochs", "3"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(more.wait().unwrap().success());
    b.wait_for(
        "the third epoch",
        20,
        "return document.querySelectorAll('#chart-acc circle[data-series=\"val WA\"]').length === 3",
    );
    assert_eq!(b.js("return window.stillTheSamePage === true"), json!(true));

    // A sweep --table3 folder: the kernel-size chart, mean ± std (a bar per size and score).
    b.goto(&format!("{base}/#/run/table3"));
    b.wait_for(
        "the kernel-size chart",
        20,
        "return document.querySelectorAll('#sweep-chart .err').length === 15",
    );
    assert_eq!(
        b.js("return [...document.querySelectorAll('#sweep-chart .tick-x')].map(t => t.textContent).join(' ')"),
        json!("3 5 7 9 11")
    );
    b.screenshot("sweep.png");

    // Compare.
    b.goto(&format!("{base}/#/compare?ids=demo,live"));
    b.wait_for(
        "the compare table",
        20,
        "return document.querySelectorAll('#compare-table tr').length === 3",
    );
    // Each run's best epoch ringed on each of the three panels.
    b.wait_for(
        "the compare chart",
        20,
        "return document.querySelectorAll('#compare-charts circle.pt').length > 0",
    );
    for id in ["demo", "live"] {
        assert_eq!(
            b.js(&format!(
                "return document.querySelectorAll('#compare-charts .best-pt[data-series=\"{id}\"]').length"
            )),
            json!(3),
            "{id}"
        );
    }
    b.screenshot("compare.png");

    // Try a model: upload the clip, the label `predict` gives.
    let expected = predict_label(&runs.join("demo"), &clip);
    b.goto(&format!("{base}/#/try?run=demo"));
    let input = {
        b.wait_for(
            "the upload field",
            20,
            "return document.getElementById('try-file') !== null",
        );
        b.element("#try-file")
    };
    b.js("document.getElementById('try-window').value = '0.5'; return null");
    b.call(
        "POST",
        &format!("/element/{input}/value"),
        json!({ "text": clip.to_str().unwrap() }),
    );
    let label = b.wait_for(
        "the upload's label",
        30,
        "const e = document.getElementById('predict-label'); return e && e.textContent",
    );
    assert_eq!(label, json!(expected));
    // A bar per class, and the 3.5 s clip's seven 0.5 s windows on the timeline: the server's
    // SVG (the picture of `predict --timeline-png`), the waveform over the probabilities.
    assert_eq!(
        b.js("return document.querySelectorAll('#predict-bars .bar').length"),
        json!(5)
    );
    assert_eq!(
        b.wait_for(
            "the timeline",
            10,
            "return document.querySelector('#timeline > svg #probabilities') !== null \
             && document.querySelector('#timeline > svg #wave') !== null \
             && document.getElementById('timeline-head').textContent"
        ),
        json!("7 windows")
    );
    assert_eq!(
        b.js("return [...document.querySelectorAll('#timeline > svg text')].some(t => t.textContent === 'clip.wav')"),
        json!(true)
    );
    b.screenshot("try.png");
    b.js("document.getElementById('try-window').value = ''; return null");

    // Record from the fake microphone (the clip, played once), then classify.
    b.click("#record");
    std::thread::sleep(Duration::from_millis(3000));
    b.click("#record");
    b.wait_for(
        "the recording",
        30,
        "return document.getElementById('recording-download') !== null",
    );
    let rec_label = b.js("return document.getElementById('predict-label').textContent");
    let wav_b64 = b.js(
        "const w = document.getElementById('recording-download').wav; let s = ''; \
         for (let i = 0; i < w.length; i += 8192) s += String.fromCharCode.apply(null, w.subarray(i, i + 8192)); \
         return btoa(s)",
    );
    let rec = root.join("recording.wav");
    std::fs::write(&rec, base64_decode(wav_b64.as_str().unwrap())).unwrap();
    let spec = hound::WavReader::open(&rec).unwrap();
    let dur = spec.duration() as f64 / spec.spec().sample_rate as f64;
    assert!(dur > 2.0, "the recording lasts {dur} s");
    // Not silent: the fake microphone played the clip.
    let peak = hound::WavReader::open(&rec)
        .unwrap()
        .into_samples::<i16>()
        .map(|s| s.unwrap().unsigned_abs())
        .max()
        .unwrap();
    assert!(peak > 1000, "the recording is silent (peak {peak})");
    assert_eq!(rec_label, json!(predict_label(&runs.join("demo"), &rec)));

    // Live: the fake microphone in 0.3 s chunks; the latest window's emotion and the latency.
    b.click("#live");
    let live = b.wait_for(
        "a live label",
        20,
        "const e = document.getElementById('live-label'); \
         return e && e.textContent !== '(silent)' && document.getElementById('live-result').innerText",
    );
    let live = live.as_str().unwrap().to_string();
    let labels = ser_engine::audio::synth::CLASSES;
    let label = b.js("return document.getElementById('live-label').textContent");
    assert!(
        labels.iter().any(|l| json!(l) == label),
        "live label {label} (page: {live})"
    );
    let ms: f64 = live
        .split("latency ")
        .nth(1)
        .and_then(|t| t.split(" ms").next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no latency in '{live}'"));
    assert!(ms > 0.0 && ms.is_finite(), "{live}");
    assert_eq!(
        b.js("return document.querySelectorAll('#live-bars .bar').length"),
        json!(5)
    );
    b.screenshot("live.png");
    b.click("#live");
    assert_eq!(
        b.js("return document.getElementById('live').textContent"),
        json!("Live")
    );
}

/// The screenshots of docs/guide.md, of real runs: `tools/serve-screenshots.sh` trains them
/// into `SER_SCREENSHOT_RUNS` (`demo`, `demo-lr3e-3`, `table3`) and runs this test, which
/// writes `serve-*.png` into `SER_SCREENSHOT_OUT` (default docs/). Not part of `cargo test`.
#[test]
#[ignore = "writes docs/serve-*.png from real runs: bash tools/serve-screenshots.sh"]
fn docs_screenshots() {
    let runs = PathBuf::from(std::env::var_os("SER_SCREENSHOT_RUNS").expect("SER_SCREENSHOT_RUNS"));
    let out = std::env::var_os("SER_SCREENSHOT_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"));
    let chromium = which("chromium").expect("chromium (bash tools/install-chromium.sh)");
    let driver = which("chromedriver").expect("chromedriver");
    let dir = tempfile::tempdir().unwrap();
    // The clip for the try and live views: one synthetic clip each of anger, sadness and
    // happiness, one after another.
    let corpus = tiny_corpus(dir.path());
    let mut samples = Vec::new();
    for class in ["anger", "sadness", "happiness"] {
        let first = std::fs::read_dir(corpus.join(class))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .min()
            .unwrap();
        samples.extend(
            hound::WavReader::open(&first)
                .unwrap()
                .into_samples::<i16>()
                .map(|s| s.unwrap()),
        );
    }
    let clip = dir.path().join("three.wav");
    write_wav_i16(&clip, 16_000, samples);

    let server = common::http::start_serve(&runs, &["--token", TOKEN]);
    let url = server.url_line.trim().to_string();
    let base = url.split("/?").next().unwrap().to_string();
    let (_driver, b) = open_chromium(
        &chromium,
        &driver,
        &dir.path().join("profile"),
        &clip,
        (1300, 900),
    );
    b.goto(&url);
    b.wait_for(
        "the runs table",
        20,
        "return document.querySelector('#runs-table tr[data-id=\"demo\"]') !== null",
    );
    b.screenshot_to(&out.join("serve-runs.png"));
    b.goto(&format!("{base}/#/run/demo"));
    b.wait_for(
        "the curves",
        20,
        "return document.querySelectorAll('#chart-acc circle').length > 0 \
         && document.querySelector('#confusion') !== null",
    );
    b.screenshot_to(&out.join("serve-run.png"));
    b.goto(&format!("{base}/#/run/table3"));
    b.wait_for(
        "the kernel-size chart",
        20,
        "return document.querySelectorAll('#sweep-chart .err').length > 0",
    );
    b.screenshot_to(&out.join("serve-sweep.png"));
    b.goto(&format!("{base}/#/compare?ids=demo,demo-lr3e-3"));
    b.wait_for(
        "the compare charts",
        20,
        "return document.querySelectorAll('#cmp-wa circle').length > 0",
    );
    b.screenshot_to(&out.join("serve-compare.png"));
    b.goto(&format!("{base}/#/try?run=demo"));
    b.wait_for(
        "the upload field",
        20,
        "return document.getElementById('try-file') !== null",
    );
    let input = b.element("#try-file");
    b.js("document.getElementById('try-window').value = '1'; return null");
    b.call(
        "POST",
        &format!("/element/{input}/value"),
        json!({ "text": clip.to_str().unwrap() }),
    );
    b.wait_for(
        "the timeline",
        30,
        "return document.querySelector('#timeline > svg #probabilities') !== null",
    );
    b.screenshot_to(&out.join("serve-try.png"));
    b.js("document.getElementById('try-window').value = ''; return null");
    b.click("#live");
    b.wait_for(
        "a live label",
        20,
        "const e = document.getElementById('live-label'); return e && e.textContent !== '(silent)' \
         && document.querySelectorAll('#live-result svg rect').length >= 4",
    );
    b.screenshot_to(&out.join("serve-live.png"));
    b.click("#live");
}
