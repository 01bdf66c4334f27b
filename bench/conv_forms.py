"""Which form of a packed convolution is fastest on this CPU: oneDNN's grouped convolution (what
``workers.wide`` runs) against an im2col + batched matmul, on the conv layers of the conv tasks.

    .venv/bin/python bench/conv_forms.py [--repeats N] [--quick]

Each layer is run as the wide engine runs it: a chunk of 4 configs (``workers.packed.WIDE_CHUNK``;
mnist5k_cnn itself now runs in chunks of 2, ``Task.wide_chunk``)
x batch 64, channels-last, one torch thread, denormals flushed; forward, then the weight gradient
and (except for a first layer, whose input needs none) the input gradient.

- **grouped**: ``F.conv2d`` with ``groups = 4`` and its autograd backward (oneDNN).
- **im2col**: the input copied into columns (N, H', W', K, kh*kw*Cin) by kh*kw strided slice
  copies of the zero-padded channels-last input, then per config one matmul of (N*H'*W', kh*kw*Cin)
  columns by the (kh*kw*Cin, Cout) weight, as one ``bmm`` over the configs; the backward: the
  weight gradient as columns^T x dy, the input gradient as dy x W^T into columns and a scatter
  (kh*kw slice additions) back into the padded input.

Both forms are checked against each other (float32, relative 1e-4) before any timing. FLOPs are
the layer's multiply-adds x 2 (forward) plus the same per gradient computed; the rate is printed
as a fraction of this process's one-thread sgemm peak (4096^3), with the CPU model: the ratio
between the forms, not either rate, is what carries from one CPU to another. It answers where a
wide conv net's step time can still come from: on AVX-512 CPUs oneDNN's grouped kernels for 8-32
channels per group ran at 0.15-0.25 of the sgemm peak (``docs/design-notes.md``).

Last line: ``RESULT im2col_vs_grouped=...``: the im2col form's time over the grouped form's,
summed over the layers (below 1: im2col is faster here).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cpu import cpu_model  # noqa: E402
from bench.trainer import matmul_peak  # noqa: E402
from workers.packed import WIDE_CHUNK, cpu_training  # noqa: E402

#: (name, Cin, Cout, H = W of the input, stride, first layer?) of mnist5k_cnn and mnist5k_resnet.
LAYERS = [
    ("cnn.conv1 1->16 @28", 1, 16, 28, 1, True),
    ("cnn.conv2 16->32 @14", 16, 32, 14, 1, False),
    ("resnet.stem 1->8 @28 /2", 1, 8, 28, 2, True),
    ("resnet.block1 8->8 @14", 8, 8, 14, 1, False),
    ("resnet.block2a 8->16 @14 /2", 8, 16, 14, 2, False),
    ("resnet.block2b 16->16 @7", 16, 16, 7, 1, False),
    ("resnet.block3b 32->32 @4", 32, 32, 4, 1, False),
]
BATCH = 64


def out_size(h: int, stride: int) -> int:
    return (h + 2 - 3) // stride + 1


def im2col(x: torch.Tensor, K: int, cin: int, stride: int) -> torch.Tensor:
    """Channels-last (N, K*cin, H, W) -> columns (N, H', W', K, 9, cin), zero padding 1."""
    n, _, h, w = x.shape
    ho, wo = out_size(h, stride), out_size(w, stride)
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1)).view(n, h + 2, w + 2, K, cin)
    cols = x.new_empty(n, ho, wo, K, 9, cin)
    for i in range(3):
        for j in range(3):
            cols[:, :, :, :, 3 * i + j].copy_(xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride])
    return cols


def col2im(dcols: torch.Tensor, shape: tuple[int, ...], K: int, cin: int, stride: int) -> torch.Tensor:
    n, _, h, w = shape
    ho, wo = dcols.shape[1:3]
    dxp = dcols.new_zeros(n, h + 2, w + 2, K, cin)
    for i in range(3):
        for j in range(3):
            dxp[:, i:i + stride * ho:stride, j:j + stride * wo:stride].add_(dcols[:, :, :, :, 3 * i + j])
    return dxp[:, 1:h + 1, 1:w + 1].reshape(n, h, w, K * cin).permute(0, 3, 1, 2)


def im2col_step(x, wk, dy, K, cin, cout, stride, first):
    """Forward, weight gradient, input gradient (unless first) in the im2col form.

    ``wk``: (K, 9*cin, cout) weight as columns; ``dy``: (K, M, cout) the output's gradient."""
    cols = im2col(x, K, cin, stride)
    n, ho, wo = cols.shape[:3]
    a = cols.view(n * ho * wo, K, 9 * cin).transpose(0, 1)  # (K, M, 9cin), rows strided
    y = torch.bmm(a, wk)  # (K, M, cout)
    dw = torch.bmm(a.transpose(1, 2), dy)  # (K, 9cin, cout)
    dx = None
    if not first:
        dcols = torch.bmm(dy, wk.transpose(1, 2))  # (K, M, 9cin)
        dx = col2im(dcols.transpose(0, 1).reshape(n, ho, wo, K, 9, cin), tuple(x.shape), K, cin, stride)
    return y, dw, dx


