//! Charts: one SVG per figure, and the same SVG rasterised to PNG. `train`, `cv`, `sweep`,
//! `eval` and `predict` write the PNG; `serve` sends the SVG to its page. So a picture on
//! disk and the page never disagree: one set of tick rules, layout and colours.
//!
//! - Ticks on 1-2-5 steps ([`nice_ticks`], [`axis`]); log axes at 1, 2 and 5 × 10^k.
//! - [`figure`]: line-chart panels side by side (optional ± bars, the best epoch marked).
//! - [`confusion`]: a confusion-matrix heat map.
//! - [`png()`]: resvg rasterises the SVG with DejaVu Sans compiled in (DejaVuSans-LICENSE.txt),
//!   so the PNG looks the same on every machine, fonts installed or not.
//!
//! Layer: shared, like `rng` and `atomic_file`: it uses only `atomic_file`, so every layer
//! that draws (train, infer, serve) uses the same code.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// DejaVu Sans (Bitstream Vera licence, DejaVuSans-LICENSE.txt): the one font of every chart.
pub const FONT_TTF: &[u8] = include_bytes!("DejaVuSans.ttf");
pub const FONT_FAMILY: &str = "DejaVu Sans";

/// Line colours for successive series (Okabe–Ito, colour-blind friendly; its yellow, too pale
/// on white, left out).
pub const PALETTE: [&str; 7] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000",
];

const INK: &str = "#222222";
const GRID: &str = "#e3e3e3";
const AXIS: &str = "#555555";
const FONT_PX: f64 = 13.0;

// ---- ticks --------------------------------------------------------------------------------

/// Tick values and the step between them.
#[derive(Clone, Debug, PartialEq)]
pub struct Ticks {
    pub step: f64,
    pub values: Vec<f64>,
}

/// The step of 1, 2 or 5 × 10^k that divides `span` into at most `intervals` parts (the
/// smallest such step).
pub fn nice_step(span: f64, intervals: usize) -> f64 {
    let raw = span.abs() / intervals.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let e = raw.log10().floor() as i32;
    // m × 10^e, divided rather than multiplied below 1 so that 5e-4 is the literal 0.0005.
    let scaled = |m: f64| {
        if e >= 0 {
            m * 10f64.powi(e)
        } else {
            m / 10f64.powi(-e)
        }
    };
    [1.0, 2.0, 5.0]
        .into_iter()
        .map(scaled)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or_else(|| scaled(10.0))
}

/// `k × step` with the step's decimal digits exact (3 × 0.1 is 0.3, not 0.30000000000000004).
fn multiple(k: i64, step: f64) -> f64 {
    let d = decimals(step) as i32;
    if d == 0 {
        k as f64 * step
    } else {
        let scale = 10f64.powi(d);
        (k as f64 * (step * scale).round()) / scale
    }
}

/// Digits after the decimal point that a tick label of this step needs.
pub fn decimals(step: f64) -> usize {
    if !(step.is_finite() && step > 0.0) {
        return 0;
    }
    (-(step.log10() + 1e-9).floor()).max(0.0) as usize
}

/// The multiples of the 1-2-5 step for about `target` intervals that lie in `[lo, hi]`.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let step = nice_step(hi - lo, target);
    let k0 = (lo / step - 1e-9).ceil() as i64;
    let k1 = (hi / step + 1e-9).floor() as i64;
    Ticks {
        step,
        values: (k0..=k1).map(|k| multiple(k, step)).collect(),
    }
}

