"""Seeds until decided: which seeds a study starts with and when an optimizer gets more.

A spec's ``seeds`` is either a list of seed numbers (every optimizer runs every one of them) or
``{"auto": true, "min": m, "max": M}``: every optimizer starts with seeds 0..m-1, and whenever an
optimizer's current seeds are all done, :func:`next_step` reads the verdict of
``service.analysis.decide`` on its grid and either stops it or gives it more seeds (the next
seed numbers in order: seed k is always seed number k, so a study's seeds are 0..n-1 per
optimizer and a new seed is a new trial, never a rerun).

How many at a time (:func:`next_step`): while the verdict is ``inconclusive`` and decide projects
that ``seeds_to_decide`` seeds would decide it, the optimizer goes *half-way* from its current
count towards that projection (at least one seed, at most ``max``). The projection rests on the
current seeds' noise estimate, itself uncertain with 2-3 seeds: jumping straight to it can
overshoot by several whole grids, one seed at a time re-decides (and synchronizes the optimizer)
after every grid. Half-way reaches a projection of P seeds from n in about log2(P - n) rounds
and re-checks before spending the second half.

Stop reasons (``STOP_REASONS``): ``decided`` (``separable``, ``coupled`` or ``no_wd_effect``);
``reached_max``; ``seeds_will_not_decide``: ``seeds_to_decide`` is null (the interval's width is
lack of fit, not seed noise: a finer grid near the best would decide, more seeds would not) or
projects more than ``max`` seeds, or the verdict is ``not_enough_data``, which more seeds do not
cure once at least 2 seeds are done (too few usable cells near the optimum, or cells whose trials
failed).
"""

from __future__ import annotations

import math
from typing import Any

STOP_REASONS = ("decided", "reached_max", "seeds_will_not_decide")


def is_auto(seeds: Any) -> bool:
    """True for a ``{"auto": true, ...}`` seeds entry (stored spec or model)."""
    if isinstance(seeds, dict):
        return bool(seeds.get("auto"))
    return bool(getattr(seeds, "auto", False))


def _get(seeds: Any, key: str) -> Any:
    return seeds.get(key) if isinstance(seeds, dict) else getattr(seeds, key)


def initial_seeds(seeds: Any) -> list[int]:
    """The seeds every optimizer starts with: the list itself, or 0..min-1."""
    if is_auto(seeds):
        return list(range(int(_get(seeds, "min"))))
    return [int(s) for s in seeds]


def max_seeds(seeds: Any) -> int:
    """The most seeds an optimizer can get: the list's length, or ``max`` (the worst case)."""
    return int(_get(seeds, "max")) if is_auto(seeds) else len(list(seeds))


def seeds_of(seeds: Any, optimizer: str) -> list[int]:
    """The seeds ``optimizer`` has been given so far (a list spec: all of them)."""
    if not is_auto(seeds):
        return [int(s) for s in seeds]
    record = (_get(seeds, "given") or {}).get(optimizer) or {}
    return list(range(int(record.get("seeds") or _get(seeds, "min"))))


def next_step(verdict: str, seeds_to_decide: int | None, have: int, maximum: int
              ) -> tuple[int, str | None]:
    """``(seeds the optimizer should have, stop reason or None)`` after ``have`` seeds are done.

    A stop returns ``have`` and one of :data:`STOP_REASONS`; otherwise the new seed count
    (``have`` < it <= ``maximum``) and None. See the module docstring for the rule.
    """
    if verdict == "not_enough_data":
        return have, "seeds_will_not_decide"
    if verdict != "inconclusive":
        return have, "decided"
    if have >= maximum:
        return have, "reached_max"
    if seeds_to_decide is None or seeds_to_decide > maximum:
        return have, "seeds_will_not_decide"
    step = max(1, math.ceil((seeds_to_decide - have) / 2))
    return min(maximum, have + step), None
