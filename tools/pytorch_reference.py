#!/usr/bin/env python3
"""PyTorch reference of ArabEmoNet, exactly per notes/MODEL_SPEC.md.

This is the oracle the Rust CPU reference (src/cpu) is tested against through the
fixtures written by tools/pytorch_fixtures.py. It implements the length-aware model:

* input masked to each clip's length, and again after every MaxPool (len_s = len_{s-1} // 2);
* BatchNorm statistics over VALID positions only (time < len_{s-1}[b]) via MaskedBatchNorm2d,
  which equals nn.BatchNorm2d when no clip is padded (checked by --self-test);
* the BiLSTM runs on a packed sequence (each direction over the clip's own len3[b] frames,
  the reverse one starting at frame len3[b]-1), padded back with zeros;
* attention softmax over valid frames only (-inf before softmax).

`ArabEmoNet(cfg, plain=True)` is the paper's unmasked model (nn.BatchNorm2d, plain LSTM,
softmax over all frames) with the same state_dict names; it is used by the benchmark and by
the self-test (length-aware == plain when every clip is full length).

Usage:
    python tools/pytorch_reference.py --self-test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


@dataclasses.dataclass
class Config:
    """Mirror of the Rust ModelConfig; `to_json()` is the fixtures' "config" metadata."""

    n_mels: int = 128
    kernel: int = 7
    channels: tuple = (32, 64, 128)
    fc: int = 128
    hidden: int = 64
    lstm_layers: int = 2
    classes: int = 5
    dropout: float = 0.3
    batchnorm: bool = True

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(s: str) -> "Config":
        d = json.loads(s)
        d["channels"] = tuple(d["channels"])
        return Config(**d)


