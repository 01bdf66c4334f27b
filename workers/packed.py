"""The packed trainer: K (lr, wd, seed) configurations of one task trained at once on one device.

A grid study is hundreds of small trainings, and on a small model one training is mostly per-step
overhead. Training K copies *together* pays that overhead once: every parameter tensor gets a
leading configuration axis, each config's parameters are one row of a (K, P) matrix, and a step
is a handful of batched kernels over all K.

How a step runs
---------------
- **Layout.** Parameters live in one (K, P) tensor, row k holding config k's parameters
  flattened in ``named_parameters`` order with the decayed ones first (``decay_on``), so the
  weight-decay mask is a column split, not a (K, P) tensor. Gradients live in a second (K, P)
  tensor; optimizer state (momentum buffer, or Adam's two moments) in more of them.
- **Forward and backward.** A plain MLP (``nn.Sequential`` of ``Linear`` and ``ReLU``) runs on a
  hand-written forward and backward over ``torch.baddbmm``/``torch.bmm`` that writes the gradients
  straight into their rows (:class:`MLPEngine`). Any other model (BatchNorm, convolutions) runs
  through ``torch.func.vmap`` over ``torch.func.functional_call`` with autograd
  (:class:`FuncEngine`); vmap gives each config its own BatchNorm batch statistics and running
  statistics, so configs never see each other's activations.
- **Update.** :class:`StackOptimizer`, with per-config ``lr`` and ``weight_decay`` as (K, 1)
  tensors and the schedule value eta_t as a float: SGD and Adam as whole-stack passes (the
  rules of ``workers.optim.apply_update``; Adam's moments and direction in PyTorch's fused
  kernel, then one axpy with the per-config step sizes), every other base through
  ``apply_update`` itself, per column segment or per tensor. Cutting the rows into
  L2-sized chunks gained nothing once training ran on one thread
  with denormals flushed (128 digits MLPs: ~2.0 ms chunked, ~2.0 ms whole) and cost small
  blocks the extra calls (36 MLPs: 0.81 ms chunked, 0.50 ms whole), so it is gone.
  The update is not compiled: a ``torch.compile``-fused Adam update (one C++ loop) measured
  0.3 ms instead of ~1.6 ms, and an adamw block of 128 configs x 20 epochs 3.8 s instead of
  4.4 s, but each process pays ~2.7 s to import and trace it with inductor's cache warm and
  ~10 s cold (every Ray worker process; every fresh data directory), more than a demo-sized
  study's blocks gain.
- **One thread, no denormals.** On the CPU a block trains with one intra-op thread and
  denormals flushed to zero, both restored afterwards (:func:`cpu_training`).

Equal to single-config training
-------------------------------
Config k starts from ``task.build_model(seed_k)`` (``torch.manual_seed(seed_k)`` then the
constructors) and draws its data order and augmentation from ``task.data_generator(seed_k)``,
exactly as ``workers.trainer.train_single`` does, which runs ``build_optimizer`` and
``Schedule.lambda_lr`` on an ``nn.Module``. The two agree to float rounding (the tests hold them
to 1e-5 in the final validation loss). One exception is chaotic rather than wrong: with
BatchNorm and an Adam-family optimizer, a weight whose input is constant within a batch has a
zero gradient in exact arithmetic and ~1e-9 of rounding noise in floats, which Adam scales up to
a step of size lr; there the reference disagrees with *itself* by ~1e-5..1e-4 between one and two
CPU threads, and the packed trainer stays within that band.

The results of a config do not depend on the other configs of its block: packing the same
configs whole, split or reversed gives bit-identical curves (``tests/reliability``).

Divergence
----------
After every step the K batch losses are checked (one host sync). A config whose loss is NaN or
inf, or whose validation loss is at the end of an epoch, is *diverged from that epoch on*: its
row is removed from the block before the update (so it is frozen at the parameters that gave the
non-finite loss, and no NaN ever enters a kernel shared with the others), its metrics are those
measured on the frozen model, and later epochs repeat them with ``train_loss`` NaN.

Evaluation
----------
At the end of every epoch: ``train_loss`` is the mean of that epoch's minibatch losses (as seen
during training), ``val_loss`` and ``val_error`` are measured on the validation split in
evaluation mode (BatchNorm uses its running statistics).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workers.cpu_kernels import bias_relu_, relu_backward_sum_
from workers.optim import (
    ADAM_BETAS,
    DECAY_ON,
    PER_TENSOR_BASES,
    SGD_MOMENTUM,
    _decay_factor,
    apply_update,
    check_hyperparameters,
    decayed_parameter_names,
    get_variant,
    muon_parameter_names,
)
from workers.plugins import LoadedRule, PluginFailure, StepContext, describe, rule_implementation
from workers.schedules import Schedule, normalized_weight_decay
from workers.tasks import SyntheticTask, Task, TaskData, get_task
from workers.wide import WideEngine


@dataclass(frozen=True)
class TrialConfig:
    lr: float
    wd: float
    seed: int
    #: Opaque, passed through to the results (the worker puts the trial id here).
    key: Any = None


@dataclass
class EpochMetrics:
    """One config, one epoch (0-based)."""

    key: Any
    epoch: int
    train_loss: float
    val_loss: float
    val_error: float
    diverged: bool


@dataclass
class TrialResult:
    key: Any
    lr: float
    wd: float
    seed: int
    #: Final metrics (the last epoch's); NaN or inf when diverged.
    train_loss: float
    val_loss: float
    val_error: float
    diverged: bool
    diverged_epoch: int | None
    curve: list[EpochMetrics] = field(default_factory=list)

    @classmethod
    def from_curve(cls, config: TrialConfig, curve: list[EpochMetrics]) -> TrialResult:
        last = curve[-1]
        div = next((m.epoch for m in curve if m.diverged), None)
        return cls(config.key, config.lr, config.wd, config.seed, last.train_loss, last.val_loss,
                   last.val_error, div is not None, div, curve)


class TrainingStopped(Exception):
    """``on_epoch`` returned False: the block was cancelled after the epoch it was given."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"training stopped by on_epoch after epoch {epoch}")
        self.epoch = epoch


OnEpoch = Callable[[int, list[EpochMetrics]], "bool | None"]


#: Configs per chunk of a wide (conv net) step (``workers.wide``; the last chunk is padded, so a
#: block of fewer configs pays for the chunk) for tasks that name none (``Task.wide_chunk``).
#: Measured on mnist5k_cnn, 32 configs, batch 64, one thread: the whole block at once 10-40 %
#: slower than chunks of 4; 4 wastes least on small blocks.
WIDE_CHUNK: int | None = 4

#: Configs per chunk of :meth:`MLPEngine.evaluate` (its docstring has the measurement).
MLP_EVAL_CHUNK = 16

#: Intra-op threads a block trains with on the CPU: a block is given one CPU (``ray_adapter.block_resources``).
CPU_THREADS = 1

#: A float32 denormal: 1e-39 survives as itself only where this thread does not flush denormals.
_DENORMAL = 1e-39


def denormals_flushed() -> bool:
    """Whether the calling thread treats float32 denormals as zero (PyTorch has no getter for it)."""
    return float(torch.tensor([_DENORMAL], dtype=torch.float32).mul_(1.0)[0]) == 0.0


