"""Grids that find the optimum by themselves: the planning logic of ``"auto"`` axes and edge repair.

Plain functions on numbers and arrays (numpy only): no database, no Ray, no torch. The worker
calls them between its training phases; everything here is decided from metrics already measured
(lower is better: ``val_error`` or ``val_loss``; NaN/inf = diverged = the worst outcome). Every
decay convention puts the optimum somewhere else, and a grid whose optimum sits on its edge gives
meaningless separability numbers, hence one coarse pilot and, when needed, edge repair. How the
constants below were chosen, with the measurements, is in ``docs/design-notes.md``.

1. Pilot grid (:func:`pilot_axes`): ``PILOT_POINTS`` log-spaced points per auto axis over a range
   that holds the optimum of any reasonable task for the optimizer's family (``PILOT_LR``) and
   decay convention (``PILOT_WD``). A non-auto axis keeps the user's values, or ``PILOT_POINTS``
   of them spread evenly. Under ``wd_normalized`` the wd range is multiplied by ``wd_scale``
   (:func:`service.domain.grid.normalized_wd_scale`).
2. Pilot length (:func:`pilot_epochs`): the final grid's epochs whenever the pilot's share of the
   study's training time stays within ``MAX_PILOT_SHARE``, since the optimum moves with the run
   length; otherwise shorter, never below ``MIN_PILOT_FRACTION`` of the epochs.
3. Smoothing (:func:`smooth`): diverged cells become the worst value (capped at the chance
   level), then no cell may be better than its best 3 x 3 neighbour by more than the tolerance,
   ``S_ij = max(F_ij, min over neighbours F_kl - tol)``: a lucky cell in a bad region rises to its
   neighbours' level, a real optimum keeps its place. The tolerance is ``REL_TOLERANCE`` of
   (worst - best) of the pilot unless the caller passes one.
4. Window placement (:func:`place_window`): the smoothed argmin (exact ties: nearest the pilot's
   centre) and the 8-connected near-optimal region around it (strictly within the tolerance).
   lr is placed first; the wd extent is read only on the pilot rows the placed lr window covers.
   A single interior best cell is refined by the vertex of the least-squares quadratic through the
   3 x 3 block of measured values around it (or the parabola along the axis). Otherwise the
   region's run, widened by one pilot step where the pilot closes it, is covered: centred when
   closed on both sides, extending beyond the pilot on an open side; open at both ends, lr is
   centred and wd starts one step below the pilot's top. The window spans ``SPAN_DECADES``
   decades (lr, wd), bounds rounded to 3 significant digits and kept above ``FLOOR``.
5. Edge repair (:func:`edge_directions`, with :func:`service.domain.grid.extend_axis`): on a
   finished grid an edge line is flagged when it holds the grid's best cell and every cell off it
   is worse than the line's best by more than ``tolerance`` (about two standard errors of a cell
   mean); near-ties with an interior cell count as inside, so a plateau is never chased.
6. Shared lr windows (:func:`share_lr_window`): optimizers of one family can share the covering
   window of their placed windows, so their heat maps line up cell by cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from service.domain import conventions
from service.domain.grid import Axis, Direction, axis_value
from service.domain.numeric import parabola_vertex
from service.domain.rules import FAMILY

#: Points per auto axis of the pilot grid (6 x 6 = 36 one-seed cells when both axes are auto).
PILOT_POINTS = 6
#: Pilot lr axis per family.
PILOT_LR: dict[str, Axis] = {"sgd": Axis(1e-5, 10.0, PILOT_POINTS),
                             "adam": Axis(1e-6, 1.0, PILOT_POINTS)}
#: Pilot wd axis per decay convention.
PILOT_WD: dict[str, Axis] = {"l2": Axis(1e-7, 1.0, PILOT_POINTS),
                             "schedule": Axis(1e-6, 1.0, PILOT_POINTS),
                             "lr": Axis(1e-4, 100.0, PILOT_POINTS)}


def family_of(optimizer: str) -> str:
    """The family (shared lr window) of any optimizer name: ``conventions.FAMILY`` of its base."""
    return FAMILY.get(optimizer) or conventions.parse(optimizer).family


def pilot_lr_axis(base: str) -> Axis:
    """Pilot lr axis of a base: the family's for SGD and the Adam family, else 6 decades around the
    base's default lr axis (3 below its min, 3 above its max, 6 points)."""
    if base in PILOT_LR:
        return PILOT_LR[base]
    if conventions.base_family(base) in PILOT_LR:
        return PILOT_LR[conventions.base_family(base)]
    lo, hi, _ = conventions.base_lr(base)
    return Axis(lo / 1e2, min(hi * 1e1, 10.0), PILOT_POINTS)


