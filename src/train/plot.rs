//! Small PNG charts without a plotting stack: a confusion-matrix heat map and learning curves,
//! drawn into an RGB buffer with the public-domain 8x8 bitmap font (font8x8).
//!
//! Layer: train (beside engine, below cli). May use `cpu`, `features`, `model`, `audio`,
//! `device` and the shared modules (`rng`, `isa`, `cache`, `atomic_file`); never `cli`, and not
//! `engine` (the device backend is chosen above it).

use anyhow::{Context, Result};
use std::path::Path;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GREY: Rgb = [200, 200, 200];
/// Line colours for successive series (colour-blind-friendly Okabe–Ito palette).
pub const PALETTE: [Rgb; 8] = [
    [0, 114, 178],
    [213, 94, 0],
    [0, 158, 115],
    [204, 121, 167],
    [230, 159, 0],
    [86, 180, 233],
    [240, 228, 66],
    [0, 0, 0],
];

/// An RGB canvas, row-major, origin at the top left.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<Rgb>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![WHITE; width * height],
        }
    }

    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            self.pixels[y as usize * self.width + x as usize] = c;
        }
    }

    pub fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: Rgb) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, c);
            }
        }
    }

    /// Bresenham line, `thick` pixels wide.
    pub fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb, thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.rect(x0 - thick / 2, y0 - thick / 2, thick, thick, c);
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }

    /// Text in the 8x8 font scaled by `scale`; returns the width drawn.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: i64) -> i64 {
        let mut cx = x;
        for ch in s.chars() {
            let glyph = font8x8::legacy::BASIC_LEGACY[(ch as usize).min(127)];
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.rect(cx + col * scale, y + row as i64 * scale, scale, scale, c);
                    }
                }
            }
            cx += 8 * scale;
        }
        cx - x
    }

    /// Writes the canvas as an 8-bit RGB PNG, atomically (encoded in memory, then
    /// `atomic_write`, so a full disk is an error naming `path`, never a cut-short file).
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc
                .write_header()
                .with_context(|| format!("{}: cannot encode PNG", path.display()))?;
            w.write_image_data(self.pixels.as_flattened())
                .with_context(|| format!("{}: cannot encode PNG", path.display()))?;
            w.finish()
                .with_context(|| format!("{}: cannot encode PNG", path.display()))?;
        }
        crate::train::run::atomic_write(path, &bytes)
    }
}

/// Confusion matrix heat map: rows are true classes, columns predictions; each cell shows
/// its count and is shaded by the row-normalised fraction.
pub fn confusion_png(
    path: &Path,
    counts: &[Vec<u64>],
    labels: &[String],
    title: &str,
) -> Result<()> {
    let n = labels.len();
    let cell = 64i64;
    let label_w = 8 * 2 * labels.iter().map(|l| l.len()).max().unwrap_or(4).min(14) as i64 + 16;
    let top = 70i64;
    let (w, h) = (label_w + cell * n as i64 + 20, top + cell * n as i64 + 40);
    let mut cv = Canvas::new(w as usize, h as usize);
    cv.text(10, 10, title, BLACK, 2);
    cv.text(label_w, 40, "predicted ->", BLACK, 2);
    for (i, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum::<u64>().max(1);
        for (j, &c) in row.iter().enumerate() {
            let f = c as f64 / total as f64;
            let shade = |base: u8| (255.0 - f * (255.0 - base as f64)) as u8;
            let col = [shade(0), shade(90), shade(180)];
            let (x, y) = (label_w + j as i64 * cell, top + i as i64 * cell);
            cv.rect(x, y, cell - 2, cell - 2, col);
            let s = c.to_string();
            let ink = if f > 0.5 { WHITE } else { BLACK };
            cv.text(
                x + (cell - 16 * s.len() as i64) / 2,
                y + cell / 2 - 8,
                &s,
                ink,
                2,
            );
        }
        let l: String = labels[i].chars().take(14).collect();
        cv.text(8, top + i as i64 * cell + cell / 2 - 8, &l, BLACK, 2);
    }
    for (j, l) in labels.iter().enumerate() {
        let l: String = l.chars().take(7).collect();
        cv.text(
            label_w + j as i64 * cell + 2,
            top + n as i64 * cell + 8,
            &l,
            BLACK,
            1,
        );
    }
    cv.save_png(path)
}

/// One named series of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: Rgb,
}

/// A line chart with axes, tick labels and a legend.
pub fn line_chart_png(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series],
) -> Result<()> {
    let (w, h) = (800i64, 480i64);
    let (left, right, top, bottom) = (80i64, 200i64, 50i64, 50i64);
    let mut cv = Canvas::new(w as usize, h as usize);
    cv.text(left, 15, title, BLACK, 2);
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    let (pw, ph) = ((w - left - right) as f64, (h - top - bottom) as f64);
    let px = |x: f64| left + ((x - x0) / (x1 - x0) * pw) as i64;
    let py = |y: f64| top + ((y1 - y) / (y1 - y0) * ph) as i64;
    for k in 0..=4 {
        let y = y0 + (y1 - y0) * k as f64 / 4.0;
        cv.line((left, py(y)), (w - right, py(y)), GREY, 1);
        cv.text(5, py(y) - 4, &format!("{y:.3}"), BLACK, 1);
        let x = x0 + (x1 - x0) * k as f64 / 4.0;
        cv.text(px(x) - 8, h - bottom + 10, &format!("{x:.0}"), BLACK, 1);
    }
    cv.line((left, top), (left, h - bottom), BLACK, 1);
    cv.line((left, h - bottom), (w - right, h - bottom), BLACK, 1);
    cv.text(left, h - 20, x_label, BLACK, 1);
    cv.text(5, top - 15, y_label, BLACK, 1);
    for (k, s) in series.iter().enumerate() {
        let finite: Vec<&(f64, f64)> = s.points.iter().filter(|p| p.1.is_finite()).collect();
        for p in finite.windows(2) {
            cv.line(
                (px(p[0].0), py(p[0].1)),
                (px(p[1].0), py(p[1].1)),
                s.color,
                2,
            );
        }
        let ly = top + 16 * k as i64;
        cv.rect(w - right + 10, ly, 14, 8, s.color);
        let name: String = s.name.chars().take(20).collect();
        cv.text(w - right + 30, ly, &name, BLACK, 1);
    }
    cv.save_png(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_write_decodable_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cm.png");
        confusion_png(
            &p,
            &[vec![5, 1], vec![0, 7]],
            &["anger".into(), "sad".into()],
            "t",
        )
        .unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let info = dec.read_info().unwrap().info().clone();
        assert!(info.width > 100 && info.height > 100);
        let q = dir.path().join("lc.png");
        let s = Series {
            name: "val".into(),
            points: vec![(1.0, 0.5), (2.0, f64::NAN), (3.0, 0.9)],
            color: PALETTE[0],
        };
        line_chart_png(&q, "curve", ("epoch", "acc"), &[s]).unwrap();
        assert!(std::fs::metadata(&q).unwrap().len() > 1000);
    }

    #[test]
    fn text_draws_ink() {
        let mut c = Canvas::new(40, 10);
        c.text(0, 0, "A", BLACK, 1);
        assert!(c.pixels.contains(&BLACK));
    }
}
