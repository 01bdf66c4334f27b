"""The worker's phases around the grid: the pilot that places ``"auto"`` axes, and edge repair.

For each optimizer with an auto axis, :func:`add_pilots` adds the pilot trials (phase ``pilot``,
the spec's first seed, :func:`service.domain.placement.pilot_axes`, each for
:func:`service.domain.placement.pilot_epochs` epochs). :class:`PhasedBlocks` then feeds the pilot and
the grid to *one* Ray experiment (``workers.runner.run_phased``): pilot blocks first, and as soon
as an optimizer's pilot has finished (its family's, under ``share_lr_window``),
:func:`place_group` places its final window with :func:`service.domain.placement.place_window` (then
:func:`service.domain.placement.share_lr_window` when the spec asks), writes the placed axes into the
study's spec (``placement: "auto"``; the other axis ``"given"``) and adds its grid trials for
every seed, whose blocks join the queue while the other optimizers' pilots still run: one Ray
experiment instead of two, and no slots idling at the end of the pilot (``docs/design-notes.md``).

A study resumed after a crash reuses the pilot trials already done (``add_trials`` skips
existing cells, blocks skip done trials), and an optimizer already placed is not piloted again.
:func:`run_pilots` is the same work one phase after the other (tests stop a study between the
two).

:func:`run_extensions` runs after the grid: up to ``auto_extend`` rounds of edge repair
(:mod:`service.grid_repair`), each adding and running only the new cells.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from service.domain import placement
from service.domain.catalog import chance_level
from service.domain.grid import Axis, normalized_wd_scale
from service.domain.rules import FAMILY
from workers.planning import PilotCell, TrialRow, even_split, make_blocks

log = logging.getLogger(__name__)

#: ``run(rows, epochs_by_optimizer, name)`` -> Ray outcomes.
RunRows = Callable[[list[TrialRow], dict[str, int], str], list]


def wd_scale(spec: dict[str, Any]) -> float:
    """1/sqrt(b/(B*T)) under ``wd_normalized`` (the wd axis holds lambda_norm), else 1."""
    if not spec.get("wd_normalized"):
        return 1.0
    from workers.tasks import get_task

    n_train = get_task(spec["task"]).load_data().n_train
    return normalized_wd_scale(spec["batch_size"], n_train, spec["epochs"])


def _given(axis: dict) -> Axis | None:
    return None if axis.get("auto") else Axis(float(axis["min"]), float(axis["max"]), int(axis["num"]))


def pilot_rows(spec: dict[str, Any], opt: dict[str, Any]) -> list[dict[str, Any]]:
    """The pilot trials of one optimizer: every (lr, wd) of its pilot grid, the first seed."""
    lrs, wds = placement.pilot_axes(opt["name"], bool(opt["lr"].get("auto")),
                                   bool(opt["wd"].get("auto")), _given(opt["lr"]),
                                   _given(opt["wd"]), wd_scale=wd_scale(spec))
    seed = spec["seeds"][0]
    return [{"optimizer": opt["name"], "lr_index": i, "wd_index": j, "lr": float(lr),
             "wd": float(wd), "seed": seed}
            for i, lr in enumerate(lrs) for j, wd in enumerate(wds)]


def pilot_epochs_for(spec: dict[str, Any], opt: dict[str, Any], n_pilot: int) -> int:
    final = int(opt["lr"]["num"]) * int(opt["wd"]["num"]) * len(spec["seeds"])
    return placement.pilot_epochs(int(spec["epochs"]), pilot_trials=n_pilot, final_trials=final)


def pilot_cell(trial: Any, metric: str) -> PilotCell:
    """A pilot trial (ORM row) as a frozen record: its metric only if it finished, not diverged."""
    v = getattr(trial, metric)
    ok = trial.status == "done" and not trial.diverged and v is not None
    return PilotCell(int(trial.lr_index), int(trial.wd_index), float(trial.lr), float(trial.wd),
                     float(v) if ok else None)


def place(spec: dict[str, Any], opt: dict[str, Any], cells: list[PilotCell]) -> tuple[Axis, Axis]:
    """The placed (lr, wd) axes of one optimizer from its pilot cells."""
    metric = spec.get("metric", "val_error")
    lrs = sorted({(c.lr_index, c.lr) for c in cells})
    wds = sorted({(c.wd_index, c.wd) for c in cells})
    values = np.full((len(lrs), len(wds)), np.nan)
    for c in cells:
        if c.value is not None:
            values[c.lr_index, c.wd_index] = c.value
    try:
        chance = chance_level(spec["task"], metric)
    except KeyError:
        chance = None
    return placement.place_window(
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


def add_pilots(engine, study_id: str) -> tuple[list[list[str]], dict[str, int]]:
    """Add the pilot trials of every unplaced auto optimizer (cells it has are skipped).

    Returns the placement groups (optimizers placed together: one each, or one per family of
    optimizers with an auto lr axis under ``share_lr_window``, whose shared window needs all of
    them) and the pilot epochs per optimizer.
    """
    from service import store
    from service.db import session_scope

    with session_scope(engine) as s:
        spec = dict(store.get_study(s, study_id).spec)
        auto = [o for o in spec["optimizers"] if o["lr"].get("auto") or o["wd"].get("auto")]
        epochs: dict[str, int] = {}
        groups: dict[str, list[str]] = {}
        for opt in auto:
            rows = pilot_rows(spec, opt)
            epochs[opt["name"]] = pilot_epochs_for(spec, opt, len(rows))
            store.add_trials(s, study_id, rows, phase="pilot")
            shared = spec.get("share_lr_window") and opt["lr"].get("auto")
            key = "family:" + FAMILY[opt["name"]] if shared else opt["name"]
            groups.setdefault(key, []).append(opt["name"])
    return list(groups.values()), epochs


def pending_rows(engine, study_id: str, phase: str, names=None) -> list[TrialRow]:
    """The trials of ``phase`` not done yet (of ``names``)."""
    from service import store
    from service.db import session_scope

    with session_scope(engine, read_only=True) as s:
        return [TrialRow(t.id, t.optimizer, t.lr, t.wd, t.seed)
                for t in store.pending_trials(s, study_id, phase=phase)
                if names is None or t.optimizer in names]


def place_group(engine, study_id: str, names: list[str]) -> dict[str, tuple[Axis, Axis]]:
    """Place the optimizers ``names`` from their pilot trials, write the placed axes into the
    study's spec and add their grid trials (every seed). Failed pilot cells count as the worst."""
    from service import store
    from service.db import session_scope
    from service.schemas import StudySpec

    with session_scope(engine) as s:
        study = store.get_study(s, study_id)
        spec = dict(study.spec)
        metric = spec.get("metric", "val_error")
        pilot = [(t.optimizer, pilot_cell(t, metric))
                 for t in store.list_trials(s, study_id, phase="pilot") if t.optimizer in names]
        placed: dict[str, tuple[Axis, Axis]] = {}
        for opt in spec["optimizers"]:
            if opt["name"] in names:
                placed[opt["name"]] = place(spec, opt, [c for n, c in pilot if n == opt["name"]])
        if spec.get("share_lr_window"):
            lr_auto = {n: placed[n][0] for n in placed
                       if next(o for o in spec["optimizers"] if o["name"] == n)["lr"].get("auto")}
            shared = placement.share_lr_window(lr_auto)
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
    return placed


