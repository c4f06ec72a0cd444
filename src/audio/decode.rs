//! Decoding audio files to mono f32 samples, and reading their headers.
//!
//! WAV goes through `hound` (the common case, and the one whose scaling must match librosa
//! exactly); FLAC, MP3, Ogg/Vorbis and the WAV encodings hound does not read (A-law, µ-law,
//! 64-bit float) go through `symphonia`. The container is chosen by the file's first bytes,
//! not its extension.
//!
//! Scaling (what librosa/soundfile produce): 8-bit unsigned PCM `(s-128)/128`, 16-bit
//! `s/32768`, 24-bit `s/2^23`, 32-bit int `s/2^31`, float as stored. Several channels are
//! averaged to mono (`librosa.to_mono`).
//!
//! Damaged files are errors, never silently shorter clips: a WAV whose data chunk claims more
//! bytes than the file holds, or a FLAC/Vorbis stream that ends before the frame count its
//! header announces, fails with "truncated". Every error names the file.
//!
//! Layer: audio (below train, engine and cli). May use the shared modules (`rng`, `isa`,
//! `cache`, `atomic_file`); nothing else of the crate.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

/// Mono audio: samples in [-1, 1] (16-bit PCM is sample/32768, as librosa) at `sample_rate` Hz.
#[derive(Clone, Debug)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

/// What a file's header says, read without decoding the audio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AudioInfo {
    pub sample_rate: u32,
    pub channels: u16,
    /// Samples per channel.
    pub frames: u64,
    pub duration_s: f64,
}

/// Sample rates accepted in a file's header and as a resampling target, Hz: a header outside
/// this range is damaged or hostile (resampling a "1 Hz" file to 16 kHz would multiply its
/// length 16000-fold).
pub const SAMPLE_RATE_RANGE: (u32, u32) = (1_000, 768_000);

fn check_rate(path: &Path, what: &str, rate: u32) -> Result<()> {
    let (lo, hi) = SAMPLE_RATE_RANGE;
    if !(lo..=hi).contains(&rate) {
        bail!(
            "{}: {what} sample rate {rate} Hz is outside {lo}..={hi} Hz",
            path.display()
        );
    }
    Ok(())
}

/// Reads an audio file as mono f32, resampled to `target_rate` when given (native rate when
/// `None`). Errors name the file and the reason.
pub fn load_audio(path: &Path, target_rate: Option<u32>) -> Result<Audio> {
    if let Some(r) = target_rate {
        check_rate(path, "the requested", r)?;
    }
    let audio = match sniff(path)? {
        Container::Wav => match decode_wav(path)? {
            Some(a) => a,
            // A WAV encoding hound does not read (A-law, µ-law, f64, ...): try symphonia.
            None => decode_symphonia(path)?,
        },
        Container::Other => decode_symphonia(path)?,
    };
    check_rate(path, "the header's", audio.sample_rate)?;
    if audio.samples.is_empty() {
        bail!("{}: the file holds no audio samples", path.display());
    }
    if let Some(i) = audio.samples.iter().position(|s| !s.is_finite()) {
        bail!(
            "{}: sample {i} is {} (the file is corrupt)",
            path.display(),
            audio.samples[i]
        );
    }
    match target_rate {
        Some(r) if r != audio.sample_rate => {
            let samples = super::resample::resample(&audio.samples, audio.sample_rate, r)
                .with_context(|| format!("{}: resampling", path.display()))?;
            Ok(Audio {
                samples,
                sample_rate: r,
            })
        }
        _ => Ok(audio),
    }
}

/// Reads only the header: rate, channels, frames, duration. Fast enough to run over a whole
/// corpus. A WAV whose data chunk runs past the end of the file, a file with no frames, or a
/// codec without a decoder is an error here already.
pub fn probe_audio(path: &Path) -> Result<AudioInfo> {
    let info = match sniff(path)? {
        Container::Wav => match probe_wav(path)? {
            Some(i) => i,
            None => probe_symphonia(path)?,
        },
        Container::Other => probe_symphonia(path)?,
    };
    if info.frames == 0 {
        bail!("{}: the file holds no audio samples", path.display());
    }
    check_rate(path, "the header's", info.sample_rate)?;
    Ok(info)
}

