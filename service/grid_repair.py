"""Edge repair on the database: find optimizers whose best cell is on a grid edge and extend them.

The planning is :mod:`service.domain.placement` (numpy only); this module reads a study's grid trials,
decides with :func:`service.domain.placement.edge_directions`, and writes the extension: the spec's axis
gets more points with the same log spacing (``placement: "extended"``, ``origin`` = trial index
of its first point, negative after an extension below) and only the new cells' trials are added,
so every trial already run keeps its id and result. Used by ``POST /studies/{id}/extend`` and by
the worker's ``auto_extend`` rounds; torch-free.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from service import store
from service.domain.grid import Axis, axis_value, extend_axis, extension_steps
from service.domain.placement import edge_directions
from service.models import Study, Trial

#: Largest number of rows or columns one extension may add to one side.
MAX_EXTEND_STEPS = 8


def _axis(d: dict[str, Any]) -> tuple[Axis, int]:
    return Axis(float(d["min"]), float(d["max"]), int(d["num"])), int(d.get("origin") or 0)


def grid_means(trials: list[Trial], lr_axis: dict, wd_axis: dict, metric: str) -> np.ndarray:
    """Mean over seeds of the done grid trials, cell by cell (NaN where none, inf if diverged).

    Indices are shifted by the axes' ``origin`` so row 0 is the axis's first point.
    """
    (lr, lo_i), (wd, lo_j) = _axis(lr_axis), _axis(wd_axis)
    sums = np.zeros((lr.num, wd.num))
    counts = np.zeros((lr.num, wd.num))
    bad = np.zeros((lr.num, wd.num), bool)
    for t in trials:
        i, j = t.lr_index - lo_i, t.wd_index - lo_j
        if t.status != "done" or not (0 <= i < lr.num and 0 <= j < wd.num):
            continue
        v = getattr(t, metric)
        if t.diverged or v is None or not math.isfinite(v):
            bad[i, j] = True
        else:
            sums[i, j] += v
        counts[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / counts
    out[bad] = np.inf
    return out


def edge_tolerance(trials: list[Trial], metric: str) -> float:
    """About two standard errors of a cell mean: 2 * median over cells of std/sqrt(seeds).

    With one seed there is no noise estimate: 0 (an edge counts when strictly best).
    """
    by_cell: dict[tuple[int, int], list[float]] = {}
    for t in trials:
        v = getattr(t, metric)
        if t.status == "done" and not t.diverged and v is not None and math.isfinite(v):
            by_cell.setdefault((t.lr_index, t.wd_index), []).append(float(v))
    ses = [np.std(v, ddof=1) / math.sqrt(len(v)) for v in by_cell.values() if len(v) > 1]
    return 2.0 * float(np.median(ses)) if ses else 0.0


def edge_bound(session: Session, study: Study, optimizers: list[str] | None = None
               ) -> dict[str, dict[str, str | None]]:
    """{optimizer: {"lr": "lower"/"higher"/None, "wd": ...}} for every placed optimizer whose
    seed-mean best cell is on an edge (others are left out)."""
    spec = study.spec
    metric = spec.get("metric", "val_error")
    out = {}
    grid = [t for t in store.list_trials(session, study.id, phase="grid")]
    for opt in spec["optimizers"]:
        if optimizers is not None and opt["name"] not in optimizers:
            continue
        lr, wd = opt["lr"], opt["wd"]
        if lr.get("auto") or wd.get("auto"):
            continue  # not placed yet
        mine = [t for t in grid if t.optimizer == opt["name"]]
        values = grid_means(mine, lr, wd, metric)
        dirs = edge_directions(values, tolerance=edge_tolerance(mine, metric))
        if dirs["lr"] or dirs["wd"]:
            out[opt["name"]] = dirs
    return out


def extend_study(session: Session, study: Study, directions: dict[str, dict[str, str | None]],
                 steps: int | None = None) -> dict[str, dict[str, Any]]:
    """Extend each optimizer's axes in ``directions`` and add only the new cells' trials.

    Returns {optimizer: {"lr"/"wd": {"direction", "steps", "min", "max", "num"}, "trials_added"}}.
    The study's spec and ``trials_total`` are updated; its cached report is dropped.
    """
    spec = dict(study.spec)
    seeds = list(spec["seeds"])
    optimizers = [dict(o) for o in spec["optimizers"]]
    result: dict[str, dict[str, Any]] = {}
    added_total = 0
    for opt in optimizers:
        dirs = directions.get(opt["name"])
        if not dirs:
            continue
        entry: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        for key in ("lr", "wd"):
            direction = dirs.get(key)
            if direction is None:
                continue
            axis, origin = _axis(opt[key])
            n = steps if steps is not None else extension_steps(axis.num)
            new_axis, new_idx = extend_axis(axis, direction, n, origin=origin)
            new_origin = origin - n if direction == "lower" else origin
            other_key = "wd" if key == "lr" else "lr"
            other, other_origin = _axis(opt[other_key])
            for k in new_idx:
                v = axis_value(axis, k - origin)
                for m in range(other.num):
                    w = axis_value(other, m)
                    cell = {key: v, f"{key}_index": k, other_key: w,
                            f"{other_key}_index": other_origin + m}
                    rows.extend({"optimizer": opt["name"], **cell, "seed": s} for s in seeds)
            opt[key] = {"min": new_axis.min, "max": new_axis.max, "num": new_axis.num,
                        "placement": "extended", **({"origin": new_origin} if new_origin else {})}
            entry[key] = {"direction": direction, "steps": n, "min": new_axis.min,
                          "max": new_axis.max, "num": new_axis.num}
        for key in ("lr", "wd"):
            opt[key].setdefault("placement", "given")
        added = store.add_trials(session, study.id, rows, phase="grid")
        entry["trials_added"] = added
        added_total += added
        result[opt["name"]] = entry
    spec["optimizers"] = optimizers
    study.spec = spec
    study.trials_total = int(study.trials_total) + added_total
    study.report, study.report_computed_at = None, None
    session.flush()
    return result
