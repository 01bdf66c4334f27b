"""CPU kernels of the wide conv engine: BatchNorm and 2x2 max pooling on channels-last batches.

The wide engine (``workers.wide``) runs a chunk of configs as one channels-last batch, which in
memory is an (N*H*W, C) matrix: one row per position, one column per channel of every config.
BatchNorm and pooling are memory-bound there, and eager PyTorch pays one pass over the tensor per
operation (the precise BatchNorm written with them took about 15 passes forward and backward).
These loops, compiled by numba, make the fewest passes the computation allows:

- BatchNorm forward: one pass for the statistics, one to normalize; backward: one pass for the
  two sums, one for the input gradient. Every per-channel sum runs in float64 over the rows, in
  row order, and the variance is taken about the channel's first value (a shift inside the
  channel's range), so it does not cancel the way E[x^2] - E[x]^2 in float32 does. Measured
  against a float64 reference on the hard case of ``tests/workers/test_wide.py`` (channel means
  several standard deviations from 0, a constant background) as precise as PyTorch's NCHW kernel.
- Max pooling forward writes the maximum (and, fused, ReLU of it) and which of the window's four
  elements it was (one byte); backward writes every input-gradient element once (no zero fill,
  then scatter).

In BatchNorm and pooling each channel's values are reduced sequentially and the inner loops run
over channels, so vector width never changes the order of a sum: their results do not depend on
the CPU's instruction set, and config k's numbers depend only on its own channels (the wide
engine's reproducibility rests on that). The MLP's bias gradient is a float32 sum in the vector
loop's order, which, like ``torch.sum``'s, depends on the vector width.

Measured on a 2-core AVX-512 Xeon, one thread, (64, 64, 28, 28): BatchNorm forward 3.4 -> 1.7 ms,
backward 6.7 -> 2.4 ms against the eager-op version; pooling 1.0 -> 0.6 ms forward, 1.3 -> 0.6 ms
backward against ATen's channels-last kernels (``docs/design-notes.md``).

Every kernel is compiled for fixed signatures when this module is imported (about 2 s on a cold
cache) and cached on disk (numba's ``cache=True``: next to this file, or in the user's cache
folder where the package is read-only; without a writable one, compiled in every process): later
processes load the machine code (~0.3 s). Fixed signatures, not numba's lazy specialization, so
that two processes starting on a cold cache write the same entries (numba's cache index has no
lock, and two different specializations saved at once can swap their files), and an argument of
another layout or dtype is a TypeError instead of a silent copy or a new specialization. The
Docker image compiles them at build time, as its user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numba import njit


def _jit(*signatures: str, fastmath: Any = False) -> Callable[[Callable[..., Any]], Any]:
    """``njit`` for exactly ``signatures``, compiled now and cached on disk where a cache folder
    is writable (numba raises at decoration when none is: then compiled without a cache)."""
    def wrap(fn: Callable[..., Any]) -> Any:
        opts = {"nogil": True, "boundscheck": False, "fastmath": fastmath}
        try:
            return njit(list(signatures), cache=True, **opts)(fn)
        except RuntimeError:
            return njit(list(signatures), **opts)(fn)
    return wrap


def _for_floats(template: str) -> list[str]:
    """``template`` with F as float32 and as float64."""
    return [template.replace("F", t) for t in ("float32", "float64")]


#: 2-d (rows, channels) matrices and 1-d per-channel vectors of the BatchNorm kernels (float32:
#: the wide engine's dtype); per-channel vectors may be strided.
_M, _V = "float32[:, ::1]", "float32[:]"


@_jit(f"UniTuple(float64[::1], 2)({_M})")
def _bn_stats(x):  # type: ignore[no-untyped-def]
    """Per-column mean and (biased) variance of the (m, C) matrix ``x``, in float64."""
    m, C = x.shape
    shift = np.empty(C)
    for c in range(C):
        shift[c] = x[0, c]
    s1 = np.zeros(C)
    s2 = np.zeros(C)
    for r in range(m):
        for c in range(C):
            d = np.float64(x[r, c]) - shift[c]
            s1[c] += d
            s2[c] += d * d
    mean = np.empty(C)
    var = np.empty(C)
    for c in range(C):
        md = s1[c] / m
        mean[c] = md + shift[c]
        var[c] = max(s2[c] / m - md * md, 0.0)
    return mean, var


@_jit(f"void({_M}, {_V}, {_V}, {_V}, {_M})")
def _bn_normalize(x, mean, k, b, out):  # type: ignore[no-untyped-def]
    """out = (x - mean) * k + b, per column."""
    m, C = x.shape
    for r in range(m):
        for c in range(C):
            out[r, c] = (x[r, c] - mean[c]) * k[c] + b[c]


@_jit(f"UniTuple(float64[::1], 2)({_M}, {_M}, {_V})")
def _bn_backward_sums(dy, x, mean):  # type: ignore[no-untyped-def]
    """Per column, in float64: sum(dy) and sum(dy * (x - mean)), with x - mean in x's precision
    (the centred value the forward normalized)."""
    m, C = x.shape
    s1 = np.zeros(C)
    s2 = np.zeros(C)
    for r in range(m):
        for c in range(C):
            d = np.float64(dy[r, c])
            s1[c] += d
            s2[c] += d * np.float64(x[r, c] - mean[c])
    return s1, s2


@_jit(f"void({_M}, {_M}, {_V}, {_V}, {_V}, {_V}, {_M})")
def _bn_backward_dx(dy, x, mean, k, shift, slope, dx):  # type: ignore[no-untyped-def]
    """dx = dy * k + shift + (x - mean) * slope, per column."""
    m, C = x.shape
    for r in range(m):
        for c in range(C):
            dx[r, c] = dy[r, c] * k[c] + shift[c] + (x[r, c] - mean[c]) * slope[c]


def _rows(t: torch.Tensor) -> np.ndarray:
    """A channels-last (N, C, H, W) tensor's memory as the (N*H*W, C) matrix it is: a view
    (``view`` raises where ``reshape`` would copy, so a kernel never writes into a temporary)."""
    n, C, h, w = t.shape
    return t.detach().permute(0, 2, 3, 1).view(n * h * w, C).numpy()


class BatchNormChannelsLast(torch.autograd.Function):
    """Training-mode BatchNorm of a channels-last CPU batch, as precise as the NCHW kernel.

    PyTorch's channels-last CPU kernels reduce each channel with one running float32 sum over all
    N*H*W positions: the variance in one pass (E[x^2] - E[x]^2), the backward's sum(dy) and
    sum(dy * (x - mean)) likewise. On conv-net activations those sums cancel heavily (a conv bias
    over MNIST's constant background puts channel means several standard deviations from 0, and
    the backward's dx is a small residual of dy's projection): against a float64 reference,
    mnist5k_cnn's conv1 gradient came out 5.8e-3 off (relative), where the NCHW kernel (its sums
    in double) is 4e-6 off. Here the sums are float64 (the module docstring). The running buffers
    are updated as ``F.batch_norm`` updates them (the unbiased variance, ``momentum``).

    The forward saves its input, not the centred copy (the backward recomputes x - mean on the
    fly), and weight * invstd, which is all the backward needs of the weight.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):  # type: ignore[no-untyped-def, override]
        n, C, h, w = x.shape
        m = n * h * w
        x2 = _rows(x)
        mean64, var64 = _bn_stats(x2)
        mean = torch.from_numpy(mean64).to(x.dtype)
        var = torch.from_numpy(var64).to(x.dtype)
        invstd = (var + eps).rsqrt_()
        k = (weight * invstd).detach()
        out = torch.empty_like(x)  # channels-last, as x
        _bn_normalize(x2, mean.numpy(), k.numpy(), bias.detach().numpy(), _rows(out))
        running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        running_var.mul_(1 - momentum).add_(var, alpha=momentum * m / max(m - 1, 1))
        ctx.save_for_backward(x, k, mean, invstd)
        return out

    @staticmethod
    def backward(ctx, dy):  # type: ignore[no-untyped-def, override]
        x, k, mean, invstd = ctx.saved_tensors
        n, C, h, w = x.shape
        m = n * h * w
        dy = dy.contiguous(memory_format=torch.channels_last)
        x2, dy2 = _rows(x), _rows(dy)
        s1, s2 = _bn_backward_sums(dy2, x2, mean.numpy())
        sum_dy = torch.from_numpy(s1).to(x.dtype)
        sum_dyxc = torch.from_numpy(s2).to(x.dtype)
        shift, slope = (k * sum_dy).div_(-m), (k * invstd * invstd * sum_dyxc).div_(-m)
        dx = torch.empty_like(x)
        _bn_backward_dx(dy2, x2, mean.numpy(), k.numpy(), shift.numpy(), slope.numpy(), _rows(dx))
        return dx, sum_dyxc * invstd, sum_dy, None, None, None, None


