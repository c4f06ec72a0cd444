#!/usr/bin/env python3
"""librosa log-Mel throughput on ONE core, for comparison with `ser-engine features --bench`.

    /work/venv-librosa/bin/python tools/librosa_bench.py [--seconds 60] [--repeats 5]

Times `melspectrogram(n_fft=2048, hop=256, n_mels=128, fmin=80, fmax=7600)` + `power_to_db`
(the project's front end) on synthetic float32 audio at 22.05 and 44.1 kHz and prints
audio-seconds processed per wall-clock second (best and median of the repeats). The mel
filterbank is built once before timing (librosa caches it too), so this is steady-state speed.
"""
import os

# Pin every numerical library to one thread BEFORE numpy is imported.
for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
          "VECLIB_MAXIMUM_THREADS"):
    os.environ[v] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import librosa  # noqa: E402


def log_mel(y, sr):
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=256, n_mels=128,
                                       fmin=80.0, fmax=7600.0)
    return librosa.power_to_db(S, ref=np.max, amin=1e-10, top_db=80.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"librosa {librosa.__version__}, numpy {np.__version__}, 1 thread, "
          f"{a.seconds:g} s of audio, {a.repeats} repeats")
    for sr in (22050, 44100):
        n = int(a.seconds * sr)
        t = np.arange(n) / sr
        y = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
        log_mel(y[: sr], sr)  # warm-up: imports, filterbank cache
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            log_mel(y, sr)
            times.append(time.perf_counter() - t0)
        best, med = min(times), float(np.median(times))
        print(f"{sr:>6} Hz: {a.seconds / best:8.1f} audio-s/s best, {a.seconds / med:8.1f} median "
              f"({best * 1e3:.1f} ms best per {a.seconds:g} s)")


if __name__ == "__main__":
    main()