def pilot_wd_axis(base: str, convention: str) -> Axis:
    """Pilot wd axis: the convention's (the paper's three), else 2 decades around the default wd axis."""
    if convention in PILOT_WD and base in ("sgd", "adam"):
        return PILOT_WD[convention]
    lo, hi, _ = conventions.default_grid(f"{base}:{convention}")["wd"]
    return Axis(lo / 1e2, hi * 1e1, PILOT_POINTS)


#: Decades spanned by a placed (lr, wd) window.
SPAN_DECADES: tuple[float, float] = (3.0, 4.0)
#: A placed window never reaches below these.
FLOOR: dict[str, float] = {"lr": 1e-8, "wd": 1e-10}
#: Largest share of the study's training time the pilot may take at full length.
MAX_PILOT_SHARE = 0.25
#: The pilot never trains for less than this fraction of the final epochs.
MIN_PILOT_FRACTION = 0.25
#: Default tolerance of smoothing and near-ties: this fraction of the pilot's (worst - best).
REL_TOLERANCE = 0.04

# --------------------------------------------------------------------------- axes


def _subset(values: npt.ArrayLike, k: int) -> np.ndarray:
    """``k`` values spread evenly over ``values``, both ends included."""
    arr = np.asarray(values, dtype=float)
    if arr.size <= k:
        return arr.copy()
    idx = np.unique(np.round(np.linspace(0, arr.size - 1, k)).astype(int))
    out: np.ndarray = arr[idx]
    return out


def _values(axis: Axis) -> np.ndarray:
    return np.asarray([axis_value(axis, i) for i in range(axis.num)], dtype=float)


