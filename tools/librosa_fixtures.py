#!/usr/bin/env python3
"""Writes librosa reference log-Mel fixtures for tests/features_librosa.rs.

Run with any Python that has tools/requirements-librosa.txt installed, e.g.
    python3 -m venv /work/venv-librosa
    /work/venv-librosa/bin/pip install -r tools/requirements-librosa.txt
    /work/venv-librosa/bin/python tools/librosa_fixtures.py            # -> tests/fixtures/librosa

Each case stores its float32 input signal (<case>.in.npy, 1-D) and librosa's output
(<case>.out.npy, [n_mels, frames]); manifest.json lists the cases and their parameters.
Signals: a logarithmic sine sweep, white noise, silence and a clip shorter than n_fft, at 16000,
22050, 44100 and 48000 Hz (lengths not multiples of the hop), plus cases with non-default
parameters. Also npy_check_2d.npy / npy_check_1d.npy, known arrays (formula in manifest) for the
.npy reader test. Total size is kept well under 2 MB.
"""
import argparse
import json
import os

import numpy as np
import librosa

DEFAULT = dict(n_fft=2048, hop=256, n_mels=128, fmin=80.0, fmax=7600.0, top_db=80.0)


def log_mel(y, sr, p):
    S = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=p["n_fft"], hop_length=p["hop"], window="hann", center=True,
        pad_mode="constant", power=2.0, n_mels=p["n_mels"], fmin=p["fmin"], fmax=p["fmax"],
        htk=False, norm="slaney")
    return librosa.power_to_db(S, ref=np.max, amin=1e-10, top_db=p["top_db"]).astype(np.float32)


def sweep(sr, n, f0=50.0, amp=0.5):
    # Logarithmic sweep from f0 to 0.95 * Nyquist: crosses every band, fmax included.
    t = np.arange(n) / sr
    dur = n / sr
    f1 = 0.95 * sr / 2
    k = np.log(f1 / f0)
    phase = 2 * np.pi * f0 * dur / k * (np.exp(t / dur * k) - 1)
    return (amp * np.sin(phase)).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                   "fixtures", "librosa"))
    ap.add_argument("--seed", type=int, default=20240601)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    cases = []

    def add(name, y, sr, params=None):
        p = dict(DEFAULT, **(params or {}))
        y = np.asarray(y, dtype=np.float32)
        out = log_mel(y, sr, p)
        np.save(os.path.join(a.out, f"{name}.in.npy"), y)
        np.save(os.path.join(a.out, f"{name}.out.npy"), out)
        cases.append(dict(name=name, sr=sr, samples=int(len(y)), shape=list(out.shape), **p))

    for sr in (16000, 22050, 44100, 48000):
        n = int(0.45 * sr) + 37  # not a multiple of any hop used here
        add(f"sweep_{sr}", sweep(sr, n), sr)
        add(f"noise_{sr}", 0.1 * rng.standard_normal(n), sr)
        add(f"silence_{sr}", np.zeros(int(0.1 * sr) + 11), sr)
        # Shorter than n_fft (and than n_fft/2 + hop): a decaying tone plus a little noise.
        m = 1500
        t = np.arange(m) / sr
        short = 0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t * 20) + 0.01 * rng.standard_normal(m)
        add(f"short_{sr}", short, sr)
    # Non-default parameters.
    n = int(0.5 * 16000) + 13
    add("params_16000", sweep(16000, n) + 0.01 * rng.standard_normal(n), 16000,
        dict(n_mels=64, n_fft=1024, hop=160, fmax=4000.0))
    n = int(0.4 * 22050) + 5
    add("params_22050", sweep(22050, n, f0=20.0) * np.linspace(0.05, 1.0, n), 22050,
        dict(n_mels=40, n_fft=512, hop=100, fmin=0.0, fmax=11025.0, top_db=60.0))

    # Known arrays for the .npy reader test (written by numpy itself).
    np.save(os.path.join(a.out, "npy_check_2d.npy"),
            (np.arange(12, dtype=np.float32).reshape(3, 4) * 0.5 - 1.0))
    np.save(os.path.join(a.out, "npy_check_1d.npy"), np.arange(5, dtype=np.float32) / 8)

    manifest = dict(
        librosa=librosa.__version__, numpy=np.__version__, seed=a.seed,
        npy_check={"npy_check_2d.npy": "arange(12).reshape(3,4)*0.5-1", "npy_check_1d.npy":
                   "arange(5)/8"},
        cases=cases)
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    total = sum(os.path.getsize(os.path.join(a.out, x)) for x in os.listdir(a.out))
    print(f"{len(cases)} cases, {total / 1e6:.2f} MB in {os.path.normpath(a.out)}")


if __name__ == "__main__":
    main()
