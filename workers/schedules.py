"""Learning-rate schedules as multipliers eta_t, and the paper's normalized weight decay.

All schedules are evaluated per optimizer step (the paper updates T_cur every batch):

- ``constant``: eta_t = 1.
- ``step``: eta_t = gamma^k, k the number of milestones passed; milestones are fractions of
  training, rounded to whole epochs (the paper drops at epochs 30, 60, 80 of 100).
- ``cosine``: eta_t = 0.5 + 0.5*cos(pi*T_cur/T), T the whole budget (Section 3).
- ``cosine_restarts`` (SGDR): the same within a period T_i, restarting when T_cur = T_i, with
  T_{i+1} = t_mult*T_i and T_0 = ``t0`` epochs (Appendix B.2). Restarts fall at epochs
  T_0, T_0(1 + t_mult), T_0(1 + t_mult + t_mult^2), ...

Normalized weight decay (Appendix B.1): lam = lam_norm*sqrt(b/(B*T)), b the batch size, B the
number of training points, T the number of epochs; under warm restarts T is the length of the
*current* period, so lam changes at each restart.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from service.domain.rules import SCHEDULE_NAMES


@dataclass(frozen=True)
class Schedule:
    """eta_t for a run of ``epochs`` epochs of ``steps_per_epoch`` optimizer steps each."""

    name: str
    epochs: int
    steps_per_epoch: int
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    gamma: float = 0.1
    t0: float = 10.0
    t_mult: float = 2.0
    _milestone_steps: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.name not in SCHEDULE_NAMES:
            raise ValueError(
                f"Unknown schedule: {self.name!r} (expected one of {', '.join(SCHEDULE_NAMES)})"
            )
        if self.epochs < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"Invalid budget: epochs={self.epochs}, steps_per_epoch={self.steps_per_epoch}")
        if self.name == "cosine_restarts" and not (self.t0 > 0 and self.t_mult >= 1):
            raise ValueError(f"Invalid warm restarts: t0={self.t0}, t_mult={self.t_mult}")
        if self.name == "step" and not 0 < self.gamma <= 1:
            raise ValueError(f"Invalid step gamma: {self.gamma}")
        steps = tuple(
            sorted(round(m * self.epochs) * self.steps_per_epoch for m in self.milestones)
        )
        object.__setattr__(self, "_milestone_steps", steps)

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None, epochs: int, steps_per_epoch: int) -> Schedule:
        """From a study spec's ``schedule`` object (``{"name": "cosine"}`` and friends)."""
        spec = dict(spec or {"name": "constant"})
        name = spec.pop("name", "constant")
        kwargs: dict[str, Any] = {}
        if "milestones" in spec:
            kwargs["milestones"] = tuple(float(m) for m in spec.pop("milestones"))
        for key in ("gamma", "t0", "t_mult"):
            if key in spec and spec[key] is not None:
                kwargs[key] = float(spec.pop(key))
            else:
                spec.pop(key, None)
        return cls(name, int(epochs), int(steps_per_epoch), **kwargs)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def period(self, step: int) -> tuple[float, float]:
        """(start, length) in epochs of the warm-restart period holding ``step``.

        Without restarts the single period is the whole budget.
        """
        if self.name != "cosine_restarts":
            return 0.0, float(self.epochs)
        t = step / self.steps_per_epoch
        start, length = 0.0, float(self.t0)
        # Small tolerance: a restart that falls on a step boundary belongs to the new period.
        while t >= start + length - 1e-9:
            start += length
            length *= self.t_mult
        return start, length

    def multiplier(self, step: int) -> float:
        """eta_t used by optimizer step ``step`` (0-based)."""
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            return self.gamma ** bisect.bisect_right(self._milestone_steps, step)
        if self.name == "cosine":
            return 0.5 + 0.5 * math.cos(math.pi * step / self.total_steps)
        start, length = self.period(step)
        t_cur = step / self.steps_per_epoch - start
        return 0.5 + 0.5 * math.cos(math.pi * t_cur / length)

    def period_epochs(self, step: int) -> float:
        """T in the normalized-decay formula at ``step``: the budget, or the current period."""
        return self.period(step)[1]

    def lambda_lr(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """A ``LambdaLR`` to be stepped once per optimizer step."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.multiplier)


def normalized_weight_decay(lam_norm: float, batch_size: int, n_train: int, period_epochs: float) -> float:
    """lam = lam_norm*sqrt(b/(B*T)) (Appendix B.1)."""
    if lam_norm < 0 or batch_size < 1 or n_train < 1 or period_epochs <= 0:
        raise ValueError(
            f"Invalid normalized decay inputs: lam_norm={lam_norm}, b={batch_size}, "
            f"B={n_train}, T={period_epochs}"
        )
    return lam_norm * math.sqrt(batch_size / (n_train * period_epochs))
