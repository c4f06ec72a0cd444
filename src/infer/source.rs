//! Mono sample streams for inference: a WAV file read piece by piece, a WAV or raw PCM byte
//! stream (standard input), any other file decoded whole, each optionally resampled on the
//! fly to the model's rate. Every source holds at most one read block, so recordings of any
//! length run at bounded memory (except the whole-file fallback for compressed formats).
//!
//! Scaling and channel mixing are `audio::decode`'s (librosa's): 16-bit `s/32768`, 24-bit
//! `s/2^23`, 32-bit `s/2^31`, float as stored, channels averaged.
//!
//! Layer: infer (using a trained model; below cli). May use `train` (run folders), `cpu`,
//! `features`, `model`, `audio`, `device` and the shared modules (`rng`, `isa`, `cache`,
//! `atomic_file`); never `cli`.

use crate::audio::load_audio;
use crate::audio::resample::StreamResampler;
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// Frames (samples per channel) read per call.
pub const READ_FRAMES: usize = 8192;

/// A stream of mono f32 samples.
pub trait SampleSource {
    fn sample_rate(&self) -> u32;
    /// Appends the next samples (at most a few thousand) to `out`; returns how many, 0 at the
    /// end of the stream.
    fn read(&mut self, out: &mut Vec<f32>) -> Result<usize>;
}

/// Sample encodings of a PCM byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PcmFormat {
    /// 16-bit signed little-endian.
    S16le,
    /// 24-bit signed little-endian (3 bytes).
    S24le,
    /// 32-bit signed little-endian.
    S32le,
    /// 32-bit float little-endian.
    F32le,
}

impl PcmFormat {
    fn bytes(self) -> usize {
        match self {
            PcmFormat::S16le => 2,
            PcmFormat::S24le => 3,
            PcmFormat::S32le | PcmFormat::F32le => 4,
        }
    }

    fn decode(self, b: &[u8]) -> f32 {
        match self {
            PcmFormat::S16le => (i16::from_le_bytes([b[0], b[1]]) as f64 / 32768.0) as f32,
            PcmFormat::S24le => {
                let v = i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8;
                (v as f64 / (1u64 << 23) as f64) as f32
            }
            PcmFormat::S32le => {
                (i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64 / (1u64 << 31) as f64) as f32
            }
            PcmFormat::F32le => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }
}

/// Interleaved PCM from any byte stream (a pipe, a socket, a file), averaged to mono. Reads
/// whatever the stream has ready (a pipe read returns as soon as bytes arrive), so a live
/// stream is processed as it comes. A WAV `data` chunk ends at its announced size (so
/// chunks after it are not read as audio) unless that size is 0 or 0xFFFFFFFF, which
/// streaming writers use as "unknown"; then, as for raw PCM, the end of the stream ends it.
pub struct PcmStream<R: Read> {
    r: R,
    name: String,
    format: PcmFormat,
    rate: u32,
    channels: usize,
    /// Bytes of an incomplete frame left from the last read.
    carry: Vec<u8>,
    buf: Vec<u8>,
    pos: u64,
    /// Audio bytes still to read, when the header says.
    remaining: Option<u64>,
}

impl<R: Read> PcmStream<R> {
    /// Raw PCM without a header.
    pub fn raw(r: R, name: &str, format: PcmFormat, rate: u32, channels: u16) -> Result<Self> {
        if rate == 0 || channels == 0 {
            bail!("{name}: --rate and --channels must be positive (got {rate} Hz, {channels} channels)");
        }
        Ok(Self {
            r,
            name: name.to_string(),
            format,
            rate,
            channels: channels as usize,
            carry: Vec::new(),
            buf: vec![0; READ_FRAMES * channels as usize * format.bytes()],
            pos: 0,
            remaining: None,
        })
    }

