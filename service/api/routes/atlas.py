"""``GET /atlas``: what the team has learnt, one row per (task, optimizer) over every done study.

Answered from ``atlas_entries`` (``service.store.atlas_rows``): a compact summary of each done
study's stored report, written with the report, so the atlas of 1,000 studies is one indexed
query and a loop, never 1,000 reports decoded (``bench/api_load.py``: ``atlas_p99_ms``).

Several studies of one task x optimizer: the row's numbers (verdict, ridge slope and interval,
best cell, tau, seeds, metric) are those of the **newest** of them (latest ``finished_at``), and
every study is listed (``studies``, newest first) with the count of each verdict (``verdicts``).
Not pooled: studies of one task differ in grid, epochs, schedule, seeds and metric, and a ridge
slope or a best cell belongs to its grid and budget; averaging them would describe no experiment
anyone ran. The newest is the team's latest answer; ``verdicts`` shows at a glance whether the
older studies agree, and their ids lead to them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from service import store
from service.api.deps import EngineDep
from service.db import read_snapshot

router = APIRouter(tags=["atlas"])
#: The most ids ``pending`` lists.
PENDING_LIMIT = 100


class AtlasBest(BaseModel):
    lr: float | None
    wd: float | None
    value: float | None


class AtlasRow(BaseModel):
    task: str
    optimizer: str
    base: str
    convention: str
    #: ``decision.verdict`` of the newest study: separable, no_wd_effect, inconclusive, coupled,
    #: not_enough_data.
    verdict: str
    ridge_slope: float | None
    #: ``[lo, hi]``, a null end unbounded; null without a ridge fit.
    ridge_slope_ci: list[float | None] | None
    best: AtlasBest | None
    metric: str
    best_tau_epochs: float | None
    #: Seeds of the newest study (the most finished seeds any of its cells has).
    seeds: int
    #: The study the numbers come from (``studies[0]``) and when it finished.
    study: str
    finished_at: str | None
    #: Every done study of this task x optimizer, newest first; their owners (sorted, distinct).
    studies: list[str]
    owners: list[str]
    n_studies: int
    #: How many of those studies reached each verdict.
    verdicts: dict[str, int]


class AtlasPublic(BaseModel):
    data: list[AtlasRow]
    count: int
    #: Done studies whose report has not been computed yet, so the atlas cannot show them (a
    #: ``GET /studies/{id}/report`` computes and stores it; workers do it as a study finishes):
    #: under the same filters, newest first, at most :data:`PENDING_LIMIT`.
    pending: list[str]


def combine(members: Sequence[Any], newest: dict[tuple[str, str], Any]) -> list[dict[str, Any]]:
    """:func:`service.store.atlas_rows` as atlas rows: the newest study's numbers, every study's
    id, owner and verdict (module docstring)."""
    out: list[dict[str, Any]] = []
    key: tuple[str, str] | None = None
    studies: list[str] = []
    owners: set[str] = set()
    verdicts: dict[str, int] = {}
    for task, optimizer, study_id, owner, verdict in members:  # thousands: plain tuples, no attributes
        if (task, optimizer) != key:
            key = (task, optimizer)
            r = newest[(study_id, optimizer)]
            best = None if r.best_lr is None and r.best_wd is None and r.best_value is None else {
                "lr": r.best_lr, "wd": r.best_wd, "value": r.best_value}
            studies, owners, verdicts = [], set(), {}
            out.append({
                "task": r.task, "optimizer": r.optimizer, "base": r.base, "convention": r.convention,
                "verdict": r.verdict, "ridge_slope": r.ridge_slope, "ridge_slope_ci": r.ridge_slope_ci,
                "best": best, "metric": r.metric, "best_tau_epochs": r.best_tau_epochs, "seeds": r.seeds,
                "study": r.study_id, "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                "studies": studies, "owners": owners, "n_studies": 0, "verdicts": verdicts,
            })
        studies.append(study_id)
        owners.add(owner)
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
    for row in out:
        row["owners"] = sorted(row["owners"])
        row["n_studies"] = len(row["studies"])
    return out


def _atlas(conn: Any, **filters: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    return (combine(*store.atlas_rows(conn, **filters)),
            store.done_studies_without_report(conn, **filters, limit=PENDING_LIMIT))


@router.get("/atlas", response_model=AtlasPublic)
def get_atlas(
    engine: EngineDep,
    task: str | None = None,
    base: str | None = None,
    convention: str | None = None,
    owner: str | None = None,
) -> Response:
    """One row per (task, optimizer) over every done study: the newest study's verdict, ridge
    slope with its 95 % interval, best lr and wd, best tau in epochs and seeds, with every study
    it comes from and their owners. Filters (exact match): ``task``, ``base``, ``convention``,
    ``owner`` (only that owner's studies count)."""
    # One snapshot: the entries and the newest of each must agree (a study deleted between two
    # autocommit queries on PostgreSQL left a member without its newest entry: KeyError, 500).
    data, pending = read_snapshot(engine, _atlas, task=task, base=base, convention=convention, owner=owner)
    # Plain dicts encoded once: validating a thousand rows through the model would cost more
    # than the query (the model above documents the shape).
    body = json.dumps({"data": data, "count": len(data), "pending": pending}, allow_nan=False,
                      separators=(",", ":"))
    return Response(body, media_type="application/json")
