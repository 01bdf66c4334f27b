"""The base directions beyond SGD and Adam: Lion, RAdam, NAdam, Adafactor and Muon.

Each is written once and runs both ways ``workers.optim.apply_update`` runs: on one parameter
with Python-float hyperparameters (``build_optimizer``), and on K packed configurations at once
with per-config ``lr`` and decay as tensors (``workers.packed``). The decay convention is not
handled here: ``workers.optim`` adds L2 to the gradient before calling in, and passes the
decoupled factor ``c`` (theta <- theta*(1 - c)) for the step to apply where its reference
applies it.

- **Elementwise** (:func:`lion_step`, :func:`radam_step`, :func:`nadam_step`): any shape;
  a tensor ``lr``/``c`` broadcasts against the parameter ((K, 1) against (K, n) when packed).
  The formulas and the order of operations are those of lion-pytorch 0.2.5 (``update_fn``) and
  torch 2.13's ``_single_tensor_radam``/``_single_tensor_nadam``; the scalar path keeps their
  exact expressions so the two agree to float rounding.
- **Per tensor** (:func:`adafactor_step`, :func:`muon_step`): they read whole tensors (the
  parameter's RMS, row and column means, a matrix to orthogonalize), so they take the tensor with
  a *leading config axis*, (K, *shape); one parameter is K = 1. Per-config scalars are reduced
  over every axis but the first. Newton-Schulz runs batched over configs with ``bmm``/``baddbmm``
  in bfloat16, the same kernels and dtype ``torch.optim.Muon`` uses per matrix (bit-identical
  results per config, checked in the tests).
"""

from __future__ import annotations

import math
from typing import Any, TypeAlias

import numpy as np
import torch

#: A Python float, or a tensor broadcasting against the parameter (one value per packed config).
Number: TypeAlias = "float | torch.Tensor"

#: Muon's Newton-Schulz coefficients and step count (torch.optim.Muon's defaults, from Keller Jordan's Muon).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
MUON_EPS = 1e-7
#: The dtype Newton-Schulz runs in: bfloat16, as torch.optim.Muon (the tests switch it to float32 to
#: compare the packed trainer with the single-config one beyond bfloat16's 8-bit rounding).
NS_DTYPE = torch.bfloat16


def _axpy_(p: torch.Tensor, u: torch.Tensor, scale: Number) -> None:
    """p <- p - scale*u, with scale a float or a broadcastable tensor."""
    if isinstance(scale, torch.Tensor):
        p.addcmul_(u, scale, value=-1.0)
    else:
        p.add_(u, alpha=-scale)


def _decay_(p: torch.Tensor, c: Number | None) -> None:
    """theta <- theta*(1 - c); None means no decoupled decay (L2, or none)."""
    if c is not None:
        p.mul_(1 - c)


def _per_config(x: Number, ndim: int) -> Number:
    """A per-config tensor shaped to broadcast against (K, *shape) of ``ndim`` axes."""
    if isinstance(x, torch.Tensor):
        return x.reshape(-1, *([1] * (ndim - 1)))
    return x


# ------------------------------------------------------------------------------- elementwise


def lion_step(p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], *, lr: Number, c: Number | None,
              betas: tuple[float, float]) -> None:
    """Lion (Chen et al. 2023) as lion-pytorch's ``update_fn``: decay, sign step, then momentum."""
    beta1, beta2 = betas
    exp_avg = state.get("exp_avg")
    if exp_avg is None:
        exp_avg = state["exp_avg"] = torch.zeros_like(p)
    _decay_(p, c)
    update = exp_avg.mul(beta1).add_(g, alpha=1.0 - beta1).sign_()
    _axpy_(p, update, lr)
    exp_avg.mul_(beta2).add_(g, alpha=1.0 - beta2)