@_jit(*_for_floats("void(F[:, :, :, ::1], F[:, :, :, ::1], uint8[:, :, :, ::1], boolean)"))
def _pool_forward(x, out, idx, relu):  # type: ignore[no-untyped-def]
    """2x2/2 max pooling of an (N, H, W, C) array; idx: which window element won (0-3, row-major).

    The first maximum wins, and a NaN wins over every number (the last NaN of a window), as in
    ATen's kernel, so values, indices and gradients equal ``F.max_pool2d``'s. With ``relu``, the
    result is ``F.relu`` of that (a negative maximum gives 0, a zero keeps its sign, NaN stays),
    and idx is 4 (no element gets a gradient) where the maximum is not above 0, as ReLU's
    backward passes no gradient there.
    """
    n, H, W, C = x.shape
    zero = out.dtype.type(0)
    for i in range(n):
        for ho in range(H // 2):
            for wo in range(W // 2):
                h, w = 2 * ho, 2 * wo
                for c in range(C):
                    best = x[i, h, w, c]
                    j = 0
                    v = x[i, h, w + 1, c]
                    if v > best or v != v:
                        best = v
                        j = 1
                    v = x[i, h + 1, w, c]
                    if v > best or v != v:
                        best = v
                        j = 2
                    v = x[i, h + 1, w + 1, c]
                    if v > best or v != v:
                        best = v
                        j = 3
                    if relu and best <= 0:
                        j = 4
                        if best < 0:
                            best = zero
                    out[i, ho, wo, c] = best
                    idx[i, ho, wo, c] = j


@_jit(*_for_floats("void(F[:, :, :, ::1], uint8[:, :, :, ::1], F[:, :, :, ::1])"))
def _pool_backward(dy, idx, dx):  # type: ignore[no-untyped-def]
    """dx of 2x2/2 max pooling: dy at each window's winner, 0 elsewhere (every element written once)."""
    n, H, W, C = dx.shape
    Ho, Wo = dy.shape[1], dy.shape[2]
    zero = dx.dtype.type(0)
    for i in range(n):
        for h in range(H):
            ho = h // 2
            for w in range(W):
                wo = w // 2
                if ho >= Ho or wo >= Wo:  # the last row or column of an odd size: never pooled
                    for c in range(C):
                        dx[i, h, w, c] = zero
                    continue
                j = (h - 2 * ho) * 2 + (w - 2 * wo)
                for c in range(C):
                    dx[i, h, w, c] = dy[i, ho, wo, c] if idx[i, ho, wo, c] == j else zero


def _nhwc(t: torch.Tensor) -> np.ndarray:
    """A channels-last (N, C, H, W) tensor's memory as the (N, H, W, C) array it is (a view; a
    tensor of another layout gives a strided array, which the kernels' signatures refuse)."""
    return t.detach().permute(0, 2, 3, 1).numpy()


class MaxPool2ChannelsLast(torch.autograd.Function):
    """``F.max_pool2d(x, 2)`` of a channels-last CPU batch, and with ``relu`` ``F.relu`` of it:
    the same values and gradients, in one pass each way."""

    @staticmethod
    def forward(ctx, x, relu):  # type: ignore[no-untyped-def, override]
        n, C, H, W = x.shape
        out = torch.empty(n, C, H // 2, W // 2, dtype=x.dtype, memory_format=torch.channels_last)
        idx = torch.empty(n, H // 2, W // 2, C, dtype=torch.uint8)
        _pool_forward(_nhwc(x), _nhwc(out), idx.numpy(), bool(relu))
        ctx.save_for_backward(idx)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, dy):  # type: ignore[no-untyped-def, override]
        (idx,) = ctx.saved_tensors
        dy = dy.contiguous(memory_format=torch.channels_last)
        dx = torch.empty(ctx.input_shape, dtype=dy.dtype, memory_format=torch.channels_last)
        _pool_backward(_nhwc(dy), idx.numpy(), _nhwc(dx))
        return dx, None


@_jit("void(float32[:, :, ::1], float32[:, :], boolean)")
def _bias_relu(h, b, relu):  # type: ignore[no-untyped-def]
    """h += b[..., None], then ReLU if ``relu``, in place on (K, features, samples): the values
    of ``h.add_(b.unsqueeze(2)).relu_()`` (a negative sum gives 0, -0 and NaN stay)."""
    K, n_out, S = h.shape
    zero = h.dtype.type(0)
    for k in range(K):
        for o in range(n_out):
            bo = b[k, o]
            if relu:
                for s in range(S):
                    v = h[k, o, s] + bo
                    h[k, o, s] = zero if v < 0 else v
            else:
                for s in range(S):
                    h[k, o, s] += bo


@_jit("void(float32[:, :, ::1], float32[:, :, ::1], float32[:, :])", fastmath={"reassoc", "nsz"})
def _relu_backward_sum(d, a, gb):  # type: ignore[no-untyped-def]
    """d *= (a > 0) in place (ReLU's backward: a NaN activation passes its gradient, as ATen's
    ``threshold_backward``), and gb = d.sum(samples) in float32, in the vector loop's order
    (numba's ``fastmath`` reassociation below; like ``torch.sum``'s, it depends on the vector width)."""
    K, n_out, S = d.shape
    zero = d.dtype.type(0)
    for k in range(K):
        for o in range(n_out):
            acc = zero
            for s in range(S):
                v = zero if a[k, o, s] <= 0 else d[k, o, s]
                d[k, o, s] = v
                acc += v
            gb[k, o] = acc


def bias_relu_(h: torch.Tensor, b: torch.Tensor, relu: bool) -> None:
    """The packed MLP's bias and ReLU in one pass over h (K, features, samples); b (K, features)."""
    _bias_relu(h.numpy(), b.numpy(), relu)


def relu_backward_sum_(d: torch.Tensor, a: torch.Tensor, gb: torch.Tensor) -> None:
    """ReLU's backward on d (K, features, samples), in place, given the activations a, and the
    bias gradient gb (K, features) of the layer below, in one pass."""
    _relu_backward_sum(d.numpy(), a.numpy(), gb.numpy())


__all__ = ["BatchNormChannelsLast", "MaxPool2ChannelsLast", "bias_relu_", "relu_backward_sum_"]