def fail_pilot_trials(engine, trial_ids: list[int]) -> None:
    """Mark the trials of pilot blocks that failed after their retries as failed."""
    from service import store
    from service.db import session_scope

    if trial_ids:  # placed without them (a failed cell counts as the worst outcome)
        with session_scope(engine) as s:
            store.fail_trials(s, trial_ids, "pilot block failed after its retries")


def run_pilots(engine, study_id: str, run: RunRows, still_ours: Callable[[], bool]) -> bool:
    """Pilot, place and materialize the grid of every unplaced auto optimizer, one phase after
    the other: every pilot as one Ray experiment, then every placement.

    The worker overlaps the phases instead (:func:`workers.runner.run_study`); this sequential
    form is kept for tests that stop a study between its pilot and its grid. Returns False when
    the study stopped being ours (cancelled, taken over) on the way.
    """
    groups, epochs = add_pilots(engine, study_id)
    if not groups:
        return True
    names = {n for g in groups for n in g}
    pending = pending_rows(engine, study_id, "pilot", names)
    if pending:
        log.info("study %s: %d pilot trials for %s", study_id, len(pending), ", ".join(sorted(names)))
        outcomes = run(pending, epochs, "pilot")
        fail_pilot_trials(engine, [int(t[0]) for out in outcomes if out.error
                                   for t in out.config.get("trials", [])])
    if not still_ours():
        return False
    for group in groups:
        place_group(engine, study_id, group)
    return True


