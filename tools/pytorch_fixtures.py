#!/usr/bin/env python3
"""Write (or --check) the PyTorch parity fixtures in tests/fixtures/pytorch/.

Each model fixture holds a small ArabEmoNet (tools/pytorch_reference.py), its parameters and
BatchNorm buffers, a padded input batch with per-clip lengths and labels, and what PyTorch
computes from them: eval logits, training-mode logits (dropout p = 0, because torch's dropout
RNG is not ours), the mean cross-entropy loss, every parameter's gradient, the input's
gradient, and the BatchNorm running statistics after the training forward.
adam.safetensors holds Adam / AdamW steps and clip_grad_norm_ cases.
The naming is documented in tests/fixtures/pytorch/README.md.

Usage (from the repository root):
    /work/venv-torch/bin/python tools/pytorch_fixtures.py            # write
    /work/venv-torch/bin/python tools/pytorch_fixtures.py --check    # reload, recompute, compare
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import ArabEmoNet, Config, loss_fn, time_mask  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "pytorch")


@dataclasses.dataclass
class Spec:
    name: str
    cfg: Config
    lengths: list
    t_max: int
    seed: int
    dtype: torch.dtype = torch.float32
    label_smoothing: float = 0.0
    class_weights: list | None = None


SMALL_K3 = Config(n_mels=16, kernel=3, channels=(4, 8, 8), fc=8, hidden=6, lstm_layers=2,
                  classes=3, dropout=0.0, batchnorm=True)

SPECS = [
    Spec("small_k3", SMALL_K3, [16, 13, 9], 16, seed=1),
    Spec("small_k3_f64", SMALL_K3, [16, 13, 9], 16, seed=1, dtype=torch.float64),
    Spec("small_k5_nobn",
         Config(n_mels=16, kernel=5, channels=(4, 8, 8), fc=8, hidden=6, lstm_layers=2,
                classes=3, dropout=0.0, batchnorm=False),
         [21, 16, 8], 21, seed=2),
    Spec("small_k7_long",
         Config(n_mels=32, kernel=7, channels=(4, 6, 8), fc=8, hidden=6, lstm_layers=2,
                classes=4, dropout=0.0, batchnorm=True),
         [37, 24, 19, 11], 37, seed=3),
    Spec("small_k5_ls_weighted",
         Config(n_mels=16, kernel=5, channels=(4, 6, 8), fc=8, hidden=6, lstm_layers=2,
                classes=4, dropout=0.0, batchnorm=True),
         [23, 18, 12, 8], 23, seed=4, label_smoothing=0.1, class_weights=[0.5, 1.0, 2.0, 1.5]),
]


def build(spec: Spec):
    """Model (fixed-seed torch init, BN perturbed), padded input, lengths, labels."""
    torch.manual_seed(spec.seed)
    cfg = spec.cfg
    model = ArabEmoNet(cfg)
    with torch.no_grad():
        for s in (1, 2, 3):
            bn = getattr(model, f"bn{s}", None)
            if bn is None:
                continue
            c = bn.weight.numel()
            # Non-trivial affine and running stats so eval BN is really exercised.
            bn.weight.copy_(1.0 + 0.3 * torch.randn(c))
            bn.bias.copy_(0.2 * torch.randn(c))
            bn.running_mean.copy_(0.3 * torch.randn(c))
            bn.running_var.copy_(0.5 + torch.rand(c))
            bn.num_batches_tracked.fill_(5 + s)
    b = len(spec.lengths)
    lengths = torch.tensor(spec.lengths, dtype=torch.long)
    x = torch.randn(b, 1, cfg.n_mels, spec.t_max)
    x = x * time_mask(lengths, spec.t_max, x.dtype)  # zeros past each length
    labels = torch.arange(b, dtype=torch.long) % cfg.classes
    labels = labels[torch.randperm(b)]
    model = model.to(spec.dtype)
    return model, x.to(spec.dtype), lengths, labels


def compute(model: ArabEmoNet, x, lengths, labels, class_weights, label_smoothing):
    """Everything a fixture stores that PyTorch computes (model's state is advanced by the
    training forward: returns the initial params/buffers separately)."""
    out = {}
    for name, p in model.named_parameters():
        out[f"param.{name}"] = p.detach().clone()
    for name, buf in model.named_buffers():
        out[f"buffer.{name}"] = buf.detach().clone()
    model.eval()
    with torch.no_grad():
        out["eval.logits"] = model(x, lengths)
    model.train()
    xg = x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    logits = model(xg, lengths)
    loss = loss_fn(logits, labels, class_weights, label_smoothing)
    loss.backward()
    out["train.logits"] = logits.detach()
    out["train.loss"] = loss.detach()  # 0-dim (shape [])
    for name, p in model.named_parameters():
        out[f"grad.{name}"] = p.grad.detach().clone()
    out["input_grad.x"] = xg.grad.detach().clone()
    for name, buf in model.named_buffers():
        out[f"train.buffer.{name}"] = buf.detach().clone()
    return out


def model_fixture(spec: Spec):
    model, x, lengths, labels = build(spec)
    cw = None
    if spec.class_weights is not None:
        cw = torch.tensor(spec.class_weights, dtype=spec.dtype)
    t = compute(model, x, lengths, labels, cw, spec.label_smoothing)
    t["input.x"] = x
    t["input.lengths"] = lengths
    t["input.labels"] = labels
    if cw is not None:
        t["loss.class_weights"] = cw
    meta = {
        "config": spec.cfg.to_json(),
        "dtype": "f64" if spec.dtype == torch.float64 else "f32",
        "label_smoothing": repr(float(spec.label_smoothing)),
        "loss": "mean softmax cross-entropy (torch.nn.functional.cross_entropy)",
        "train_dropout": "0 (training-mode forward with dropout disabled)",
        "torch_version": torch.__version__,
        "seed": str(spec.seed),
        "generator": "tools/pytorch_fixtures.py",
    }
    return {k: v.contiguous() for k, v in t.items()}, meta


ADAM_HP = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
CLIP_MAX_NORM = 1.0
NOCLIP_MAX_NORM = 100.0


def optim_fixture():
    torch.manual_seed(10)
    n = 37
    p0 = torch.randn(n)
    grads = [torch.randn(n) * s for s in (1.0, 0.1, 3.0)]
    for g in grads:
        g[5] = 0.0  # a coordinate with zero gradient: only weight decay moves it
    t = {"param.0": p0}
    for i, g in enumerate(grads, 1):
        t[f"grad.{i}"] = g
    for prefix, cls in (("", torch.optim.Adam), ("adamw.", torch.optim.AdamW)):
        p = p0.clone().requires_grad_(True)
        opt = cls([p], **ADAM_HP)
        for i, g in enumerate(grads, 1):
            p.grad = g.clone()
            opt.step()
            t[f"{prefix}param.{i}"] = p.detach().clone()
        st = opt.state[p]
        t[f"{prefix or 'adam.'}exp_avg.3"] = st["exp_avg"].clone()
        t[f"{prefix or 'adam.'}exp_avg_sq.3"] = st["exp_avg_sq"].clone()
    for prefix, max_norm, scale in (("clip.", CLIP_MAX_NORM, 2.0), ("noclip.", NOCLIP_MAX_NORM, 1.0)):
        g = torch.randn(n) * scale
        p = torch.zeros(n, requires_grad=True)
        p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_([p], max_norm)
        t[f"{prefix}grad_in"] = g
        t[f"{prefix}grad_out"] = p.grad.detach().clone()
        t[f"{prefix}norm"] = norm.detach().reshape(())
    meta = {
        "adam": json.dumps({"lr": ADAM_HP["lr"], "beta1": 0.9, "beta2": 0.999, "eps": ADAM_HP["eps"],
                            "weight_decay": ADAM_HP["weight_decay"], "amsgrad": False,
                            "weight_decay_kind": "Adam: L2 added to grad; AdamW: decoupled p *= 1 - lr*wd"}),
        "steps": "3",
        "clip.max_norm": repr(CLIP_MAX_NORM),
        "noclip.max_norm": repr(NOCLIP_MAX_NORM),
        "clip_formula": "total = ||g||_2; g *= min(1, max_norm / (total + 1e-6))",
        "torch_version": torch.__version__,
        "generator": "tools/pytorch_fixtures.py",
    }
    return {k: v.contiguous() for k, v in t.items()}, meta


def save_reproducible(tensors: dict, path: str, meta: dict):
    """save_file, then rewrite the JSON header with sorted keys: safetensors serialises its
    metadata from a hash map in random order, and byte-identical regeneration is wanted so
    that `git status` shows whether a fixture really changed. Same length, so the data
    offsets are untouched."""
    save_file(tensors, path, metadata=meta)
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert len(text) <= n, "sorted header longer than the original"
    text += b" " * (n - len(text))  # safetensors pads the header with spaces
    with open(path, "wb") as f:
        f.write(raw[:8] + text + raw[8 + n :])


def all_fixtures():
    for spec in SPECS:
        yield spec.name, (lambda s=spec: model_fixture(s))
    yield "adam", optim_fixture


def compare(name, got: dict, stored: dict, dtype_tol) -> bool:
    ok = True
    if set(got) != set(stored):
        print(f"  FAIL {name}: tensor names differ: {sorted(set(got) ^ set(stored))}")
        return False
    for k in sorted(got):
        a, b = got[k], stored[k]
        if a.dtype != b.dtype or a.shape != b.shape:
            print(f"  FAIL {name}/{k}: {a.dtype}{list(a.shape)} vs stored {b.dtype}{list(b.shape)}")
            ok = False
            continue
        if not a.is_floating_point():
            if not torch.equal(a, b):
                print(f"  FAIL {name}/{k}: integer tensor differs")
                ok = False
            continue
        tol = dtype_tol[a.dtype]
        scale = max(1.0, b.abs().max().item() if b.numel() else 0.0)
        d = (a.double() - b.double()).abs()
        err = d.max().item() if d.numel() else 0.0
        if not (err <= tol * scale):  # NaN fails
            print(f"  FAIL {name}/{k}: max|diff| {err:.3e} > {tol * scale:.1e}")
            ok = False
    return ok


def recompute_from_stored(t: dict, meta: dict) -> dict:
    """Rebuild the model from the stored config, load the stored params/buffers, and
    recompute everything from the stored inputs (independent of the seeds)."""
    cfg = Config.from_json(meta["config"])
    dtype = torch.float64 if meta["dtype"] == "f64" else torch.float32
    model = ArabEmoNet(cfg).to(dtype)
    sd = {k[len("param."):]: v for k, v in t.items() if k.startswith("param.")}
    sd.update({k[len("buffer."):]: v for k, v in t.items() if k.startswith("buffer.")})
    model.load_state_dict(sd, strict=True)
    cw = t.get("loss.class_weights")
    out = compute(model, t["input.x"], t["input.lengths"], t["input.labels"], cw, float(meta["label_smoothing"]))
    for k in ("input.x", "input.lengths", "input.labels", "loss.class_weights"):
        if k in t:
            out[k] = t[k]
    return out


def sanity(name, t: dict, meta: dict) -> bool:
    """Structural checks that do not need recomputation."""
    if name == "adam":
        return True
    ok = True
    cfg = Config.from_json(meta["config"])
    x, lengths = t["input.x"], t["input.lengths"]
    b, _, m, tmax = x.shape
    ok &= m == cfg.n_mels and lengths.shape == (b,) and int(lengths.min()) >= 8 and int(lengths.max()) == tmax
    mask = time_mask(lengths, tmax, x.dtype)
    ok &= bool((x * (1 - mask)).abs().max() == 0)  # zeros past each length
    ok &= bool(torch.isfinite(t["train.loss"])) and t["train.loss"].shape == ()
    model = ArabEmoNet(cfg)
    names = [n for n, _ in model.named_parameters()]
    ok &= all(f"param.{n}" in t and f"grad.{n}" in t for n in names)
    ok &= all(t[f"param.{n}"].shape == p.shape for n, p in model.named_parameters())
    if not ok:
        print(f"  FAIL {name}: structural check")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="fixture folder (default tests/fixtures/pytorch)")
    ap.add_argument("--check", action="store_true",
                    help="reload every fixture, recompute it with PyTorch and compare; exit 1 on mismatch")
    args = ap.parse_args()
    # One thread: fixed summation order, so regeneration is bit-reproducible on one machine.
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    # Recomputation on the same torch build is expected to be bit-identical; the tolerances
    # only allow for a different torch version / CPU kernel choice (relative to max(1,|ref|)).
    dtype_tol = {torch.float32: 1e-5, torch.float64: 1e-12}
    all_ok = True
    total = 0
    for name, make in all_fixtures():
        path = os.path.join(args.out, f"{name}.safetensors")
        tensors, meta = make()
        if args.check:
            stored = load_file(path)
            with safe_open(path, framework="pt") as f:
                stored_meta = f.metadata()
            # 1) regenerate from the seeds; 2) recompute from the stored tensors alone.
            good = compare(name, tensors, stored, dtype_tol)
            if name != "adam":
                good &= compare(name + " (from stored)", recompute_from_stored(stored, stored_meta),
                                stored, dtype_tol)
            good &= sanity(name, stored, stored_meta)
            for key in meta:
                if key != "torch_version" and stored_meta.get(key) != meta[key]:
                    print(f"  FAIL {name}: metadata {key!r} differs")
                    good = False
            print(f"{'ok ' if good else 'FAIL'} {name}: {len(stored)} tensors")
            all_ok &= good
        else:
            save_reproducible(tensors, path, meta)
            print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")
        total += os.path.getsize(path)
    print(f"total {total} bytes")
    if args.check:
        print("CHECK", "PASSED" if all_ok else "FAILED")
        sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