@contextlib.contextmanager
def cpu_training(threads: int | None = CPU_THREADS):
    """Run the enclosed training with ``threads`` intra-op threads and denormals flushed to zero.

    Both trainers train inside it, and it restores the thread count and the calling thread's
    denormal mode it found (so the rest of the process, a test session's Hypothesis included,
    never sees a changed floating-point mode).

    - **Denormals.** A confident classifier's softmax gradients and Adam's second moments
      underflow below 1.2e-38, where x86 arithmetic is one to two orders of magnitude slower:
      measured here, one digits epoch of 128 configs took 1.8 s with denormals and 0.4 s without.
      Flushing changes values only below 1.2e-38. ``torch.set_flush_denormal`` sets the *calling*
      thread's mode; OpenMP's worker threads keep the mode they were created with, which is why
      the default is one thread: then every kernel runs on the thread whose mode is set here.
    - **Threads.** A block is one CPU's work (it asks Ray for one CPU, and Ray runs the trial with
      one thread). On this 2-core machine two threads were *slower* than one for these small
      kernels whenever another process was busy: every OpenMP barrier waits for a descheduled
      thread. ``threads=None`` keeps the process's setting (worker threads then keep their own
      denormal mode).
    """
    prev_threads = torch.get_num_threads()
    prev_flushed = denormals_flushed()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"Invalid threads: {threads}")
        if threads != prev_threads:
            torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    heap = _large_allocations_from_heap(True)
    try:
        yield
    finally:
        if heap:
            _large_allocations_from_heap(False)
        torch.set_flush_denormal(prev_flushed)
        if torch.get_num_threads() != prev_threads:
            torch.set_num_threads(prev_threads)


#: glibc's mallopt parameters and defaults (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, 128 KiB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _GLIBC_DEFAULT = -1, -3, 128 * 1024


def _large_allocations_from_heap(on: bool) -> bool:
    """Serve large tensors from glibc's heap (``on``) or restore its default thresholds.

    A conv step allocates activations of tens of MB; glibc serves every allocation above 32 MB
    (and above 128 KiB until its adaptive threshold has grown) with a fresh ``mmap``, which the
    kernel zero-fills page by page, and gives it back on free: measured on a 32-config mnist5k_cnn
    step, ~30 % of the step's CPU time. With the thresholds raised, freed activations are reused
    by the next step. Only on glibc (elsewhere nothing is changed and False is returned).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if on:
        return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT)
    mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT)
    return True


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class RunSpec:
    """What a training run needs besides its (lr, wd, seed): shared by packed and single runs."""

    task: Task
    optimizer: str
    epochs: int
    batch_size: int
    schedule: Schedule
    wd_normalized: bool
    decay_on: str
    n_train: int

    def decay_scale(self, step: int) -> float:
        """lam/wd at ``step``: 1, or sqrt(b/(B*T)) with T the current period (Appendix B.1)."""
        if not self.wd_normalized:
            return 1.0
        return normalized_weight_decay(1.0, self.batch_size, self.n_train, self.schedule.period_epochs(step))

    def weight_decay(self, wd: float, step: int) -> float:
        if not self.wd_normalized:
            return wd
        return normalized_weight_decay(wd, self.batch_size, self.n_train, self.schedule.period_epochs(step))


def make_spec(
    task: Task, optimizer: str, *, epochs: int | None, batch_size: int | None,
    schedule: dict | None, wd_normalized: bool, decay_on: str, n_train: int,
) -> RunSpec:
    """Validate the run options (the errors name the option) and fill in the task's defaults."""
    get_variant(optimizer)
    if decay_on not in DECAY_ON:
        raise ValueError(f"Invalid decay_on: {decay_on!r} (expected one of {', '.join(DECAY_ON)})")
    epochs = int(epochs if epochs is not None else task.info.epochs)
    batch_size = int(batch_size if batch_size is not None else task.info.batch_size)
    if epochs < 1:
        raise ValueError(f"Invalid epochs: {epochs}")
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size}")
    steps = max(1, math.ceil(n_train / batch_size))
    sched = Schedule.from_spec(schedule or {"name": "constant"}, epochs, steps)
    return RunSpec(task, optimizer, epochs, batch_size, sched, bool(wd_normalized), decay_on, n_train)


# --------------------------------------------------------------------------------------------
# Stacked parameters


class Stack:
    """K copies of one architecture: parameters and gradients as (K, P), buffers as (K, ...)."""

    def __init__(self, models: Sequence[nn.Module], decayed: set[str], device: torch.device) -> None:
        template = models[0]
        names = [n for n, _ in template.named_parameters()]
        order = [n for n in names if n in decayed] + [n for n in names if n not in decayed]
        self.n_decayed = sum(template.get_parameter(n).numel() for n in order if n in decayed)
        self.layout: list[tuple[str, int, int, torch.Size]] = []
        start = 0
        for n in order:
            p = template.get_parameter(n)
            self.layout.append((n, start, start + p.numel(), p.shape))
            start += p.numel()
        self.P = start
        K = len(models)
        self.p = torch.empty(K, self.P, device=device)
        for k, m in enumerate(models):
            own = dict(m.named_parameters())
            for n, a, b, _ in self.layout:
                self.p[k, a:b].copy_(own[n].detach().reshape(-1))
        self.g = torch.zeros_like(self.p)
        self.buffers = {
            n: torch.stack([dict(m.named_buffers())[n].detach() for m in models]).to(device)
            for n, _ in template.named_buffers()
        }

    @property
    def K(self) -> int:
        return int(self.p.shape[0])

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """(K, *shape) views of each parameter in a (K, P) tensor."""
        K = flat.shape[0]
        return {n: flat[:, a:b].view(K, *shape) for n, a, b, shape in self.layout}

    def select(self, rows: torch.Tensor) -> None:
        self.p = self.p.index_select(0, rows)
        self.g = self.g.index_select(0, rows)
        self.buffers = {n: b.index_select(0, rows) for n, b in self.buffers.items()}