def pilot_axes(optimizer: str, lr_auto: bool, wd_auto: bool, given_lr: Axis | None,
               given_wd: Axis | None, *, wd_scale: float = 1.0,
               points: int = PILOT_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The pilot grid's (lr values, wd values) for one optimizer.

    An auto axis gets ``points`` log-spaced values over ``PILOT_LR[family]`` or
    ``PILOT_WD[decay convention]`` (the wd range times ``wd_scale``, for ``wd_normalized``). A
    given axis keeps its values, or ``points`` of them spread evenly when it has more.
    """
    rule = conventions.parse(optimizer)  # UnknownOptimizer (a ValueError) lists the valid names
    if not (math.isfinite(wd_scale) and wd_scale > 0):
        raise ValueError(f"wd_scale must be a positive finite number, not {wd_scale!r}")
    out = []
    for auto, given, name in ((lr_auto, given_lr, "lr"), (wd_auto, given_wd, "wd")):
        if auto:
            ax = pilot_lr_axis(rule.base) if name == "lr" else pilot_wd_axis(rule.base, rule.convention)
            scale = wd_scale if name == "wd" else 1.0
            out.append(np.geomspace(ax.min * scale, ax.max * scale, points))
        else:
            if given is None:
                raise ValueError(f"the {name} axis is not auto, so its given axis is needed")
            out.append(_subset(_values(given), points))
    return out[0], out[1]


def pilot_epochs(epochs: int, *, pilot_trials: int = PILOT_POINTS**2, final_trials: int = 128,
                 max_share: float = MAX_PILOT_SHARE) -> int:
    """Epochs of each pilot trial: ``epochs`` when the pilot's share stays within ``max_share``.

    The share of a pilot of P one-seed trials at e epochs before F final trials at E epochs is
    P*e / (P*e + F*E). Full length when P/(P+F) <= max_share (36 pilot cells fit under 25 % from
    108 final trials on, e.g. 8 x 8 x 2 = 128 gives 22 %); otherwise the largest e with share <=
    max_share, i.e. e = floor(max_share/(1 - max_share) * F*E/P), but at least
    ceil(MIN_PILOT_FRACTION * E) and 1 (see the module docstring for why not shorter).
    """
    if epochs < 1 or pilot_trials < 1 or final_trials < 0:
        raise ValueError("epochs and pilot_trials must be >= 1, final_trials >= 0")
    if pilot_trials * (1 - max_share) <= max_share * final_trials:
        return int(epochs)
    fit = math.floor(max_share / (1 - max_share) * final_trials * epochs / pilot_trials + 1e-9)
    return int(max(fit, math.ceil(MIN_PILOT_FRACTION * epochs), 1))


def pilot_share(pilot_trials: int, pilot_epochs_: int, final_trials: int, epochs: int) -> float:
    """The pilot's share of the training time, counted in trial-epochs: P*e / (P*e + F*E)."""
    p = pilot_trials * pilot_epochs_
    return p / (p + final_trials * epochs)


# --------------------------------------------------------------------------- smoothing


def fill_worst(values: npt.ArrayLike, *, chance: float | None = None) -> np.ndarray:
    """``values`` as floats, every diverged (non-finite) cell set to the worst outcome.

    With a chance level (the metric of a classifier that guesses), every cell is also capped at
    it: a run worse than guessing is as useless as one that guessed, and one diverged loss of 50
    must not stretch the scale that tolerances are measured on. Without one, the worst is the
    largest finite value; with nothing finite at all every cell is 0 (a flat surface: no
    information).
    """
    v = np.array(values, dtype=float)
    finite = np.isfinite(v)
    if chance is not None:
        v = np.where(finite, np.minimum(v, float(chance)), float(chance))
    else:
        v[~finite] = float(v[finite].max()) if finite.any() else 0.0
    return v


def default_tolerance(filled: np.ndarray) -> float:
    """``REL_TOLERANCE`` of the way from the best to the worst cell of a filled surface."""
    return REL_TOLERANCE * float(filled.max() - filled.min())


def smooth(values: npt.ArrayLike, *, chance: float | None = None, tolerance: float | None = None,
           kind: Literal["support", "median", "mean"] = "support") -> np.ndarray:
    """The pilot surface made robust to lucky cells (lower is better).

    Non-finite cells become the worst (:func:`fill_worst`). Then, with ``kind="support"`` (the
    default), no cell may be better than its best 3 x 3 neighbour by more than ``tolerance``
    (default :func:`default_tolerance`)::

        S_ij = max(F_ij, min(F_kl for the existing neighbours kl != ij) - tolerance)

    A lucky cell in a bad region is lifted to its neighbours' level, while a real optimum keeps
    its place because its neighbours are the next-best cells of the grid. It leaves sharp basins
    and cliffs alone, which an averaging filter does not: ``"median"`` / ``"mean"`` (3 x 3,
    edge-aware, kept for comparison) are as wide as a sharp basin on a 1.2-decade pilot and
    charge the cell next to a diverged region for its neighbours (figures in the module
    docstring).
    """
    v = fill_worst(values, chance=chance)
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f"values must be a non-empty 2-D array, not of shape {v.shape}")
    n, m = v.shape
    out = np.empty_like(v)
    if kind == "support":
        tol = default_tolerance(v) if tolerance is None else float(tolerance)
        padded = np.full((n + 2, m + 2), np.inf)
        padded[1:-1, 1:-1] = v
        for i in range(n):
            for j in range(m):
                block = padded[i:i + 3, j:j + 3].copy()
                block[1, 1] = np.inf
                out[i, j] = max(v[i, j], block.min() - tol)
        return out
    reducers: dict[str, Callable[..., Any]] = {"median": np.median, "mean": np.mean}
    reduce = reducers.get(kind)
    if reduce is None:
        raise ValueError(f'kind must be "support", "median" or "mean", not {kind!r}')
    for i in range(n):
        for j in range(m):
            out[i, j] = reduce(v[max(0, i - 1):i + 2, max(0, j - 1):j + 2])
    return out


# --------------------------------------------------------------------------- placement


def _quadratic_vertex(xs: np.ndarray, ys: np.ndarray, block: np.ndarray
                      ) -> tuple[float, float] | None:
    """Vertex of the least-squares quadratic in (x, y) through a 3 x 3 block, within one step.

    ``z = c0 + c1 x + c2 y + c3 x^2 + c4 y^2 + c5 x y``; None unless its Hessian is positive
    definite. Unlike two 1-D parabolas it follows a tilted basin (the L2 and lr-scaled decay
    conventions put the best wd on a slope of -1 in lr).
    """
    gx, gy = np.meshgrid(xs - xs[1], ys - ys[1], indexing="ij")
    x, y, z = gx.ravel(), gy.ravel(), block.ravel()
    design = np.column_stack([np.ones_like(x), x, y, x * x, y * y, x * y])
    c = np.linalg.lstsq(design, z, rcond=None)[0]
    hess = np.array([[2 * c[3], c[5]], [c[5], 2 * c[4]]])
    if not (hess[0, 0] > 0 and np.linalg.det(hess) > 0):
        return None
    dx, dy = np.linalg.solve(hess, -c[1:3])
    dx = float(np.clip(dx, xs[0] - xs[1], xs[2] - xs[1]))
    dy = float(np.clip(dy, ys[0] - ys[1], ys[2] - ys[1]))
    return float(xs[1] + dx), float(ys[1] + dy)


