"""One packed block of trials, run inside a Ray Tune trial, writing straight to the study database.

A block is one optimizer's slice of a study: up to K (lr, wd, seed) cells trained together by the
packed trainer. Every epoch's metrics go to the database as soon as the epoch ends (so progress
and curves move live and a crash loses at most the epoch in flight), and each finished trial is
recorded with the store's first-result-wins rule, so a block retried after a crash, or run by a
worker whose lease expired, can never overwrite a result already recorded.

The block also stops itself within one epoch when its study is cancelled or its worker has lost
the claim (another worker took the study over after the lease expired).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _engine(db_url: str):
    from service.db import make_engine

    return make_engine(db_url)


def still_owner(session, study_id: str, worker_id: str, *, for_update: bool = False) -> bool:
    """True while ``worker_id`` holds the claim on a study that is still running.

    On PostgreSQL the study row stays share-locked until the caller's transaction ends, so a
    cancel (which locks the row for update) cannot commit between this check and the writes that
    follow it (marking trials running, an epoch's curve points): it waits, then sees them. SQLite
    serializes write transactions anyway. ``for_update``: lock it exclusively, for a caller that
    updates the row itself later in the transaction (an epoch's points count into
    ``studies.epochs_recorded``): two blocks of one study that both held the share lock and then
    both updated the row waited for each other, a deadlock PostgreSQL broke by failing one block.
    """
    from sqlalchemy import select

    from service.models import Study

    row = session.execute(
        select(Study.status, Study.claimed_by).where(Study.id == study_id).with_for_update(read=not for_update)
    ).first()
    return row is not None and row.status == "running" and row.claimed_by == worker_id


def record_block_epoch(engine: Any, study_id: str, worker_id: str, epoch: int, metrics: Any) -> bool:
    """One epoch's curve points of a block (``metrics``: each with ``key``, the trial id, and its
    losses); False, nothing written, when the study is no longer this worker's. Ownership first,
    in the same transaction, the row locked for the update of its epoch counter (:func:`still_owner`)."""
    from service import store
    from service.db import session_scope

    with session_scope(engine) as s:
        if not still_owner(s, study_id, worker_id, for_update=True):
            return False
        store.record_epochs(s, [
            {"trial_id": m.key, "epoch": epoch, "train_loss": m.train_loss,
             "val_loss": m.val_loss, "val_error": m.val_error}
            for m in metrics
        ])
        return True


def execute_block(block: dict[str, Any], db_url: str) -> dict[str, Any]:
    """Train the block's trials that are not done yet; return counts for Tune to report.

    A block that loses the database raises (Ray retries it; ``runner._with_heartbeat`` gives the
    study back if the loss outlasts the retries), except a *pilot* block: it reports
    ``db_lost`` instead, because a pilot block that fails is placed without its cells for good
    (``auto_phase.PhasedBlocks.block_done``), while cells a lost database kept from finishing
    must stay pending until the study is resumed.
    """
    from service.errors import DatabaseUnavailable

    try:
        return _execute_block(block, db_url)
    except DatabaseUnavailable as exc:
        if block.get("phase") != "pilot":
            raise
        log.warning("pilot block of study %s lost the database: %s", block["study_id"], exc)
        return {"trials_done": 0, "stopped": True, "db_lost": True}


def _execute_block(block: dict[str, Any], db_url: str) -> dict[str, Any]:
    from service import store
    from service.db import session_scope
    from service.models import Trial
    from workers.packed import TrainingStopped, TrialConfig, train_block
    from workers.planning import BlockTrial
    from workers.tasks import get_task

    if block.get("data_dir"):
        os.environ["DECOUPLE_DATA_DIR"] = block["data_dir"]  # where workers.tasks finds data sets
    # The data set loads once per process (cached): before the trials' clock starts, so their
    # started_at is when training starts. A failure is raised once the attempt is recorded.
    load_error: Exception | None = None
    try:
        task = get_task(block["task"])
        if not task.analytic:
            task.load_data()
    except Exception as exc:
        load_error = exc
    engine = _engine(db_url)
    study_id, worker_id = block["study_id"], block["worker_id"]
    trials = [BlockTrial(int(t[0]), float(t[1]), float(t[2]), int(t[3])) for t in block["trials"]]
    ids = [t.id for t in trials]
    with session_scope(engine) as s:
        if not still_owner(s, study_id, worker_id):
            return {"trials_done": 0, "stopped": True}
        done = {
            t.id for t in s.query(Trial).filter(Trial.id.in_(ids), Trial.status == "done")
        }
        todo = [t for t in trials if t.id not in done]
        if not todo:
            return {"trials_done": 0, "stopped": False}
        store.mark_trials_running(s, [t.id for t in todo], worker_id)
    if load_error is not None:
        raise load_error

    configs = [TrialConfig(lr=t.lr, wd=t.wd, seed=t.seed, key=t.id) for t in todo]

    def on_epoch(epoch: int, metrics) -> bool:
        return record_block_epoch(engine, study_id, worker_id, epoch, metrics)

    try:
        results = train_block(
            block["task"],
            block["optimizer"],
            configs,
            epochs=block["epochs"],
            batch_size=block["batch_size"],
            schedule=block["schedule"],
            wd_normalized=block["wd_normalized"],
            decay_on=block["decay_on"],
            on_epoch=on_epoch,
            params=(block.get("params") or {}).get(block["optimizer"]) or None,
        )
    except TrainingStopped:
        log.info("block of study %s stopped (cancelled or claim lost)", study_id)
        return {"trials_done": 0, "stopped": True}

    with session_scope(engine) as s:
        for r in results:
            store.finish_trial(
                s, r.key, worker_id,
                train_loss=r.train_loss, val_loss=r.val_loss, val_error=r.val_error,
                diverged=r.diverged, diverged_epoch=r.diverged_epoch,
            )
    return {"trials_done": len(results), "stopped": False}


def block_trainable(config: dict[str, Any], db_url: str) -> None:
    """The Ray Tune trainable: a plain function of its config (``db_url`` comes separately)."""
    from workers import ray_adapter

    ray_adapter.report(execute_block(config["block"], db_url))
