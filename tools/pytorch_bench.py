#!/usr/bin/env python3
"""PyTorch CPU throughput of the full-size ArabEmoNet: the baseline the Rust engine is
compared with.

Model: 128 mels, k=7, channels 32/64/128, fc 128, BiLSTM 2x64, 5 classes, BatchNorm,
dropout 0.3 (training). Input batch [16, 1, 128, 126] by default (126 frames ~ 2 s at
16 kHz with hop 256). Measures
  train: forward + mean cross-entropy + backward + Adam step (lr 1e-4, wd 1e-5)
  infer: eval-mode forward under torch.inference_mode()
for
  plain          the paper's unmasked model (nn.BatchNorm2d, plain nn.LSTM)
  masked/full    the length-aware reference, every clip full length (overhead of masks+packing)
  masked/mixed   the length-aware reference, lengths spread evenly over [t/2, t] (max = t)
  plain/bf16     the plain model under torch.autocast('cpu', dtype=torch.bfloat16): PyTorch's
                 fastest CPU mode where the CPU has bf16 units (AVX512-BF16 / AMX); fp32
                 weights and Adam, as ser-engine's --precision bf16 (--no-bf16 leaves it out)
Each cell: median (and best) samples/s over --repeats timed runs of --iters iterations,
after --warmup iterations; the timed runs go round-robin over the cells so that load from
other processes affects every cell alike. samples/CPU-s divides by the process's CPU time
(all threads): on a shared machine it is the steadier number; with N threads fully busy,
wall throughput is at most N times it.

With --device cuda the same model and batches run on the GPU with cudnn.benchmark on (the
fastest cuDNN algorithms for these shapes), each timed run ending with a synchronize;
samples/CPU-s then measures the host side only. The last line, `RESULT ...`, is what
tools/gpu-check.sh reads.

Usage:
    /work/venv-torch/bin/python tools/pytorch_bench.py [--threads 2] [--batch 16] [--frames 126]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import ArabEmoNet, Config, time_mask  # noqa: E402


def make_step(model, x, lengths, labels, mode, bf16=False):
    """One training step (forward + loss + backward + Adam) or one inference forward; with
    bf16, forward (and so backward) under CPU bf16 autocast, loss and Adam in fp32."""

    def cast():
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)

    if mode == "train":
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)

        def step():
            model.train()
            opt.zero_grad(set_to_none=True)
            with cast():
                out = model(x, lengths)
            loss = F.cross_entropy(out.float(), labels)
            loss.backward()
            opt.step()
    else:

        def step():
            model.eval()
            with torch.inference_mode(), cast():
                model(x, lengths)

    return step


def timed(step, iters, batch, sync=lambda: None):
    """(samples per wall second, samples per CPU second of this process, all threads)."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    sync()
    return batch * iters / (time.perf_counter() - t0), batch * iters / (time.process_time() - c0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=126)
    ap.add_argument("--kernel", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--no-bf16", action="store_true", help="leave out the bf16 autocast variant")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = (lambda: None)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("error: --device cuda but torch sees no GPU")
        torch.backends.cudnn.benchmark = True
        sync = torch.cuda.synchronize

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = Config(n_mels=128, kernel=args.kernel, channels=(32, 64, 128), fc=128, hidden=64,
                 lstm_layers=2, classes=5, dropout=0.3, batchnorm=True)
    b, t = args.batch, args.frames
    x = torch.randn(b, 1, cfg.n_mels, t)
    labels = torch.randint(0, cfg.classes, (b,))
    full = torch.full((b,), t, dtype=torch.long)
    mixed = torch.linspace(t // 2, t, b).round().long()
    mixed[-1] = t
    x_mixed = x * time_mask(mixed, t, x.dtype)
    # lengths stay on the host (pack_padded_sequence wants CPU lengths)
    x, x_mixed, labels = x.to(dev), x_mixed.to(dev), labels.to(dev)

    masked = ArabEmoNet(cfg)
    plain = ArabEmoNet(cfg, plain=True)
    plain.load_state_dict(masked.state_dict())
    plain_bf16 = ArabEmoNet(cfg, plain=True)
    plain_bf16.load_state_dict(masked.state_dict())
    masked, plain, plain_bf16 = masked.to(dev), plain.to(dev), plain_bf16.to(dev)
    cases = [
        ("plain", plain, x, None),
        ("masked/full", masked, x, full),
        ("masked/mixed", masked, x_mixed, mixed),
    ]
    if not args.no_bf16:
        cases.append(("plain/bf16", plain_bf16, x, None))
    where = torch.cuda.get_device_name() + ", cudnn.benchmark on" if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {where}, threads {torch.get_num_threads()}, batch {b}, "
          f"input [{b},1,{cfg.n_mels},{t}], k={cfg.kernel}, params {sum(p.numel() for p in masked.parameters()):,}")
    print(f"mixed lengths: {mixed.tolist()}")
    print(f"warmup {args.warmup}, {args.repeats} runs x {args.iters} iterations; samples/s median (best)")
    print(f"{'variant':<14} {'train samples/s':>20} {'infer samples/s':>20} "
          f"{'train samples/CPU-s':>20} {'infer samples/CPU-s':>20}")
    steps = {}
    for name, model, xin, lens in cases:
        for mode in ("train", "infer"):
            steps[(name, mode)] = make_step(model, xin, lens, labels, mode, name.endswith("bf16"))
            for _ in range(args.warmup):
                steps[(name, mode)]()
    # Round-robin over the cells, so that load from other processes hits all of them alike.
    rates = {key: [] for key in steps}
    for _ in range(args.repeats):
        for key, step in steps.items():
            rates[key].append(timed(step, args.iters, b, sync))
    for name, _, _, _ in cases:
        cells = []
        for j in (0, 1):  # wall, CPU
            for m in ("train", "infer"):
                r = [v[j] for v in rates[(name, m)]]
                cells.append(f"{statistics.median(r):8.1f} ({max(r):6.1f})")
        print(f"{name:<14} " + " ".join(f"{c:>20}" for c in cells), flush=True)
    med = {k: statistics.median(v[0] for v in r) for k, r in rates.items()}
    print(f"RESULT device={args.device} batch={b} "
          f"plain_train={med[('plain', 'train')]:.1f} masked_mixed_train={med[('masked/mixed', 'train')]:.1f} "
          f"plain_infer={med[('plain', 'infer')]:.1f}"
          + ("" if args.no_bf16 else f" bf16_train={med[('plain/bf16', 'train')]:.1f} "
             f"bf16_infer={med[('plain/bf16', 'infer')]:.1f}"), flush=True)


if __name__ == "__main__":
    main()