enum Container {
    Wav,
    Other,
}

/// Checks the path is a readable file and looks at its first bytes.
fn sniff(path: &Path) -> Result<Container> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{}: no such file", path.display()),
        _ => anyhow!("{}: cannot read: {e}", path.display()),
    })?;
    if meta.is_dir() {
        bail!("{}: is a directory, not an audio file", path.display());
    }
    let mut head = [0u8; 12];
    let mut f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let n = read_up_to(&mut f, &mut head)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if n == 0 {
        bail!("{}: the file is empty", path.display());
    }
    if n == 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WAVE" {
        Ok(Container::Wav)
    } else {
        Ok(Container::Other)
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn hound_open(path: &Path) -> Result<Option<hound::WavReader<BufReader<File>>>> {
    match hound::WavReader::open(path) {
        Ok(r) => Ok(Some(r)),
        Err(hound::Error::Unsupported) => Ok(None),
        Err(e) => Err(anyhow!("{}: not a valid WAV file: {e}", path.display())),
    }
}

fn wav_info(spec: &hound::WavSpec, frames: u64) -> AudioInfo {
    AudioInfo {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        frames,
        duration_s: frames as f64 / spec.sample_rate.max(1) as f64,
    }
}

/// `None` when hound does not support the encoding (the caller falls back to symphonia).
fn probe_wav(path: &Path) -> Result<Option<AudioInfo>> {
    let Some(reader) = hound_open(path)? else {
        return Ok(None);
    };
    let spec = reader.spec();
    let frames = reader.duration() as u64;
    let data_bytes = reader.len() as u64 * (spec.bits_per_sample as u64).div_ceil(8);
    let file_len = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .len();
    // hound leaves the reader at the first data byte: the data must fit in the file.
    let mut inner = reader.into_inner();
    let data_start = inner
        .stream_position()
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if data_start + data_bytes > file_len {
        bail!(
            "{}: truncated: the header announces {data_bytes} bytes of audio but only {} follow",
            path.display(),
            file_len - data_start.min(file_len)
        );
    }
    Ok(Some(wav_info(&spec, frames)))
}

/// `None` when hound does not support the encoding.
fn decode_wav(path: &Path) -> Result<Option<Audio>> {
    let Some(mut reader) = hound_open(path)? else {
        return Ok(None);
    };
    let spec = reader.spec();
    let ch = spec.channels as usize;
    let announced = reader.duration();
    let truncated = |e: hound::Error| {
        anyhow!(
            "{}: truncated or corrupt audio data (the header announces {announced} frames): {e}",
            path.display(),
        )
    };
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => {
            if spec.bits_per_sample != 32 {
                return Ok(None);
            }
            reader
                .samples::<f32>()
                .collect::<Result<_, _>>()
                .map_err(truncated)?
        }
        hound::SampleFormat::Int => {
            // hound returns 8-bit unsigned PCM already shifted to signed (s - 128), and wider
            // samples sign-extended; full scale is 2^(bits-1). Dividing in f64 rounds once.
            let scale = (1u64 << (spec.bits_per_sample - 1)) as f64;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| (v as f64 / scale) as f32))
                .collect::<Result<_, _>>()
                .map_err(truncated)?
        }
    };
    Ok(Some(Audio {
        samples: to_mono(&interleaved, ch),
        sample_rate: spec.sample_rate,
    }))
}