def time_mask(lengths: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, 1, t] mask: 1 where time < lengths[b], else 0."""
    ar = torch.arange(t, device=lengths.device)
    return (ar[None, :] < lengths[:, None]).to(dtype)[:, None, None, :]


class MaskedBatchNorm2d(nn.Module):
    """BatchNorm2d whose training statistics use only the valid (unpadded) positions.

    State-dict names and order equal nn.BatchNorm2d's (weight, bias, running_mean,
    running_var, num_batches_tracked). Training: mean and biased var over (batch, mel, valid
    time); running_var is updated with the unbiased var n/(n-1) where n is the number of
    valid positions per channel; momentum 0.1; num_batches_tracked += 1. Eval: running stats.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # x: [B, C, M, T]; valid: [B, 1, 1, T] of 0/1 in x's dtype.
        if self.training:
            m = valid.expand(x.shape[0], 1, x.shape[2], x.shape[3])
            n = m.sum()
            mean = (x * m).sum(dim=(0, 2, 3)) / n
            centered = x - mean[None, :, None, None]
            var = (centered * centered * m).sum(dim=(0, 2, 3)) / n
            with torch.no_grad():
                mom = self.momentum
                self.running_mean.mul_(1 - mom).add_(mom * mean.detach())
                unbiased = var.detach() * (n / (n - 1))
                self.running_var.mul_(1 - mom).add_(mom * unbiased)
                self.num_batches_tracked.add_(1)
            inv = torch.rsqrt(var + self.eps)
            y = centered * inv[None, :, None, None]
        else:
            inv = torch.rsqrt(self.running_var + self.eps)
            y = (x - self.running_mean[None, :, None, None]) * inv[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class ArabEmoNet(nn.Module):
    """ArabEmoNet; forward(x [B,1,M,T], lengths i64 [B]) -> logits [B, classes]."""

    def __init__(self, cfg: Config, plain: bool = False):
        super().__init__()
        self.cfg = cfg
        self.plain = plain
        k = cfg.kernel
        assert k % 2 == 1, "kernel must be odd"
        assert cfg.n_mels % 8 == 0, "n_mels must be divisible by 8 (three 2x2 pools)"
        c0, (c1, c2, c3) = 1, cfg.channels
        bn = nn.BatchNorm2d if plain else MaskedBatchNorm2d
        # Registration order == state_dict order == Rust flat parameter order.
        self.conv1 = nn.Conv2d(c0, c1, k, padding=k // 2)
        if cfg.batchnorm:
            self.bn1 = bn(c1)
        self.conv2 = nn.Conv2d(c1, c2, k, padding=k // 2)
        if cfg.batchnorm:
            self.bn2 = bn(c2)
        self.conv3 = nn.Conv2d(c2, c3, k, padding=k // 2)
        if cfg.batchnorm:
            self.bn3 = bn(c3)
        self.fc = nn.Linear(c3 * (cfg.n_mels // 8), cfg.fc)
        self.lstm = nn.LSTM(
            cfg.fc,
            cfg.hidden,
            num_layers=cfg.lstm_layers,
            bidirectional=True,
            batch_first=True,
            dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0,
        )
        self.attention = nn.Linear(2 * cfg.hidden, 1)
        self.classifier = nn.Linear(2 * cfg.hidden, cfg.classes)

    def stages(self):
        convs = [self.conv1, self.conv2, self.conv3]
        bns = [getattr(self, f"bn{i}", None) for i in (1, 2, 3)]
        return list(zip(convs, bns))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.plain:
            return self._forward_plain(x)
        b, _, _, t = x.shape
        assert lengths is not None and lengths.shape == (b,)
        lens = lengths.to(device=x.device, dtype=torch.long)
        assert int(lens.min()) >= 8, "every clip needs lengths[b] >= 8 (len3 >= 1)"
        assert int(lens.max()) <= t, "lengths[b] must be <= t_max"
        p = self.cfg.dropout
        x = x * time_mask(lens, t, x.dtype)
        for conv, bn in self.stages():
            x = conv(x)
            if bn is not None:
                # Valid conv-output positions: time < len_{s-1}.
                x = bn(x, time_mask(lens, x.shape[3], x.dtype))
            x = F.relu(x)
            x = F.max_pool2d(x, 2, 2)
            x = F.dropout(x, p, self.training)
            lens = lens // 2
            x = x * time_mask(lens, x.shape[3], x.dtype)
        bsz, c, m, t3 = x.shape
        h = x.permute(0, 3, 1, 2).reshape(bsz, t3, c * m)
        h = F.dropout(F.relu(self.fc(h)), p, self.training)
        packed = pack_padded_sequence(h, lens.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t3)  # zeros past len3
        e = torch.tanh(self.attention(out)).squeeze(-1)  # [B, T3]
        valid = torch.arange(t3, device=x.device)[None, :] < lens[:, None]
        e = e.masked_fill(~valid, float("-inf"))
        alpha = torch.softmax(e, dim=1)
        ctx = (alpha.unsqueeze(-1) * out).sum(dim=1)
        return self.classifier(ctx)

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg.dropout
        for conv, bn in self.stages():
            x = conv(x)
            if bn is not None:
                x = bn(x)
            x = F.dropout(F.max_pool2d(F.relu(x), 2, 2), p, self.training)
        bsz, c, m, t3 = x.shape
        h = x.permute(0, 3, 1, 2).reshape(bsz, t3, c * m)
        h = F.dropout(F.relu(self.fc(h)), p, self.training)
        out, _ = self.lstm(h)
        alpha = torch.softmax(torch.tanh(self.attention(out)).squeeze(-1), dim=1)
        return self.classifier((alpha.unsqueeze(-1) * out).sum(dim=1))


def loss_fn(logits, labels, class_weights=None, label_smoothing=0.0):
    """Mean softmax cross-entropy with torch semantics (weighted mean Σ w_y·ℓ / Σ w_y)."""
    return F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=label_smoothing)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Self-test


def _close(name, a, b, tol):
    d = (a.double() - b.double()).abs()
    err = d.max().item() if d.numel() else 0.0
    ok = err <= tol  # NaN fails
    print(f"  {'ok ' if ok else 'FAIL'} {name}: max|diff| = {err:.3e} (tol {tol:.1e})")
    return ok


def self_test() -> bool:
    torch.manual_seed(0)
    ok = True

    print("parameter counts (n_mels 128, channels 32/64/128, 5 classes):")
    expected = {3: 554_374, 5: 718_726, 7: 965_254, 9: 1_293_958, 11: 1_704_838}
    for k, n in expected.items():
        for bn in (False, True):
            for plain in (False, True):
                got = param_count(ArabEmoNet(Config(kernel=k, batchnorm=bn), plain=plain))
                want = n + (448 if bn else 0)
                good = got == want
                ok &= good
                if not plain:
                    print(f"  {'ok ' if good else 'FAIL'} k={k:2d} bn={bn!s:5}: {got:,} (want {want:,})")

    print("state_dict names/order (k=7, bn):")
    sd = list(ArabEmoNet(Config()).state_dict().keys())
    want = []
    for s in (1, 2, 3):
        want += [f"conv{s}.weight", f"conv{s}.bias", f"bn{s}.weight", f"bn{s}.bias",
                 f"bn{s}.running_mean", f"bn{s}.running_var", f"bn{s}.num_batches_tracked"]
    want += ["fc.weight", "fc.bias"]
    for layer in ("l0", "l1"):
        for sfx in ("", "_reverse"):
            want += [f"lstm.{w}_{layer}{sfx}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    want += ["attention.weight", "attention.bias", "classifier.weight", "classifier.bias"]
    good = sd == want
    ok &= good
    print(f"  {'ok ' if good else 'FAIL'} {len(sd)} entries match the spec order")

    # Masked BN vs nn.BatchNorm2d on a full-length batch (training and eval, f64 so the
    # comparison isolates the formula from f32 summation order; tol 1e-12).
    print("MaskedBatchNorm2d == nn.BatchNorm2d on an unpadded batch (f64):")
    x = torch.randn(3, 5, 6, 11, dtype=torch.float64) * 2 + 0.7
    ref = nn.BatchNorm2d(5).double()
    mine = MaskedBatchNorm2d(5).double()
    with torch.no_grad():
        w, b = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
        for mod in (ref, mine):
            mod.weight.copy_(w)
            mod.bias.copy_(b)
    full = torch.ones(3, 1, 1, 11, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    xm = x.clone().requires_grad_(True)
    yr, ym = ref(xr), mine(xm, full)
    ok &= _close("train output", ym, yr, 1e-12)
    g = torch.randn_like(yr)
    (yr * g).sum().backward()
    (ym * g).sum().backward()
    ok &= _close("grad x", xm.grad, xr.grad, 1e-12)
    ok &= _close("grad weight", mine.weight.grad, ref.weight.grad, 1e-12)
    ok &= _close("grad bias", mine.bias.grad, ref.bias.grad, 1e-12)
    ok &= _close("running_mean", mine.running_mean, ref.running_mean, 1e-12)
    ok &= _close("running_var", mine.running_var, ref.running_var, 1e-12)
    good = int(mine.num_batches_tracked) == int(ref.num_batches_tracked) == 1
    ok &= good
    print(f"  {'ok ' if good else 'FAIL'} num_batches_tracked == 1")
    ref.eval()
    mine.eval()
    ok &= _close("eval output", mine(x, full), ref(x), 1e-12)

    # Masked BN on a padded batch equals nn.BatchNorm2d applied to the valid positions only.
    print("MaskedBatchNorm2d on a padded batch == BatchNorm over the valid positions (f64):")
    lens = torch.tensor([11, 7, 4])
    mine = MaskedBatchNorm2d(5).double()
    ym = mine(x, time_mask(lens, 11, torch.float64))
    flat = torch.cat([x[i, :, :, : lens[i]].reshape(5, -1) for i in range(3)], dim=1)
    mean, var = flat.mean(1), flat.var(1, unbiased=False)
    n = flat.shape[1]
    for i in range(3):
        li = int(lens[i])
        yv = (x[i, :, :, :li] - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
        ok &= _close(f"clip {i} valid output", ym[i, :, :, :li], yv, 1e-12)
    ok &= _close("running_var (unbiased)", mine.running_var, 0.9 + 0.1 * var * n / (n - 1), 1e-12)

    # Whole model: length-aware == plain when all clips are full length (train and eval, f64).
    print("length-aware model == plain model on full-length clips (f64, dropout 0):")
    cfg = Config(n_mels=16, kernel=5, channels=(4, 6, 8), fc=8, hidden=6, classes=3, dropout=0.0)
    m_len = ArabEmoNet(cfg).double()
    m_plain = ArabEmoNet(cfg, plain=True).double()
    m_plain.load_state_dict(m_len.state_dict())
    x = torch.randn(3, 1, 16, 27, dtype=torch.float64)
    lengths = torch.tensor([27, 27, 27])
    ok &= _close("train logits", m_len(x, lengths), m_plain(x), 1e-12)
    ok &= _close("train running_var bn2", m_len.bn2.running_var, m_plain.bn2.running_var, 1e-12)
    m_len.eval()
    m_plain.eval()
    ok &= _close("eval logits", m_len(x, lengths), m_plain(x), 1e-12)

    # Padding invariance: a clip's logits do not depend on its batch-mates or on padding
    # (eval mode: training BN stats legitimately depend on the batch).
    print("padding invariance (eval, f64): clip alone at its own length == clip in padded batch:")
    lengths = torch.tensor([27, 19, 8])
    xm = x * time_mask(lengths, 27, x.dtype)
    with torch.no_grad():
        batch = m_len(xm, lengths)
        for i in range(3):
            li = int(lengths[i])
            alone = m_len(xm[i : i + 1, :, :, :li], lengths[i : i + 1])
            ok &= _close(f"clip {i} (len {li})", batch[i], alone[0], 1e-12)
            # Garbage in the padding must not leak either.
            noisy = xm.clone()
            noisy[:, :, :, li:] += 5.0 * torch.randn_like(noisy[:, :, :, li:])
            ok &= _close(f"clip {i} with noisy padding", m_len(noisy, lengths)[i], batch[i], 1e-12)

    # Training mode too: BN statistics exclude the padding, so noise there changes nothing.
    m_len.train()
    with torch.no_grad():
        clean = m_len(xm, lengths)
        noisy = xm.clone()
        noisy[1, :, :, 19:] = 7.0
        noisy[2, :, :, 8:] = -3.0
        ok &= _close("train logits with noisy padding", m_len(noisy, lengths), clean, 1e-12)
    m_len.eval()

    # Attention over valid frames and packed LSTM: check against an independent per-clip loop
    # that runs nn.LSTM on the clip's own frames (no packing), f64.
    print("packed LSTM == per-clip unpacked LSTM (f64):")
    t3, feat = 6, cfg.fc
    h = torch.randn(3, t3, feat, dtype=torch.float64)
    l3 = torch.tensor([6, 4, 1])
    packed = pack_padded_sequence(h, l3, batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(m_len.lstm(packed)[0], batch_first=True, total_length=t3)
    for i in range(3):
        li = int(l3[i])
        own = m_len.lstm(h[i : i + 1, :li])[0][0]
        ok &= _close(f"clip {i} valid frames", out[i, :li], own, 1e-12)
        ok &= _close(f"clip {i} padded frames are zero", out[i, li:], torch.zeros_like(out[i, li:]), 0.0)

    print("SELF-TEST", "PASSED" if ok else "FAILED")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-test", action="store_true", help="run the checks and exit 0/1")
    args = ap.parse_args()
    if args.self_test:
        sys.exit(0 if self_test() else 1)
    ap.print_help()


if __name__ == "__main__":
    main()