def grouped_step(x, w, dy_img, K, stride, first):
    xr = x.detach().requires_grad_(not first)
    wr = w.detach().requires_grad_()
    y = F.conv2d(xr, wr, None, stride, 1, 1, K)
    grads = torch.autograd.grad(y, [wr] if first else [wr, xr], dy_img)
    return y, grads[0], None if first else grads[1]


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="best of 3 instead of --repeats")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 3
    K = WIDE_CHUNK or 4
    gen = torch.Generator().manual_seed(0)
    total = {"grouped": 0.0, "im2col": 0.0}
    with cpu_training(1):
        peak = matmul_peak(torch.device("cpu")) / 1e9
        print(f"CPU: {cpu_model()}; torch {torch.__version__}, 1 thread; sgemm peak {peak:.1f} GFLOP/s")
        print(f"{'layer':30s} {'grouped ms':>10s} {'GFLOP/s':>8s} {'of peak':>7s} {'im2col ms':>10s} {'GFLOP/s':>8s} {'of peak':>7s}")
        for name, cin, cout, h, stride, first in LAYERS:
            x = torch.randn(BATCH, K * cin, h, h, generator=gen).contiguous(memory_format=torch.channels_last)
            w = torch.randn(K * cout, cin, 3, 3, generator=gen) / 3
            ho = out_size(h, stride)
            dy_img = torch.randn(BATCH, K * cout, ho, ho, generator=gen).contiguous(memory_format=torch.channels_last)
            # the same weight and output gradient in the im2col form's layout
            wk = w.view(K, cout, cin, 3, 3).permute(0, 3, 4, 2, 1).reshape(K, 9 * cin, cout).contiguous()
            dy = dy_img.permute(0, 2, 3, 1).reshape(-1, K, cout).transpose(0, 1).contiguous()
            ref = [t.detach() if t is not None else None for t in grouped_step(x, w, dy_img, K, stride, first)]
            got = im2col_step(x, wk, dy, K, cin, cout, stride, first)
            y_ref = ref[0].permute(0, 2, 3, 1).reshape(-1, K, cout).transpose(0, 1)
            dw_ref = ref[1].view(K, cout, cin, 3, 3).permute(0, 3, 4, 2, 1).reshape(K, 9 * cin, cout)
            pairs = [(got[0], y_ref), (got[1], dw_ref)] + ([] if first else [(got[2], ref[2])])
            for a, b in pairs:
                err = float((a - b).abs().max() / b.abs().max())
                if err > 1e-4:
                    raise SystemExit(f"{name}: the forms differ by {err:.2e} (relative)")
            macs = BATCH * ho * ho * K * cout * cin * 9
            flops = 2 * macs * (2 if first else 3)
            tg = best(lambda: grouped_step(x, w, dy_img, K, stride, first), args.repeats)
            ti = best(lambda: im2col_step(x, wk, dy, K, cin, cout, stride, first), args.repeats)
            total["grouped"] += tg
            total["im2col"] += ti
            rg, ri = flops / tg / 1e9, flops / ti / 1e9
            print(f"{name:30s} {tg * 1e3:10.2f} {rg:8.1f} {rg / peak:7.3f} {ti * 1e3:10.2f} {ri:8.1f} {ri / peak:7.3f}")
    ratio = total["im2col"] / total["grouped"]
    print(f"all layers: grouped {total['grouped'] * 1e3:.1f} ms, im2col {total['im2col'] * 1e3:.1f} ms "
          f"(CPU: {cpu_model()}, sgemm peak {peak:.1f} GFLOP/s)")
    print(f"RESULT im2col_vs_grouped={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