/// Averages interleaved channels (`librosa.to_mono`: the mean over channels).
fn to_mono(interleaved: &[f32], ch: usize) -> Vec<f32> {
    if ch <= 1 {
        return interleaved.to_vec();
    }
    interleaved
        .chunks_exact(ch)
        .map(|f| f.iter().sum::<f32>() / ch as f32)
        .collect()
}

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{Decoder, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

struct SymOpen {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    sample_rate: Option<u32>,
    channels: Option<u16>,
    n_frames: Option<u64>,
}

/// Checks the sizes a FLAC file's metadata blocks claim before symphonia reads them: it
/// allocates a PICTURE block's and a VORBIS_COMMENT block's fields at the length the file
/// states, so a few corrupt bytes could ask for gigabytes. Each length must fit in its block
/// and each block in the file. Other files (and FLAC behind an ID3v2 tag) pass through.
fn check_flac_metadata(path: &Path) -> Result<()> {
    let mut f = BufReader::new(
        File::open(path).with_context(|| format!("{}: cannot open", path.display()))?,
    );
    let file_len = f.get_ref().metadata()?.len();
    let mut head = [0u8; 10];
    let n = read_up_to(f.get_mut(), &mut head)?;
    let mut pos = 0u64;
    if n == 10 && &head[..3] == b"ID3" {
        // ID3v2: 10-byte header, then a 28-bit "syncsafe" size.
        let size = head[6..10]
            .iter()
            .fold(0u64, |a, &b| (a << 7) | (b & 0x7f) as u64);
        pos = 10 + size;
    }
    f.seek(std::io::SeekFrom::Start(pos))?;
    let mut magic = [0u8; 4];
    if read_up_to(f.get_mut(), &mut magic)? < 4 || &magic != b"fLaC" {
        return Ok(());
    }
    pos += 4;
    let corrupt = |what: &str| anyhow!("{}: corrupt FLAC metadata: {what}", path.display());
    loop {
        let mut h = [0u8; 4];
        if read_up_to(f.get_mut(), &mut h)? < 4 {
            return Err(corrupt("the file ends inside a block header"));
        }
        let (last, kind) = (h[0] & 0x80 != 0, h[0] & 0x7f);
        let len = u32::from_be_bytes([0, h[1], h[2], h[3]]) as u64;
        pos += 4;
        if pos + len > file_len {
            return Err(corrupt(&format!(
                "block of type {kind} claims {len} bytes, past the end of the file"
            )));
        }
        if kind == 4 || kind == 6 {
            let mut block = vec![0u8; len as usize];
            f.read_exact(&mut block)?;
            let ok = if kind == 4 {
                vorbis_comment_fits(&block)
            } else {
                picture_fits(&block)
            };
            if !ok {
                return Err(corrupt(&format!(
                    "a field of the block of type {kind} claims more bytes than the block holds"
                )));
            }
        } else {
            f.seek(std::io::SeekFrom::Current(len as i64))?;
        }
        pos += len;
        if last {
            return Ok(());
        }
    }
}

/// VORBIS_COMMENT: vendor length, vendor, count, then count × (length, text); little-endian.
fn vorbis_comment_fits(b: &[u8]) -> bool {
    let u32_at = |i: usize| -> Option<usize> {
        b.get(i..i + 4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) as usize)
    };
    let Some(vendor) = u32_at(0) else {
        return false;
    };
    let mut i = 4usize.saturating_add(vendor);
    let Some(count) = u32_at(i) else { return false };
    i += 4;
    if count > b.len() / 4 {
        return false;
    }
    for _ in 0..count {
        let Some(l) = u32_at(i) else { return false };
        i = i.saturating_add(4).saturating_add(l);
        if i > b.len() {
            return false;
        }
    }
    true
}

/// PICTURE: type, MIME length + MIME, description length + text, four u32s, data length +
/// data; big-endian.
fn picture_fits(b: &[u8]) -> bool {
    let u32_at = |i: usize| -> Option<usize> {
        b.get(i..i + 4)
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]) as usize)
    };
    let Some(mime) = u32_at(4) else { return false };
    let i = 8usize.saturating_add(mime);
    let Some(desc) = u32_at(i) else { return false };
    let i = i.saturating_add(4).saturating_add(desc).saturating_add(16);
    let Some(data) = u32_at(i) else { return false };
    i.saturating_add(4).saturating_add(data) <= b.len()
}