/// An axis over data in `[lo, hi]`: widened to the enclosing multiples of its 1-2-5 step
/// (an empty range is widened first), with a tick at every multiple. `min_step` (1 for
/// epochs) keeps whole-number axes whole.
pub fn axis(lo: f64, hi: f64, target: usize, min_step: f64) -> (f64, f64, Ticks) {
    let (mut lo, mut hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if hi - lo <= 1e-12 * lo.abs().max(hi.abs()) {
        let pad = if lo == 0.0 { 0.5 } else { 0.05 * lo.abs() };
        lo -= pad;
        hi += pad;
    }
    let step = nice_step(hi - lo, target).max(min_step);
    let k0 = (lo / step + 1e-9).floor() as i64;
    let k1 = (hi / step - 1e-9).ceil() as i64;
    let values: Vec<f64> = (k0..=k1).map(|k| multiple(k, step)).collect();
    (values[0], values[values.len() - 1], Ticks { step, values })
}

/// A tick label: as many decimals as the step needs, no "-0".
pub fn tick_label(v: f64, step: f64) -> String {
    let s = format!("{:.*}", decimals(step), v);
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

/// A log axis over positive data in `[lo, hi]`: in log10 units, widened to the enclosing
/// values of 1, 2 and 5 × 10^k, with ticks there (only the powers of ten past 4 decades).
pub fn log_axis(lo: f64, hi: f64) -> (f64, f64, Vec<(f64, String)>) {
    let lo = lo.max(1e-300);
    let hi = hi.max(lo);
    let marks = |e: i32| [1.0, 2.0, 5.0].map(|m: f64| (m, e, (m * 10f64.powi(e)).log10()));
    let (l, h) = (lo.log10() + 1e-9, hi.log10() - 1e-9);
    let mut all: Vec<(f64, i32, f64)> = (l.floor() as i32 - 2..=h.ceil() as i32 + 1)
        .flat_map(marks)
        .collect();
    all.sort_by(|a, b| a.2.total_cmp(&b.2));
    let below = all.iter().rposition(|m| m.2 <= l).unwrap_or(0);
    let above = all.iter().position(|m| m.2 >= h).unwrap_or(all.len() - 1);
    let mut span = all[below..=above].to_vec();
    if span.len() < 3 {
        // One value, or two neighbours: show one more on each side.
        span = all[below.saturating_sub(1)..=(above + 1).min(all.len() - 1)].to_vec();
    }
    let (a, b) = (span[0].2, span[span.len() - 1].2);
    let decades = span[span.len() - 1].1 - span[0].1;
    let ticks = span
        .iter()
        .filter(|m| decades <= 4 || m.0 == 1.0)
        .map(|&(m, e, v)| (v, log_label(m, e)))
        .collect();
    (a, b, ticks)
}

fn log_label(m: f64, e: i32) -> String {
    if (-3..=3).contains(&e) {
        let v = m * 10f64.powi(e);
        format!("{:.*}", (-e).max(0) as usize, v)
    } else {
        format!("{m}e{e}")
    }
}

// ---- SVG ----------------------------------------------------------------------------------

/// Text for SVG content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// An SVG document under construction. Presentation attributes only, never `style=`, so
/// the page's Content-Security-Policy (no inline styles) lets it be shown as it is.
pub struct Svg {
    w: f64,
    h: f64,
    body: String,
}

impl Svg {
    pub fn new(w: f64, h: f64) -> Self {
        let mut s = Self {
            w,
            h,
            body: String::new(),
        };
        s.rect(0.0, 0.0, w, h, "#ffffff", "");
        s
    }

    pub fn raw(&mut self, s: &str) {
        self.body.push_str(s);
    }

    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, extra: &str) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" {extra}/>"#
        );
    }

    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, extra: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}" {extra}/>"#
        );
    }

    /// Text at (x, y) (the baseline); `anchor` is start, middle or end.
    /// `extra` may set its own `fill`.
    pub fn text(&mut self, x: f64, y: f64, s: &str, anchor: &str, extra: &str) {
        let fill = if extra.contains("fill=") {
            String::new()
        } else {
            format!(r#"fill="{INK}" "#)
        };
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" {fill}{extra}>{}</text>"#,
            escape(s)
        );
    }

    pub fn finish(self) -> String {
        let (w, h) = (self.w, self.h);
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
             font-family=\"{FONT_FAMILY}, sans-serif\" font-size=\"{FONT_PX}\" class=\"chart\">\n{}</svg>\n",
            self.body
        )
    }
}

/// About how wide `s` is in DejaVu Sans at `px` (its mean advance is close to 0.6 em); used
/// only to lay legends out.
fn text_width(s: &str, px: f64) -> f64 {
    s.chars().count() as f64 * 0.6 * px
}

// ---- line charts ----------------------------------------------------------------------------

