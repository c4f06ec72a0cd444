//! `predict --timeline-png`: the waveform on top and every class's probability over time
//! below (one step line per class, silent windows left blank), with a time axis and legend.
//!
//! Memory: the waveform is kept as a min/max envelope of 10 ms blocks (8 bytes per 10 ms,
//! 2.9 MB for an hour) and the windows' probabilities, so a long recording stays cheap.
//!
//! Layer: infer (using a trained model; below cli). May use `train` (run folders), `cpu`,
//! `features`, `model`, `audio`, `device` and the shared modules (`rng`, `isa`, `cache`,
//! `atomic_file`); never `cli`.

use super::WindowResult;
use crate::train::plot::{Canvas, PALETTE};
use anyhow::Result;
use std::path::Path;

const BLACK: [u8; 3] = [0, 0, 0];
const GREY: [u8; 3] = [200, 200, 200];
const WAVE: [u8; 3] = [90, 90, 90];

pub struct Timeline {
    rate: u32,
    block: usize,
    /// (min, max) of each block of `block` samples.
    env: Vec<(f32, f32)>,
    /// Samples already in the last, incomplete block.
    fill: usize,
    rows: Vec<(f64, f64, Option<Vec<f64>>)>,
}

impl Timeline {
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            block: (rate as usize / 100).max(1),
            env: Vec::new(),
            fill: 0,
            rows: Vec::new(),
        }
    }

    pub fn add_samples(&mut self, s: &[f32]) {
        for &x in s {
            if self.fill == 0 {
                self.env.push((x, x));
            } else {
                let e = self.env.last_mut().expect("a block was started");
                e.0 = e.0.min(x);
                e.1 = e.1.max(x);
            }
            self.fill = (self.fill + 1) % self.block;
        }
    }

    pub fn add_window(&mut self, r: &WindowResult) {
        self.rows
            .push((r.start_s, r.end_s, r.probabilities.clone()));
    }

    /// Draws the picture and writes it atomically.
    pub fn save(&self, path: &Path, title: &str, labels: &[String]) -> Result<()> {
        let (w, left, right) = (1200i64, 60i64, 140i64);
        let (top, wave_h, gap, prob_h, bottom) = (36i64, 110i64, 20i64, 260i64, 40i64);
        let h = top + wave_h + gap + prob_h + bottom;
        let mut cv = Canvas::new(w as usize, h as usize);
        cv.text(left, 10, title, BLACK, 2);
        let duration = (self.env.len() * self.block) as f64 / self.rate as f64;
        let duration = duration
            .max(self.rows.iter().map(|r| r.1).fold(0.0, f64::max))
            .max(1e-3);
        let pw = (w - left - right) as f64;
        let px = |t: f64| left + (t / duration * pw).round() as i64;
        // Waveform: the envelope's extremes over each pixel column.
        let mid = top + wave_h / 2;
        cv.line((left, mid), (w - right, mid), GREY, 1);
        let blocks_per_px = self.env.len() as f64 / pw;
        for x in 0..(w - left - right) {
            let a = (x as f64 * blocks_per_px) as usize;
            let b = (((x + 1) as f64 * blocks_per_px) as usize).max(a + 1);
            let Some(seg) = self.env.get(a..b.min(self.env.len())) else {
                break;
            };
            if seg.is_empty() {
                break;
            }
            let lo = seg.iter().map(|e| e.0).fold(f32::MAX, f32::min).max(-1.0);
            let hi = seg.iter().map(|e| e.1).fold(f32::MIN, f32::max).min(1.0);
            let y = |v: f32| mid - (v as f64 * (wave_h / 2) as f64) as i64;
            cv.line((left + x, y(hi)), (left + x, y(lo)), WAVE, 1);
        }
        cv.text(5, mid - 4, "wave", BLACK, 1);
        // Probabilities.
        let p0 = top + wave_h + gap;
        let py = |p: f64| p0 + ((1.0 - p) * prob_h as f64).round() as i64;
        for k in 0..=4 {
            let p = k as f64 / 4.0;
            cv.line((left, py(p)), (w - right, py(p)), GREY, 1);
            cv.text(5, py(p) - 4, &format!("{p:.2}"), BLACK, 1);
        }
        cv.line((left, p0), (left, p0 + prob_h), BLACK, 1);
        cv.line((left, p0 + prob_h), (w - right, p0 + prob_h), BLACK, 1);
        for k in 0..=5 {
            let t = duration * k as f64 / 5.0;
            cv.text(px(t) - 12, p0 + prob_h + 8, &fmt_time(t), BLACK, 1);
        }
        cv.text(left, h - 14, "time (s)", BLACK, 1);
        // Each window's probability drawn at its centre, joined to the next loud window.
        for (c, label) in labels.iter().enumerate() {
            let color = PALETTE[c % PALETTE.len()];
            let mut prev: Option<(i64, i64)> = None;
            for (s, e, p) in &self.rows {
                match p {
                    Some(p) => {
                        let pt = (px((s + e) / 2.0), py(p[c]));
                        cv.line(prev.unwrap_or(pt), pt, color, 2);
                        prev = Some(pt);
                    }
                    None => prev = None,
                }
            }
            let ly = p0 + 10 + 16 * c as i64;
            cv.rect(w - right + 10, ly, 12, 8, color);
            cv.text(w - right + 28, ly, label, BLACK, 1);
        }
        cv.save_png(path)
    }
}

fn fmt_time(t: f64) -> String {
    if t >= 120.0 {
        format!("{}:{:02}", (t / 60.0) as u64, (t % 60.0) as u64)
    } else {
        format!("{t:.1}")
    }
}