def _adam_moments(p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], betas: tuple[float, float]) -> int:
    if "exp_avg" not in state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
    state["step"] += 1
    beta1, beta2 = betas
    state["exp_avg"].lerp_(g, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
    return int(state["step"])


def radam_step(p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], *, lr: Number, c: Number | None,
               betas: tuple[float, float], eps: float) -> None:
    """RAdam (Liu et al. 2020) as ``torch.optim.RAdam``: rectified Adam step once rho_t > 5, else momentum."""
    _decay_(p, c)
    step = _adam_moments(p, g, state, betas)
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    bias_corrected_exp_avg = exp_avg / bias_correction1
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        adaptive = (bias_correction2**0.5) / exp_avg_sq.sqrt().add_(eps)
        if isinstance(lr, torch.Tensor):
            _axpy_(p, bias_corrected_exp_avg.mul_(adaptive).mul_(rect), lr)
        else:
            p.add_(bias_corrected_exp_avg * lr * adaptive * rect, alpha=-1.0)
    elif isinstance(lr, torch.Tensor):
        _axpy_(p, bias_corrected_exp_avg, lr)
    else:
        p.add_(bias_corrected_exp_avg * lr, alpha=-1.0)


def nadam_step(p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], *, lr: Number, c: Number | None,
               betas: tuple[float, float], eps: float, momentum_decay: float = 4e-3) -> None:
    """NAdam (Dozat 2016) as ``torch.optim.NAdam``, its momentum schedule mu_t included.

    The running product of mu_t is kept in float32, as torch keeps it (a float32 scalar tensor).
    """
    _decay_(p, c)
    mu_product = state.get("mu_product", 1.0)
    step = _adam_moments(p, g, state, betas)
    beta1, beta2 = betas
    bias_correction2 = 1 - beta2**step
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    mu_product = float(np.float32(mu_product) * np.float32(mu))
    state["mu_product"] = mu_product
    mu_product_next = mu_product * mu_next
    denom = state["exp_avg_sq"].div(bias_correction2).sqrt().add_(eps)
    w_grad, w_avg = (1.0 - mu) / (1.0 - mu_product), mu_next / (1.0 - mu_product_next)
    if isinstance(lr, torch.Tensor):
        _axpy_(p, g / denom, lr * w_grad)
        _axpy_(p, state["exp_avg"] / denom, lr * w_avg)
    else:
        p.addcdiv_(g, denom, value=-lr * w_grad)
        p.addcdiv_(state["exp_avg"], denom, value=-lr * w_avg)