def _argmin_central(s: np.ndarray) -> tuple[int, int]:
    """The smallest cell; among exact ties the one nearest the centre (then row-major first)."""
    n, m = s.shape
    tied = np.argwhere(s == s.min())
    dist = (tied[:, 0] - (n - 1) / 2) ** 2 + (tied[:, 1] - (m - 1) / 2) ** 2
    i, j = tied[int(np.argmin(dist))]
    return int(i), int(j)


def _run(near: np.ndarray, k: int) -> tuple[int, int]:
    """The contiguous stretch of True around index ``k`` of a boolean line."""
    a = b = k
    while a > 0 and near[a - 1]:
        a -= 1
    while b + 1 < near.size and near[b + 1]:
        b += 1
    return a, b


def _component(mask: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """The 8-connected region of ``mask`` that holds ``start``."""
    out = np.zeros_like(mask)
    stack = [start]
    while stack:
        i, j = stack.pop()
        if out[i, j] or not mask[i, j]:
            continue
        out[i, j] = True
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                a, b = i + di, j + dj
                if 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1] and not out[a, b]:
                    stack.append((a, b))
    return out


def _centre(xs: np.ndarray, f_line: np.ndarray, near: np.ndarray, k: int, span: float, *,
            top: bool, refined: float | None, worst: float) -> float:
    """log10 centre of the window along one auto axis (see the module docstring, stage 4).

    ``f_line``: the filled pilot values along the line through the best cell ``k``; ``near``:
    which of them are near-optimal. ``top``: near-ties are resolved toward the top (wd).
    """
    n = xs.size
    if n == 1:
        return float(xs[0])
    a, b = _run(near, k)
    h = float(xs[-1] - xs[0]) / (n - 1)  # the pilot step
    if a == b and 0 < k < n - 1:
        if refined is not None:
            return refined
        if f_line[k - 1] >= worst or f_line[k + 1] >= worst:
            return float(xs[k])  # next to a diverged or chance cell: a parabola would mean nothing
        return parabola_vertex(xs[k - 1:k + 2], f_line[k - 1:k + 2])
    lo_open, hi_open = a == 0, b == n - 1
    # The run plus one pilot step on each side that the pilot closes (where the metric rose).
    lo = float(xs[a]) - (0.0 if lo_open else h)
    hi = float(xs[b]) + (0.0 if hi_open else h)
    if lo_open and hi_open:  # near-optimal along the whole pilot line
        return float(xs[-1]) - h + span / 2 if top else (lo + hi) / 2
    if lo_open:
        return hi - span / 2  # keep where the metric starts to rise; the rest goes below
    if hi_open:
        return lo + span / 2  # likewise from below; the rest goes above
    return (lo + hi) / 2  # a closed basin: centre it


def _round_sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def _window(centre: float, span: float, num: int, floor: float) -> Axis:
    if num == 1:
        v = _round_sig(10.0**centre)
        return Axis(v, v, 1)
    lo = max(centre - span / 2, math.log10(floor))
    return Axis(_round_sig(10.0**lo), _round_sig(10.0 ** (lo + span)), num)


