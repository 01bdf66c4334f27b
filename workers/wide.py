"""The packed engine for conv nets: K configurations as one network K times as wide.

A network of convolutions, BatchNorm, pooling, residual additions and linear layers has a
property that makes K copies of it one ordinary network: if config k's channels are the k-th
group of C channels of a tensor with K*C channels, then

- a convolution is a *grouped* convolution with ``groups = K`` (times its own groups): each
  config's output channels see only that config's input channels;
- BatchNorm normalizes per channel over (batch, height, width), so BatchNorm over K*C channels
  computes each config's own batch statistics and updates each config's own running buffers;
- ReLU, max/average pooling, additions and ``flatten(1)`` act per channel or keep each config's
  C*H*W features contiguous in config order;
- a linear layer on (b, K*in) is a batched matmul over the K configs.

Config k's b samples sit in its own channel group, so the configs never share a batch statistic;
sample i of config k and sample i of config j merely share a row of the wide tensor. The model's
own ``forward`` runs unchanged on a deep copy of the template whose layers are swapped for wide
ones (:func:`widen`), so every kernel of a step is one oneDNN grouped convolution, one BatchNorm,
one pooling... over all the configs, forward and backward (autograd over plain aten ops, no
``vmap``). Whether the model's ``forward`` keeps to per-channel operations is not assumed: the
engine is built only if the wide model reproduces two configs' own outputs on a probe input
(:meth:`WideEngine.build`), otherwise the trainer falls back to ``vmap``.

Layout: on the CPU the wide batch is channels-last from the input on (:func:`widen_input`); a
32-config mnist5k_cnn step took 376 ms of CPU NCHW and ~300 ms channels-last (one thread,
AVX-512 Xeon) with a precise BatchNorm of eager ops, and 231 ms with BatchNorm and pooling as
compiled loops (:mod:`workers.cpu_kernels`) in chunks of 2 (``docs/design-notes.md``).

Parameters are copied from their rows of the (K, P) stack into contiguous (K, *shape) leaves at
every step and the gradients copied back (two passes over 4*K*P bytes, a few MB against the
hundreds of MB of activations a step touches).

Chunks: a step runs the configs ``chunk`` at a time (each chunk one set of wide kernels, the last
one padded to ``chunk`` rows). A fixed group count is what keeps a config's results independent
of its block: oneDNN chooses its convolution kernel, and so the order of its float sums, by the
group count (measured: mnist5k_cnn configs trained in a block of 4 and alone differed by up to
0.16 in val loss after one AdamW epoch; padded to fixed chunks they are bit-identical). It pays
for speed too: a 32-config mnist5k step in one chunk allocates activations of ~100 MB each, far
out of the cache; chunks of 4 or 8 ran 10-40 % faster (``docs/design-notes.md``). The chunk is
the task's on the CPU (``Task.wide_chunk``: mnist5k_cnn 2), else ``workers.packed.WIDE_CHUNK``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workers.cpu_kernels import BatchNormChannelsLast

#: Layers without parameters that act per channel (or per sample) and so need no widening.
_CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Flatten)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)



class _Wide(nn.Module):
    """A wide layer: holds its (K, ...) parameter and buffer tensors, set before every call."""

    def __init__(self) -> None:
        super().__init__()
        self.tensors: dict[str, torch.Tensor] = {}
        self.K = 1

    def load(self, K: int, tensors: dict[str, torch.Tensor]) -> None:
        self.K, self.tensors = K, tensors


class WideConv2d(_Wide):
    """A convolution of K configs as one grouped convolution (``groups`` = K x the layer's own).

    Every layer, the first one (one input channel per config) included, is oneDNN's grouped
    kernel on the channels-last batch: an unfolded matmul for the first layer was faster only
    in NCHW, and cost a layout copy once the batch went channels-last (``docs/design-notes.md``).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups = conv.groups
        self.out_channels = conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.tensors["weight"]
        b = self.tensors.get("bias")
        w = w.reshape(self.K * w.shape[1], *w.shape[2:])
        return F.conv2d(x, w, None if b is None else b.reshape(-1), self.stride, self.padding,
                        self.dilation, self.groups * self.K)


class WideBatchNorm(_Wide):
    """BatchNorm over K*C channels: per-config batch statistics and running buffers."""

    def __init__(self, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
        super().__init__()
        assert bn.momentum is not None
        self.momentum, self.eps = float(bn.momentum), bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tensors
        rm, rv = t["running_mean"].view(-1), t["running_var"].view(-1)
        w, b = t["weight"].reshape(-1), t["bias"].reshape(-1)
        if not (self.training and is_channels_last(x)) or x.is_cuda:
            return F.batch_norm(x, rm, rv, w, b, self.training, self.momentum, self.eps)
        return BatchNormChannelsLast.apply(x, w, b, rm, rv, self.momentum, self.eps)


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-d tensor stored channels-last (and not also plain contiguous, as a 1x1 image or one
    channel is): the layout the wide engine runs in (here and in ``workers.tasks.max_pool2``)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class WideLinear(_Wide):
    """(b, K*in) -> (b, K*out): one batched matmul over the configs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.tensors["weight"]  # (K, out, in)
        b = self.tensors.get("bias")
        n = x.shape[0]
        h = x.reshape(n, self.K, w.shape[2]).transpose(0, 1)
        if b is None:
            out = torch.bmm(h, w.transpose(1, 2))
        else:
            out = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        return out.transpose(0, 1).reshape(n, self.K * w.shape[1])


def _supported(template: nn.Module) -> bool:
    for m in template.modules():
        if list(m.children()):
            if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)):
                return False  # a container with tensors of its own
            continue
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                return False
        elif isinstance(m, _BATCHNORM):
            if not (m.affine and m.track_running_stats and m.momentum is not None):
                return False
        elif isinstance(m, nn.Linear):
            pass
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                return False
        elif not isinstance(m, _CHANNELWISE):
            return False
    return any(isinstance(m, (nn.Conv2d, *_BATCHNORM)) for m in template.modules())


def widen(template: nn.Module) -> tuple[nn.Module, dict[str, _Wide]]:
    """A deep copy of ``template`` whose tensor-holding layers are wide; {module name: wide layer}."""
    wide = copy.deepcopy(template)
    layers: dict[str, _Wide] = {}
    for name, m in list(wide.named_modules()):
        if isinstance(m, nn.Conv2d):
            w: _Wide = WideConv2d(m)
        elif isinstance(m, _BATCHNORM):
            w = WideBatchNorm(m)
        elif isinstance(m, nn.Linear):
            w = WideLinear()
        else:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(wide.get_submodule(parent) if parent else wide, attr, w)
        layers[name] = w
    if "" in layers:
        raise ValueError("the model itself is a single layer")
    return wide, layers


def widen_input(x: torch.Tensor) -> torch.Tensor:
    """(K, b, C, ...) per-config batches -> (b, K*C, ...); config k in channel group k.

    Images come out channels-last on the CPU: oneDNN's convolutions then stay channels-last, max
    pooling vectorizes over channels (``workers.tasks.max_pool2``) and BatchNorm takes
    :class:`workers.cpu_kernels.BatchNormChannelsLast`; no layer copies between layouts (the flatten before a linear
    layer excepted). On CUDA the batch stays NCHW.
    """
    K, b = x.shape[:2]
    wide = x.transpose(0, 1).reshape(b, K * x.shape[2], *x.shape[3:])
    if wide.dim() != 4 or wide.is_cuda:
        return wide
    return wide.contiguous(memory_format=torch.channels_last)


def _per_config_ce(logits: torch.Tensor, y: torch.Tensor, K: int) -> torch.Tensor:
    """Mean cross-entropy per config: wide logits (b, K*C), labels (K, b) -> (K,)."""
    b = logits.shape[0]
    lg = logits.view(b, K, -1).permute(1, 2, 0)  # (K, C, b): classes in the middle (fast on CPUs)
    return F.cross_entropy(lg, y, reduction="none").mean(1)


class WideEngine:
    """The packed engine of :mod:`workers.wide`; same interface as ``workers.packed.FuncEngine``."""

    def __init__(self, template: nn.Module, eval_batch: int, chunk: int | None = None) -> None:
        self.template = template
        self.eval_batch = eval_batch
        self.chunk = chunk
        self.wide, self.layers = widen(template)
        self.params_of = {
            m: [n for n, _ in template.get_submodule(m).named_parameters(recurse=False)] for m in self.layers
        }
        self.buffers_of = {
            m: [n for n, _ in template.get_submodule(m).named_buffers(recurse=False) if n != "num_batches_tracked"]
            for m in self.layers
        }
        self.counters = [f"{m}.num_batches_tracked" for m, layer in self.layers.items()
                         if isinstance(layer, WideBatchNorm)]

    @staticmethod
    def supports(template: nn.Module) -> bool:
        """Only known layers (conv, BatchNorm, linear, per-channel ones) and at least one conv or BN."""
        return _supported(template)

    @classmethod
    def build(cls, template: nn.Module, input_shape: tuple[int, ...], eval_batch: int,
              chunk: int | None = None) -> WideEngine | None:
        """The engine, if the template's layers are supported and the wide model reproduces two
        independently initialized configs (train and eval mode) on a probe input; else None."""
        if not input_shape or not cls.supports(template):
            return None
        try:
            engine = cls(template, eval_batch, chunk)
            return engine if engine._probe(input_shape) else None
        except (ValueError, RuntimeError):
            return None

    def _probe(self, input_shape: tuple[int, ...]) -> bool:
        gen = torch.Generator().manual_seed(0)
        models = [copy.deepcopy(self.template).cpu() for _ in range(2)]
        with torch.no_grad():
            for m in models[1:]:
                for p in m.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        x = torch.randn(2, 3, *input_shape, generator=gen)
        params = {n: torch.stack([m.get_parameter(n).detach() for m in models]) for n, _ in models[0].named_parameters()}
        buffers = {n: torch.stack([m.get_buffer(n).detach().clone() for m in models])
                   for n, _ in models[0].named_buffers()}
        wide = copy.deepcopy(self.wide).cpu()
        layers = {n: wide.get_submodule(n) for n in self.layers}
        for train in (True, False):
            with torch.no_grad():
                refs = [m.train(train)(x[k]) for k, m in enumerate(models)]
                self._load(layers, params, buffers, 0, 2)
                out = wide.train(train)(widen_input(x))
            ref = torch.stack(refs, 1).reshape(3, -1)
            if out.shape != ref.shape or not torch.allclose(out, ref, rtol=1e-4, atol=1e-5):
                return False
        return True

    def _load(self, layers: Mapping[str, Any], params: Mapping[str, torch.Tensor],
              buffers: Mapping[str, torch.Tensor], k0: int, k1: int) -> None:
        for m, layer in layers.items():
            t = {n: params[f"{m}.{n}"] for n in self.params_of[m]}
            t.update({n: buffers[f"{m}.{n}"][k0:k1] for n in self.buffers_of[m]})
            layer.load(k1 - k0, t)

    def bind(self, stack: Any) -> None:
        """Nothing is kept between steps: each step reads the stack's current rows."""

    def _chunks(self, K: int) -> tuple[int, list[tuple[int, int]]]:
        """(configs per chunk, [(first row, end row)]): the last chunk may have fewer rows."""
        c = self.chunk or K
        return c, [(k0, min(K, k0 + c)) for k0 in range(0, K, c)]

    def train_step(self, stack: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of each config on its batch; gradients written into ``stack.g``.

        ``x`` is (K, b, *input), ``y`` (K, b). A last chunk with fewer than ``chunk`` rows is
        padded with copies of its first row (results discarded), so every kernel always sees the
        same group count: oneDNN picks its kernel, and so its rounding, by the shape, and a config
        must train bit-identically whatever block it is packed in (``tests/reliability``).
        """
        self.wide.train()
        c, chunks = self._chunks(stack.K)
        p_views, g_views = stack.views(stack.p), stack.views(stack.g)
        losses = []
        for k0, k1 in chunks:
            kc = k1 - k0
            leaves = {n: _padded(v[k0:k1], c).requires_grad_() for n, v in p_views.items()}
            bufs = {n: _padded(v[k0:k1], c) if kc < c else v[k0:k1] for n, v in stack.buffers.items()}
            self._load(self.layers, leaves, bufs, 0, c)
            logits = self.wide(widen_input(_padded(x[k0:k1], c)))
            loss = _per_config_ce(logits, _padded(y[k0:k1], c), c)
            loss.sum().backward()
            with torch.no_grad():
                for n, leaf in leaves.items():
                    g = leaf.grad
                    if g is None:
                        g_views[n][k0:k1].zero_()
                    else:
                        g_views[n][k0:k1].copy_(g[:kc])
                if kc < c:
                    for n, b in bufs.items():
                        stack.buffers[n][k0:k1].copy_(b[:kc])
            losses.append(loss.detach()[:kc])
        for name in self.counters:
            stack.buffers[name].add_(1)
        return torch.cat(losses)

    @torch.no_grad()
    def evaluate(self, stack: Any, flat: torch.Tensor, buffers: dict, x: torch.Tensor, y: torch.Tensor):
        """Per-config (mean loss, error rate) in eval mode over the shared ``x`` (n, *input)."""
        self.wide.eval()
        K = flat.shape[0]
        views = stack.views(flat)
        loss = torch.zeros(K, dtype=torch.float64, device=flat.device)
        wrong = torch.zeros(K, dtype=torch.float64, device=flat.device)
        c, chunks = self._chunks(K)
        for k0, k1 in chunks:
            kc = k1 - k0
            params = {n: _padded(v[k0:k1], c) for n, v in views.items()}
            bufs = {n: _padded(v[k0:k1], c) for n, v in buffers.items()}
            self._load(self.layers, params, bufs, 0, c)
            for s in range(0, x.shape[0], self.eval_batch):
                xc, yc = x[s:s + self.eval_batch], y[s:s + self.eval_batch]
                n = xc.shape[0]
                xw = widen_input(xc.unsqueeze(0).expand(c, *xc.shape))
                lg = self.wide(xw).view(n, c, -1).permute(1, 2, 0)[:kc]  # (kc, classes, n)
                ce = F.cross_entropy(lg, yc.expand(kc, -1), reduction="none")
                loss[k0:k1] += ce.double().sum(1)
                wrong[k0:k1] += (lg.argmax(1) != yc).sum(1).double()
        n = x.shape[0]
        return loss / n, wrong / n


def _padded(t: torch.Tensor, rows: int) -> torch.Tensor:
    """A contiguous copy of ``t`` with copies of its first row appended up to ``rows`` rows."""
    if t.shape[0] >= rows:
        return t.clone(memory_format=torch.contiguous_format)
    return torch.cat([t, t[:1].expand(rows - t.shape[0], *t.shape[1:])])


__all__ = ["WideEngine", "widen", "widen_input", "is_channels_last", "WideConv2d", "WideBatchNorm", "WideLinear"]
