"""How fast DKA d̂ 192 can be in eager PyTorch on this machine, against the Adapter step: the
training step of `dka bench steps` (timm ViT-B/16 at 224, batch 8, frozen backbone, Adam,
clipping off) with Adapter (two d64 Houlsby modules per block) and with DKA d̂ 192 ("mona":
one module applied after the attention and after the MLP of each block), where DKA's depthwise
convolutions use the same exact fast path as dka (`dka_core::dka::dwconv`: the 51x51 and 5x5
kernels merged, cropped to what the 14x14 grid can see, and applied by a circular FFT of
even length >= h + k/2). Interleaved rounds, medians; the ratio DKA / Adapter is the floor
that the same algorithm reaches in eager libtorch, to set `dka bench steps`' ratio against.

    .venv/bin/python benches/reference/fft_eager.py [--rounds 5] [--out results/bench/fft_eager.csv]

Run it under the thread policy to compare with (dka runs with OMP_WAIT_POLICY=PASSIVE unless
the variable is set): the CSV records OMP_WAIT_POLICY and the thread count.
"""
import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steps as S  # noqa: E402  (the reference modules: Adapter, Dka, MonaBlock)


def fft_size(m):
    """dka_core::dka::dwconv::fft_size: an even 2^a 3^b 5^c (b <= 2, c <= 1) >= m, cheapest by
    n^2 times 1.15 per factor 3 and 1.2 per factor 5."""
    best = None
    for n in range(max(m, 1), 2 * max(m, 1) + 2):
        if n % 2:
            continue
        x, w, t, f = n, 1.0, 0, 0
        while x % 2 == 0:
            x //= 2
        while x % 3 == 0:
            x, t, w = x // 3, t + 1, w * 1.15
        while x % 5 == 0:
            x, f, w = x // 5, f + 1, w * 1.2
        if x == 1 and t <= 2 and f <= 1 and (best is None or n * n * w < best[1]):
            best = (n, n * n * w)
    return best[0]


def fft_depthwise(z, k):
    """dka_core::dka::dwconv::fft_depthwise: "same" depthwise cross-correlation by a circular
    FFT of size >= h + kh/2 (the wrapped taps only ever read zero padding)."""
    _, c, h, w = z.shape
    kh, kw = k.shape[-2:]
    rh, rw = kh // 2, kw // 2
    nh, nw = fft_size(h + rh), fft_size(w + rw)
    zf = torch.fft.fft(torch.fft.rfft(z.contiguous(), n=nw, dim=-1), n=nh, dim=-2)
    kf = F.pad(k.reshape(c, kh, kw).flip([-2, -1]), (0, nw - kw, 0, nh - kh))
    kf = torch.fft.rfft2(kf.roll((-rh, -rw), (-2, -1)))
    y = torch.fft.ifft(zf * kf, dim=-2)[:, :, :h]
    return torch.fft.irfft(y, n=nw, dim=-1)[..., :w]