class StackOptimizer:
    """Optimizer state as (K, P) tensors, updated in place with per-config lr and weight decay.

    Segments are the decayed columns [0, n_decayed) and the rest (weight decay 0.0). The state
    starts at zero, which for SGD's momentum buffer gives b_1 = 0.9*0 + g_1 = g_1 exactly, the
    buffer ``apply_update`` would otherwise create.

    The per-tensor bases (Adafactor, Muon: ``optim.PER_TENSOR_BASES``) read whole tensors, so they
    step once per parameter on its (K, *shape) view, with per-config lr and decay shaped to
    broadcast against it and their state kept per parameter (Muon's hidden matrices are
    ``optim.muon_parameter_names`` of the template; its other parameters take the adam step).

    The SGD and Adam bases run :meth:`_sgd` and :meth:`_adam`: the rules of
    ``workers.optim.apply_update`` (same constants) written for the stack: every pass runs over
    the whole contiguous (K, P) tensors, only the decay touches the decayed columns
    [0, n_decayed) alone, and the temporaries live in one persistent buffer.

    - Adam, per step on the CPU: decay, then ``torch._fused_adam_`` per row on the parameters
      with that row's lr (moments, bias corrections and step in one pass, torch.optim.Adam's
      formula: :meth:`_adam_rows_fused`): 2 passes. On CUDA: decay, zero the buffer, the fused
      kernel on it with lr = 1 (:meth:`_adam_direction_fused`), axpy with the per-config lr: 4
      passes in 4 launches, where the eager formula (still the fallback where torch has no fused
      kernel for the device) makes 8: decay, lerp (m), mul + addcmul (v), sqrt into the buffer,
      + eps, m / buffer, axpy, with m / (sqrt(v)/s + eps) computed as s * m / (sqrt(v) + s*eps),
      s = sqrt(1 - beta2^t).
    - SGD, per step: b <- g + 0.9 b in one ``torch.add`` (``apply_update``: mul_ then add_; the
      CPU kernel may round the multiply-add once where those round twice, a last-bit difference
      the comparisons with the reference absorb), decay or L2, axpy.

    K=128 digits MLPs, one thread: ``docs/design-notes.md`` has the costs before and after. Any
    other base goes through ``apply_update`` per segment.
    """

    _STATE = {"sgd": ("momentum_buffer",), "lion": ("exp_avg",)}

    def __init__(self, optimizer: str, stack: Stack, template: nn.Module | None = None) -> None:
        self.variant = get_variant(optimizer)
        self.per_tensor = self.variant.base in PER_TENSOR_BASES
        self.steps = 0
        self.segments = [(a, b) for a, b in ((0, stack.n_decayed), (stack.n_decayed, stack.P)) if b > a]
        self.n_decayed = stack.n_decayed
        #: Non-tensor state an elementwise base carries between steps (NAdam's mu product), per segment.
        self.scalars: dict[tuple[int, int], dict[str, Any]] = {seg: {} for seg in self.segments}
        self.state: dict[str, torch.Tensor] = {}
        self.tensor_state: dict[str, dict[str, Any]] = {}
        self.matrices: set[str] = set()
        if self.per_tensor:
            self.tensor_state = {n: {} for n, *_ in stack.layout}
            if self.variant.base == "muon" and template is not None:
                self.matrices = muon_parameter_names(template)
        else:
            names = self._STATE.get(self.variant.base, ("exp_avg", "exp_avg_sq"))
            self.state = {n: torch.zeros_like(stack.p) for n in names}
        self._buf: torch.Tensor | None = None
        self._step_t: torch.Tensor | None = None
        #: Per-row views of the fused Adam kernel's tensors, keyed by the tensors they view.
        self._rows: tuple[tuple, list[list[torch.Tensor]]] | None = None

    def select(self, rows: torch.Tensor) -> None:
        self.state = {n: t.index_select(0, rows) for n, t in self.state.items()}
        self._buf = None
        self._rows = None
        for st in self.tensor_state.values():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    st[k] = v.index_select(0, rows)

    @torch.no_grad()
    def step(self, stack: Stack, lr: torch.Tensor, wd: torch.Tensor, eta: float) -> None:
        """lr: (K, 1) current step sizes a*eta_t; wd: (K, 1) lam; eta: the schedule value."""
        if self.per_tensor:
            self._step_tensors(stack, lr, wd, eta)
            return
        if self.variant.base == "sgd":
            self._sgd(stack, lr, wd, eta)
            self.steps += 1
            return
        if self.variant.base == "adam":
            self._adam(stack, lr, wd, eta)
            self.steps += 1
            return
        for a, b in self.segments:
            st: dict[str, Any] = {n: t[:, a:b] for n, t in self.state.items()}
            st.update(self.scalars[(a, b)])
            st["step"] = self.steps
            apply_update(
                self.variant, stack.p[:, a:b], stack.g[:, a:b], st,
                lr=lr, weight_decay=wd if a < self.n_decayed else 0.0, eta=eta,
            )
            self.scalars[(a, b)] = {k: v for k, v in st.items()
                                    if k != "step" and not isinstance(v, torch.Tensor)}
        self.steps += 1

    def _step_tensors(self, stack: Stack, lr: torch.Tensor, wd: torch.Tensor, eta: float) -> None:
        K = stack.K
        for name, a, b, shape in stack.layout:
            view = (K, *shape)
            ones = (1,) * len(shape)
            apply_update(
                self.variant, stack.p[:, a:b].view(view), stack.g[:, a:b].view(view),
                self.tensor_state[name], lr=lr.view(K, *ones),
                weight_decay=wd.view(K, *ones) if a < self.n_decayed else 0.0, eta=eta,
                batched=True, muon_matrix=name in self.matrices,
            )
        self.steps += 1

    def _l2_and_decay(self, stack: Stack, lr: torch.Tensor, wd: torch.Tensor, eta: float) -> None:
        """L2 (into the gradient) or the decoupled decay theta *= 1 - c, on the decayed columns."""
        nd = self.n_decayed
        if nd == 0:
            return
        decay = self.variant.decay
        if decay == "l2":
            stack.g[:, :nd].addcmul_(stack.p[:, :nd], wd)
        else:
            stack.p[:, :nd].mul_(1 - _decay_factor(self.variant, lr, wd, eta))

    def _sgd(self, stack: Stack, lr: torch.Tensor, wd: torch.Tensor, eta: float) -> None:
        momentum = SGD_MOMENTUM
        l2 = self.variant.decay == "l2"
        if l2:
            self._l2_and_decay(stack, lr, wd, eta)
        buf = self.state["momentum_buffer"]
        torch.add(stack.g, buf, alpha=momentum, out=buf)  # b <- g + 0.9 b: one pass, not mul_ then add_
        if not l2:
            self._l2_and_decay(stack, lr, wd, eta)
        stack.p.addcmul_(buf, lr, value=-1.0)

    def _adam(self, stack: Stack, lr: torch.Tensor, wd: torch.Tensor, eta: float) -> None:
        beta1, beta2 = ADAM_BETAS
        eps = _ADAM_EPS
        t = self.steps + 1
        # L2 goes into the gradient before the moments read it; the decoupled decay scales only the
        # parameters, which no path below reads before its final step on them, so it goes first too.
        self._l2_and_decay(stack, lr, wd, eta)
        g, m, v = stack.g, self.state["exp_avg"], self.state["exp_avg_sq"]
        fused = _fused_adam_available(v.device) and all(x.is_contiguous() for x in (stack.p, g, m, v))
        if fused and v.device.type in _FUSED_ADAM_PER_ROW:
            self._adam_rows_fused(stack.p, g, m, v, t, lr)
            return
        if self._buf is None or self._buf.shape != v.shape:
            self._buf = torch.empty_like(v)
        if fused:
            stack.p.addcmul_(self._adam_direction_fused(g, m, v, t), lr)
            return
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        s = math.sqrt(1 - beta2**t)
        d = torch.sqrt(v, out=self._buf).add_(s * eps)
        torch.div(m, d, out=d)
        stack.p.addcmul_(d, lr * (s / (1 - beta1**t)), value=-1.0)

    def _row_lists(self, tensors: tuple[torch.Tensor, ...]) -> list[list[torch.Tensor]]:
        """Each (K, P) tensor's rows as tensors of their own, and K references to the step
        tensor; kept until a tensor is replaced (dead rows dropped) or moved."""
        key = tuple((x.data_ptr(), x.shape) for x in tensors) + (tensors[0].device,)
        if self._rows is None or self._rows[0] != key:
            if self._step_t is None or self._step_t.device != tensors[0].device:
                self._step_t = torch.zeros((), dtype=torch.float32, device=tensors[0].device)
            K = tensors[0].shape[0]
            self._rows = (key, [list(x.unbind(0)) for x in tensors] + [[self._step_t] * K])
        return self._rows[1]

    def _adam_rows_fused(self, p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                         t: int, lr: torch.Tensor) -> None:
        """The Adam step on the CPU: ``torch._fused_adam_`` on every row, on the parameters
        themselves with that row's lr, the decay already applied: one pass over p, g, m, v.

        That is torch.optim.Adam(fused=True)'s own formula with each config's lr. On K=128 digits
        MLPs, one thread: 1.26-1.30 ms a step (the decay pass included) against 1.55 ms for the
        buffer path of :meth:`_adam_direction_fused` (zero the buffer, the kernel with lr = 1,
        axpy), which makes three more passes; 128 calls of a few us each cost less than those
        passes on a CPU. The rows that share an lr go in one call (:func:`_rows_by_value`): on the
        demo blocks 8 calls a step instead of 128, 6-7 % less CPU time per Adam-family block
        (AVX-512 Xeon, same-process A/B, identical results). On CUDA a call is a kernel launch, so
        there the buffer path's one call for all rows stays."""
        beta1, beta2 = ADAM_BETAS
        rp, rg, rm, rv, steps = self._row_lists((p, g, m, v))
        assert self._step_t is not None
        self._step_t.fill_(float(t))
        for lr_k, ks in _rows_by_value(lr).items():
            torch._fused_adam_(
                [rp[k] for k in ks], [rg[k] for k in ks], [rm[k] for k in ks], [rv[k] for k in ks], [],
                [steps[k] for k in ks], lr=lr_k, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=_ADAM_EPS,
                amsgrad=False, maximize=False,
            )

    def _adam_direction_fused(self, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int) -> torch.Tensor:
        """-m_hat / (sqrt(v_hat) + eps) in ``self._buf``, m and v updated, by ``torch._fused_adam_``.

        The fused kernel (what ``torch.optim.Adam(fused=True)`` runs) does the moment updates,
        the bias corrections and the step in one pass over the tensors, but with one scalar lr
        for all of them, and here every row has its own. So it runs on a zeroed buffer standing
        in for the parameters, with lr = 1 and no weight decay: the buffer becomes
        0 - 1 * (m/(1 - beta1^t)) / (sqrt(v)/sqrt(1 - beta2^t) + eps), torch.optim.Adam's own
        formula and order of operations, and the caller adds it to the parameters scaled by each
        row's lr. Zeroing + the fused kernel: 2 passes where the eager formula makes 6. (Writing
        -c/lr * theta into the buffer instead of zeros, to fold the decoupled decay into the same
        axpy, measured 2-3 % *slower* per adamw block than zeroing and a separate decay pass.)

        The kernel gets every row as a tensor of its own: over one (K, P) tensor it rounds an
        element differently depending on where it falls in the kernel's vector loop, so a config's
        result would depend on its row and on K (``tests/reliability/test_determinism.py``); per
        row it cannot (~70 us of 0.9 ms on 128 digits MLPs). The kernel needs contiguous tensors;
        rows of contiguous (K, P) tensors are.
        """
        beta1, beta2 = ADAM_BETAS
        d = self._buf
        assert d is not None
        d.zero_()
        rd, rg, rm, rv, steps = self._row_lists((d, g, m, v))
        assert self._step_t is not None
        self._step_t.fill_(float(t))
        torch._fused_adam_(
            rd, rg, rm, rv, [], steps, lr=1.0, beta1=beta1, beta2=beta2,
            weight_decay=0.0, eps=_ADAM_EPS, amsgrad=False, maximize=False,
        )
        return d


