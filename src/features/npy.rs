//! numpy `.npy` files of little-endian float32 (`'<f4'`, C order): the format librosa fixtures
//! come in and `ser-engine features` writes, so Python can `np.load` our features directly.
//! Writes format version 1.0 (header padded so the data starts on a 64-byte boundary, as numpy
//! does); reads versions 1, 2 and 3.
//!
//! Layer: features (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A float32 array read from a .npy file: `data` in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Writes `data` with `shape` (C order) as .npy v1.0 to `w`.
pub fn write_npy_to<W: Write>(mut w: W, shape: &[usize], data: &[f32]) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        bail!(
            "shape {shape:?} holds {n} values but {} were given",
            data.len()
        );
    }
    write_npy_header(&mut w, shape)?;
    let mut buf = Vec::with_capacity(data.len() * 4);
    for x in data {
        buf.extend_from_slice(&x.to_le_bytes());
    }
    w.write_all(&buf)?;
    Ok(())
}

/// Writes only the .npy v1.0 header of a float32 array of `shape`; returns its length in
/// bytes (the data follows it, C order, so a writer may fill the data in any order by seeking).
pub fn write_npy_header<W: Write>(mut w: W, shape: &[usize]) -> Result<usize> {
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // magic(6) + version(2) + len(2) + header + '\n' must be a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    if header.len() > u16::MAX as usize {
        bail!("npy header too long for format 1.0");
    }
    w.write_all(MAGIC)?;
    w.write_all(&[1, 0])?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    Ok(10 + header.len())
}

/// Writes a .npy file at `path` (not atomically; see `ser-engine features` for that).
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let f = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    write_npy_to(&mut w, shape, data).with_context(|| format!("{}: write", path.display()))?;
    w.flush()
        .with_context(|| format!("{}: write", path.display()))?;
    Ok(())
}

/// Parses a .npy image held in memory.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyF32> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("not a .npy file (bad magic)");
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .context("truncated .npy header")?;
    let header = std::str::from_utf8(header).context("non-text .npy header")?;
    let descr = dict_value(header, "descr").context("header has no 'descr'")?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    if descr != "<f4" {
        bail!("dtype {descr} is not little-endian float32 ('<f4')");
    }
    let fortran = dict_value(header, "fortran_order").context("header has no 'fortran_order'")?;
    if fortran.trim() != "False" {
        bail!("Fortran-order arrays are not supported");
    }
    let shape_s = dict_value(header, "shape").context("header has no 'shape'")?;
    let inner = shape_s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .context("malformed shape")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().context("malformed shape"))
        .collect::<Result<Vec<_>>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("shape too large")?;
    let body = &bytes[hstart + hlen..];
    if body.len() != n.checked_mul(4).context("shape too large")? {
        bail!(
            "data holds {} bytes but shape {shape:?} needs {}",
            body.len(),
            n * 4
        );
    }
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(NpyF32 { shape, data })
}

/// The text after `'key':` up to the next top-level comma (a tuple counts as one value).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_a = format!("'{key}':");
    let pat_b = format!("\"{key}\":");
    let start = header
        .find(&pat_a)
        .map(|i| i + pat_a.len())
        .or_else(|| header.find(&pat_b).map(|i| i + pat_b.len()))?;
    let rest = &header[start..];
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// Reads a float32 .npy file; errors name the file and the reason.
pub fn read_npy(path: &Path) -> Result<NpyF32> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("{}: cannot read", path.display()))?;
    parse_npy(&bytes).with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_2d_and_1d() {
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
        for shape in [vec![3usize, 4], vec![12], vec![2, 3, 2], vec![0, 5]] {
            let d = &data[..shape.iter().product::<usize>()];
            let mut buf = Vec::new();
            write_npy_to(&mut buf, &shape, d).unwrap();
            let hlen = u16::from_le_bytes([buf[8], buf[9]]) as usize;
            assert_eq!((10 + hlen) % 64, 0, "numpy aligns data to 64 bytes");
            let back = parse_npy(&buf).unwrap();
            assert_eq!(back.shape, shape);
            assert_eq!(back.data, d);
        }
    }

    #[test]
    fn header_text_is_numpy_style() {
        let mut buf = Vec::new();
        write_npy_to(&mut buf, &[7], &[0.0; 7]).unwrap();
        let h = std::str::from_utf8(&buf[10..]).unwrap_or("");
        assert!(h.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (7,), }"));
    }

    #[test]
    fn rejects_bad_files() {
        assert!(parse_npy(b"hello world").is_err());
        let mut buf = Vec::new();
        write_npy_to(&mut buf, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(parse_npy(&buf[..buf.len() - 1]).is_err(), "truncated data");
        let pos = buf.windows(3).position(|w| w == b"<f4").unwrap();
        buf[pos + 2] = b'8';
        assert!(parse_npy(&buf).is_err(), "float64 is refused");
        assert!(write_npy_to(Vec::new(), &[3], &[1.0]).is_err());
        assert!(read_npy(Path::new("/nonexistent/x.npy"))
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/x.npy"));
    }
}