class DkaFft(S.Dka):
    """steps.Dka with its convolutions on the fast path: the large and small kernels summed,
    centre-cropped to (2h-1) x (2w-1) at most, then one FFT convolution."""

    def convs(self, p):
        h, w = p.shape[-2:]
        kl, ks = self.conv_large.weight, self.conv_small.weight
        kh, kw = min(kl.shape[-2], 2 * h - 1), min(kl.shape[-1], 2 * w - 1)

        def fit(k):
            a, b = k.shape[-2:]
            if a > kh:
                k = k[:, :, (a - kh) // 2:(a - kh) // 2 + kh]
            if b > kw:
                k = k[..., (b - kw) // 2:(b - kw) // 2 + kw]
            ph, pw = max(kh - a, 0) // 2, max(kw - b, 0) // 2
            return F.pad(k, (pw, pw, ph, ph)) if ph or pw else k

        y = fft_depthwise(p, fit(kl) + fit(ks))
        if self.conv_large.bias is not None:
            y = y + (self.conv_large.bias + self.conv_small.bias).view(1, -1, 1, 1)
        return y


DKA_D192 = dict(d_hat=192, bias=True, large_kernel=51, small_kernel=5, activation="authors",
                dropout=0.0)


def check_fast_path(h):
    """The fast convolutions against the two nn.Conv2d on an h x h map."""
    torch.manual_seed(0)
    d = DkaFft(768, DKA_D192)
    p = torch.randn(2, 192, h, h)
    with torch.no_grad():
        err = (S.Dka.convs(d, p) - d.convs(p)).abs().max().item()
    assert err < 1e-4, f"the FFT path differs from nn.Conv2d by {err} on the {h}x{h} grid"
    print(f"FFT path against nn.Conv2d on {h}x{h}: max |diff| {err:.1e}", file=sys.stderr)


def timed(kinds, step, rounds):
    """Per kind, `rounds` step times (ms), interleaved, after one warm-up step each."""
    for k in kinds:
        step(k)
    times = {k: [] for k in kinds}
    for r in range(rounds):
        for k in kinds:
            times[k].append(step(k))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {times[k][-1]:.0f} ms" for k in kinds),
              file=sys.stderr, flush=True)
    return times


def build(kind, grid=(14, 14)):
    m = timm.create_model("vit_base_patch16_224", num_classes=0, pretrained=False)
    m.requires_grad_(False)
    m.eval()
    train = nn.ModuleList()
    for i, blk in enumerate(m.blocks):
        if kind == "adapter d64":
            a1, a2 = S.Adapter(768, 64), S.Adapter(768, 64)
            train.extend([a1, a2])
            blk.ls1 = nn.Sequential(blk.ls1, a1)
            blk.ls2 = nn.Sequential(blk.ls2, a2)
        else:
            d = (DkaFft if kind == "dka d192 fft" else S.Dka)(768, DKA_D192)
            train.append(d)
            m.blocks[i] = S.MonaBlock(blk, d, grid, m.num_prefix_tokens)
    head = nn.Linear(768, 3)
    train.append(head)
    opt = torch.optim.Adam([p for p in train.parameters()], lr=1e-3)
    return m, head, opt


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stack(a):
    """`dka bench steps`' "dka stack d192 HxH b2" case: 12 DKA layers, each applied twice, on
    [2, H*H, 768] tokens, loss = mean of squares, Adam."""
    h = a.stack
    check_fast_path(h)
    kinds = ["dka d192 fft"] + (["dka d192 direct"] if a.direct else [])
    models = {}
    for k in kinds:
        torch.manual_seed(0)
        cls = DkaFft if k == "dka d192 fft" else S.Dka
        layers = nn.ModuleList(cls(768, DKA_D192) for _ in range(12))
        models[k] = (layers, torch.optim.Adam(layers.parameters(), lr=1e-3))
    x = torch.randn(2, h * h, 768)

    def loss(layers):
        y = x
        for m in layers:
            y = m(m(y, h, h, 0), h, h, 0)
        return y.square().mean()

    def step(k):
        layers, opt = models[k]
        return train_step_ms(opt, lambda: loss(layers))

    times = timed(kinds, step, a.rounds)
    write(a, {k: (f"dka stack d192 {h}x{h} b2 {k.split()[-1]} (eager)", v) for k, v in times.items()},
          2, None)


def train_step_ms(opt, loss_of):
    """One training step (forward `loss_of()`, backward, `opt.step()`); its time in ms."""
    t = time.perf_counter()
    loss = loss_of()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return (time.perf_counter() - t) * 1e3


def write(a, rows, batch, base):
    """Appends `rows` (key -> (case label, times)) to the CSV; ratios to `base` when given."""
    med = {k: sorted(v)[len(v) // 2] for k, (_, v) in rows.items()}
    policy = os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp's spin-then-sleep)")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, "a", newline="") as f:
        wr = csv.writer(f)
        if new:
            wr.writerow(["case", "omp_wait_policy", "threads", "batch", "rounds", "median_ms",
                         "min_ms", "max_ms", "ratio_to_adapter", "torch", "machine"])
        for k, (label, t) in rows.items():
            ratio = f"{med[k] / med[base]:.3f}" if base else ""
            wr.writerow([label, policy, torch.get_num_threads(), batch, a.rounds,
                         f"{med[k]:.1f}", f"{min(t):.1f}", f"{max(t):.1f}", ratio,
                         torch.__version__, f"{os.cpu_count()} CPUs, {cpu_model()}"])
    print(json.dumps({rows[k][0]: round(v, 1) for k, v in med.items()}) + f" ({policy}); appended to {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default="results/bench/fft_eager.csv")
    ap.add_argument("--direct", action="store_true",
                    help="also time DKA with plain nn.Conv2d 51x51 + 5x5 (slow)")
    ap.add_argument("--stack", type=int, default=0, metavar="H",
                    help="instead: the DKA layer stack alone (12 layers, each applied twice, "
                         "d̂ 192, batch 2) on an H x H token grid, FFT path (and plain with --direct)")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    if a.stack:
        return stack(a)
    check_fast_path(14)
    torch.manual_seed(0)
    kinds = ["adapter d64", "dka d192 fft"] + (["dka d192 direct"] if a.direct else [])
    models = {k: build(k) for k in kinds}
    x = torch.randn(a.batch, 3, 224, 224)
    y = torch.randint(0, 3, (a.batch,))

    def step(k):
        m, head, opt = models[k]
        return train_step_ms(opt, lambda: F.cross_entropy(head(m(x)), y))

    times = timed(kinds, step, a.rounds)
    write(a, {k: (f"vit-b16 224 b{a.batch} {k} (eager)", v) for k, v in times.items()},
          a.batch, "adapter d64")


if __name__ == "__main__":
    main()
