//! Inference for the server: a fixed set of worker threads, each with its own copy of the
//! model it used last, fed through a channel; never on the threads that handle HTTP.
//!
//! Admission is bounded: a predict request takes a [`Permit`] before its upload is read and
//! keeps it until it is answered, and at most `workers + queue` permits exist. Uploads in
//! progress, queued and running requests all count, so temporary files and queued work stay
//! bounded whatever the clients do; past the bound the server answers 503.

use crate::device::DeviceChoice;
use crate::infer::file::{classify_file, FileResult, MAX_CLIP_S};
use crate::infer::{Classifier, WindowResult};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// What a worker is asked to classify.
pub enum Work {
    /// A file (a finished upload), as `predict` would.
    File {
        path: PathBuf,
        window: Option<(f64, f64)>,
        /// `predict --tta` (1: off).
        tta: usize,
        /// The uploaded file's name: the timeline's title, as `predict` titles it.
        name: String,
    },
    /// Samples at the model's rate, in one piece (the live mode's latest window).
    Samples(Vec<f32>),
}

pub struct Job {
    pub run_dir: PathBuf,
    pub work: Work,
    pub reply: mpsc::Sender<Answer>,
}

/// A worker's answer: the JSON body, or an HTTP status and message.
pub type Answer = Result<serde_json::Value, (u16, String)>;

/// A place in the bounded set of predict requests in flight; released on drop.
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Pool {
    tx: Mutex<mpsc::Sender<Job>>,
    in_flight: Arc<AtomicUsize>,
    limit: usize,
}

impl Pool {
    /// Starts `workers` threads; at most `workers + queue` requests are admitted at once.
    pub fn new(workers: usize, queue: usize, device: DeviceChoice) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("infer-{i}"))
                .spawn(move || worker(rx, device))
                .expect("spawn an inference worker");
        }
        Self {
            tx: Mutex::new(tx),
            in_flight: Arc::new(AtomicUsize::new(0)),
            limit: workers + queue,
        }
    }

    /// A permit, or None when the bound is reached (the caller answers 503).
    pub fn try_admit(&self) -> Option<Permit> {
        let mut cur = self.in_flight.load(Ordering::SeqCst);
        loop {
            if cur >= self.limit {
                return None;
            }
            match self
                .in_flight
                .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(Permit(Arc::clone(&self.in_flight))),
                Err(now) => cur = now,
            }
        }
    }

    /// Runs `work` on a worker and waits for its answer.
    pub fn run(&self, _permit: &Permit, run_dir: &Path, work: Work) -> Answer {
        let (reply, answer) = mpsc::channel();
        let job = Job {
            run_dir: run_dir.to_path_buf(),
            work,
            reply,
        };
        if self.tx.lock().expect("pool lock").send(job).is_err() {
            return Err((500, "the inference workers have stopped".to_string()));
        }
        answer
            .recv()
            .unwrap_or_else(|_| Err((500, "an inference worker stopped".to_string())))
    }
}

/// A loaded model and what it was loaded from (reloaded when training writes a better one).
struct Loaded {
    dir: PathBuf,
    stamp: Option<SystemTime>,
    clf: Classifier,
}

fn model_stamp(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join("model.safetensors"))
        .and_then(|m| m.modified())
        .ok()
}

fn worker(rx: Arc<Mutex<mpsc::Receiver<Job>>>, device: DeviceChoice) {
    let mut loaded: Option<Loaded> = None;
    loop {
        let job = match rx.lock() {
            Ok(r) => match r.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let answer = serve_job(&mut loaded, &job, device);
        let _ = job.reply.send(answer);
    }
}

fn serve_job(loaded: &mut Option<Loaded>, job: &Job, device: DeviceChoice) -> Answer {
    let stamp = model_stamp(&job.run_dir);
    let fresh = loaded
        .as_ref()
        .is_some_and(|l| l.dir == job.run_dir && l.stamp == stamp);
    if !fresh {
        *loaded = None;
        if stamp.is_none() {
            return Err((
                404,
                "this run has no model yet (model.safetensors is written after its first epoch)"
                    .to_string(),
            ));
        }
        let clf = Classifier::load(&job.run_dir, device)
            .map_err(|e| (500, format!("cannot load the model: {e:#}")))?;
        *loaded = Some(Loaded {
            dir: job.run_dir.clone(),
            stamp,
            clf,
        });
    }
    let clf = &mut loaded.as_mut().expect("loaded above").clf;
    let labels = clf.cfg.labels.clone();
    let t0 = Instant::now();
    match &job.work {
        Work::File {
            path,
            window,
            tta,
            name,
        } => {
            clf.set_tta(*tta);
            let r = classify_file(clf, path, *window, MAX_CLIP_S).map_err(|e| {
                // The CLI's message, with the temporary file's name replaced.
                let msg = format!("{e:#}").replace(&path.display().to_string(), "upload");
                (400, msg)
            })?;
            Ok(file_json(&labels, &r, name, t0))
        }
        Work::Samples(samples) => {
            clf.set_tta(1); // the live window whole, whatever the last upload asked
            let rate = clf.cfg.sample_rate;
            let rms = crate::infer::window::rms_dbfs(samples);
            let silent = rms < crate::infer::file::SILENCE_DBFS;
            let p = if silent {
                None
            } else {
                let lm =
                    Classifier::features(&clf.cfg, samples).map_err(|e| (400, format!("{e:#}")))?;
                Some(
                    clf.probabilities(&[&lm])
                        .map_err(|e| (500, format!("{e:#}")))?
                        .remove(0),
                )
            };
            let w = WindowResult {
                start_s: 0.0,
                end_s: samples.len() as f64 / rate as f64,
                rms_dbfs: rms,
                probabilities: p,
            };
            let mut v = window_json(&labels, &w);
            v["latency_ms"] = serde_json::json!(t0.elapsed().as_secs_f64() * 1e3);
            Ok(v)
        }
    }
}

fn probs_json(labels: &[String], p: &[f64]) -> serde_json::Value {
    labels
        .iter()
        .zip(p)
        .map(|(l, &v)| (l.clone(), serde_json::json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn label_of(labels: &[String], p: &[f64]) -> String {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    labels[best].clone()
}

/// A window as `predict --window --json` prints it (without the file name).
fn window_json(labels: &[String], w: &WindowResult) -> serde_json::Value {
    let p = w.probabilities.as_deref();
    serde_json::json!({
        "start_s": w.start_s, "end_s": w.end_s,
        "rms_dbfs": w.rms_dbfs.is_finite().then_some(w.rms_dbfs),
        "silent": p.is_none(),
        "label": p.map(|p| label_of(labels, p)),
        "probabilities": p.map(|p| probs_json(labels, p)),
    })
}

/// The fields of `predict --json` for a file, plus the labels in the model's order and, when
/// windows were asked for, `windows` and `timeline_svg`: the SVG that
/// `predict --window .. --timeline-png` rasterises.
fn file_json(labels: &[String], r: &FileResult, name: &str, t0: Instant) -> serde_json::Value {
    let p = r.probabilities.as_deref();
    let mut v = serde_json::json!({
        "file": "upload",
        "duration_s": r.duration_s,
        "windows_averaged": r.windows_averaged,
        "label": p.map(|p| label_of(labels, p)),
        "probabilities": p.map(|p| probs_json(labels, p)),
        "labels": labels,
        "elapsed_ms": t0.elapsed().as_secs_f64() * 1e3,
    });
    if let Some(t) = &r.timeline {
        v["windows"] = r.windows.iter().map(|w| window_json(labels, w)).collect();
        v["timeline_svg"] = t.svg(name, labels).into();
    }
    v
}