# ------------------------------------------------------------------------------- per tensor


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Per config (leading axis) root mean square, float64."""
    n = x[0].numel()
    return x.flatten(1).norm(dim=1).double() / math.sqrt(n)


def adafactor_step(p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], *, lr: Number, c: Number | None,
                   beta2_decay: float = -0.8, eps1: float | None = None, eps2: float = 1e-3,
                   d: float = 1.0) -> None:
    """Adafactor (Shazeer & Stern 2018) as ``torch.optim.Adafactor`` on a (K, *shape) tensor.

    Per config k: rho_t = min(lr_k, 1/sqrt(t)), alpha = max(eps2, RMS(theta_k)) * rho_t with
    theta *before* the decay; tensors of two or more axes keep factored second moments over their
    last two axes (row and column means of g^2), vectors a full one; the update is clipped to
    RMS <= d. lr is the scheduled step size, so the schedule enters through rho_t.
    """
    K, ndim = p.shape[0], p.dim()
    if eps1 is None:
        eps1 = torch.finfo(p.dtype).eps
    factored = ndim > 2
    if "step" not in state:
        state["step"] = 0
        if factored:
            state["row_var"] = g.new_zeros(*g.shape[:-1], 1)
            state["col_var"] = g.new_zeros(*g.shape[:-2], 1, g.shape[-1])
        else:
            state["variance"] = torch.zeros_like(g)
    state["step"] += 1
    step = float(state["step"])
    one_minus_beta2_t = step**beta2_decay
    if isinstance(lr, torch.Tensor):
        rho = lr.reshape(K).double().clamp(max=1 / (step**0.5))
    else:
        rho = torch.full((K,), min(lr, 1 / (step**0.5)), dtype=torch.float64, device=p.device)
    alpha = _rms(p).clamp(min=eps2) * rho
    _decay_(p, _per_config(c, ndim) if c is not None else None)
    if factored:
        row_mean = torch.norm(g, dim=-1, keepdim=True).square_().div_(g.size(-1))
        state["row_var"].lerp_(row_mean, one_minus_beta2_t)
        col_mean = torch.norm(g, dim=-2, keepdim=True).square_().div_(g.size(-2))
        state["col_var"].lerp_(col_mean, one_minus_beta2_t)
        var_estimate = state["row_var"] @ state["col_var"]
        var_estimate.div_(state["row_var"].mean(dim=-2, keepdim=True).clamp_(min=eps1))
    else:
        state["variance"].lerp_(g * g, one_minus_beta2_t)
        var_estimate = state["variance"].clone()
    update = var_estimate.clamp_(min=eps1 * eps1).rsqrt_()
    update.mul_(g)
    denom = (_rms(update) / d).clamp(min=1.0)
    scale = (alpha / denom).to(p.dtype)
    p.addcmul_(update, scale.reshape(-1, *([1] * (ndim - 1))), value=-1.0)


def newton_schulz(G: torch.Tensor, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  steps: int = NS_STEPS, eps: float = MUON_EPS) -> torch.Tensor:
    """Orthogonalize each matrix of a (K, rows, cols) batch: torch.optim.Muon's quintic iteration.

    In :data:`NS_DTYPE` (bfloat16). Its 8-bit mantissa makes the result jump by ~2^-8 when a
    rounding flips, so two implementations whose gradients differ by float32 rounding (the packed
    trainer's hand-written backward and autograd) drift apart by ~1e-4 in validation loss over a
    few epochs; in float32 they agree to ~1e-7 (tests/workers/test_conventions.py).
    """
    a, b, c = coefficients
    X = G.to(NS_DTYPE)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / X.flatten(1).norm(dim=1).clamp(min=eps).view(-1, 1, 1)
    for _ in range(steps):
        gram = X @ X.mT
        gram_update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        X = torch.baddbmm(X, gram_update, X, beta=a)
    return X.mT if tall else X


def muon_step(p: torch.Tensor, g: torch.Tensor, state: dict[str, Any], *, lr: Number, c: Number | None,
              momentum: float = 0.95, nesterov: bool = True) -> None:
    """Muon (Jordan et al. 2024) as ``torch.optim.Muon`` on a (K, rows, ...) tensor.

    A conv kernel (K, out, in, kh, kw) is orthogonalized as the (out, in*kh*kw) matrix it acts as;
    the step is lr*sqrt(max(1, rows/cols)) (torch's ``adjust_lr_fn="original"``); the decay uses
    the unadjusted lr (as torch does, through ``c``).
    """
    K = p.shape[0]
    buf = state.get("momentum_buffer")
    if buf is None:
        buf = state["momentum_buffer"] = torch.zeros_like(g)
    buf.lerp_(g, 1 - momentum)
    update = g.lerp(buf, momentum) if nesterov else buf
    matrix = update.reshape(K, p.shape[1], -1)
    rows, cols = matrix.shape[1], matrix.shape[2]
    ortho = newton_schulz(matrix).to(p.dtype).reshape(p.shape)
    ratio = math.sqrt(max(1.0, rows / cols))
    _decay_(p, _per_config(c, p.dim()) if c is not None else None)
    if isinstance(lr, torch.Tensor):
        p.addcmul_(ortho, (lr * ratio).reshape(-1, *([1] * (p.dim() - 1))), value=-1.0)
    else:
        p.add_(ortho, alpha=-(lr * ratio))


__all__ = ["lion_step", "radam_step", "nadam_step", "adafactor_step", "muon_step", "newton_schulz",
           "NS_COEFFICIENTS", "NS_STEPS"]
