//! Decoding: every WAV bit depth and channel count checked sample by sample against the
//! librosa scaling, FLAC against the same signal as WAV (lossless: equal), Vorbis/MP3 against
//! their source (lossy: close), and every damaged-input case as an error naming the file.

use hound::{SampleFormat, WavSpec, WavWriter};
use ser_engine::audio::decode::{load_audio, probe_audio};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/audio")
        .join(name)
}

fn spec(ch: u16, rate: u32, bits: u16, fmt: SampleFormat) -> WavSpec {
    WavSpec {
        channels: ch,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: fmt,
    }
}

/// Integer test values for a bit depth: both extremes, zero, and a spread in between.
fn int_values(bits: u16, n: usize) -> Vec<i32> {
    let max = ((1i64 << (bits - 1)) - 1) as i32;
    let min = (-(1i64 << (bits - 1))) as i32;
    let mut v = vec![min, max, 0, -1, 1];
    for i in 0..n.saturating_sub(v.len()) {
        // A deterministic walk over the whole range.
        let t = (i as i64 * 2_654_435_761) % (1i64 << bits);
        v.push((t - (1i64 << (bits - 1))) as i32);
    }
    v.truncate(n);
    v
}

/// The expected mono value per frame: every channel scaled to f32 by the librosa rule
/// (in f64, rounded once), then their mean in f32.
fn expected_mono(interleaved: &[f64], ch: usize) -> Vec<f32> {
    interleaved
        .chunks(ch)
        .map(|f| f.iter().map(|&x| x as f32).sum::<f32>() / ch as f32)
        .collect()
}

#[test]
fn wav_int_depths_and_channels_exact() {
    let dir = tempfile::tempdir().unwrap();
    for bits in [8u16, 16, 24, 32] {
        for ch in [1u16, 2, 3] {
            let frames = 50usize;
            let vals = int_values(bits, frames * ch as usize);
            let path = dir.path().join(format!("int{bits}_{ch}ch.wav"));
            let mut w =
                WavWriter::create(&path, spec(ch, 22_050, bits, SampleFormat::Int)).unwrap();
            for &v in &vals {
                if bits == 8 {
                    // hound stores i8 as unsigned (v + 128), the WAV convention.
                    w.write_sample(v as i8).unwrap();
                } else {
                    w.write_sample(v).unwrap();
                }
            }
            w.finalize().unwrap();
            let full = 2f64.powi(bits as i32 - 1);
            let scaled: Vec<f64> = vals.iter().map(|&v| v as f64 / full).collect();
            let want = expected_mono(&scaled, ch as usize);
            let a = load_audio(&path, None).unwrap();
            assert_eq!(a.sample_rate, 22_050);
            assert_eq!(a.samples, want, "{bits}-bit {ch} channels");
            let info = probe_audio(&path).unwrap();
            assert_eq!(
                (info.sample_rate, info.channels, info.frames),
                (22_050, ch, frames as u64)
            );
            assert!((info.duration_s - frames as f64 / 22_050.0).abs() < 1e-12);
        }
    }
}

