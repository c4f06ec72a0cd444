//! Spectrogram pictures: a `[rows][cols]` dB matrix (row 0 = lowest frequency) drawn with a
//! viridis-like colour map, low frequencies at the bottom, one pixel per (band, frame),
//! optionally enlarged by an integer factor. For looking at features, not for measuring them.
//!
//! Layer: features (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;

/// Viridis sampled at 0, 1/8, …, 1 (matplotlib's values, rounded to 8 bits).
const VIRIDIS: [[u8; 3]; 9] = [
    [68, 1, 84],
    [71, 44, 122],
    [59, 81, 139],
    [44, 113, 142],
    [33, 145, 140],
    [39, 173, 129],
    [92, 200, 99],
    [170, 220, 50],
    [253, 231, 37],
];

/// Colour for `v` in [0, 1] (clamped; NaN draws as the bottom colour), linear between the
/// viridis control points.
pub fn colormap(v: f32) -> [u8; 3] {
    let v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    let x = v * (VIRIDIS.len() - 1) as f32;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mut out = [0u8; 3];
    for c in 0..3 {
        out[c] = (a[c] as f32 + f * (b[c] as f32 - a[c] as f32)).round() as u8;
    }
    out
}

/// RGB pixels (`height = rows·scale`, `width = cols·scale`, row-major, top row first) of the
/// `[rows][cols]` matrix `data`, mapping `[lo, hi]` dB to the colour map. Row 0 of `data` is
/// drawn at the bottom.
pub fn render_rgb(
    data: &[f32],
    rows: usize,
    cols: usize,
    lo: f32,
    hi: f32,
    scale: usize,
) -> Vec<u8> {
    let scale = scale.max(1);
    let (h, w) = (rows * scale, cols * scale);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut px = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        let r = rows - 1 - y / scale;
        for x in 0..w {
            let v = data[r * cols + x / scale];
            px.extend_from_slice(&colormap((v - lo) / span));
        }
    }
    px
}

/// Encodes `data` (`[rows][cols]` dB, row 0 lowest band) as an RGB PNG into `w`, the colour
/// range being the matrix's own [min, max].
pub fn write_png_to<W: Write>(
    w: W,
    data: &[f32],
    rows: usize,
    cols: usize,
    scale: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 || data.len() != rows * cols {
        bail!(
            "cannot draw a {rows}x{cols} picture from {} values",
            data.len()
        );
    }
    let scale = scale.max(1);
    let lo = data.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = data.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let px = render_rgb(data, rows, cols, lo, hi, scale);
    let width = u32::try_from(cols * scale).context("picture too wide")?;
    let height = u32::try_from(rows * scale).context("picture too tall")?;
    let mut enc = png::Encoder::new(w, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(&px)?;
    writer.finish()?;
    Ok(())
}

/// Writes a PNG file (not atomically; see `ser-engine features` for that).
pub fn write_png(path: &Path, data: &[f32], rows: usize, cols: usize, scale: usize) -> Result<()> {
    let f = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    write_png_to(std::io::BufWriter::new(f), data, rows, cols, scale)
        .with_context(|| format!("{}: write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colormap_ends_and_brightness_rise() {
        assert_eq!(colormap(0.0), VIRIDIS[0]);
        assert_eq!(colormap(1.0), VIRIDIS[8]);
        assert_eq!(colormap(-3.0), VIRIDIS[0]);
        assert_eq!(colormap(f32::NAN), VIRIDIS[0]);
        // Viridis is perceptually ordered: luma rises monotonically.
        let luma = |c: [u8; 3]| 0.299 * c[0] as f32 + 0.587 * c[1] as f32 + 0.114 * c[2] as f32;
        let mut prev = -1.0;
        for i in 0..=100 {
            let l = luma(colormap(i as f32 / 100.0));
            assert!(l >= prev, "luma falls at {i}");
            prev = l;
        }
    }

    #[test]
    fn png_round_trip_low_band_at_bottom() {
        // 3 bands x 4 frames; band 0 loud (0 dB), the rest quiet (-80 dB).
        let (rows, cols, scale) = (3, 4, 2);
        let mut data = vec![-80.0f32; rows * cols];
        data[..cols].fill(0.0);
        let mut buf = Vec::new();
        write_png_to(&mut buf, &data, rows, cols, scale).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(buf));
        let mut reader = dec.read_info().unwrap();
        let mut img = vec![0u8; reader.output_buffer_size()];
        let info = reader.next_frame(&mut img).unwrap();
        assert_eq!((info.width, info.height), (8, 6));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let pixel = |x: usize, y: usize| {
            let i = (y * info.width as usize + x) * 3;
            [img[i], img[i + 1], img[i + 2]]
        };
        assert_eq!(pixel(0, 5), VIRIDIS[8], "bottom row is band 0, loudest");
        assert_eq!(pixel(7, 4), VIRIDIS[8]);
        assert_eq!(pixel(0, 0), VIRIDIS[0], "top row is the highest band");
        assert_eq!(pixel(3, 3), VIRIDIS[0]);
        assert!(write_png_to(Vec::new(), &data, 4, 4, 1).is_err());
    }
}
