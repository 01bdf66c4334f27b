"""Grid geometry: log-spaced axes, the values at their indices, and their extension.

A grid axis is log-spaced: ``num`` points from ``min`` to ``max``,
``v_k = min * (max/min)**(k/(num-1))`` for k = 0..num-1 (:func:`axis_values`). Edge repair
continues an axis with the same spacing (:func:`axis_value` outside 0..num-1,
:func:`extend_axis`), so trials already run keep their indices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Direction = Literal["lower", "higher"]


@dataclass(frozen=True)
class Axis:
    """A log-spaced grid axis: ``num`` points from ``min`` to ``max``."""

    min: float
    max: float
    num: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_step(axis: Axis) -> float:
    if axis.num < 2 or not axis.max > axis.min:
        raise ValueError(f"axis {axis} has a single point: its spacing is undefined")
    return (math.log10(axis.max) - math.log10(axis.min)) / (axis.num - 1)


def axis_value(axis: Axis, index: int) -> float:
    """The value at integer ``index`` of a log-spaced axis, also outside 0..num-1.

    Inside, exactly ``np.geomspace(min, max, num)[index]`` (what ``service.schemas.axis_values``
    gives); outside, the same spacing continued: ``10**(log10(min) + index * step)`` with
    ``step = (log10(max) - log10(min)) / (num - 1)``, the formula geomspace itself uses between
    its exact ends.
    """
    index = int(index)
    if 0 <= index < axis.num:
        if axis.num == 1:
            return float(axis.min)
        return float(np.geomspace(axis.min, axis.max, axis.num)[index])
    return float(10.0 ** (index * _log_step(axis) + math.log10(axis.min)))


def extend_axis(axis: Axis, direction: Direction, steps: int, *, origin: int = 0
                ) -> tuple[Axis, range]:
    """``axis`` with ``steps`` more points on one side, same log spacing; and the new indices.

    ``origin`` is the trial index of ``axis``'s first point (0 for a fresh grid; after extensions
    to lower values it is negative). The returned range holds the indices of the new points in
    that same numbering: ``range(origin - steps, origin)`` below, ``range(origin + num,
    origin + num + steps)`` above, so existing trials keep their indices. After a "lower"
    extension the new axis's first point has index ``origin - steps``.

    The end that does not move is kept exactly; the moved end is :func:`axis_value` of the old
    axis, so ``np.geomspace`` of the new axis reproduces the old points to a few ulp.
    """
    if direction not in ("lower", "higher"):
        raise ValueError(f'direction must be "lower" or "higher", not {direction!r}')
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, not {steps!r}")
    _log_step(axis)  # rejects single-point axes, which have no spacing to continue
    n = axis.num
    if direction == "lower":
        new = Axis(axis_value(axis, -steps), axis.max, n + steps)
        return new, range(origin - steps, origin)
    new = Axis(axis.min, axis_value(axis, n - 1 + steps), n + steps)
    return new, range(origin + n, origin + n + steps)


def extension_steps(num: int) -> int:
    """Rows or columns one repair adds: a quarter of the axis, at least 2 (0.86 decades at 8/3)."""
    return max(2, math.ceil(num / 4))


def axis_values(axis: Any) -> list[float]:
    """The points of a log-spaced axis (a spec's ``GridAxis``, an :class:`Axis` or a dict).

    ``np.geomspace`` returns ``min`` and ``max`` exactly at the ends.
    """
    if isinstance(axis, dict):
        lo, hi, num = axis["min"], axis["max"], axis["num"]
    else:
        lo, hi, num = axis.min, axis.max, axis.num
    if lo is None or hi is None or num is None:
        raise ValueError("an auto axis has no values until its pilot run has placed it")
    if num == 1:
        return [float(lo)]
    return [float(v) for v in np.geomspace(lo, hi, int(num))]


def normalized_wd_scale(batch_size: int, n_train: int, epochs: float) -> float:
    """1/sqrt(b/(B*T)): the factor from a raw decay lambda to the normalized lambda_norm.

    Under ``wd_normalized`` a spec's wd axis holds lambda_norm = lambda / sqrt(b/(B*T)) (batch
    size b, B training examples, T epochs); ranges written for raw decays are multiplied by this.
    """
    return 1.0 / math.sqrt(batch_size / (n_train * epochs))