/// One named series; points with a non-finite y are left out (a gap in the line).
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
    /// ± this much around each point (a standard deviation), drawn as an error bar.
    pub err: Option<Vec<f64>>,
    /// This series' best x (a run's best epoch among others overlaid): a dashed line in the
    /// series' colour and a ring on its point. [`Panel::best_x`] marks one for the panel.
    pub best_x: Option<f64>,
}

impl Series {
    pub fn new(name: &str, k: usize, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.to_string(),
            color: PALETTE[k % PALETTE.len()],
            points,
            err: None,
            best_x: None,
        }
    }
}

/// One panel of a figure.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    /// The SVG group's id (the page and its tests find the panel by it).
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A dashed line at this x, labelled "best N".
    pub best_x: Option<f64>,
    pub y_log: bool,
    /// Ticks at these x values (kernel sizes) instead of 1-2-5 steps.
    pub x_ticks: Option<Vec<f64>>,
    /// Whole-number x (epochs, trials): ticks never fall between.
    pub x_whole: bool,
    /// A fixed x range (a recording's length) instead of the data's.
    pub x_range: Option<(f64, f64)>,
    /// A fixed y range (probabilities: 0 to 1) instead of one fitted to the data.
    pub y_range: Option<(f64, f64)>,
    /// Lines only, no dot per point (thousands of windows).
    pub hide_points: bool,
}

/// Panels side by side, each `w` × `h` pixels, as one SVG document.
pub fn figure(panels: &[Panel], w: f64, h: f64) -> String {
    let mut svg = Svg::new(w * panels.len().max(1) as f64, h);
    // As many legend rows under each panel as the panel that needs most: the plots align.
    let rows = panels
        .iter()
        .map(|p| legend_rows(&p.series, w - PLOT_LEFT - PLOT_RIGHT).len())
        .max()
        .unwrap_or(1);
    for (i, p) in panels.iter().enumerate() {
        svg.panel_rows(p, (i as f64 * w, 0.0), (w, h), rows);
    }
    svg.finish()
}

impl Svg {
    /// A panel in the `w` × `h` box at (x, y), as a group with the panel's id.
    pub fn panel(&mut self, p: &Panel, x: f64, y: f64, w: f64, h: f64) {
        self.panel_rows(p, (x, y), (w, h), 1);
    }

    fn panel_rows(&mut self, p: &Panel, (x, y): (f64, f64), (w, h): (f64, f64), rows: usize) {
        let _ = writeln!(
            self.body,
            r#"<g id="{}" transform="translate({x},{y})">"#,
            escape(&p.id)
        );
        draw_panel(self, p, w, h, rows);
        self.raw("</g>\n");
    }
}

/// The plot area's margins inside a panel: tick labels on the left, the title on top.
const PLOT_LEFT: f64 = 62.0;
const PLOT_RIGHT: f64 = 14.0;
const PLOT_TOP: f64 = 30.0;

/// Legend rows under the plot: (entries per row) from the names' widths.
fn legend_rows(series: &[Series], width: f64) -> Vec<Vec<usize>> {
    let mut rows: Vec<Vec<usize>> = vec![Vec::new()];
    let mut x = 0.0;
    for (k, s) in series.iter().enumerate() {
        let wk = 26.0 + text_width(&s.name, FONT_PX) + 14.0;
        if x + wk > width && !rows.last().is_some_and(|r| r.is_empty()) {
            rows.push(Vec::new());
            x = 0.0;
        }
        rows.last_mut().expect("a row").push(k);
        x += wk;
    }
    rows
}

