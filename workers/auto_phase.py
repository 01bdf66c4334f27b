"""The worker's phases around the grid: the pilot that places ``"auto"`` axes, and edge repair.

:func:`run_pilots` runs before the grid phase. For each optimizer with an auto axis it adds the
pilot trials (phase ``pilot``, the spec's first seed, :func:`workers.autogrid.pilot_axes`, each
for :func:`workers.autogrid.pilot_epochs` epochs), runs those not done yet in the same Ray
experiment machinery as the grid, places the final window with
:func:`workers.autogrid.place_window` (then :func:`workers.autogrid.share_lr_window` when the spec
asks), writes the placed axes into the study's spec (``placement: "auto"``; the other axis
``"given"``) and adds the grid trials for every seed. A study resumed after a crash reuses the
pilot trials already done (``add_trials`` skips existing cells, blocks skip done trials), and an
optimizer already placed is not piloted again.

:func:`run_extensions` runs after the grid: up to ``auto_extend`` rounds of edge repair
(:mod:`service.grid_repair`), each adding and running only the new cells.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from workers import autogrid
from workers.catalog import Axis, chance_level

log = logging.getLogger(__name__)

#: ``run(rows, epochs_by_optimizer, name)`` -> Ray outcomes; rows are (id, optimizer, lr, wd, seed).
RunRows = Callable[[list[tuple[int, str, float, float, int]], dict[str, int], str], list]


def wd_scale(spec: dict[str, Any]) -> float:
    """1/sqrt(b/(B*T)) under ``wd_normalized`` (the wd axis holds lambda_norm), else 1."""
    if not spec.get("wd_normalized"):
        return 1.0
    from workers.tasks import get_task

    n_train = get_task(spec["task"]).load_data().n_train
    return 1.0 / math.sqrt(spec["batch_size"] / (n_train * spec["epochs"]))


def _given(axis: dict) -> Axis | None:
    return None if axis.get("auto") else Axis(float(axis["min"]), float(axis["max"]), int(axis["num"]))


def pilot_rows(spec: dict[str, Any], opt: dict[str, Any]) -> list[dict[str, Any]]:
    """The pilot trials of one optimizer: every (lr, wd) of its pilot grid, the first seed."""
    lrs, wds = autogrid.pilot_axes(opt["name"], bool(opt["lr"].get("auto")),
                                   bool(opt["wd"].get("auto")), _given(opt["lr"]),
                                   _given(opt["wd"]), wd_scale=wd_scale(spec))
    seed = spec["seeds"][0]
    return [{"optimizer": opt["name"], "lr_index": i, "wd_index": j, "lr": float(lr),
             "wd": float(wd), "seed": seed}
            for i, lr in enumerate(lrs) for j, wd in enumerate(wds)]


def pilot_epochs_for(spec: dict[str, Any], opt: dict[str, Any], n_pilot: int) -> int:
    final = int(opt["lr"]["num"]) * int(opt["wd"]["num"]) * len(spec["seeds"])
    return autogrid.pilot_epochs(int(spec["epochs"]), pilot_trials=n_pilot, final_trials=final)


def place(spec: dict[str, Any], opt: dict[str, Any], trials: list) -> tuple[Axis, Axis]:
    """The placed (lr, wd) axes of one optimizer from its pilot trials (ORM rows)."""
    metric = spec.get("metric", "val_error")
    lrs = sorted({(t.lr_index, t.lr) for t in trials})
    wds = sorted({(t.wd_index, t.wd) for t in trials})
    values = np.full((len(lrs), len(wds)), np.nan)
    for t in trials:
        v = getattr(t, metric)
        if t.status == "done" and not t.diverged and v is not None:
            values[t.lr_index, t.wd_index] = v
    try:
        chance = chance_level(spec["task"], metric)
    except KeyError:
        chance = None
    return autogrid.place_window(
        [v for _, v in lrs], [v for _, v in wds], values, int(opt["lr"]["num"]),
        int(opt["wd"]["num"]), lr_auto=bool(opt["lr"].get("auto")),
        wd_auto=bool(opt["wd"].get("auto")), given_lr=_given(opt["lr"]),
        given_wd=_given(opt["wd"]), chance=chance)


def _axis_dict(axis: Axis, placement: str, old: dict) -> dict[str, Any]:
    out = {"min": float(axis.min), "max": float(axis.max), "num": int(axis.num),
           "placement": placement}
    if old.get("origin"):
        out["origin"] = old["origin"]
    return out


def run_pilots(engine, study_id: str, run: RunRows, still_ours: Callable[[], bool]) -> bool:
    """Pilot, place and materialize the grid of every unplaced auto optimizer.

    Returns False when the study stopped being ours (cancelled, taken over) on the way.
    """
    from service import store
    from service.db import session_scope
    from service.schemas import StudySpec

    with session_scope(engine) as s:
        study = store.get_study(s, study_id)
        spec = dict(study.spec)
        auto = [o for o in spec["optimizers"] if o["lr"].get("auto") or o["wd"].get("auto")]
        if not auto:
            return True
        epochs = {}
        for opt in auto:
            rows = pilot_rows(spec, opt)
            epochs[opt["name"]] = pilot_epochs_for(spec, opt, len(rows))
            store.add_trials(s, study_id, rows, phase="pilot")
        names = {o["name"] for o in auto}
        pending = [(t.id, t.optimizer, t.lr, t.wd, t.seed)
                   for t in store.pending_trials(s, study_id, phase="pilot") if t.optimizer in names]
    if pending:
        log.info("study %s: %d pilot trials for %s", study_id, len(pending), ", ".join(sorted(names)))
        outcomes = run(pending, epochs, "pilot")
        failed = [int(t[0]) for out in outcomes if out.error for t in out.config.get("trials", [])]
        if failed:  # placed without them (a failed cell counts as the worst outcome)
            with session_scope(engine) as s:
                store.fail_trials(s, failed, "pilot block failed after its retries")
    if not still_ours():
        return False

    with session_scope(engine) as s:
        study = store.get_study(s, study_id)
        spec = dict(study.spec)
        pilot = store.list_trials(s, study_id, phase="pilot")
        placed: dict[str, tuple[Axis, Axis]] = {}
        for opt in spec["optimizers"]:
            if opt["name"] in names:
                placed[opt["name"]] = place(spec, opt, [t for t in pilot if t.optimizer == opt["name"]])
        if spec.get("share_lr_window"):
            lr_auto = {n: placed[n][0] for n in placed
                       if next(o for o in spec["optimizers"] if o["name"] == n)["lr"].get("auto")}
            shared = autogrid.share_lr_window(lr_auto)
            placed = {n: (shared.get(n, lr), wd) for n, (lr, wd) in placed.items()}
        optimizers = []
        for opt in spec["optimizers"]:
            opt = dict(opt)
            if opt["name"] in placed:
                for key, axis in zip(("lr", "wd"), placed[opt["name"]], strict=True):
                    opt[key] = _axis_dict(axis, "auto" if opt[key].get("auto") else "given", opt[key])
            optimizers.append(opt)
        spec["optimizers"] = optimizers
        study.spec = spec
        grid = [r for r in store.grid_rows(StudySpec.from_stored(spec)) if r["optimizer"] in placed]
        store.add_trials(s, study_id, [{k: v for k, v in r.items() if k != "phase"} for r in grid],
                         phase="grid")
        log.info("study %s: placed %s", study_id, placed)
    return True


def run_extensions(engine, study_id: str, run: RunRows, still_ours: Callable[[], bool]) -> list:
    """Up to ``auto_extend`` rounds of edge repair; returns the Ray outcomes of the new trials."""
    from service import store
    from service.db import session_scope
    from service.grid_repair import edge_bound, extend_study

    outcomes: list = []
    with session_scope(engine, read_only=True) as s:
        rounds = int(store.get_study(s, study_id).spec.get("auto_extend", 0))
    for _ in range(rounds):
        if not still_ours():
            break
        with session_scope(engine) as s:
            study = store.get_study(s, study_id)
            directions = edge_bound(s, study)
            if not directions:
                break
            extended = extend_study(s, study, directions)
            log.info("study %s: edge repair %s", study_id, extended)
            rows = [(t.id, t.optimizer, t.lr, t.wd, t.seed)
                    for t in store.pending_trials(s, study_id, phase="grid")]
        if rows:
            outcomes += run(rows, {}, "extend")
    return outcomes