#[test]
fn wav_16bit_is_librosa_scaling() {
    // librosa: int16 / 32768 -> -32768 is exactly -1, 32767 is 1 - 2^-15, 1 is 2^-15.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.wav");
    let mut w = WavWriter::create(&path, spec(1, 16_000, 16, SampleFormat::Int)).unwrap();
    for v in [-32768i16, 32767, 1, 0] {
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
    let a = load_audio(&path, None).unwrap();
    assert_eq!(
        a.samples,
        vec![-1.0, 1.0 - 2f32.powi(-15), 2f32.powi(-15), 0.0]
    );
}

#[test]
fn wav_8bit_unsigned_centre_is_zero() {
    // Stored bytes 0, 128, 255 -> (s - 128) / 128 = -1, 0, 127/128.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u8.wav");
    let mut w = WavWriter::create(&path, spec(1, 8000, 8, SampleFormat::Int)).unwrap();
    for v in [-128i8, 0, 127] {
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[bytes.len() - 3..], &[0u8, 128, 255]);
    let a = load_audio(&path, None).unwrap();
    assert_eq!(a.samples, vec![-1.0, 0.0, 127.0 / 128.0]);
}

#[test]
fn wav_float_mono_and_stereo_exact() {
    let dir = tempfile::tempdir().unwrap();
    let vals = [0.25f32, -0.5, 1.0, -1.0, 0.125, 0.0, 0.75, -0.25];
    for ch in [1u16, 2] {
        let path = dir.path().join(format!("f{ch}.wav"));
        let mut w = WavWriter::create(&path, spec(ch, 48_000, 32, SampleFormat::Float)).unwrap();
        for v in vals {
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
        let a = load_audio(&path, None).unwrap();
        let want = expected_mono(
            &vals.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            ch as usize,
        );
        assert_eq!(a.samples, want);
        assert_eq!(a.sample_rate, 48_000);
    }
}

#[test]
fn flac_equals_the_same_signal_as_wav() {
    for (flac, wav, rate, ch, frames) in [
        (
            "tone16k_mono16.flac",
            "tone16k_mono16.wav",
            16_000,
            1,
            4000u64,
        ),
        (
            "tone22k_stereo24.flac",
            "tone22k_stereo24.wav",
            22_050,
            2,
            2205,
        ),
    ] {
        let f = load_audio(&fixture(flac), None).unwrap();
        let w = load_audio(&fixture(wav), None).unwrap();
        assert_eq!(f.sample_rate, rate);
        assert_eq!(f.samples.len() as u64, frames);
        // Lossless, and both decoders scale by 2^(bits-1): bit-identical.
        assert_same(&f.samples, &w.samples, flac);
        let info = probe_audio(&fixture(flac)).unwrap();
        assert_eq!(
            (info.sample_rate, info.channels, info.frames),
            (rate, ch, frames)
        );
    }
}

/// Equal length and bit-identical samples; on failure names the first difference.
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: sample {i}: {} != {}", got[i], want[i]);
    }
}

/// Signal-to-noise ratio of `got` against `want`, in dB, over the common length.
fn snr_db(got: &[f32], want: &[f32]) -> f64 {
    let n = got.len().min(want.len());
    let sig: f64 = want[..n].iter().map(|&x| (x as f64).powi(2)).sum();
    let err: f64 = (0..n)
        .map(|i| (got[i] as f64 - want[i] as f64).powi(2))
        .sum();
    10.0 * (sig / err).log10()
}

#[test]
fn vorbis_and_mp3_decode_close_to_their_source() {
    let src = load_audio(&fixture("tone16k_lossy_src.wav"), None).unwrap();
    for name in ["tone16k.ogg", "tone16k.mp3"] {
        let a = load_audio(&fixture(name), None).unwrap();
        assert_eq!(a.sample_rate, 16_000, "{name}");
        let info = probe_audio(&fixture(name)).unwrap();
        assert_eq!(info.sample_rate, 16_000);
        assert_eq!(info.channels, 1);
        let snr = snr_db(&a.samples, &src.samples);
        eprintln!(
            "{name}: {} samples (source {}), probe {} frames, SNR {snr:.1} dB",
            a.samples.len(),
            src.samples.len(),
            info.frames
        );
        // Gapless decoding keeps the encoded length (within one MP3 granule of 576 samples,
        // should the encoder's padding info be missing).
        let dn = (a.samples.len() as i64 - src.samples.len() as i64).abs();
        assert!(
            dn <= 576,
            "{name}: length {} vs {}",
            a.samples.len(),
            src.samples.len()
        );
        // Aligned lossy coding at default quality keeps the waveform: well above 10 dB.
        // A misaligned or mis-scaled decode gives about 0 dB or less.
        assert!(snr >= 10.0, "{name}: SNR {snr} dB");
    }
}

#[test]
fn resampled_on_request() {
    let a = load_audio(&fixture("tone16k_mono16.flac"), Some(8000)).unwrap();
    assert_eq!(a.sample_rate, 8000);
    assert_eq!(a.samples.len(), 2000);
    let same = load_audio(&fixture("tone16k_mono16.flac"), Some(16_000)).unwrap();
    let native = load_audio(&fixture("tone16k_mono16.flac"), None).unwrap();
    assert_eq!(same.samples, native.samples);
}