class PluginStackOptimizer:
    """A plugin's packed base direction (``kind="packed"``) with the trainer's decay conventions.

    Per step: L2 adds wd*theta to the decayed columns of the gradient (a copy) before the
    direction; ``u = direction(g, state, ctx, **hyperparameters)`` (``ctx``: a
    :class:`workers.plugins.StepContext` with theta, lr, wd, eta_t and the step) on the
    whole (K, P) stack; a decoupled convention scales the decayed columns by 1 - c
    (``optim._decay_factor``); then theta <- theta - lr*u with ``lr`` the (K, 1) scheduled step
    sizes. ``state`` is the rule's own dict; its tensors with K rows follow the configs when
    diverged ones leave the block. Anything the direction raises, and a ``u`` that is not a
    tensor of theta's shape, is a :class:`PluginFailure` naming the plugin.
    """

    def __init__(self, optimizer: str, stack: Stack, loaded: LoadedRule, params: dict[str, float] | None) -> None:
        self.variant = get_variant(optimizer)
        self.loaded = loaded
        self.hyper = loaded.hyperparameters(params)
        self.n_decayed = stack.n_decayed
        self.state: dict[str, Any] = {}
        self.steps = 0

    def select(self, rows: torch.Tensor) -> None:
        old_k = None
        for k, v in list(self.state.items()):
            if isinstance(v, torch.Tensor) and v.dim() >= 1:
                old_k = old_k or v.shape[0]
                if v.shape[0] == old_k:
                    self.state[k] = v.index_select(0, rows.to(v.device))

    @torch.no_grad()
    def step(self, stack: Stack, lr: torch.Tensor, wd: torch.Tensor, eta: float) -> None:
        nd, where = self.n_decayed, describe(self.loaded.info)
        g = stack.g
        if self.variant.decay == "l2" and nd:
            g = g.clone()
            g[:, :nd].addcmul_(stack.p[:, :nd], wd)
        try:
            ctx = StepContext(p=stack.p, lr=lr, wd=wd, eta=eta, step=self.steps + 1, n_decayed=nd)
            u = self.loaded.direction(g, self.state, ctx, **self.hyper)
        except Exception as e:
            raise PluginFailure(f"{where}: direction raised {type(e).__name__}: {e}") from e
        if not isinstance(u, torch.Tensor) or tuple(u.shape) != tuple(stack.p.shape):
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise PluginFailure(f"{where}: direction returned {got}, expected a tensor of shape "
                                f"{tuple(stack.p.shape)} (configs x parameters)")
        if self.variant.decay != "l2" and nd:
            stack.p[:, :nd].mul_(1 - _decay_factor(self.variant, lr, wd, eta))
        stack.p.addcmul_(u.to(stack.p.dtype), lr, value=-1.0)
        self.steps += 1


