#!/usr/bin/env python3
"""Writes the small compressed-audio fixtures in tests/fixtures/audio/ (Rust has no FLAC,
Vorbis or MP3 encoder here, so the decoder tests read files made by libsndfile).

Each compressed file comes with the same signal as a WAV written by the same tool, so a test
can compare the two decoders sample by sample (FLAC is lossless: equal; Vorbis/MP3 are lossy:
close). Run from the crate root:  python3 tools/make_audio_fixtures.py
Needs: pip install soundfile numpy   (soundfile 0.14.0 with libsndfile 1.2.2 made the committed files)
"""
import os

import numpy as np
import soundfile as sf

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "audio")


def signal(rate, seconds, channels, seed):
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    chans = []
    for c in range(channels):
        x = 0.4 * np.sin(2 * np.pi * (440 + 110 * c) * t) + 0.2 * np.sin(2 * np.pi * 1234 * t + c)
        x += 0.05 * rng.standard_normal(len(t))
        chans.append(x)
    return np.clip(np.stack(chans, axis=1), -0.99, 0.99)


def quantize(x, bits):
    """Integer samples held in int16 (16-bit) or left-aligned in int32 (24-bit), so that every
    file of a pair stores the very same integers (libsndfile's float->int paths differ by
    format, by one LSB)."""
    q = np.round(x * 2 ** (bits - 1)).clip(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return q.astype(np.int16) if bits == 16 else (q.astype(np.int32) << (32 - bits))


def write_pair(stem, x, rate, bits):
    q = quantize(x, bits)
    for ext in ("flac", "wav"):
        path = os.path.join(OUT, f"{stem}.{ext}")
        sf.write(path, q, rate, subtype=f"PCM_{bits}")
        back, _ = sf.read(path, dtype=q.dtype)
        assert np.array_equal(back.reshape(q.shape), q), path


def main():
    os.makedirs(OUT, exist_ok=True)
    # 16-bit mono 16 kHz (KSUEmotions' format), 0.25 s.
    x = signal(16000, 0.25, 1, 1)
    write_pair("tone16k_mono16", x, 16000, 16)
    # 24-bit stereo 22.05 kHz, 0.1 s.
    x = signal(22050, 0.1, 2, 2)
    write_pair("tone22k_stereo24", x, 22050, 24)
    # Lossy: Ogg/Vorbis and MP3, mono 16 kHz, 0.5 s, with the source as a float WAV.
    x = signal(16000, 0.5, 1, 3)
    sf.write(os.path.join(OUT, "tone16k_lossy_src.wav"), x, 16000, subtype="FLOAT")
    sf.write(os.path.join(OUT, "tone16k.ogg"), x, 16000, format="OGG", subtype="VORBIS")
    try:
        sf.write(os.path.join(OUT, "tone16k.mp3"), x, 16000, format="MP3", subtype="MPEG_LAYER_III")
    except Exception as e:  # libsndfile built without MP3
        print("no mp3:", e)
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))


if __name__ == "__main__":
    main()
