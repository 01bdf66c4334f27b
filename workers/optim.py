"""Every optimizer the service studies, written once: a base direction x a decay convention.

Names, aliases and rule texts live in ``service.domain.conventions`` (no torch); this module runs
them. The bases beyond SGD and Adam (Lion, RAdam, NAdam, Adafactor, Muon) are in
``workers.bases``; the five conventions are one factor c in theta <- theta*(1 - c), or L2 added to
the gradient (:func:`_decay_factor`). The paper's five variants, below, are five of the names.

Every variant is the same chain of three links, as in optax::

    [L2: g <- g + lam*theta]  ->  base direction u (SGD momentum or Adam)  ->  theta <- theta*(1 - c) - a_t*u

and the variants differ only in *where the decay sits and what scales it*:

============  ======  ==========  ============================================  =====================
name          base    decay       update (a = base lr, eta_t = schedule value)  convention
============  ======  ==========  ============================================  =====================
sgd           sgd     l2          g += lam*th; b = beta*b + g; th -= eta*a*b    L2, through momentum
sgdw          sgd     schedule    b = beta*b + g; th -= eta*a*b + eta*lam*th    paper, Algorithm 1
adam          adam    l2          g += lam*th, then Adam                        L2, through Adam's
                                                                                 preconditioner
adamw         adam    schedule    th -= eta*(a*mhat/(sqrt(vhat)+eps) + lam*th)  paper, Algorithm 2
adamw_torch   adam    lr          th *= 1 - a*eta*lam, then Adam                torch.optim.AdamW
============  ======  ==========  ============================================  =====================

So c = eta_t*lam for the paper's decoupled decay (scaled by the schedule, *not* by the learning
rate) and c = a*eta_t*lam for PyTorch's (multiplied by the learning rate); lam_paper = a*lam_torch.
The decay always uses theta before the step. Momentum is in PyTorch's form (the buffer sums raw
gradients and a*eta_t multiplies it when applied).

The schedule multiplier eta_t of a parameter group is ``group["lr"] / group["lr_at_build"]``, so any
``torch.optim.lr_scheduler`` drives both the step size and, for ``sgdw`` and ``adamw``, the decay.

:func:`apply_update` is the one implementation of the chain. It takes the learning rate, decay and
schedule value as Python floats *or* as tensors that broadcast against the parameter, which is how
the packed trainer (``workers.packed``) runs K configurations at once with exactly these rules.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import nn

from service.domain.conventions import BASES as BUILTIN_BASES
from service.domain.rules import DECAY_ON, OPTIMIZER_NAMES, VARIANTS, Variant, get_variant
from workers import bases
from workers.plugins import StepContext, rule_implementation

__all__ = [
    "DECAY_ON", "OPTIMIZER_NAMES", "VARIANTS", "DecayChainOptimizer", "PluginRuleOptimizer", "Variant", "apply_update",
    "build_optimizer", "check_hyperparameters", "decayed_parameter_names", "get_variant", "param_groups",
]

#: A Python float, or a tensor broadcasting against the parameter (one value per packed config).
Number: TypeAlias = "float | torch.Tensor"

#: Bases whose step reads whole tensors: run on (K, *shape) tensors (``batched``), not on flat segments.
PER_TENSOR_BASES = frozenset({"adafactor", "muon"})

#: The reference defaults of the sgd and adam bases (torch.optim.SGD's usual 0.9; torch.optim.Adam's betas).
SGD_MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)


def _real(v: Any) -> bool:
    """A real number (NumPy's included); ``True``/``False`` are not learning rates."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def check_hyperparameters(lr: float, weight_decay: float) -> None:
    """Reject values no optimizer can run with, naming the value (as torch.optim does)."""
    if not _real(lr) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not _real(weight_decay) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def _axpy_(p: torch.Tensor, u: torch.Tensor, scale: Number) -> None:
    """p <- p - scale*u, with scale a float or a broadcastable tensor."""
    if isinstance(scale, torch.Tensor):
        p.addcmul_(u, scale, value=-1.0)
    else:
        p.add_(u, alpha=-scale)


def apply_update(
    variant: Variant,
    p: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, Any],
    *,
    lr: Number,
    weight_decay: Number,
    eta: Number,
    momentum: float | None = None,
    betas: tuple[float, float] | None = None,
    eps: float = 1e-8,
    batched: bool = False,
    muon_matrix: bool = False,
) -> None:
    """One step of ``variant`` on ``p`` in place.

    ``lr`` is the current step size a*eta_t (what a scheduler leaves in ``group["lr"]``),
    ``eta`` the schedule value eta_t alone, ``weight_decay`` lam. Each may be a tensor that
    broadcasts against ``p`` (one value per packed configuration). ``batched`` says ``p`` has a
    leading config axis (the packed trainer's per-tensor views), which the per-tensor bases
    (Adafactor, Muon) need; a plain parameter is treated as one config. ``muon_matrix`` marks a
    hidden weight matrix for the ``muon`` base; its other parameters take the ``adam`` step.
    ``momentum`` and ``betas`` default to the base's reference defaults (SGD 0.9, Muon 0.95;
    Lion (0.9, 0.99), the Adam family (0.9, 0.999)).
    """
    g = grad
    if variant.decay == "l2":
        if isinstance(weight_decay, torch.Tensor):
            g = g.add(p * weight_decay)
        elif weight_decay != 0:
            # Skipped at 0 as torch.optim does: 0*theta is NaN once theta has diverged to inf.
            g = g.add(p, alpha=weight_decay)
    c = None if variant.decay == "l2" else _decay_factor(variant, lr, weight_decay, eta)

    base = variant.base
    if base not in BUILTIN_BASES:  # a plugin's rule runs through workers.packed, never as the adam branch below
        raise ValueError(f"apply_update runs the built-in bases only, not the plugin base {base!r}")
    if base == "muon" and not muon_matrix:
        base = "adam"
    if base in PER_TENSOR_BASES:
        if not batched:
            p, g = p.unsqueeze(0), g.unsqueeze(0)
        if base == "muon":
            bases.muon_step(p, g, state, lr=lr, c=c, momentum=0.95 if momentum is None else momentum)
        else:
            bases.adafactor_step(p, g, state, lr=lr, c=c)
        return
    if base == "lion":
        bases.lion_step(p, g, state, lr=lr, c=c, betas=betas or (0.9, 0.99))
        return
    if base == "radam":
        bases.radam_step(p, g, state, lr=lr, c=c, betas=betas or (0.9, 0.999), eps=eps)
        return
    if base == "nadam":
        bases.nadam_step(p, g, state, lr=lr, c=c, betas=betas or (0.9, 0.999), eps=eps)
        return

    step_size = lr
    if base == "sgd":
        momentum = SGD_MOMENTUM if momentum is None else momentum
        if momentum == 0:
            # As torch.optim.SGD: no buffer, since 0*buf would turn one inf gradient into NaN for good.
            direction = g
        else:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.detach().clone()
            else:
                buf.mul_(momentum).add_(g)
            direction = buf
    else:
        beta1, beta2 = betas or ADAM_BETAS
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1 = 1 - beta1**step
        bias2_sqrt = math.sqrt(1 - beta2**step)
        denom = exp_avg_sq.sqrt().div_(bias2_sqrt).add_(eps)
        if not isinstance(lr, torch.Tensor):
            # Scalar path written as torch.optim.Adam does it, so the two agree to the last bit.
            if c is not None:
                p.mul_(1 - c)
            p.addcdiv_(exp_avg, denom, value=-lr / bias1)
            return
        # Packed path (workers.packed, memory-bound): the quotient reuses denom's buffer and
        # 1/bias1 goes into the per-config step sizes, two passes over the parameters fewer.
        direction = torch.div(exp_avg, denom, out=denom)
        step_size = lr / bias1

    if c is not None:
        p.mul_(1 - c)
    _axpy_(p, direction, step_size)