def place_window(pilot_lrs: npt.ArrayLike, pilot_wds: npt.ArrayLike, pilot_values: npt.ArrayLike, num_lr: int, num_wd: int, *,
                 lr_auto: bool, wd_auto: bool, given_lr: Axis | None = None,
                 given_wd: Axis | None = None, span_decades: tuple[float, float] = SPAN_DECADES,
                 chance: float | None = None, tolerance: float | None = None
                 ) -> tuple[Axis, Axis]:
    """The final (lr axis, wd axis) placed around the pilot's optimum.

    ``pilot_values[i][j]`` is the pilot metric (lower is better; NaN/inf = diverged) at
    ``pilot_lrs[i]``, ``pilot_wds[j]``. An auto axis gets ``num_lr`` / ``num_wd`` points over
    ``span_decades`` decades centred as the module docstring describes; a non-auto axis is
    ``given_lr`` / ``given_wd`` unchanged. ``tolerance`` (metric units) is the noise allowance of
    :func:`smooth` and of near-ties; None = :func:`default_tolerance`.
    """
    xs = np.log10(np.asarray(pilot_lrs, dtype=float))
    ys = np.log10(np.asarray(pilot_wds, dtype=float))
    v = np.asarray(pilot_values, dtype=float)
    if v.shape != (xs.size, ys.size):
        raise ValueError(f"pilot_values has shape {v.shape}, expected {(xs.size, ys.size)}")
    for auto, given, name in ((lr_auto, given_lr, "lr"), (wd_auto, given_wd, "wd")):
        if not auto and given is None:
            raise ValueError(f"the {name} axis is not auto, so given_{name} is needed")
    f = fill_worst(v, chance=chance)
    tol = default_tolerance(f) if tolerance is None else float(tolerance)
    s = smooth(f, tolerance=tol)
    # strictly within tol: a cell lifted by smooth() sits exactly tol below its best neighbour
    i, j = _argmin_central(s)
    near = _component(s - s.min() < tol * (1 - 1e-9), (i, j))
    worst = float(f.max())
    refined = None
    if 0 < i < xs.size - 1 and 0 < j < ys.size - 1 and (f[i - 1:i + 2, j - 1:j + 2] < worst).all():
        refined = _quadratic_vertex(xs[i - 1:i + 2], ys[j - 1:j + 2], f[i - 1:i + 2, j - 1:j + 2])
    lr_axis, wd_axis = given_lr, given_wd
    rows = np.ones(xs.size, dtype=bool)
    if lr_auto:
        c = _centre(xs, f[:, j], np.asarray(near.any(axis=1)), i, span_decades[0], top=False,
                    refined=None if refined is None else refined[0], worst=worst)
        lr_axis = _window(c, span_decades[0], num_lr, FLOOR["lr"])
        # The wd extent is read on the pilot rows the placed lr window covers (and the best
        # row): a near-optimal cell at an lr the grid will not train must not stretch it.
        lo, hi = math.log10(lr_axis.min) - 1e-3, math.log10(lr_axis.max) + 1e-3
        rows = (xs >= lo) & (xs <= hi)
        rows[i] = True
    if wd_auto:
        c = _centre(ys, f[i, :], np.asarray(near[rows].any(axis=0)), j, span_decades[1], top=True,
                    refined=None if refined is None else refined[1], worst=worst)
        wd_axis = _window(c, span_decades[1], num_wd, FLOOR["wd"])
    assert lr_axis is not None and wd_axis is not None  # checked above: given when not auto
    return lr_axis, wd_axis


# --------------------------------------------------------------------------- edge repair


def edge_directions(values_2d: npt.ArrayLike, *, tolerance: float) -> dict[str, Direction | None]:
    """Which edges the grid's optimum lies on: ``{"lr": "lower"/"higher"/None, "wd": ...}``.

    ``values_2d[i][j]``: the metric (mean over seeds, lower is better) at lr index i, wd index j;
    non-finite = diverged = worst. An edge line is flagged when its best cell is the grid's best
    and better by more than ``tolerance`` than every cell off that line (ties with an interior
    cell count as inside). A single-point axis has no edge. A grid with nothing finite flags
    nothing (there is no optimum to chase).
    """
    v = np.asarray(values_2d, dtype=float)
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f"values must be a non-empty 2-D array, not of shape {v.shape}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, not {tolerance!r}")
    v = np.where(np.isfinite(v), v, np.inf)
    out: dict[str, Direction | None] = {"lr": None, "wd": None}
    if not np.isfinite(v).any():
        return out
    for name, grid in (("lr", v), ("wd", v.T)):
        n = grid.shape[0]
        if n < 2:
            continue
        ends: tuple[tuple[Direction, np.ndarray, np.ndarray], ...] = (
            ("lower", grid[0], grid[1:]), ("higher", grid[-1], grid[:-1]))
        for direction, edge, rest in ends:
            if edge.min() + tolerance < rest.min():
                out[name] = direction
    return out


# --------------------------------------------------------------------------- families


def share_lr_window(windows: Mapping[str, Axis], family: Mapping[str, str] | None = None
                    ) -> dict[str, Axis]:
    """One lr window per family: the covering window (smallest min, largest max) of its members.

    Each member keeps its own ``num`` (its trial count was promised at submission), so members
    with equal ``num`` get identical axes and their heat maps line up cell by cell. Optimizers
    alone in their family are returned unchanged.
    """
    groups: dict[str, list[str]] = {}
    for name in windows:
        if family is not None:
            key = family.get(name, name)
        else:
            key = family_of(name) if conventions.is_known(name) else name
        groups.setdefault(key, []).append(name)
    out = dict(windows)
    for members in groups.values():
        if len(members) < 2:
            continue
        lo = min(windows[m].min for m in members)
        hi = max(windows[m].max for m in members)
        for m in members:
            if windows[m].num > 1:  # a single point has no window to share
                out[m] = Axis(lo, hi, windows[m].num)
    return out
