//! `predict --timeline-png`: the waveform on top and every class's probability over time
//! below (one line per class, silent windows left blank), with a time axis and legend, drawn
//! with [`crate::chart`].
//!
//! Memory: the waveform is kept as a min/max envelope of 10 ms blocks (8 bytes per 10 ms,
//! 2.9 MB for an hour) and the windows' probabilities, so a long recording stays cheap.
//!
//! Layer: infer (using a trained model; below cli). May use `train` (run folders), `backend`,
//! `cpu`, `features`, `model`, `audio`, `device` and the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`, `chart`); never `cli`.

use super::WindowResult;
use crate::chart::{Panel, Series, Svg};
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Debug)]
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

    /// The picture as SVG ([`crate::chart`]): the waveform's envelope on top, each class's
    /// probability per window (at the window's centre; silent windows break the lines) below.
    pub fn svg(&self, title: &str, labels: &[String]) -> String {
        let (w, left, right) = (1200.0, 62.0, 14.0);
        let (top, wave_h, prob_h) = (34.0, 110.0, 330.0);
        let mut svg = Svg::new(w, top + wave_h + prob_h);
        svg.text(8.0, 19.0, title, "start", r#"font-size="15""#);
        let duration = (self.env.len() * self.block) as f64 / self.rate as f64;
        let duration = duration
            .max(self.rows.iter().map(|r| r.1).fold(0.0, f64::max))
            .max(1e-3);
        let pw = w - left - right;
        // Waveform: the envelope's extremes over each pixel column (one path).
        let mid = top + wave_h / 2.0;
        svg.line((left, mid), (w - right, mid), "#dddddd", "");
        svg.text(left - 7.0, mid + 4.5, "wave", "end", "");
        let blocks_per_px = self.env.len() as f64 / pw;
        let mut d = String::new();
        for x in 0..pw as usize {
            let a = (x as f64 * blocks_per_px) as usize;
            let b = (((x + 1) as f64 * blocks_per_px) as usize).max(a + 1);
            let Some(seg) = self.env.get(a..b.min(self.env.len())) else {
                break;
            };
            if seg.is_empty() {
                break;
            }
            let lo = seg.iter().map(|e| e.0).fold(f32::MAX, f32::min).max(-1.0) as f64;
            let hi = seg.iter().map(|e| e.1).fold(f32::MIN, f32::max).min(1.0) as f64;
            let y = |v: f64| mid - v * (wave_h / 2.0 - 4.0);
            let _ = write!(
                d,
                "M{:.1},{:.1}V{:.1}",
                left + x as f64 + 0.5,
                y(hi),
                y(lo).max(y(hi) + 1.0)
            );
        }
        svg.raw(&format!(
            "<path id=\"wave\" d=\"{d}\" stroke=\"#5a5a5a\" stroke-width=\"1\" fill=\"none\"/>\n"
        ));
        // Probabilities: a panel with time as x (minutes past 2 minutes), over the recording.
        let unit = if duration >= 120.0 { 60.0 } else { 1.0 };
        let series: Vec<Series> = labels
            .iter()
            .enumerate()
            .map(|(c, label)| {
                let pts = self
                    .rows
                    .iter()
                    .map(|(s, e, p)| ((s + e) / 2.0 / unit, p.as_ref().map_or(f64::NAN, |p| p[c])));
                Series::new(label, c, pts.collect())
            })
            .collect();
        let panel = Panel {
            id: "probabilities".into(),
            title: String::new(),
            x_label: if unit > 1.0 { "time (min)" } else { "time (s)" }.into(),
            y_label: "probability".into(),
            series,
            y_range: Some((0.0, 1.0)),
            hide_points: self.rows.len() > 200,
            x_range: Some((0.0, duration / unit)),
            ..Default::default()
        };
        svg.panel(&panel, 0.0, top + wave_h - 24.0, w, prob_h + 24.0);
        svg.finish()
    }

    /// Draws the picture and writes it atomically as PNG (`-`: standard output).
    pub fn save(&self, path: &Path, title: &str, labels: &[String]) -> Result<()> {
        crate::chart::save_png(path, &self.svg(title, labels))
    }
}