def _decay_factor(variant: Variant, lr: Number, weight_decay: Number, eta: Number) -> Number:
    """c in theta <- theta*(1 - c) for a decoupled convention (``conventions.CONVENTION_RULE``).

    With ``lr`` = a*eta_t the scheduled step size: ``lr`` -> a*eta_t*lam, ``schedule`` ->
    eta_t*lam, ``constant`` -> lam, ``corrected`` -> a*eta_t^2*lam = lr*eta_t*lam.
    """
    if variant.decay == "schedule":
        return eta * weight_decay
    if variant.decay == "constant":
        return weight_decay
    if variant.decay == "corrected":
        return lr * eta * weight_decay
    return lr * weight_decay


class DecayChainOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` running any base x convention (see the module docstring).

    A group with ``muon=True`` holds the hidden weight matrices the ``muon`` base orthogonalizes;
    its other groups take the ``adam`` step (:func:`build_optimizer` makes the split).
    ``momentum``/``betas`` left as None take the base's reference defaults (:func:`apply_update`).
    """

    def __init__(
        self,
        params: Iterable[Any],
        variant: Variant,
        lr: float,
        weight_decay: float,
        momentum: float | None = None,
        betas: tuple[float, float] | None = None,
        eps: float = 1e-8,
    ) -> None:
        check_hyperparameters(lr, weight_decay)
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if betas is not None and not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid beta parameters: {betas}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, betas=betas, eps=eps)
        self.variant = variant
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, remembering its lr as the base of its schedule multiplier eta_t.

        ``Optimizer.__init__`` adds the initial groups through here too, so groups added later
        (e.g. when unfreezing layers) get ``lr_at_build`` as well.
        """
        check_hyperparameters(
            param_group.get("lr", self.defaults["lr"]),
            param_group.get("weight_decay", self.defaults["weight_decay"]),
        )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["lr_at_build"] = group["lr"]

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - the rule is in the module docstring
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            eta = lr / group["lr_at_build"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                apply_update(
                    self.variant, p, p.grad, self.state[p],
                    lr=lr, weight_decay=group["weight_decay"], eta=eta,
                    momentum=group["momentum"], betas=group["betas"], eps=group["eps"],
                    muon_matrix=bool(group.get("muon", False)),
                )
        return loss


class PluginRuleOptimizer(torch.optim.Optimizer):
    """A plugin's packed direction (``RuleInfo.kind == "packed"``) as a ``torch.optim.Optimizer``
    over one model: each parameter is a (1, n) row, its decay convention applied as the packed
    trainer applies it (``workers.packed.PluginStackOptimizer``). The single-config reference
    the packed trainer's plugin path is tested against; exact for elementwise directions.
    """

    def __init__(self, params: Iterable[Any], variant: Variant, loaded: Any, lr: float, weight_decay: float,
                 hyperparameters: dict[str, float] | None = None) -> None:
        self.variant, self.loaded = variant, loaded
        self.hyper = loaded.hyperparameters(hyperparameters)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["lr_at_build"] = group["lr"]

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - the rule is in the class docstring
        from workers.plugins import PluginFailure, describe

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            eta = lr / group["lr_at_build"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                row, g = p.view(1, -1), p.grad.reshape(1, -1)
                if self.variant.decay == "l2" and wd != 0:
                    g = g.add(row, alpha=wd)
                ctx = StepContext(p=row, lr=torch.full((1, 1), lr, dtype=p.dtype, device=p.device),
                                  wd=torch.full((1, 1), wd, dtype=p.dtype, device=p.device), eta=eta,
                                  step=state["step"], n_decayed=row.shape[1] if wd != 0 else 0)
                try:
                    u = self.loaded.direction(g, state.setdefault("rule", {}), ctx, **self.hyper)
                except Exception as e:
                    raise PluginFailure(f"{describe(self.loaded.info)}: direction raised {type(e).__name__}: {e}") from e
                if not isinstance(u, torch.Tensor) or u.shape != row.shape:
                    raise PluginFailure(f"{describe(self.loaded.info)}: direction returned a wrong shape")
                if self.variant.decay != "l2" and wd != 0:
                    row.mul_(1 - _decay_factor(self.variant, lr, wd, eta))
                row.add_(u.to(p.dtype), alpha=-lr)
        return loss


_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def decayed_parameter_names(model: nn.Module, decay_on: str = "all") -> set[str]:
    """Names of the parameters that receive weight decay under ``decay_on``.

    - ``all``: every parameter, as in the paper's code.
    - ``weights``: weights of layers that are not normalization layers (no biases, no
      normalization scales and shifts).
    - ``invariant``: only the weights whose output feeds a normalization layer directly
      (the next module in registration order is a normalization layer); those are
      scale-invariant, so decay acts on them as an effective learning-rate change.
    """
    if decay_on not in DECAY_ON:
        raise ValueError(f"Invalid decay_on: {decay_on!r} (expected one of {', '.join(DECAY_ON)})")
    names = {n for n, _ in model.named_parameters()}
    if decay_on == "all":
        return names
    modules = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    chosen: set[str] = set()
    for i, (mname, m) in enumerate(modules):
        if isinstance(m, _NORM_TYPES) or getattr(m, "weight", None) is None:
            continue
        if not isinstance(m.weight, nn.Parameter):
            continue
        if decay_on == "invariant":
            nxt = modules[i + 1][1] if i + 1 < len(modules) else None
            if not isinstance(nxt, _NORM_TYPES):
                continue
        chosen.add(f"{mname}.weight" if mname else "weight")
    return chosen & names


def muon_parameter_names(model: nn.Module) -> set[str]:
    """The hidden weight matrices the ``muon`` base orthogonalizes.

    Every parameter of two or more axes (linear weights, conv kernels) except the last one in
    registration order, which is the output layer in every task here; biases, normalization
    parameters and the output layer take the ``adam`` step, as torch's documentation and the Muon
    authors recommend.
    """
    matrices = [n for n, p in model.named_parameters() if p.dim() >= 2]
    return set(matrices[:-1])


def param_groups(model: nn.Module, decay_on: str = "all", *, muon: bool = False) -> list[dict[str, Any]]:
    """Parameter groups: decayed ones, and the rest with ``weight_decay=0``.

    With ``muon`` each of the two is split again into the hidden weight matrices (``muon=True``,
    :func:`muon_parameter_names`) and the rest.
    """
    decayed = decayed_parameter_names(model, decay_on)
    matrices = muon_parameter_names(model) if muon else set()
    named = list(model.named_parameters())
    groups: list[dict[str, Any]] = []
    for on in (True, False):
        for is_matrix in (False, True):
            params = [p for n, p in named if (n in decayed) == on and (n in matrices) == is_matrix]
            if not params and not (on and not is_matrix):  # the first group is always there
                continue
            group: dict[str, Any] = {"params": params}
            if not on:
                group["weight_decay"] = 0.0
            if is_matrix:
                group["muon"] = True
            groups.append(group)
    return groups


def build_optimizer(
    name: str,
    params: Iterable[Any] | nn.Module,
    lr: float,
    weight_decay: float,
    *,
    decay_on: str = "all",
    momentum: float | None = None,
    betas: tuple[float, float] | None = None,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """The optimizer ``name`` (``BASE``, ``BASE:CONVENTION`` or an alias) over ``params``.

    ``weight_decay`` is lam in the rule ``service.domain.conventions.rule_text`` gives for
    ``name``. ``params`` may be an ``nn.Module``, in which case ``decay_on`` chooses which of its
    parameters are decayed (and, for ``muon``, :func:`muon_parameter_names` which are
    orthogonalized); with an iterable of tensors every given tensor is treated alike (for ``muon``:
    every tensor of two or more axes is orthogonalized), and groups given as dicts may set
    ``muon=True`` themselves.
    """
    variant = get_variant(name)
    check_hyperparameters(lr, weight_decay)
    if variant.base not in BUILTIN_BASES:
        loaded = rule_implementation(variant.base)
        if loaded is None:
            raise ValueError(f"optimizer {name!r}: no implementation of base {variant.base!r}")
        if isinstance(params, nn.Module):
            params = param_groups(params, decay_on)
        elif decay_on != "all":
            raise ValueError("decay_on other than 'all' needs the nn.Module itself as params")
        if loaded.optimizer_class is not None:
            # A torch.optim fallback rule: the class itself over the decayed and undecayed groups.
            return loaded.optimizer_class(params, lr=lr, weight_decay=weight_decay, **loaded.hyperparameters(None))
        return PluginRuleOptimizer(params, variant, loaded, lr, weight_decay)
    if isinstance(params, nn.Module):
        params = param_groups(params, decay_on, muon=variant.base == "muon")
    elif decay_on != "all":
        raise ValueError("decay_on other than 'all' needs the nn.Module itself as params")
    elif variant.base == "muon":
        given = list(params)
        if given and not isinstance(given[0], dict):
            groups: list[dict[str, Any]] = [
                {"params": [p for p in given if p.dim() < 2]},
                {"params": [p for p in given if p.dim() >= 2], "muon": True},
            ]
            params = [g for g in groups if g["params"]]
        else:
            params = given
    return DecayChainOptimizer(
        params, variant, lr, weight_decay, momentum=momentum, betas=betas, eps=eps
    )