class TorchFallbackOptimizer:
    """A plugin's ``torch.optim.Optimizer`` (``kind="torch"``): one instance per config.

    Config k's optimizer holds two leaf views of row k of the stack, the decayed columns and the
    rest, whose ``.grad`` are views of the gradient rows, so it updates the stack in place. Each
    step sets every group's ``lr`` to the config's scheduled step size and ``weight_decay`` to
    its wd (0 for the undecayed columns): the optimizer's own ``weight_decay`` convention applies
    (``RuleInfo.reference_convention``). K Python-level ``step`` calls per step instead of a few
    batched kernels: slower than a packed rule (the report says so), but any published optimizer
    runs unchanged. Diverged configs leave the block with their optimizer; the others keep their
    state, re-keyed to the views of the new stack.
    """

    def __init__(self, optimizer: str, stack: Stack, loaded: LoadedRule, params: dict[str, float] | None) -> None:
        self.loaded = loaded
        self.hyper = loaded.hyperparameters(params)
        self.stack = stack
        self.n_decayed = stack.n_decayed
        where = describe(loaded.info)
        self.opts = []
        for k in range(stack.K):
            groups = []
            for p, g, decayed in self._views(k):
                p.grad = g
                groups.append({"params": [p], "decayed": decayed})
            try:
                self.opts.append(loaded.optimizer_class(groups, lr=1e-3, weight_decay=0.0, **self.hyper))
            except Exception as e:
                raise PluginFailure(f"{where}: constructing {loaded.info.implementation} raised "
                                    f"{type(e).__name__}: {e}") from e

    def _views(self, k: int) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
        nd, P = self.n_decayed, self.stack.P
        return [(self.stack.p[k, a:b], self.stack.g[k, a:b], a == 0 and nd > 0)
                for a, b in ((0, nd), (nd, P)) if b > a]

    def select(self, rows: torch.Tensor) -> None:
        self.opts = [self.opts[r] for r in rows.tolist()]
        for k, opt in enumerate(self.opts):
            for group, (p, g, _) in zip(opt.param_groups, self._views(k)):
                old = group["params"][0]
                p.grad = g
                group["params"][0] = p
                if old in opt.state:
                    opt.state[p] = opt.state.pop(old)

    @torch.no_grad()
    def step(self, stack: Stack, lr: torch.Tensor, wd: torch.Tensor, eta: float) -> None:
        lrs, wds = lr.flatten().tolist(), wd.flatten().tolist()
        for k, opt in enumerate(self.opts):
            for group in opt.param_groups:
                group["lr"] = lrs[k]
                group["weight_decay"] = wds[k] if group["decayed"] else 0.0
            try:
                opt.step()
            except Exception as e:
                raise PluginFailure(f"{describe(self.loaded.info)}: step raised {type(e).__name__}: {e}") from e


def make_stack_optimizer(optimizer: str, stack: Stack, template: nn.Module | None = None,
                         params: dict[str, float] | None = None):
    """The stack optimizer for ``optimizer``: the built-in :class:`StackOptimizer`, or a plugin's."""
    loaded = rule_implementation(get_variant(optimizer).base)
    if loaded is None:
        if params:
            raise ValueError(f"optimizer {optimizer!r} takes no hyper-parameters (got {', '.join(params)})")
        return StackOptimizer(optimizer, stack, template)
    if loaded.optimizer_class is not None:
        return TorchFallbackOptimizer(optimizer, stack, loaded, params)
    return PluginStackOptimizer(optimizer, stack, loaded, params)


#: eps of ``workers.optim.apply_update`` (the one place it is set).
_ADAM_EPS: float = (apply_update.__kwdefaults__ or {})["eps"]
#: Devices where the Adam step calls the fused kernel once per row on the parameters
#: (:meth:`StackOptimizer._adam_rows_fused`); elsewhere one call on a buffer, then an axpy.
_FUSED_ADAM_PER_ROW = frozenset({"cpu"})


def _rows_by_value(lr: torch.Tensor) -> dict[float, list[int]]:
    """{step size: the rows that have it}, for one fused-kernel call per distinct lr.

    A grid's rows share its few lr values (8 on the demo blocks' 128 rows), so a step pays the
    kernel's per-call cost a few times instead of once per row; every row is still a tensor of
    its own in the call, so its rounding does not depend on its neighbours.
    """
    rows: dict[float, list[int]] = {}
    for k, lr_k in enumerate(lr.flatten().tolist()):
        rows.setdefault(lr_k, []).append(k)
    return rows


def _fused_adam_available(device: torch.device) -> bool:
    """Whether ``torch._fused_adam_`` runs on ``device`` (CPU from torch 2.4, CUDA before)."""
    return device.type in ("cpu", "cuda") and hasattr(torch, "_fused_adam_")


# --------------------------------------------------------------------------------------------
# Engines: forward, backward and evaluation of a stack




#: Per-config size (floats) up to which a hidden layer's weight gradient is computed into a contiguous
#: temporary and copied into its rows: ``bmm`` into a strided ``out=`` runs one small matmul per
#: config (128 digits MLPs, 10 x 128 output layer: 500 us, 390 us through the temporary), while for
#: the first layer's 128 x 64 the copy costs more than the loop saves.
_SMALL_GRADIENT = 4096