/// Asserts that both load and probe fail, with the file's path and `why` in the message.
fn assert_fails(path: &Path, why: &str, probe_too: bool) {
    let e = format!("{:#}", load_audio(path, None).unwrap_err());
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains(why), "load: expected '{why}' in: {e}");
    if probe_too {
        let e = format!("{:#}", probe_audio(path).unwrap_err());
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains(why), "probe: expected '{why}' in: {e}");
    }
}

fn write_wav16(path: &Path, n: usize) {
    let mut w = WavWriter::create(path, spec(1, 16_000, 16, SampleFormat::Int)).unwrap();
    for i in 0..n {
        w.write_sample((i % 100) as i16).unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn missing_directory_and_non_audio_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails(&dir.path().join("nope (1).wav"), "no such file", true);
    assert_fails(dir.path(), "is a directory", true);
    let txt = dir.path().join("notes.wav");
    std::fs::write(&txt, "this is not audio at all, just some text").unwrap();
    assert_fails(&txt, "not a recognised audio file", true);
    let empty = dir.path().join("empty.flac");
    std::fs::write(&empty, b"").unwrap();
    assert_fails(&empty, "empty", true);
    // RIFF/WAVE magic with garbage after it.
    let bad = dir.path().join("bad.wav");
    std::fs::write(&bad, b"RIFF\x10\x00\x00\x00WAVEjunkjunk").unwrap();
    assert_fails(&bad, "not a valid WAV", true);
}

#[test]
fn truncated_wav_is_an_error_not_a_shorter_clip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.wav");
    write_wav16(&path, 1000);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert_fails(&path, "truncated", true);
}

#[test]
fn wav_header_claiming_more_data_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.wav");
    write_wav16(&path, 1000);
    let mut bytes = std::fs::read(&path).unwrap();
    // hound writes the canonical 44-byte header: data chunk size at bytes 40..44.
    assert_eq!(&bytes[36..40], b"data");
    bytes[40..44].copy_from_slice(&4000u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert_fails(&path, "truncated", true);
}

#[test]
fn zero_samples_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silence of nothing.wav");
    write_wav16(&path, 0);
    assert_fails(&path, "no audio samples", true);
}

#[test]
fn nan_and_inf_in_float_wav_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bad) in [("nan.wav", f32::NAN), ("inf.wav", f32::INFINITY)] {
        let path = dir.path().join(name);
        let mut w = WavWriter::create(&path, spec(1, 16_000, 32, SampleFormat::Float)).unwrap();
        for v in [0.1f32, 0.2, bad, 0.3] {
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
        assert_fails(&path, "sample 2 is", false);
    }
}

#[test]
fn unsupported_wav_encoding_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.wav");
    write_wav16(&path, 100);
    let mut bytes = std::fs::read(&path).unwrap();
    // fmt chunk's format tag (bytes 20..22): an unknown codec id.
    bytes[20..22].copy_from_slice(&0x1234u16.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = format!("{:#}", load_audio(&path, None).unwrap_err());
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains("unsupported") || e.contains("not a recognised"),
        "{e}"
    );
    assert!(probe_audio(&path).is_err());
}

#[test]
fn truncated_flac_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.flac");
    let bytes = std::fs::read(fixture("tone16k_mono16.flac")).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", load_audio(&path, None).unwrap_err());
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("truncated") || e.contains("corrupt"), "{e}");
}

#[test]
fn real_eyase_clip_if_present() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/eyase/Female01/fm01_ang (1).wav");
    if !p.exists() {
        eprintln!("skipping: {} not found", p.display());
        return;
    }
    let a = load_audio(&p, None).unwrap();
    let info = probe_audio(&p).unwrap();
    assert_eq!(a.sample_rate, 44_100);
    assert_eq!(info.frames, a.samples.len() as u64);
    assert!(a.samples.iter().all(|s| (-1.0..1.0).contains(s)));
}