fn sym_open(path: &Path) -> Result<SymOpen> {
    check_flac_metadata(path)?;
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            mss,
            // Gapless: drop encoder delay and padding (MP3 LAME headers, Vorbis granules), so
            // a clip's length is the length that was encoded.
            &FormatOptions {
                enable_gapless: true,
                ..Default::default()
            },
            &MetadataOptions::default(),
        )
        .map_err(|e| {
            anyhow!(
                "{}: not a recognised audio file (WAV, FLAC, MP3, Ogg/Vorbis): {e}",
                path.display()
            )
        })?;
    let format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| anyhow!("{}: no audio track", path.display()))?;
    let params = track.codec_params.clone();
    let decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| anyhow!("{}: unsupported audio encoding: {e}", path.display()))?;
    Ok(SymOpen {
        track_id: track.id,
        sample_rate: params.sample_rate,
        channels: params.channels.map(|c| c.count() as u16),
        n_frames: params.n_frames,
        format,
        decoder,
    })
}

fn probe_symphonia(path: &Path) -> Result<AudioInfo> {
    let s = sym_open(path)?;
    match (s.sample_rate, s.channels, s.n_frames) {
        (Some(rate), Some(ch), Some(frames)) if frames > 0 => Ok(AudioInfo {
            sample_rate: rate,
            channels: ch,
            frames,
            duration_s: frames as f64 / rate.max(1) as f64,
        }),
        _ => {
            // The header does not say (e.g. MP3 without a Xing header): decode to count.
            drop(s);
            let (audio, channels) = decode_symphonia_ch(path)?;
            Ok(AudioInfo {
                sample_rate: audio.sample_rate,
                channels,
                frames: audio.samples.len() as u64,
                duration_s: audio.samples.len() as f64 / audio.sample_rate.max(1) as f64,
            })
        }
    }
}

fn decode_symphonia(path: &Path) -> Result<Audio> {
    Ok(decode_symphonia_ch(path)?.0)
}

fn decode_symphonia_ch(path: &Path) -> Result<(Audio, u16)> {
    let mut s = sym_open(path)?;
    let mut mono: Vec<f32> = Vec::new();
    let mut rate = s.sample_rate;
    let mut channels = s.channels;
    let mut buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match s.format.next_packet() {
            Ok(p) => p,
            // End of stream is reported as an unexpected EOF.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => bail!("{}: corrupt audio stream: {e}", path.display()),
        };
        if packet.track_id() != s.track_id {
            continue;
        }
        let decoded = match s.decoder.decode(&packet) {
            Ok(d) => d,
            Err(e) => bail!("{}: corrupt audio data: {e}", path.display()),
        };
        let spec = *decoded.spec();
        let ch = spec.channels.count();
        rate.get_or_insert(spec.rate);
        channels.get_or_insert(ch as u16);
        if buf
            .as_ref()
            .is_none_or(|b| b.capacity() < decoded.capacity() * ch)
        {
            buf = Some(SampleBuffer::new(decoded.capacity() as u64, spec));
        }
        let b = buf.as_mut().expect("allocated above");
        b.copy_interleaved_ref(decoded);
        mono.extend(to_mono(b.samples(), ch));
    }
    let rate = rate.ok_or_else(|| anyhow!("{}: no sample rate in the stream", path.display()))?;
    if let Some(n) = s.n_frames {
        if (mono.len() as u64) < n {
            bail!(
                "{}: truncated: the header announces {n} frames but the stream ends after {}",
                path.display(),
                mono.len()
            );
        }
        // Decoders may pad the last packet; the header's count is the real length.
        mono.truncate(n as usize);
    }
    Ok((
        Audio {
            samples: mono,
            sample_rate: rate,
        },
        channels.unwrap_or(1),
    ))
}