class PhasedBlocks:
    """A study's pilot and grid as one stream of blocks (a ``ray_adapter.BlockSource``).

    The pilot blocks come first, one per optimizer (its pending pilot cells; more than
    ``max_block`` are cut evenly, and with more slots than piloted optimizers each pilot is cut
    into enough pieces for every slot to start on one). When the last pilot block of a
    placement group has finished (:func:`add_pilots`), :func:`place_group` places it there and
    then, inside the experiment, and its grid blocks join the queue, so the slots go on
    training other optimizers' pilots or grids meanwhile instead of waiting for every pilot, and
    the study pays for one Ray experiment (one start, one set of warmed-up processes) instead of
    two. Grid rows that exist from the start (given axes, a resumed study) are queued at once,
    after the pilots.

    Grid blocks are cut when a slot asks for one, from the optimizer with the most rows waiting:
    at most ``target`` rows (the size :func:`workers.planning.make_blocks` picks for the whole
    planned grid), and at most 1/(2 x slots) of the grid rows still to hand out (those of
    unplaced optimizers included), but not under ``min_block``, so the blocks shrink towards the
    end and the slots finish together.
    """

    def __init__(self, engine, study_id: str, *, groups: list[list[str]], pilot_epochs: dict[str, int],
                 make_config: Callable[[str, list, int | None, str], dict[str, Any]],
                 max_block: int, slots: int, min_block: int, still_ours: Callable[[], bool]) -> None:
        self.engine, self.study_id = engine, study_id
        self.make_config, self.slots, self.min_block = make_config, max(1, slots), max(1, min_block)
        self.still_ours = still_ours
        self.stopped = False
        self.error: BaseException | None = None
        self._waiting = {i: list(g) for i, g in enumerate(groups)}  # groups not placed yet
        self._pilot_running: dict[int, int] = {}  # group -> pilot blocks handed out, not finished
        self._queue: list[dict[str, Any]] = []  # pilot blocks, in order
        self._grid: dict[str, list[TrialRow]] = {}  # optimizer -> grid rows not handed out yet
        names = {n for g in groups for n in g}
        pilot = pending_rows(engine, study_id, "pilot", names)
        self._group_of = {n: i for i, g in enumerate(groups) for n in g}
        # More slots than pilots (a GPU cluster): cut each pilot so that every slot starts on one.
        piloted = {r.optimizer for r in pilot}
        share = math.ceil(self.slots / len(piloted)) if piloted else 1
        for group in groups:
            for opt in group:
                mine = [r for r in pilot if r.optimizer == opt]
                pieces = min(len(mine), max(math.ceil(len(mine) / max_block), share))
                start = 0
                for n in even_split(len(mine), pieces):
                    self._queue.append(self.make_config(opt, mine[start:start + n],
                                                        pilot_epochs[opt], "pilot"))
                    start += n
        self._queue.sort(key=lambda c: -len(c["trials"]))
        for row in pending_rows(engine, study_id, "grid"):
            if row.optimizer not in names:
                self._grid.setdefault(row.optimizer, []).append(row)
        self._expected = self._expected_grid(names)
        planned = [r for rows in self._grid.values() for r in rows] + [
            TrialRow(-k, n, 0.0, 0.0, 0) for n, count in self._expected.items() for k in range(count)]
        blocks = make_blocks(planned, max_block, self.slots)
        self.target = max((len(b.trials) for b in blocks), default=max_block)
        for i in list(self._waiting):  # a group whose pilot is already done: place it now
            if not any(c["optimizer"] in self._waiting[i] for c in self._queue):
                self._place(i)

    def _expected_grid(self, names: set[str]) -> dict[str, int]:
        from service import store
        from service.db import session_scope

        with session_scope(self.engine, read_only=True) as s:
            spec = store.get_study(s, self.study_id).spec
        return {o["name"]: int(o["lr"]["num"]) * int(o["wd"]["num"]) * len(spec["seeds"])
                for o in spec["optimizers"] if o["name"] in names}

    def _place(self, group: int) -> None:
        names = self._waiting.pop(group)
        if not self.still_ours():
            self.stopped = True
            return
        place_group(self.engine, self.study_id, names)
        for n in names:
            self._expected.pop(n, None)
        for row in pending_rows(self.engine, self.study_id, "grid", set(names)):
            self._grid.setdefault(row.optimizer, []).append(row)

    def next_block(self):
        from workers.ray_adapter import DONE

        if self.stopped or self.error is not None:
            return DONE
        if self._queue:
            config = self._queue.pop(0)
            g = self._group_of[config["optimizer"]]
            self._pilot_running[g] = self._pilot_running.get(g, 0) + 1
            return config
        if any(self._grid.values()):
            opt = max(self._grid, key=lambda n: len(self._grid[n]))
            rows = self._grid[opt]
            remaining = sum(len(r) for r in self._grid.values()) + sum(self._expected.values())
            size = min(self.target, max(self.min_block, math.ceil(remaining / (2 * self.slots))))
            size = math.ceil(len(rows) / math.ceil(len(rows) / size))  # even pieces, no crumbs
            self._grid[opt] = rows[size:]
            return self.make_config(opt, rows[:size], None, "grid")
        return None if self._waiting else DONE

    def block_done(self, config, metrics, error) -> None:
        if metrics and metrics.get("db_lost"):
            # Not a failed pilot: its cells stay pending and nothing is placed. The runner gives
            # the study back once the experiment has ended (``runner._with_heartbeat``).
            from service.errors import DatabaseUnavailable

            self.error = DatabaseUnavailable(f"a pilot block of study {self.study_id} lost the database")
            return
        if metrics and metrics.get("stopped"):
            self.stopped = True  # cancelled, or the claim was lost: hand out nothing more
        if config.get("phase") != "pilot":
            return
        try:
            if error:
                fail_pilot_trials(self.engine, [int(t[0]) for t in config["trials"]])
            g = self._group_of[config["optimizer"]]
            self._pilot_running[g] -= 1
            waiting = g in self._waiting and not self._pilot_running[g] and not any(
                c["optimizer"] in self._waiting[g] for c in self._queue)
            if waiting and not self.stopped:
                self._place(g)
        except Exception as exc:  # raised again by the runner once the experiment has ended
            log.exception("study %s: placement failed", self.study_id)
            self.error = exc


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
            rows = [TrialRow(t.id, t.optimizer, t.lr, t.wd, t.seed)
                    for t in store.pending_trials(s, study_id, phase="grid")]
        if rows:
            outcomes += run(rows, {}, "extend")
    return outcomes