class MLPEngine:
    """``nn.Sequential`` of ``Linear`` and ``ReLU``: hand-written forward/backward on batched matmuls.

    Every activation is kept *transposed*, features x samples: a_i^T = W_i a_{i-1}^T + b_i as
    (K, features, b), so each forward matmul takes the weight (K, out, in) as stored, row-major,
    and the last layer's output is already the (K, classes, b) the loss wants (log-softmax over a
    short *inner* axis of 10 is ~20x slower on a CPU than over a middle one). The input x is
    (K, b, in) as gathered (read transposed by the first matmul), or (n, in) shared by all K in
    :meth:`evaluate`, where the first layer is one large matmul of the K stacked weight
    matrices, (K*out, in) x (in, n), instead of K small ones. The bias is added in place after the
    matmul (``baddbmm`` first copies the broadcast bias into its output, then reads it back).
    Loss: mean cross-entropy. Backward: d = (softmax - onehot)/b, (K, out, b); dW = d a_{i-1};
    db = sum over the batch; d <- (W^T d) * [a > 0] in place; each gradient goes into its rows of
    the (K, P) gradient (small ones through a contiguous temporary, :data:`_SMALL_GRADIENT`), with
    no autograd graph. Activations and activation gradients live in buffers kept from step to step.

    Measured on K=128 digits MLPs (64-128-10, batch 64, one thread, AVX-512 Xeon; micro-benchmarks
    of the step's five matmuls and bias passes): ~2.6 ms in this layout, ~3.0 ms samples x
    features (where x W^T reads the weight transposed and ``baddbmm`` adds the bias as a pass of
    its own). The softmax is ``torch.softmax`` on the logits, not ``exp`` of the log-softmax: once
    a classifier is confident its log-probabilities reach -100 and beyond, where CPU ``exp`` took
    700 us instead of 25 us on (128, 10, 64). A config's numbers do not depend on its row or on K
    (every kernel here computes a config's matrices alone; ``tests/reliability``).
    """

    def __init__(self, template: nn.Module) -> None:
        self._buf_key: tuple | None = None
        self.linears: list[str] = []
        self.relu_after: list[bool] = []
        for name, m in template.named_children():
            if isinstance(m, nn.Linear):
                self.linears.append(name)
                self.relu_after.append(False)
            else:
                self.relu_after[-1] = True

    @staticmethod
    def supports(template: nn.Module) -> bool:
        kids = list(template.children())
        return (
            isinstance(template, nn.Sequential) and bool(kids)
            and isinstance(kids[0], nn.Linear) and isinstance(kids[-1], nn.Linear)
            and all(isinstance(m, (nn.Linear, nn.ReLU)) for m in kids)
            and all(not (isinstance(a, nn.ReLU) and isinstance(b, nn.ReLU)) for a, b in zip(kids, kids[1:]))
            and all(m.bias is not None for m in kids if isinstance(m, nn.Linear))
        )

    def bind(self, stack: Stack) -> None:
        self.p = stack.views(stack.p)
        self.g = stack.views(stack.g)

    def _buffers(self, K: int, batch: int, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Activation and activation-gradient buffers of a training step, reused from step to step."""
        key = (K, batch, device)
        if self._buf_key != key:
            outs = [self.p[f"{n}.weight"].shape[1] for n in self.linears]
            self._acts = [torch.empty(K, o, batch, device=device) for o in outs]
            self._grads = [torch.empty(K, o, batch, device=device) for o in outs[:-1]]
            self._buf_key = key
        return self._acts, self._grads

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                 out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Activations [x, a_1^T, ..., logits^T], each a_i^T (K, features, samples).

        ``x`` is (K, b, in), or (n, in) shared by all K; ``out``: (K, features, b) buffers to write
        the activations of a training step into.
        """
        acts = [x]
        h = x
        for i, (name, relu) in enumerate(zip(self.linears, self.relu_after)):
            w, b = params[f"{name}.weight"], params[f"{name}.bias"]
            dst = out[i] if out is not None else None
            if i > 0:
                h = torch.bmm(w, h, out=dst)
            elif x.dim() == 2:  # (K*out, in) x (in, n): one large matmul
                K, o, inp = w.shape
                h = torch.mm(w.reshape(K * o, inp), x.t()).view(K, o, x.shape[0])
            else:
                h = torch.bmm(w, x.transpose(1, 2), out=dst)
            if h.is_cuda:
                h.add_(b.unsqueeze(2))
                if relu:
                    h = h.relu_()
            else:
                bias_relu_(h, b, relu)  # one pass, not two
            acts.append(h)
        return acts

    def train_step(self, stack: Stack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        K, batch = y.shape
        acts_buf, grads_buf = self._buffers(K, batch, x.device)
        p, g = self.p, self.g
        acts = self._forward(p, x, acts_buf)
        logits = acts[-1]  # (K, C, b)
        yi = y.unsqueeze(1)
        loss = -torch.log_softmax(logits, dim=1).gather(1, yi).squeeze(1).mean(1)
        d = torch.softmax(logits, dim=1)
        d.scatter_add_(1, yi, torch.full(yi.shape, -1.0, device=d.device))
        d.mul_(1.0 / y.shape[1])
        summed = None  # the bias gradient the ReLU backward already wrote, if any
        for i in range(len(self.linears) - 1, -1, -1):
            name, a_in = self.linears[i], acts[i]
            gw, gb, w = g[f"{name}.weight"], g[f"{name}.bias"], p[f"{name}.weight"]
            # d is (K, out, b); a_in is x (K, b, in) for the first layer, a^T (K, in, b) after it.
            if i == 0:
                torch.bmm(d, a_in, out=gw)
            elif gw[0].numel() <= _SMALL_GRADIENT:
                gw.copy_(torch.bmm(a_in, d.transpose(1, 2)).transpose(1, 2))
            else:
                torch.bmm(d, a_in.transpose(1, 2), out=gw)
            if summed is not gb:
                torch.sum(d, dim=2, out=gb)
            if i == 0:
                break  # the input needs no gradient (it would be the step's largest bmm)
            d = torch.bmm(w.transpose(1, 2), d, out=grads_buf[i - 1])
            if not self.relu_after[i - 1]:  # Linear -> Linear: no ReLU to take back
                continue
            if d.is_cuda:
                torch.ops.aten.threshold_backward.grad_input(d, a_in, 0.0, grad_input=d)
            else:  # ReLU's backward and the next layer's bias gradient in one pass
                summed = g[f"{self.linears[i - 1]}.bias"]
                relu_backward_sum_(d, a_in, summed)
        return loss

    @torch.no_grad()
    def evaluate(self, stack: Stack, flat: torch.Tensor, buffers: dict, x: torch.Tensor, y: torch.Tensor):
        """Validation loss and error of every row of ``flat``, :data:`MLP_EVAL_CHUNK` configs at a time.

        In chunks the activations of the shared validation set stay in the CPU's L2 cache between
        the matmul that writes them and the bias, ReLU and next matmul that read them (128 digits
        MLPs, 360 samples: 16 ms whole, 11 ms in chunks of 16 configs).
        """
        params = stack.views(flat)
        K = flat.shape[0]
        loss = torch.empty(K, dtype=torch.float64, device=flat.device)
        err = torch.empty(K, dtype=torch.float64, device=flat.device)
        for k0 in range(0, K, MLP_EVAL_CHUNK):
            chunk = {n: v[k0:k0 + MLP_EVAL_CHUNK] for n, v in params.items()}
            loss[k0:k0 + MLP_EVAL_CHUNK], err[k0:k0 + MLP_EVAL_CHUNK] = _loss_and_errors(self._forward(chunk, x)[-1], y)
        return loss, err


class FuncEngine:
    """Any module: ``vmap`` over ``functional_call``, autograd for the gradients.

    Each parameter is an ``nn.Parameter`` *view* of its rows in ``stack.p`` whose ``.grad`` is a
    view of its rows in ``stack.g``, so autograd accumulates in place into the (K, P) gradient and
    the update needs no copies. Buffers (BatchNorm running statistics) are batched too, so vmap
    updates each config's own.
    """

    def __init__(self, template: nn.Module, eval_batch: int) -> None:
        self.template = template
        self.eval_batch = eval_batch

    def bind(self, stack: Stack) -> None:
        self.params = {}
        grads = stack.views(stack.g)
        for n, v in stack.views(stack.p).items():
            p = nn.Parameter(v)
            p.grad = grads[n]
            self.params[n] = p

    def train_step(self, stack: Stack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, vmap

        self.template.train()

        def loss_fn(params, buffers, xb, yb):
            return F.cross_entropy(functional_call(self.template, (params, buffers), (xb,)), yb)

        loss = vmap(loss_fn)(self.params, stack.buffers, x, y)
        stack.g.zero_()
        with warnings.catch_warnings():
            # The .grad views share their rows' strides; autograd warns about any non-dense layout.
            warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout")
            loss.sum().backward()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, stack: Stack, flat: torch.Tensor, buffers: dict, x: torch.Tensor, y: torch.Tensor):
        from torch.func import functional_call, vmap

        self.template.eval()
        params = stack.views(flat)
        loss = torch.zeros(flat.shape[0], dtype=torch.float64, device=flat.device)
        wrong = torch.zeros(flat.shape[0], dtype=torch.float64, device=flat.device)
        for s in range(0, x.shape[0], self.eval_batch):
            xc, yc = x[s:s + self.eval_batch], y[s:s + self.eval_batch]
            logits = vmap(lambda p, b: functional_call(self.template, (p, b), (xc,)))(params, buffers)
            l_sum, w_sum = _loss_and_errors(logits.transpose(1, 2), yc, reduce=False)
            loss += l_sum
            wrong += w_sum
        n = x.shape[0]
        return loss / n, wrong / n


def _loss_and_errors(logits: torch.Tensor, y: torch.Tensor, reduce: bool = True):
    """Per config: mean (or summed) cross-entropy and error rate (or count), float64.

    ``logits`` is (K, classes, n): the class axis in the middle, where CPU kernels reduce over it
    fast (over a last axis of 10 they are ~20x slower).
    """
    K, C, n = logits.shape
    ce = -torch.log_softmax(logits, dim=1).gather(1, y.expand(K, 1, n)).squeeze(1)
    wrong = (logits.max(1).indices != y).sum(1)
    ce_sum = ce.double().sum(1)
    if reduce:
        return ce_sum / n, wrong.double() / n
    return ce_sum, wrong.double()


def make_engine(template: nn.Module, batch_size: int, input_shape: tuple[int, ...] = (),
                wide_chunk: int | None = None):
    """The fastest engine that runs ``template``: MLP, then wide (``workers.wide``, in chunks of
    ``wide_chunk`` or ``WIDE_CHUNK`` configs), then vmap."""
    if MLPEngine.supports(template):
        return MLPEngine(template)
    eval_batch = max(4 * batch_size, 256)
    wide = WideEngine.build(template, tuple(input_shape), eval_batch, chunk=wide_chunk or WIDE_CHUNK)
    if wide is not None:
        return wide
    return FuncEngine(template, eval_batch=eval_batch)


# --------------------------------------------------------------------------------------------
# The block


@dataclass
class _Dead:
    """A diverged config: frozen parameters and the metrics they gave."""

    epoch: int
    train_loss: float
    p: torch.Tensor | None = None
    buffers: dict | None = None
    val: tuple[float, float] | None = None


class PackedRun:
    """State and loop of one packed block (see the module docstring)."""

    def __init__(self, spec: RunSpec, configs: Sequence[TrialConfig], data: TaskData, device: torch.device,
                 params: dict[str, float] | None = None) -> None:
        self.spec, self.configs, self.data, self.device = spec, list(configs), data, device
        task = spec.task
        models = [task.build_model(c.seed) for c in self.configs]
        self.template = models[0].to(device)
        decayed = decayed_parameter_names(self.template, spec.decay_on)
        self.stack = Stack(models, decayed, device)
        # The task's chunk was measured on CPUs; on a GPU every task keeps WIDE_CHUNK.
        chunk = getattr(task, "wide_chunk", None) if device.type == "cpu" else None
        self.engine = make_engine(self.template, spec.batch_size, tuple(data.x_train.shape[1:]), chunk)
        self.engine.bind(self.stack)
        self.opt = make_stack_optimizer(spec.optimizer, self.stack, self.template, params)
        self.gens = [task.data_generator(c.seed) for c in self.configs]
        self.rows = list(range(len(self.configs)))  # config index of each live row
        self.lr64 = torch.tensor([[c.lr] for c in self.configs], dtype=torch.float64, device=device)
        self.wd64 = torch.tensor([[c.wd] for c in self.configs], dtype=torch.float64, device=device)
        self.dead: dict[int, _Dead] = {}
        self.step = 0
        self._wd_cache: tuple[float, torch.Tensor] | None = None

    # Rows -------------------------------------------------------------------------------------

    def _kill(self, bad_rows: list[int], epoch: int, train_loss: torch.Tensor) -> None:
        """Freeze the configs on ``bad_rows`` (row indices) and drop them from the block."""
        for r in bad_rows:
            self.dead[self.rows[r]] = _Dead(
                epoch, float(train_loss[r]), self.stack.p[r:r + 1].clone(),
                {n: b[r:r + 1].clone() for n, b in self.stack.buffers.items()},
            )
        keep_list = [r for r in range(len(self.rows)) if r not in set(bad_rows)]
        keep = torch.tensor(keep_list, dtype=torch.long, device=self.device)
        self.stack.select(keep)
        self.opt.select(keep)
        self.engine.bind(self.stack)
        self.lr64, self.wd64 = self.lr64[keep], self.wd64[keep]
        self.rows = [self.rows[r] for r in keep_list]
        self.gens = [self.gens[r] for r in keep_list]
        self._wd_cache = None
        self._keep = keep

    def _decay(self) -> torch.Tensor:
        scale = self.spec.decay_scale(self.step)
        if self._wd_cache is None or self._wd_cache[0] != scale:
            self._wd_cache = (scale, (self.wd64 * scale).float())
        return self._wd_cache[1]

    # Epoch ------------------------------------------------------------------------------------

    def _epoch_order(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        perms, augs = [], []
        for g in self.gens:
            perm, aug = self.spec.task.epoch_order(self.data.n_train, g)
            perms.append(perm)
            augs.append(aug)
        perm = torch.stack(perms).to(self.device)
        aug = torch.stack(augs).to(self.device) if augs and augs[0] is not None else None
        return perm, aug

    def train_epoch(self, epoch: int) -> dict[int, float]:
        """One epoch over the live rows; returns the train loss of each config live at its start."""
        if not self.rows:  # every config has diverged: there is no data order to draw, nothing to train
            return {}
        spec, data = self.spec, self.data
        n, b = data.n_train, spec.batch_size
        augment = spec.task.augment
        perm, aug = self._epoch_order()
        loss_sum = torch.zeros(len(self.rows), dtype=torch.float64, device=self.device)
        seen = 0
        result: dict[int, float] = {}
        for s in range(0, n, b):
            if not self.rows:
                break
            idx = perm[:, s:s + b]
            flat_idx = idx.reshape(-1)
            x = data.x_train.index_select(0, flat_idx).view(*idx.shape, *data.x_train.shape[1:])
            y = data.y_train.index_select(0, flat_idx).view(idx.shape)
            if augment is not None:
                x = augment.apply(x, aug[:, s:s + b])
            loss = self.engine.train_step(self.stack, x, y)
            loss_sum += loss.double() * idx.shape[1]
            seen += idx.shape[1]
            finite = torch.isfinite(loss)
            if not bool(finite.all()):
                bad = (~finite).nonzero().flatten().tolist()
                for r in bad:
                    result[self.rows[r]] = float(loss_sum[r]) / seen
                self._kill(bad, epoch, loss_sum / seen)
                loss_sum = loss_sum[self._keep]
                perm = perm[self._keep]
                aug = aug[self._keep] if aug is not None else None
                if not self.rows:
                    break
            eta = spec.schedule.multiplier(self.step)
            lr = (self.lr64 * eta).float()
            self.opt.step(self.stack, lr, self._decay(), eta)
            self.step += 1
        for r, c in enumerate(self.rows):
            result[c] = float(loss_sum[r]) / seen
        return result

    def evaluate(self, epoch: int, train: dict[int, float]) -> list[EpochMetrics]:
        """Validation metrics of every config after ``epoch``; non-finite ones die here."""
        data = self.data
        vals: dict[int, tuple[float, float]] = {}
        if self.rows:
            loss, err = self.engine.evaluate(self.stack, self.stack.p, self.stack.buffers, data.x_val, data.y_val)
            loss, err = loss.tolist(), err.tolist()
            bad = [r for r, v in enumerate(loss) if not math.isfinite(v)]
            for r, c in enumerate(self.rows):
                vals[c] = (loss[r], err[r])
            if bad:
                self._kill(bad, epoch, torch.tensor([train[c] for c in self.rows], dtype=torch.float64))
        for c, d in self.dead.items():
            if d.val is None:
                if c not in vals:  # died during this epoch's training: measure the frozen model
                    loss, err = self.engine.evaluate(self.stack, d.p, d.buffers, data.x_val, data.y_val)
                    vals[c] = (float(loss[0]), float(err[0]))
                d.val = vals[c]
                d.p = d.buffers = None
        out = []
        for c, cfg in enumerate(self.configs):
            d = self.dead.get(c)
            if d is None:
                out.append(EpochMetrics(cfg.key, epoch, train[c], *vals[c], False))
            else:
                tl = train[c] if d.epoch == epoch else float("nan")
                out.append(EpochMetrics(cfg.key, epoch, tl, *d.val, True))
        return out

    def run(self, on_epoch: OnEpoch | None) -> list[TrialResult]:
        curves: list[list[EpochMetrics]] = [[] for _ in self.configs]
        for epoch in range(self.spec.epochs):
            train = self.train_epoch(epoch)
            metrics = self.evaluate(epoch, train)
            for c, m in enumerate(metrics):
                curves[c].append(m)
            if on_epoch is not None and on_epoch(epoch, metrics) is False:
                raise TrainingStopped(epoch)
        return [TrialResult.from_curve(cfg, curve) for cfg, curve in zip(self.configs, curves)]


def _run_analytic(task: SyntheticTask, spec: RunSpec, configs: Sequence[TrialConfig], on_epoch: OnEpoch | None):
    curves: list[list[EpochMetrics]] = [[] for _ in configs]
    for epoch in range(spec.epochs):
        metrics = []
        for c, cfg in enumerate(configs):
            o = task.outcome(spec.optimizer, cfg.lr, cfg.wd, cfg.seed, epoch, spec.epochs,
                             batch_size=spec.batch_size, wd_normalized=spec.wd_normalized)
            metrics.append(EpochMetrics(cfg.key, epoch, o.train_loss, o.val_loss, o.val_error, o.diverged))
            curves[c].append(metrics[-1])
        if on_epoch is not None and on_epoch(epoch, metrics) is False:
            raise TrainingStopped(epoch)
    return [TrialResult.from_curve(cfg, curve) for cfg, curve in zip(configs, curves)]


def train_block(
    task: str,
    optimizer: str,
    configs: Sequence[TrialConfig],
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    schedule: dict | None = None,
    wd_normalized: bool = False,
    decay_on: str = "all",
    device: str | torch.device | None = None,
    on_epoch: OnEpoch | None = None,
    max_train: int | None = None,
    max_val: int | None = None,
    threads: int | None = CPU_THREADS,
    params: dict[str, float] | None = None,
) -> list[TrialResult]:
    """Train every config of ``configs`` together; results in the same order.

    ``schedule`` is a study spec's schedule object (default constant); ``wd_normalized`` means
    each config's ``wd`` is lam_norm and the decay used is lam_norm*sqrt(b/(B*T)), T the current
    period; ``on_epoch(epoch, metrics)`` is called after every epoch with every config's metrics
    and stops the block (raising :class:`TrainingStopped`) by returning False. ``max_train`` and
    ``max_val`` keep the first samples of each split (for tests and benchmarks). ``threads`` is
    the intra-op thread count while training (:func:`cpu_training`; None keeps the process's).
    ``params`` sets a plugin rule's hyper-parameters (its defaults otherwise).
    """
    configs = list(configs)
    t = get_task(task)
    for c in configs:
        check_hyperparameters(c.lr, c.wd)
    if t.analytic:
        spec = make_spec(t, optimizer, epochs=epochs, batch_size=batch_size, schedule=schedule,
                         wd_normalized=wd_normalized, decay_on=decay_on, n_train=SyntheticTask.N_TRAIN)
        return _run_analytic(t, spec, configs, on_epoch)
    dev = resolve_device(device)
    data = t.load_data(max_train, max_val)
    spec = make_spec(t, optimizer, epochs=epochs, batch_size=batch_size, schedule=schedule,
                     wd_normalized=wd_normalized, decay_on=decay_on, n_train=data.n_train)
    if not configs:
        return []
    with cpu_training(threads) if dev.type == "cpu" else contextlib.nullcontext():
        return PackedRun(spec, configs, data.to(dev), dev, params).run(on_epoch)


# --------------------------------------------------------------------------------------------
# Block size


def _activations_per_sample(model: nn.Module, sample: torch.Tensor) -> int:
    """Floats the leaf modules output for one sample (a forward on two samples, counted)."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model.train()
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return max(1, total // sample.shape[0])


def _memory_budget(device: torch.device) -> int:
    """Bytes a block may use: half the free GPU memory, or a quarter of the available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4
    except OSError:
        pass
    return 2 << 30


#: Largest block auto_block_size proposes: on a CPU throughput stops growing long before memory
#: runs out (see bench/trainer.py), and one block holds one worker for its whole run.
MAX_BLOCK = {"cpu": 256, "cuda": 4096}


def auto_block_size(task: str, device: str | torch.device | None = None, *, budget_bytes: int | None = None,
                    batch_size: int | None = None, max_block: int | None = None) -> int:
    """How many configs of ``task`` fit in one block on ``device``.

    Per config: 4 bytes x (6 P for parameters, gradient, two optimizer states and update
    temporaries + 3 A b for the activations autograd keeps and their gradients), P parameters,
    A activation floats per sample, b the batch size. ``budget_bytes`` and ``max_block``
    override the memory budget (:func:`_memory_budget`) and the cap (:data:`MAX_BLOCK`).
    """
    t = get_task(task)
    dev = resolve_device(device)
    cap = max_block if max_block is not None else MAX_BLOCK.get(dev.type, MAX_BLOCK["cuda"])
    if t.analytic:
        return cap
    b = batch_size or t.info.batch_size
    model = t.build_model(0)
    P = sum(p.numel() for p in model.parameters())
    sample = torch.zeros(2, *t.input_shape)
    A = _activations_per_sample(model, sample)
    per_config = 4 * (6 * P + 3 * A * b)
    budget = budget_bytes if budget_bytes is not None else _memory_budget(dev)
    return int(max(1, min(cap, budget // per_config)))


__all__ = [
    "TrialConfig", "EpochMetrics", "TrialResult", "TrainingStopped", "train_block", "auto_block_size",
    "resolve_device", "make_spec", "RunSpec", "PackedRun", "Stack", "StackOptimizer", "MLPEngine",
    "FuncEngine", "PluginStackOptimizer", "TorchFallbackOptimizer", "make_stack_optimizer",
    "MAX_BLOCK", "CPU_THREADS", "cpu_training", "denormals_flushed",
]