    /// A WAV stream: parses the RIFF header up to the `data` chunk, then streams its samples.
    pub fn wav(mut r: R, name: &str) -> Result<Self> {
        let bad = |what: &str| anyhow!("{name}: not a WAV stream ({what})");
        let mut head = [0u8; 12];
        read_exact_or(&mut r, &mut head, name)?;
        if &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
            return Err(bad(
                "no RIFF/WAVE header; for headerless PCM pass --raw s16le",
            ));
        }
        let mut fmt: Option<(PcmFormat, u32, u16)> = None;
        loop {
            let mut ch = [0u8; 8];
            read_exact_or(&mut r, &mut ch, name)?;
            let size = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]) as usize;
            match &ch[0..4] {
                b"fmt " => {
                    if !(16..=1024).contains(&size) {
                        return Err(bad("fmt chunk of an odd size"));
                    }
                    let mut f = vec![0u8; size + (size & 1)];
                    read_exact_or(&mut r, &mut f, name)?;
                    let mut tag = u16::from_le_bytes([f[0], f[1]]);
                    let channels = u16::from_le_bytes([f[2], f[3]]);
                    let rate = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
                    let bits = u16::from_le_bytes([f[14], f[15]]);
                    if tag == 0xFFFE && size >= 26 {
                        tag = u16::from_le_bytes([f[24], f[25]]); // WAVE_FORMAT_EXTENSIBLE
                    }
                    let format = match (tag, bits) {
                        (1, 16) => PcmFormat::S16le,
                        (1, 24) => PcmFormat::S24le,
                        (1, 32) => PcmFormat::S32le,
                        (3, 32) => PcmFormat::F32le,
                        _ => bail!(
                            "{name}: WAV encoding {tag} with {bits} bits is not supported on a stream \
                             (16/24/32-bit PCM or 32-bit float)"
                        ),
                    };
                    fmt = Some((format, rate, channels));
                }
                b"data" => {
                    let (format, rate, channels) =
                        fmt.ok_or_else(|| bad("data chunk before the fmt chunk"))?;
                    let mut s = Self::raw(r, name, format, rate, channels)?;
                    s.remaining = (size != 0 && size != u32::MAX as usize).then_some(size as u64);
                    return Ok(s);
                }
                _ => {
                    // Skip LIST, fact, ... (padded to even size).
                    let n = (size + (size & 1)) as u64;
                    let skipped = std::io::copy(&mut (&mut r).take(n), &mut std::io::sink())
                        .with_context(|| format!("{name}: cannot read"))?;
                    if skipped < n {
                        return Err(bad("the stream ends inside the header"));
                    }
                }
            }
        }
    }
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], name: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            anyhow!("{name}: the stream ends inside the WAV header")
        }
        _ => anyhow!("{name}: cannot read: {e}"),
    })
}

impl<R: Read> SampleSource for PcmStream<R> {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn read(&mut self, out: &mut Vec<f32>) -> Result<usize> {
        let frame = self.channels * self.format.bytes();
        loop {
            let n = self.carry.len();
            self.buf[..n].copy_from_slice(&self.carry);
            let room = match self.remaining {
                Some(left) => (left as usize).min(self.buf.len() - n),
                None => self.buf.len() - n,
            };
            let got = loop {
                if room == 0 {
                    break 0;
                }
                match self.r.read(&mut self.buf[n..n + room]) {
                    Ok(k) => break k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => bail!("{}: cannot read: {e}", self.name),
                }
            };
            if got == 0 {
                // End of stream; a partial last frame is dropped.
                return Ok(0);
            }
            if let Some(left) = &mut self.remaining {
                *left -= got as u64;
            }
            let have = n + got;
            let whole = have / frame * frame;
            let before = out.len();
            let bps = self.format.bytes();
            for f in self.buf[..whole].chunks_exact(frame) {
                let sum: f32 = f.chunks_exact(bps).map(|b| self.format.decode(b)).sum();
                out.push(if self.channels == 1 {
                    sum
                } else {
                    sum / self.channels as f32
                });
            }
            self.carry.clear();
            self.carry.extend_from_slice(&self.buf[whole..have]);
            let k = out.len() - before;
            if let Some(i) = out[before..].iter().position(|x| !x.is_finite()) {
                bail!(
                    "{}: sample {} is {} (corrupt stream)",
                    self.name,
                    self.pos + i as u64,
                    out[before + i]
                );
            }
            self.pos += k as u64;
            if k > 0 {
                return Ok(k);
            }
        }
    }
}

impl SampleSource for Box<dyn SampleSource> {
    fn sample_rate(&self) -> u32 {
        (**self).sample_rate()
    }
    fn read(&mut self, out: &mut Vec<f32>) -> Result<usize> {
        (**self).read(out)
    }
}

/// A whole decoded clip handed out in blocks (compressed formats, which are decoded whole).
pub struct MemorySource {
    samples: Vec<f32>,
    rate: u32,
    pos: usize,
}

