#!/usr/bin/env python3
"""Reference logits from PyPI's onnxruntime for the ONNX export test (tests/onnx_export.rs).

Steps (run from the repository root):
  SER_WRITE_ONNX_FIXTURES=1 cargo test --release --test onnx_export   # writes model.onnx
  python tools/onnx_fixtures.py                                       # writes the rest
  python tools/onnx_fixtures.py tests/fixtures/onnx_norm              # the --norm utterance model
  python tools/onnx_fixtures.py tests/fixtures/onnx_ensemble --probabilities   # an ensemble
  # an ensemble of two runs, against `predict --model a --model b` (tests/cli_ensemble.rs):
  cd tests/fixtures/onnx_ensemble_cli && ser-engine export --model a --model b --onnx model.onnx
  ser-engine features --n-mels 32 --out . clip.wav; cd -
  python tools/onnx_fixtures.py tests/fixtures/onnx_ensemble_cli --clip
  cargo test --release --test onnx_export                             # compares

Needs: pip install onnxruntime numpy onnx (a venv outside the repository, e.g. /work/venv-onnx).
Writes tests/fixtures/onnx/input_T.npy (float32 [2, 1, n_mels, T] log-Mel dB, two different
clips of T frames: batches of equal length, the case the graph reproduces exactly) and
logits_T.npy (float32 [2, classes]) for several T (with --probabilities also probabilities_T.npy,
the output an ensemble's test compares), and checks the model with onnx.checker.
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "onnx")
ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
if ARGS:
    DIR = ARGS[0]
LENGTHS = [8, 37, 100, 251]  # the shortest input, odd sizes (floor pooling), a few seconds


def clip_fixture():
    """--clip: DIR/clip.npy (ser-engine features of DIR/clip.wav, [n_mels, frames]) through
    DIR/model.onnx; writes DIR/probabilities.npy (float32 [1, classes])."""
    path = os.path.join(DIR, "model.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.load(os.path.join(DIR, "clip.npy")).astype(np.float32)[None, None]
    logits, probs = sess.run(None, {"log_mel": x})
    assert np.all(np.isfinite(probs)), "non-finite probabilities"
    np.save(os.path.join(DIR, "probabilities.npy"), probs.astype(np.float32))
    print(f"{path}: onnxruntime {ort.__version__}, probabilities {probs.round(6).tolist()}")
    return 0


def main():
    if "--clip" in sys.argv:
        return clip_fixture()
    path = os.path.join(DIR, "model.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    print(f"{path}: onnx.checker ok, opset {opset}, onnxruntime {ort.__version__}")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    n_mels = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    rng = np.random.default_rng(2026)
    for t in LENGTHS:
        # dB in [-80, 0] with some structure: a smooth spectral tilt plus noise.
        tilt = np.linspace(0, -30, n_mels)[None, None, :, None]
        x = np.clip(tilt + rng.normal(-25, 15, (2, 1, n_mels, t)), -80, 0).astype(np.float32)
        logits, probs = sess.run(None, {"log_mel": x})
        assert np.all(np.isfinite(logits)), "non-finite logits"
        assert np.allclose(probs.sum(1), 1, atol=1e-6)
        np.save(os.path.join(DIR, f"input_{t}.npy"), x)
        np.save(os.path.join(DIR, f"logits_{t}.npy"), logits.astype(np.float32))
        if "--probabilities" in sys.argv:
            np.save(os.path.join(DIR, f"probabilities_{t}.npy"), probs.astype(np.float32))
        print(f"T={t}: logits {logits.round(4).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
