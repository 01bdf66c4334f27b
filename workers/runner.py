"""Run one claimed study: its pending trials, packed into blocks, as one Ray Tune experiment.

Trials are grouped by optimizer (one packed model per optimizer) and cut into blocks of at most
K cells, K chosen from the model size and the device's memory, cut so that the Ray slots finish
together (:func:`workers.planning.make_blocks`). A heartbeat thread renews the study's lease while the experiment runs; a study
whose worker dies is claimed again after the lease expires, and the next worker runs only the
trials not yet done.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from service.config import Settings
from workers.planning import BLOCK_OVERHEAD, Block, BlockTrial, TrialRow, even_split, make_blocks

__all__ = ["BLOCK_OVERHEAD", "BLOCK_RETRIES", "Block", "BlockTrial", "TrialRow", "even_split", "make_blocks"]

log = logging.getLogger(__name__)

#: Ray retries a block that raised (exception, OOM) this many times before its trials fail.
BLOCK_RETRIES = 2


class Heartbeat(threading.Thread):
    """Renews a study's lease every third of the lease until stopped or the claim is lost."""

    def __init__(self, engine, study_id: str, worker_id: str, lease_seconds: float) -> None:
        super().__init__(name=f"heartbeat-{study_id[:8]}", daemon=True)
        self.engine, self.study_id, self.worker_id = engine, study_id, worker_id
        self.lease_seconds = lease_seconds
        self._stop_event = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        from service import store
        from service.db import session_scope

        while not self._stop_event.wait(self.lease_seconds / 3):
            try:
                with session_scope(self.engine) as s:
                    if not store.heartbeat(s, self.study_id, self.worker_id, self.lease_seconds):
                        self.lost.set()
                        return
            except Exception as exc:  # the database may be away for a while: keep trying
                log.warning("heartbeat for study %s failed: %s", self.study_id, exc)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def absolute_db_url(url: str) -> str:
    """Ray trials run in other working directories: a relative SQLite path must be made absolute."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        from pathlib import Path

        return u.set(database=str(Path(u.database).resolve())).render_as_string(hide_password=False)
    return url


def run_study(engine, study_id: str, worker_id: str, settings: Settings) -> str:
    """Run every pending trial of a study this worker has claimed; return its final status.

    A study with unplaced ``"auto"`` axes runs its pilot and its grid as one Ray experiment
    (:func:`run_phased`: an optimizer's grid starts as soon as its own pilot has placed it); any
    study with auto seeds does too (its next seeds join the experiment as an optimizer's current
    seeds finish, ``auto_phase.seed_round``); any other study runs its pending grid trials
    (:func:`run_rows`). Then up to ``auto_extend`` rounds of edge repair (:mod:`workers.auto_phase`).
    """
    from service import store
    from service.db import session_scope
    from workers import auto_phase
    from workers.blocks import still_owner

    def run(rows, epochs, phase):
        return run_rows(engine, study_id, worker_id, settings, rows, epochs=epochs, phase=phase)

    def still_ours() -> bool:
        with session_scope(engine, read_only=True) as s:
            return still_owner(s, study_id, worker_id)

    groups, pilot_epochs = auto_phase.add_pilots(engine, study_id)
    if groups or auto_phase.auto_seeds(engine, study_id):
        outcomes, stopped = run_phased(engine, study_id, worker_id, settings, groups, pilot_epochs,
                                       still_ours)
        if stopped:
            with session_scope(engine, read_only=True) as s:
                return store.get_study(s, study_id).status
    else:
        outcomes = run(auto_phase.pending_rows(engine, study_id, "grid"), {}, "grid")
    outcomes += auto_phase.run_extensions(engine, study_id, run, still_ours)
    return _finish(engine, study_id, worker_id, outcomes)


def _slots(per_block: dict[str, float], resources: dict[str, float]) -> int:
    if "gpu" in per_block:
        return max(1, int(resources.get("GPU", 0) // per_block.get("gpu", 1)))
    return max(1, int(resources.get("CPU", 1) // per_block["cpu"]))


def _base_config(study_id: str, worker_id: str, spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """What every block of a study's experiment carries besides its optimizer and trials."""
    from workers import ray_adapter

    base = {
        "study_id": study_id,
        "worker_id": worker_id,
        "task": spec["task"],
        "epochs": spec["epochs"],
        "batch_size": spec["batch_size"],
        "schedule": spec.get("schedule") or {"name": "constant"},
        "wd_normalized": bool(spec.get("wd_normalized", False)),
        "decay_on": spec.get("decay_on", "all"),
        # A plugin rule's hyper-parameters, per optimizer name (every default filled in by the spec).
        "params": {o["name"]: o["params"] for o in spec["optimizers"] if o.get("params")},
    }
    if ray_adapter.is_local():
        # Trials on this machine read data sets (CIFAR-10) from this worker's data directory,
        # whatever the environment Ray's processes were started with; a remote cluster's nodes
        # use their own DECOUPLE_DATA_DIR.
        base["data_dir"] = str(settings.data_dir.resolve())
    return base


def _with_heartbeat(engine, study_id: str, worker_id: str, settings: Settings, experiment) -> list:
    """Run ``experiment(db_url)`` (a Ray experiment) while a heartbeat renews the lease; a block
    that lost the database leaves the study pending and raises ``DatabaseUnavailable``."""
    from service import store
    from service.db import session_scope
    from service.errors import DatabaseUnavailable

    heartbeat = Heartbeat(engine, study_id, worker_id, settings.lease_seconds)
    heartbeat.start()
    try:
        outcomes = experiment(absolute_db_url(engine.url.render_as_string(hide_password=False)))
    finally:
        heartbeat.stop()

    lost = [out for out in outcomes
            if (out.error and "DatabaseUnavailable" in out.error) or out.metrics.get("db_lost")]
    if lost:
        # The database went away under these blocks (and Ray's retries came too soon): their
        # trials did not fail, they are unfinished. Leave them pending and give the study back,
        # so it is resumed, instead of finishing it as done with trials marked failed.
        try:
            with session_scope(engine) as s:
                store.release_study(s, study_id, worker_id)
        except DatabaseUnavailable:
            pass  # still away: the lease runs out instead
        raise DatabaseUnavailable(f"{len(lost)} block(s) of study {study_id} lost the database")
    return outcomes


#: Smallest grid block :func:`run_phased` cuts near the end of a study: below it a block's fixed
#: per-epoch cost dominates (measurements in ``docs/design-notes.md``).
MIN_TAIL_BLOCK = 16


def run_phased(engine, study_id: str, worker_id: str, settings: Settings, groups: list[list[str]],
               pilot_epochs: dict[str, int], still_ours) -> tuple[list, bool]:
    """The pilot and the grid of a study with auto axes as one Ray Tune experiment.

    Blocks come from :class:`workers.auto_phase.PhasedBlocks` while the experiment runs (Tune asks
    for each next block as a slot frees up, ``ray_adapter.run_dynamic``). Returns the outcomes and
    whether the run stopped early (cancelled, claim lost).
    """
    from service import store
    from service.db import session_scope
    from workers import ray_adapter
    from workers.auto_phase import PhasedBlocks
    from workers.blocks import block_trainable
    from workers.packed import auto_block_size

    with session_scope(engine) as s:
        spec: dict[str, Any] = dict(store.get_study(s, study_id).spec)
    resources = ray_adapter.cluster_resources()
    per_block = ray_adapter.block_resources(resources)
    base = _base_config(study_id, worker_id, spec, settings)

    def make_config(optimizer, rows, epochs, phase):
        return {**base, "optimizer": optimizer, "trials": [list(t.block_trial()) for t in rows],
                "epochs": epochs or spec["epochs"], "phase": phase}

    slots = _slots(per_block, resources)
    source = PhasedBlocks(engine, study_id, groups=groups, pilot_epochs=pilot_epochs,
                          make_config=make_config, max_block=auto_block_size(spec["task"]),
                          slots=slots, min_block=MIN_TAIL_BLOCK, still_ours=still_ours)
    log.info("study %s: pilot of %s, grids%s in one experiment", study_id,
             ", ".join(n for g in groups for n in g) or "nothing",
             " and seeds until decided" if source.auto_seeds else "")
    outcomes = _with_heartbeat(
        engine, study_id, worker_id, settings,
        lambda db_url: ray_adapter.run_dynamic(
            block_trainable, source, name=f"study-{study_id}",
            storage_dir=settings.state_dir / "results", resources=per_block, slots=slots,
            max_failures=BLOCK_RETRIES, constants={"db_url": db_url}))
    if source.error is not None:
        raise source.error
    return outcomes, source.stopped or not still_ours()


def run_rows(engine, study_id: str, worker_id: str, settings: Settings,
             rows: list[TrialRow], *,
             epochs: dict[str, int] | None = None, phase: str = "grid") -> list:
    """Run (id, optimizer, lr, wd, seed) trials as one Ray Tune experiment; return its outcomes.

    ``epochs`` overrides the spec's epochs per optimizer (the pilot may be shorter).
    """
    from service import store
    from service.db import session_scope
    from workers import ray_adapter
    from workers.blocks import block_trainable
    from workers.packed import auto_block_size

    if not rows:
        return []
    with session_scope(engine) as s:
        spec: dict[str, Any] = dict(store.get_study(s, study_id).spec)

    resources = ray_adapter.cluster_resources()
    per_block = ray_adapter.block_resources(resources)
    blocks = make_blocks(rows, auto_block_size(spec["task"]), _slots(per_block, resources))
    base = _base_config(study_id, worker_id, spec, settings)
    epochs = epochs or {}
    configs = [
        {**base, "optimizer": b.optimizer, "trials": [list(t) for t in b.trials],
         "epochs": epochs.get(b.optimizer, spec["epochs"])}
        for b in blocks
    ]
    log.info("study %s: %d pending %s trials in %d blocks", study_id, len(rows), phase, len(blocks))
    return _with_heartbeat(
        engine, study_id, worker_id, settings,
        lambda db_url: ray_adapter.run_trials(
            block_trainable,
            configs,
            name=f"study-{study_id}" if phase == "grid" else f"study-{study_id}-{phase}",
            storage_dir=settings.state_dir / "results",
            resources=per_block,
            max_failures=BLOCK_RETRIES,
            constants={"db_url": db_url},
        ))


def _finish(engine, study_id: str, worker_id: str, outcomes: list) -> str:
    """Fail the trials of blocks that errored and end the study as done (if still ours)."""
    from service import store
    from service.db import session_scope

    with session_scope(engine) as s:
        study = store.get_study(s, study_id)
        if study.status != "running" or study.claimed_by != worker_id:
            # Cancelled, or another worker owns it now: its trials are no longer ours to fail.
            return study.status
        for out in outcomes:
            if out.error:
                ids = [int(t[0]) for t in out.config.get("trials", [])]
                store.fail_trials(s, ids, f"block failed after {BLOCK_RETRIES} retries: {out.error}")
        store.finish_study(s, study_id, worker_id, "done")
    return "done"