impl SampleSource for MemorySource {
    fn sample_rate(&self) -> u32 {
        self.rate
    }
    fn read(&mut self, out: &mut Vec<f32>) -> Result<usize> {
        let n = READ_FRAMES.min(self.samples.len() - self.pos);
        out.extend_from_slice(&self.samples[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Another source resampled on the fly (exactly `audio::resample::resample` of the whole).
pub struct Resampled<S> {
    inner: S,
    r: StreamResampler,
    to: u32,
    tmp: Vec<f32>,
    done: bool,
}

impl<S: SampleSource> SampleSource for Resampled<S> {
    fn sample_rate(&self) -> u32 {
        self.to
    }
    fn read(&mut self, out: &mut Vec<f32>) -> Result<usize> {
        let before = out.len();
        while out.len() == before && !self.done {
            self.tmp.clear();
            if self.inner.read(&mut self.tmp)? == 0 {
                self.r.finish(out)?;
                self.done = true;
            } else {
                self.r.push(&self.tmp, out)?;
            }
        }
        Ok(out.len() - before)
    }
}

/// `source` at `rate` Hz (resampled when its own rate differs).
pub fn at_rate(source: Box<dyn SampleSource>, rate: u32) -> Result<Box<dyn SampleSource>> {
    if source.sample_rate() == rate {
        return Ok(source);
    }
    Ok(Box::new(Resampled {
        r: StreamResampler::new(source.sample_rate(), rate)?,
        inner: source,
        to: rate,
        tmp: Vec::new(),
        done: false,
    }))
}

/// Opens an audio file as a stream: PCM WAV files are read block by block (bounded memory);
/// other formats and WAV encodings are decoded whole by `audio::load_audio`.
pub fn open_file(path: &Path) -> Result<Box<dyn SampleSource>> {
    let name = path.display().to_string();
    let f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{name}: no such file"),
        _ => anyhow!("{name}: cannot open: {e}"),
    })?;
    if path.is_dir() {
        bail!("{name}: is a directory, not an audio file");
    }
    let mut r = BufReader::new(f);
    let mut head = [0u8; 12];
    let n = r.read(&mut head).unwrap_or(0);
    let is_wav = n == 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WAVE";
    if is_wav {
        let f = File::open(path).with_context(|| format!("{name}: cannot open"))?;
        if let Ok(s) = PcmStream::wav(BufReader::with_capacity(1 << 16, f), &name) {
            // The header's data size is checked so a truncated file is an error, as in
            // load_audio, not a silently shorter recording.
            crate::audio::probe_audio(path)?;
            return Ok(Box::new(s));
        }
    }
    let a = load_audio(path, None)?;
    Ok(Box::new(MemorySource {
        samples: a.samples,
        rate: a.sample_rate,
        pos: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_stream_decodes_and_mixes_like_load_audio() {
        // Two channels of s16le: frames (16384, -16384) and (32767, 0); reads in odd pieces.
        let bytes: Vec<u8> = [16384i16, -16384, 32767, 0, -32768, -32768]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        struct Trickle(Vec<u8>, usize);
        impl Read for Trickle {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                let n = 3.min(self.0.len() - self.1).min(b.len());
                b[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let mut s = PcmStream::raw(Trickle(bytes, 0), "t", PcmFormat::S16le, 8000, 2).unwrap();
        let mut out = Vec::new();
        while s.read(&mut out).unwrap() > 0 {}
        assert_eq!(out, vec![0.0, (32767.0 / 32768.0) / 2.0, -1.0]);
    }

    #[test]
    fn wav_stream_reads_the_header_and_refuses_garbage() {
        let mut v = Vec::new();
        {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: 16000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::new(std::io::Cursor::new(&mut v), spec).unwrap();
            for i in 0..100 {
                w.write_sample((i * 100) as i16).unwrap();
            }
            w.finalize().unwrap();
        }
        let mut s = PcmStream::wav(&v[..], "w").unwrap();
        assert_eq!(s.sample_rate(), 16000);
        let mut out = Vec::new();
        while s.read(&mut out).unwrap() > 0 {}
        assert_eq!(out.len(), 100);
        assert_eq!(out[3], 300.0 / 32768.0);
        let e = PcmStream::wav(&b"hello world, not a wav"[..], "stdin")
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("--raw"), "{e:#}");
    }
}