fn draw_panel(svg: &mut Svg, p: &Panel, w: f64, h: f64, min_legend_rows: usize) {
    let (left, right, top) = (PLOT_LEFT, PLOT_RIGHT, PLOT_TOP);
    let legend = legend_rows(&p.series, w - left - right);
    let bottom = 42.0 + 18.0 * legend.len().max(min_legend_rows) as f64;
    let (x_a, x_b, y_a, y_b) = (left, w - right, top, h - bottom);
    svg.text(8.0, 19.0, &p.title, "start", r#"font-size="15""#);

    let finite = |s: &Series| -> Vec<(usize, f64, f64)> {
        s.points
            .iter()
            .enumerate()
            .filter(|(_, q)| q.0.is_finite() && q.1.is_finite() && (!p.y_log || q.1 > 0.0))
            .map(|(i, q)| (i, q.0, q.1))
            .collect()
    };
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for s in &p.series {
        for (i, x, y) in finite(s) {
            let e = s
                .err
                .as_ref()
                .and_then(|e| e.get(i))
                .copied()
                .filter(|e| e.is_finite())
                .unwrap_or(0.0)
                .abs();
            xs.push(x);
            ys.push(y - e);
            ys.push(y + e);
        }
    }
    if p.y_log {
        ys.retain(|&y| y > 0.0);
    }
    svg.line((x_a, y_b), (x_b, y_b), AXIS, r#"class="axis""#);
    svg.line((x_a, y_a), (x_a, y_b), AXIS, r#"class="axis""#);
    if xs.is_empty() {
        svg.text(
            (x_a + x_b) / 2.0,
            (y_a + y_b) / 2.0,
            "no data yet",
            "middle",
            "",
        );
        return;
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);

    // x: the data's range (an axis of epochs starts at the first); ticks inside it.
    let (mut x0, mut x1) = (min(&xs), max(&xs));
    if let Some(t) = &p.x_ticks {
        x0 = x0.min(min(t));
        x1 = x1.max(max(t));
    }
    if x1 - x0 < 1e-9 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if let Some((a, b)) = p.x_range.filter(|r| r.1 > r.0) {
        (x0, x1) = (a, b);
    } else if p.x_ticks.is_some() {
        // Categories such as kernel sizes: room for their error bars at both ends.
        let pad = 0.06 * (x1 - x0);
        x0 -= pad;
        x1 += pad;
    }
    let x_ticks: Vec<(f64, String)> = match &p.x_ticks {
        Some(t) => t.iter().map(|&v| (v, tick_label(v, 1.0))).collect(),
        None => {
            let mut t = nice_ticks(x0, x1, if p.x_range.is_some() { 10 } else { 8 });
            if p.x_whole && t.step < 1.0 {
                t = Ticks {
                    step: 1.0,
                    values: (x0.ceil() as i64..=x1.floor() as i64)
                        .map(|k| k as f64)
                        .collect(),
                };
            }
            t.values
                .iter()
                .map(|&v| (v, tick_label(v, t.step)))
                .collect()
        }
    };
    let (y0, y1, y_ticks): (f64, f64, Vec<(f64, String)>) = if let Some((a, b)) = p.y_range {
        let t = nice_ticks(a, b, 5);
        let labels = t
            .values
            .iter()
            .map(|&v| (v, tick_label(v, t.step)))
            .collect();
        (a, b, labels)
    } else if p.y_log {
        log_axis(min(&ys), max(&ys))
    } else {
        let (a, b, t) = axis(min(&ys), max(&ys), 5, 0.0);
        let labels = t
            .values
            .iter()
            .map(|&v| (v, tick_label(v, t.step)))
            .collect();
        (a, b, labels)
    };
    let ty = |y: f64| if p.y_log { y.log10() } else { y };
    let sx = |x: f64| x_a + (x - x0) / (x1 - x0) * (x_b - x_a);
    let sy = |y: f64| y_b - (ty(y) - y0) / (y1 - y0) * (y_b - y_a);
    let sy_t = |t: f64| y_b - (t - y0) / (y1 - y0) * (y_b - y_a);

    for (v, lab) in &y_ticks {
        let y = sy_t(*v);
        svg.line((x_a, y), (x_b, y), GRID, r#"class="grid""#);
        svg.line((x_a - 4.0, y), (x_a, y), AXIS, "");
        svg.text(x_a - 7.0, y + 4.5, lab, "end", r#"class="tick-y""#);
    }
    for (v, lab) in &x_ticks {
        let x = sx(*v);
        svg.line((x, y_b), (x, y_b + 4.0), AXIS, "");
        svg.text(x, y_b + 18.0, lab, "middle", r#"class="tick-x""#);
    }
    svg.text((x_a + x_b) / 2.0, y_b + 34.0, &p.x_label, "middle", "");
    if !p.y_label.is_empty() {
        let (cx, cy) = (15.0, (y_a + y_b) / 2.0);
        svg.text(
            cx,
            cy,
            &p.y_label,
            "middle",
            &format!(r#"transform="rotate(-90 {cx:.1} {cy:.1})""#),
        );
    }
    if let Some(b) = p.best_x.filter(|b| b.is_finite() && *b >= x0 && *b <= x1) {
        let x = sx(b);
        svg.line(
            (x, y_a),
            (x, y_b),
            "#888888",
            r#"class="best" stroke-dasharray="5 3""#,
        );
        let near_right = x > x_b - 60.0;
        svg.text(
            if near_right { x - 4.0 } else { x + 4.0 },
            y_a + 12.0,
            &format!("best {}", tick_label(b, 1.0)),
            if near_right { "end" } else { "start" },
            r##"class="best-label" fill="#555555""##,
        );
    }
    // Each series' own best: its colour tells the runs apart (labels would overlap).
    for s in &p.series {
        let Some(b) = s.best_x.filter(|b| b.is_finite() && *b >= x0 && *b <= x1) else {
            continue;
        };
        let x = sx(b);
        svg.line(
            (x, y_a),
            (x, y_b),
            s.color,
            &format!(
                r#"class="best" data-series="{}" stroke-dasharray="5 3" stroke-width="1.2""#,
                escape(&s.name)
            ),
        );
        if let Some(&(_, _, y)) = finite(s).iter().find(|q| q.1 == b) {
            let _ = writeln!(
                svg.body,
                r#"<circle class="best-pt" data-series="{}" cx="{x:.1}" cy="{:.1}" r="5.5" fill="none" stroke="{}" stroke-width="2"/>"#,
                escape(&s.name),
                sy(y),
                s.color
            );
        }
    }
    for s in &p.series {
        let pts = finite(s);
        if pts.len() > 1 {
            // Consecutive finite points are joined; a left-out point breaks the line.
            let mut d = String::new();
            let mut prev: Option<usize> = None;
            for &(i, x, y) in &pts {
                let cmd = if prev == Some(i.wrapping_sub(1)) {
                    'L'
                } else {
                    'M'
                };
                let _ = write!(d, "{cmd}{:.1},{:.1}", sx(x), sy(y));
                prev = Some(i);
            }
            let _ = writeln!(
                svg.body,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="2" stroke-linejoin="round"/>"#,
                s.color
            );
        }
        for &(i, x, y) in pts.iter().filter(|_| !p.hide_points) {
            if let Some(e) = s
                .err
                .as_ref()
                .and_then(|e| e.get(i))
                .filter(|e| e.is_finite())
            {
                let (cx, ya, yb) = (sx(x), sy(y - e.abs()), sy(y + e.abs()));
                svg.line(
                    (cx, ya),
                    (cx, yb),
                    s.color,
                    r#"stroke-width="1.5" class="err""#,
                );
                svg.line(
                    (cx - 4.0, ya),
                    (cx + 4.0, ya),
                    s.color,
                    r#"stroke-width="1.5""#,
                );
                svg.line(
                    (cx - 4.0, yb),
                    (cx + 4.0, yb),
                    s.color,
                    r#"stroke-width="1.5""#,
                );
            }
            let _ = writeln!(
                svg.body,
                r#"<circle class="pt" data-series="{}" cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#,
                escape(&s.name),
                sx(x),
                sy(y),
                s.color
            );
        }
    }
    // Legend: rows under the x label.
    for (r, row) in legend.iter().enumerate() {
        let y = y_b + 54.0 + 18.0 * r as f64;
        let mut x = x_a;
        for &k in row {
            let s = &p.series[k];
            svg.line(
                (x, y - 4.5),
                (x + 20.0, y - 4.5),
                s.color,
                r#"stroke-width="2.5""#,
            );
            svg.text(x + 26.0, y, &s.name, "start", r#"class="legend""#);
            x += 26.0 + text_width(&s.name, FONT_PX) + 14.0;
        }
    }
}

// ---- confusion matrix -------------------------------------------------------------------------

/// A confusion cell's fill for `share`, its count's share of its row (the diagonal: the
/// class's recall): white at 0 to #1f5fa8 at 1, each channel 255 + share × (c − 255),
/// rounded. The page's heat-map table (src/serve/web/app.js, `heatFill`) uses this formula.
pub fn heat_fill(share: f64) -> String {
    let f = share.clamp(0.0, 1.0);
    let mix = |c: f64| (255.0 + f * (c - 255.0)).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(31.0), mix(95.0), mix(168.0))
}

/// The text colour readable on [`heat_fill`]`(share)`.
pub fn heat_ink(share: f64) -> &'static str {
    if share > 0.5 {
        "#ffffff"
    } else {
        INK
    }
}

/// A confusion-matrix heat map: rows are true classes, columns predictions; each cell shows
/// its count, shaded by its share of the row ([`heat_fill`]).
pub fn confusion(counts: &[Vec<u64>], labels: &[String], title: &str) -> String {
    let n = labels.len();
    let cell = 64.0;
    let label_w = 24.0
        + labels
            .iter()
            .map(|l| text_width(l, FONT_PX))
            .fold(40.0, f64::max);
    let (top, left) = (66.0, label_w + 22.0);
    let col_label_h = 26.0;
    let w = (left + cell * n as f64 + 20.0).max(text_width(title, 14.0) + 20.0);
    let h = top + cell * n as f64 + col_label_h + 24.0;
    let mut svg = Svg::new(w, h);
    svg.text(8.0, 19.0, title, "start", r#"font-size="15""#);
    svg.text(
        left + cell * n as f64 / 2.0,
        44.0,
        "predicted",
        "middle",
        "",
    );
    let (cx, cy) = (14.0, top + cell * n as f64 / 2.0);
    svg.text(
        cx,
        cy,
        "true",
        "middle",
        &format!(r#"transform="rotate(-90 {cx:.1} {cy:.1})""#),
    );
    for (i, row) in counts.iter().enumerate().take(n) {
        let total = row.iter().sum::<u64>().max(1) as f64;
        for (j, &c) in row.iter().enumerate().take(n) {
            let f = c as f64 / total;
            let (x, y) = (left + j as f64 * cell, top + i as f64 * cell);
            svg.rect(
                x,
                y,
                cell - 2.0,
                cell - 2.0,
                &heat_fill(f),
                r#"class="cell""#,
            );
            let ink = heat_ink(f);
            svg.text(
                x + (cell - 2.0) / 2.0,
                y + cell / 2.0 + 4.0,
                &c.to_string(),
                "middle",
                &format!(r#"fill="{ink}" font-size="15""#),
            );
        }
        svg.text(
            left - 8.0,
            top + i as f64 * cell + cell / 2.0 + 4.0,
            &labels[i],
            "end",
            "",
        );
    }
    for (j, l) in labels.iter().enumerate() {
        svg.text(
            left + j as f64 * cell + (cell - 2.0) / 2.0,
            top + n as f64 * cell + 16.0,
            l,
            "middle",
            r#"font-size="12""#,
        );
    }
    svg.finish()
}

// ---- PNG ------------------------------------------------------------------------------------

fn fonts() -> Arc<resvg::usvg::fontdb::Database> {
    static DB: OnceLock<Arc<resvg::usvg::fontdb::Database>> = OnceLock::new();
    DB.get_or_init(|| {
        let mut db = resvg::usvg::fontdb::Database::new();
        db.load_font_data(FONT_TTF.to_vec());
        db.set_sans_serif_family(FONT_FAMILY);
        Arc::new(db)
    })
    .clone()
}

/// The SVG rasterised (one pixel per SVG unit) and encoded as PNG.
pub fn png(svg: &str) -> Result<Vec<u8>> {
    let opt = resvg::usvg::Options {
        font_family: FONT_FAMILY.to_string(),
        fontdb: fonts(),
        ..Default::default()
    };
    let tree = resvg::usvg::Tree::from_str(svg, &opt).context("chart: bad SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .context("chart: empty or too large a picture")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().context("chart: cannot encode PNG")
}

/// Writes the SVG as PNG to `path` (`-`: standard output), atomically.
pub fn save_png(path: &Path, svg: &str) -> Result<()> {
    let bytes = png(svg).with_context(|| format!("{}: cannot draw", path.display()))?;
    crate::atomic_file::write_output(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_fall_on_1_2_5_steps() {
        // The examples of issue 25: a coarse and a finer division of [0.3, 0.98].
        assert_eq!(nice_ticks(0.3, 0.98, 5).values, vec![0.4, 0.6, 0.8]);
        assert_eq!(
            nice_ticks(0.3, 0.98, 7).values,
            vec![0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
        );
        assert_eq!(nice_step(0.68, 5), 0.2);
        assert_eq!(nice_step(7.0, 5), 2.0);
        assert_eq!(nice_step(100.0, 4), 50.0);
        assert_eq!(nice_step(0.0013, 5), 0.0005);
        assert_eq!(nice_ticks(1.0, 20.0, 8).values, vec![5.0, 10.0, 15.0, 20.0]);
        assert_eq!(
            nice_ticks(-1.0, 1.0, 4).values,
            vec![-1.0, -0.5, 0.0, 0.5, 1.0]
        );
        for (lo, hi, n) in [
            (0.0, 1.0, 5),
            (1e-5, 3e-5, 6),
            (-40.0, 1234.0, 7),
            (0.11, 0.12, 3),
        ] {
            let t = nice_ticks(lo, hi, n);
            let mant = t.step / 10f64.powf(t.step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|m| (mant - m).abs() < 1e-9),
                "{lo}..{hi}: step {}",
                t.step
            );
            assert!(t.values.len() <= n + 1, "{lo}..{hi}: {:?}", t.values);
            assert!(t
                .values
                .iter()
                .all(|v| *v >= lo - 1e-12 && *v <= hi + 1e-12));
        }
    }

    #[test]
    fn axes_widen_to_whole_steps() {
        let (a, b, t) = axis(0.3, 0.98, 5, 0.0);
        assert_eq!((a, b), (0.2, 1.0));
        assert_eq!(t.values, vec![0.2, 0.4, 0.6, 0.8, 1.0]);
        let labels: Vec<String> = t.values.iter().map(|&v| tick_label(v, t.step)).collect();
        assert_eq!(labels, ["0.2", "0.4", "0.6", "0.8", "1.0"]);
        // Losses: 1.62 .. 0.41.
        let (a, b, t) = axis(1.62, 0.41, 5, 0.0);
        assert_eq!((a, b, t.step), (0.0, 2.0, 0.5));
        // A constant series still gets an axis around it.
        let (a, b, _) = axis(0.5, 0.5, 5, 0.0);
        assert!(a < 0.5 && b > 0.5);
        let (a, b, _) = axis(0.0, 0.0, 5, 0.0);
        assert!(a < 0.0 && b > 0.0);
        assert_eq!(tick_label(-0.0001, 0.1), "0.0");
        assert_eq!(tick_label(0.05, 0.05), "0.05");
        assert_eq!(tick_label(20.0, 5.0), "20");
    }

    #[test]
    fn log_axes_mark_1_2_5() {
        let (a, b, t) = log_axis(1.2e-4, 9e-4);
        assert!(
            (a - -4.0).abs() < 1e-12 && (b - -3.0).abs() < 1e-12,
            "{a} {b}"
        );
        let labels: Vec<&str> = t.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(labels, ["1e-4", "2e-4", "5e-4", "0.001"]);
        // A constant learning rate: one value each side.
        let (_, _, t) = log_axis(1e-3, 1e-3);
        let labels: Vec<&str> = t.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(labels, ["5e-4", "0.001", "0.002"]);
        // Many decades: powers of ten only.
        let (_, _, t) = log_axis(1e-9, 1.0);
        assert_eq!(t.len(), 10, "{t:?}");
        assert!(t.iter().all(|x| (x.0 - x.0.round()).abs() < 1e-9), "{t:?}");
    }

    fn panel() -> Panel {
        Panel {
            id: "acc".into(),
            title: "accuracy & F1".into(),
            x_label: "epoch".into(),
            series: vec![
                Series::new("train", 0, vec![(1.0, 0.31), (2.0, f64::NAN), (3.0, 0.97)]),
                Series::new("val <WA>", 1, vec![(1.0, 0.3), (2.0, 0.6), (3.0, 0.98)]),
            ],
            best_x: Some(3.0),
            x_whole: true,
            ..Default::default()
        }
    }

    /// The text of every `<text class="CLASS" …>` element, in order.
    fn texts(svg: &str, class: &str) -> Vec<String> {
        let key = format!("class=\"{class}\"");
        svg.lines()
            .filter(|l| l.starts_with("<text") && l.contains(&key))
            .map(|l| l[l.find('>').unwrap() + 1..l.rfind("</text>").unwrap()].to_string())
            .collect()
    }

    #[test]
    fn a_panel_has_its_ticks_points_and_best_epoch() {
        let svg = figure(&[panel()], 420.0, 300.0);
        assert_eq!(texts(&svg, "tick-y"), ["0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(texts(&svg, "tick-x"), ["1", "2", "3"]);
        assert_eq!(texts(&svg, "legend"), ["train", "val &lt;WA&gt;"]);
        assert_eq!(texts(&svg, "best-label"), ["best 3"]);
        // The NaN point is left out, and the line broken there.
        assert_eq!(svg.matches(r#"data-series="train""#).count(), 2);
        assert_eq!(svg.matches(r#"data-series="val &lt;WA&gt;""#).count(), 3);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(svg.contains(r#"<g id="acc""#));
        assert!(svg.contains("&amp; F1"));
    }

    #[test]
    fn pngs_have_the_svgs_size_and_ink() {
        let svg = figure(&[panel(), panel()], 420.0, 300.0);
        let bytes = png(&svg).unwrap();
        let dec = ::png::Decoder::new(std::io::Cursor::new(&bytes));
        let mut r = dec.read_info().unwrap();
        assert_eq!((r.info().width, r.info().height), (840, 300));
        let mut buf = vec![0; r.output_buffer_size()];
        r.next_frame(&mut buf).unwrap();
        // Text and lines drew something dark (the background is white).
        let dark = buf.chunks(4).filter(|p| p[0] < 100 && p[1] < 100).count();
        assert!(dark > 500, "{dark} dark pixels");

        let cm = confusion(
            &[vec![5, 1], vec![0, 7]],
            &["anger".into(), "sad".into()],
            "validation",
        );
        assert!(cm.contains(">7</text>") && cm.contains(">anger</text>"));
        let bytes = png(&cm).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"));
    }

    #[test]
    fn heat_fill_shades_by_share() {
        assert_eq!(heat_fill(0.0), "#ffffff");
        assert_eq!(heat_fill(1.0), "#1f5fa8");
        // 255 + 0.5 × (31 − 255) = 143, 175, 211.5 → 212
        assert_eq!(heat_fill(0.5), "#8fafd4");
        assert_eq!(heat_fill(2.0), "#1f5fa8"); // clamped
        assert_eq!((heat_ink(0.5), heat_ink(0.51)), (INK, "#ffffff"));
        // The PNG's cells: row shares, not shares of the largest cell.
        let cm = confusion(&[vec![1, 1], vec![0, 8]], &["a".into(), "b".into()], "t");
        assert_eq!(cm.matches(r##"fill="#8fafd4" class="cell""##).count(), 2);
        assert_eq!(cm.matches(r##"fill="#1f5fa8" class="cell""##).count(), 1);
    }

    #[test]
    fn a_series_marks_its_own_best() {
        let mut p = panel();
        p.best_x = None;
        p.series[1].best_x = Some(2.0);
        let svg = figure(&[p], 420.0, 300.0);
        assert!(texts(&svg, "best-label").is_empty());
        let ring = svg
            .lines()
            .find(|l| l.contains(r#"class="best-pt""#))
            .expect("a ring");
        assert!(ring.contains(r#"data-series="val &lt;WA&gt;""#), "{ring}");
        // On the series' point at x = 2.
        let pt = svg
            .lines()
            .filter(|l| l.contains(r#"class="pt" data-series="val &lt;WA&gt;""#))
            .nth(1)
            .unwrap();
        let cx = |l: &str| {
            l.split("cx=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string()
        };
        let cy = |l: &str| {
            l.split("cy=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!((cx(ring), cy(ring)), (cx(pt), cy(pt)));
        assert_eq!(svg.matches(r#"class="best" data-series"#).count(), 1);
    }

    #[test]
    fn empty_panels_say_so() {
        let p = Panel {
            id: "x".into(),
            series: vec![Series::new("s", 0, vec![(1.0, f64::NAN)])],
            ..Default::default()
        };
        let svg = figure(&[p], 300.0, 200.0);
        assert!(svg.contains("no data yet"));
        png(&svg).unwrap();
    }
}
