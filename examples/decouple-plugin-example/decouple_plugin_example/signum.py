"""Signum's base direction, written against the packed trainer's interface (imported by workers only).

``g`` is (K, P): one row per packed configuration. ``state`` is kept between steps; tensors in
it with K rows follow their configuration. ``ctx`` (``workers.plugins.StepContext``) has the
parameters, the per-config lr and wd, the schedule multiplier and the step; Signum needs none of
them. The trainer applies the decay convention and the step theta <- theta - lr*u itself.
"""

import torch


def direction(g: torch.Tensor, state: dict, ctx, *, beta: float) -> torch.Tensor:
    m = state.get("m")
    if m is None:
        m = state["m"] = torch.zeros_like(g)
    m.mul_(beta).add_(g, alpha=1.0 - beta)
    return torch.sign(m)
