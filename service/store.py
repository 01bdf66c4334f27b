"""The study store: plain functions over a ``Session`` (the caller owns the transaction).

Two audiences:

* the API — :func:`create_study` (materializes the whole grid, so progress and the CSV are exact
  from the start), :func:`list_studies`, :func:`get_study`, :func:`progress`, the one-query views
  :func:`study_views` and :func:`study_view`, :func:`cancel_study`, :func:`delete_study`,
  :func:`list_trials`, :func:`get_curve`, and the report cache;
* the workers — the queue: :func:`claim_study`, :func:`heartbeat`, :func:`release_study`,
  :func:`pending_trials`, :func:`mark_trials_running`, :func:`record_epoch(s)`,
  :func:`finish_trial`, :func:`fail_trials`, :func:`finish_study`, :func:`add_trials`.

Concurrency rests on the database, not on the callers' care: a claim is a row lock
(``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite every write transaction starts
``BEGIN IMMEDIATE``, see ``service.db``) plus a lease that expires, so a dead worker's study is
claimed again; the first result of a trial wins (``UPDATE ... WHERE status <> 'done'``); epochs
are upserts on ``(trial_id, epoch)``. Metrics go in and come out as floats, NaN and inf included.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Text, and_, bindparam, cast, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from service.domain import conventions
from service.domain.grid import axis_values
from service.domain.numeric import json_safe
from service.errors import Conflict, Forbidden, NotFound
from service.models import FINAL_STUDY_STATUSES, STUDY_STATUSES, AtlasEntry, CurvePoint, Study, Trial, metric_values, utcnow
from service.schemas import StudySpec

_STUDY_ID = re.compile(r"[0-9a-f]{32}")

# --- who may do what -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who is asking: the token's name (``local`` with auth off) and whether it is an admin."""

    name: str
    admin: bool = False


def _check_can_modify(study: Study, who: Principal) -> None:
    if not (who.admin or who.name == study.owner):
        raise Forbidden(
            f"study {study.id} belongs to {study.owner!r}; only its owner or an admin may change it"
        )


# --- studies (API side) --------------------------------------------------------------------------


def grid_rows(spec: StudySpec, *, phase: str = "grid", seeds: list[int] | None = None,
              optimizers: set[str] | None = None) -> list[dict[str, Any]]:
    """One row per (optimizer, lr index, wd index, seed) of every optimizer whose axes are fixed.

    Under auto seeds only the first ``min`` seeds: the worker adds the others
    (``workers.auto_phase.PhasedBlocks``); ``seeds`` and ``optimizers`` pick other seeds and
    only some optimizers."""
    rows: list[dict[str, Any]] = []
    for opt in spec.optimizers:
        if opt.is_auto or (optimizers is not None and opt.name not in optimizers):
            continue  # its grid is created after the pilot run (add_trials)
        lrs, wds = axis_values(opt.lr), axis_values(opt.wd)
        for i, lr in enumerate(lrs):
            for j, wd in enumerate(wds):
                for seed in spec.initial_seeds if seeds is None else seeds:
                    rows.append({
                        "phase": phase, "optimizer": opt.name,
                        # an extended axis numbers its points from its origin (<= 0)
                        "lr_index": (opt.lr.origin or 0) + i, "wd_index": (opt.wd.origin or 0) + j,
                        "lr": lr, "wd": wd, "seed": seed,
                    })
    return rows


def create_study(session: Session, spec: StudySpec, owner: str) -> Study:
    """Store a study and its full trial grid (status ``queued``); returns the flushed study.

    ``trials_total`` counts every grid trial the study will have, also those of optimizers with
    an ``auto`` axis, whose trials :func:`add_trials` creates once the pilot has placed the grid;
    under auto seeds, the worst case (``max`` seeds), lowered as each optimizer stops earlier.
    """
    now = utcnow()
    study = Study(
        name=spec.name, spec=spec.stored(), owner=owner, status="queued", priority=spec.priority,
        created_at=now, updated_at=now, attempts=0, trials_total=spec.trials_total,
        plugins=spec.plugins_used() or None,
    )
    session.add(study)
    session.flush()
    rows = grid_rows(spec)
    if rows:
        _insert_trials(session, study.id, rows)
    return study


def _insert_trials(session: Session, study_id: str, rows: list[dict[str, Any]]) -> None:
    defaults = {"study_id": study_id, "status": "queued", "diverged": False, "attempts": 0}
    session.execute(insert(Trial), [{**defaults, **row} for row in rows])


def get_study(session: Session, study_id: str, *, for_update: bool = False) -> Study:
    """The study, or :class:`NotFound`."""
    if not _STUDY_ID.fullmatch(study_id):  # never hand odd strings (NUL, 10 kB) to the driver
        raise NotFound(f"no study {study_id[:64]!r}")
    query = select(Study).where(Study.id == study_id)
    if for_update:
        query = query.with_for_update()
    study = session.scalars(query).one_or_none()
    if study is None:
        raise NotFound(f"no study {study_id!r}")
    return study


def _filtered_count(session: Session | Connection, status: str | None, owner: str | None) -> tuple[list, int]:
    """The WHERE conditions of a studies listing and how many studies match them in all."""
    if status is not None and status not in STUDY_STATUSES:
        raise ValueError(f"unknown status {status!r}")
    conditions = []
    if status is not None:
        conditions.append(Study.status == status)
    if owner is not None:
        conditions.append(Study.owner == owner)
    return conditions, session.scalar(select(func.count()).select_from(Study).where(*conditions)) or 0


def list_studies(
    session: Session,
    *,
    status: str | None = None,
    owner: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[Study], int]:
    """A page of studies, newest first, and how many match the filters in all."""
    conditions, count = _filtered_count(session, status, owner)
    query = (
        select(Study).where(*conditions)
        .order_by(Study.created_at.desc(), Study.id.desc())
        .limit(limit).offset(offset)
    )
    return list(session.scalars(query)), int(count)


@dataclass(frozen=True)
class StudyProgress:
    trials_total: int
    trials_done: int
    trials_failed: int
    trials_running: int = 0
    epochs_recorded: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "trials_total": self.trials_total,
            "trials_done": self.trials_done,
            "trials_failed": self.trials_failed,
            "epochs_recorded": self.epochs_recorded,
        }


def progress(session: Session, studies: Sequence[Study]) -> dict[str, StudyProgress]:
    """Grid-phase trial counts per study (one grouped query for a whole page)."""
    ids = [s.id for s in studies]
    counts: dict[str, dict[str, int]] = {i: {} for i in ids}
    if ids:
        rows = session.execute(
            select(Trial.study_id, Trial.status, func.count())
            .where(Trial.study_id.in_(ids), Trial.phase == "grid")
            .group_by(Trial.study_id, Trial.status)
        )
        for study_id, status, n in rows:
            counts[study_id][status] = int(n)
    return {
        s.id: StudyProgress(
            trials_total=s.trials_total,
            trials_done=counts[s.id].get("done", 0),
            trials_failed=counts[s.id].get("failed", 0),
            trials_running=counts[s.id].get("running", 0),
            epochs_recorded=s.epochs_recorded or 0,
        )
        for s in studies
    }


def _grid_trials(status: str) -> Any:
    """How many grid trials of the outer query's study are in ``status``: a correlated count
    (the ``(study_id, status)`` index finds the rows; ``phase`` is read from each)."""
    return (
        select(func.count()).select_from(Trial)
        .where(Trial.study_id == Study.id, Trial.status == status, Trial.phase == "grid")
        .correlate(Study).scalar_subquery()
    )


#: What the API shows of a study, as one row: every column but the report (tens of kB for a done
#: study, never listed) and the lease, the spec as its stored JSON text (``spec_json``), and the
#: grid progress counted in the same query (with ``epochs_recorded``, a column of the row). Plain
#: rows, not ORM objects: building and tracking 100
#: ``Study`` instances, decoding their specs and a second grouped progress query cost several
#: times the rest of ``GET /studies`` (``bench/api_load.py``).
STUDY_VIEW = (
    Study.id, Study.name, Study.status, Study.owner, Study.priority,
    cast(Study.spec, Text).label("spec_json"), Study.trials_total,
    _grid_trials("done").label("trials_done"), _grid_trials("failed").label("trials_failed"),
    Study.epochs_recorded, Study.created_at, Study.started_at, Study.finished_at, Study.updated_at,
    Study.claimed_by, Study.attempts, Study.last_error, Study.plugins, Study.waiting_reason,
)


_ONE_STUDY_VIEW = select(*STUDY_VIEW).where(Study.id == bindparam("study_id"))


def study_views(
    session: Session | Connection,
    *,
    status: str | None = None,
    owner: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[Any], int]:
    """:func:`list_studies` as :data:`STUDY_VIEW` rows (progress included), and the total count."""
    conditions, count = _filtered_count(session, status, owner)
    rows = session.execute(
        select(*STUDY_VIEW).where(*conditions)
        .order_by(Study.created_at.desc(), Study.id.desc())
        .limit(limit).offset(offset)
    ).all()
    return rows, int(count)


def study_view(session: Session | Connection, study_id: str) -> Any:
    """One study as a :data:`STUDY_VIEW` row, or :class:`NotFound`."""
    if not _STUDY_ID.fullmatch(study_id):
        raise NotFound(f"no study {study_id[:64]!r}")
    row = session.execute(_ONE_STUDY_VIEW, {"study_id": study_id}).one_or_none()
    if row is None:
        raise NotFound(f"no study {study_id!r}")
    return row


@dataclass(frozen=True)
class Throughput:
    """Trial-epochs per wall second that this deployment achieved on one task, measured from its
    own finished studies (:func:`measured_throughput`)."""

    task: str
    studies: int
    trial_epochs: int
    wall_seconds: float

    @property
    def per_second(self) -> float:
        return self.trial_epochs / self.wall_seconds


#: How many of a task's newest done studies :func:`measured_throughput` pools.
THROUGHPUT_STUDIES = 20


def measured_throughput(session: Session | Connection, task: str, *,
                        newest: int = THROUGHPUT_STUDIES) -> Throughput | None:
    """Pooled over the task's ``newest`` done studies: their done grid trials x their epochs,
    over the wall time from the first claim to the end (``finished_at - started_at``; it holds
    pilot runs, seed rounds and, for an extended study, the time it waited in the queue again, so
    it is what a user waits for, not the trainer's speed alone). None when no done study of the
    task has a positive wall time and a finished trial."""
    rows = session.execute(
        select(Study.started_at, Study.finished_at, Study.spec["epochs"].as_integer(), _grid_trials("done"))
        .where(Study.status == "done", Study.spec["task"].as_string() == task,
               Study.started_at.is_not(None), Study.finished_at.is_not(None))
        .order_by(Study.finished_at.desc().nulls_last(), Study.id.desc())
        .limit(newest)
    ).all()
    studies, trial_epochs, wall = 0, 0, 0.0
    for started, finished, epochs, done in rows:
        seconds = (finished - started).total_seconds()
        if seconds <= 0 or not done or not epochs:
            continue
        studies, trial_epochs, wall = studies + 1, trial_epochs + int(done) * int(epochs), wall + seconds
    if not studies:
        return None
    return Throughput(task=task, studies=studies, trial_epochs=trial_epochs, wall_seconds=wall)


def cancel_study(session: Session, study_id: str, who: Principal) -> Study:
    """Stop a queued or running study (owner or admin). Its worker notices at its next heartbeat."""
    study = get_study(session, study_id, for_update=True)
    _check_can_modify(study, who)
    if study.status == "cancelled":
        return study
    if study.status in FINAL_STUDY_STATUSES:
        raise Conflict(f"study {study_id} is already {study.status}; only queued or running studies can be cancelled")
    now = utcnow()
    study.status, study.finished_at, study.updated_at = "cancelled", now, now
    study.lease_expires_at = None
    # Trials in flight will not finish (their block stops at its next epoch, or its worker is
    # gone): back to queued, so no trial of a cancelled study claims to be running forever.
    session.execute(
        update(Trial)
        .where(Trial.study_id == study_id, Trial.status == "running")
        .values(status="queued", worker=None, started_at=None)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return study


def delete_study(session: Session, study_id: str, who: Principal) -> None:
    """Delete a study with its trials and curves (owner or admin)."""
    study = get_study(session, study_id, for_update=True)
    _check_can_modify(study, who)
    # The foreign keys cascade (SQLite has them switched on in service.db).
    session.execute(delete(Study).where(Study.id == study_id))


def list_trials(session: Session, study_id: str, *, phase: str | None = None) -> list[Trial]:
    """Every trial of a study in grid order (optimizer as submitted, then lr, wd, seed)."""
    get_study(session, study_id)
    query = select(Trial).where(Trial.study_id == study_id)
    if phase is not None:
        query = query.where(Trial.phase == phase)
    return list(session.scalars(query.order_by(Trial.phase, Trial.id)))


def get_curve(session: Session, study_id: str, trial_id: int) -> list[dict[str, Any]]:
    """A trial's per-epoch metrics, ``[{"epoch", "train_loss", "val_loss", "val_error"}]``."""
    trial = session.get(Trial, trial_id)
    if trial is None or trial.study_id != study_id:
        raise NotFound(f"no trial {trial_id} in study {study_id!r}")
    return load_curves(session, [trial_id]).get(trial_id, [])


def load_curves(session: Session, trial_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Curves of many trials at once: ``{trial_id: [point, ...]}``, epochs ascending."""
    ids = list(trial_ids)
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for chunk in _chunks(ids, 500):
        points = session.scalars(
            select(CurvePoint).where(CurvePoint.trial_id.in_(chunk))
            .order_by(CurvePoint.trial_id, CurvePoint.epoch)
        )
        for p in points:
            out[p.trial_id].append({
                "epoch": p.epoch, "train_loss": p.train_loss,
                "val_loss": p.val_loss, "val_error": p.val_error,
            })
    return out


def _chunks(items: list[Any], n: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


# --- the report cache ----------------------------------------------------------------------------


def study_dict(study: Study) -> dict[str, Any]:
    """The study as ``service.report.build_report`` reads it."""
    return {
        "id": study.id, "name": study.name, "status": study.status, "spec": study.spec,
        "created_at": study.created_at, "finished_at": study.finished_at, "owner": study.owner,
        "plugins": study.plugins,
    }


def trial_dict(trial: Trial) -> dict[str, Any]:
    """A trial as ``service.report.build_report`` reads it (metrics may be NaN or inf)."""
    return {
        "id": trial.id, "phase": trial.phase, "optimizer": trial.optimizer,
        "lr_index": trial.lr_index, "wd_index": trial.wd_index, "lr": trial.lr, "wd": trial.wd,
        "seed": trial.seed, "status": trial.status, "train_loss": trial.train_loss,
        "val_loss": trial.val_loss, "val_error": trial.val_error, "diverged": trial.diverged,
        "diverged_epoch": trial.diverged_epoch,
    }


ReportBuilder = Callable[
    [dict[str, Any], list[dict[str, Any]], Callable[[list[int]], dict[int, list[dict[str, Any]]]]],
    dict[str, Any],
]


def compute_report(session: Session, study_id: str, build: ReportBuilder) -> tuple[dict[str, Any], bool]:
    """(report, needs caching): the cached report of a done study, else ``build(...)`` afresh.

    The second value is True when the study is done and its report was just computed, so the
    caller should store it with :func:`cache_report` (in a short write transaction of its own:
    building may take a while and should not hold SQLite's write lock).
    """
    study = get_study(session, study_id)
    if study.status == "done" and study.report is not None:
        return study.report, False
    trials = [trial_dict(t) for t in list_trials(session, study_id)]
    report = json_safe(build(study_dict(study), trials, lambda ids: load_curves(session, ids)))
    return report, study.status == "done"


def report_key(session: Session | Connection, study_id: str) -> tuple[Any, ...]:
    """What a study's report depends on, in one cheap query by primary key: status, when the
    stored report was computed, trials total/done/failed (counted on the ``(study_id, status)``
    index), the epochs recorded (a counter :func:`record_epochs` keeps, not a count of curve
    points) and a digest of the spec (a spec-only change, e.g. the seeds an optimizer was given,
    changes the report too). The report of a running study changes only when one of these does,
    so a cache keyed by it never serves a stale report nor rebuilds an unchanged one; heartbeats
    (``updated_at``) do not change it. :class:`NotFound` if there is no such study."""
    if not _STUDY_ID.fullmatch(study_id):
        raise NotFound(f"no study {study_id[:64]!r}")
    row = session.execute(
        select(Study.status, Study.report_computed_at, Study.trials_total, _grid_trials("done"),
               _grid_trials("failed"), Study.epochs_recorded, cast(Study.spec, Text)).where(Study.id == study_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"no study {study_id!r}")
    *key, spec = row
    return (*key, hashlib.sha256(spec.encode()).hexdigest())


_CACHED_REPORT = select(Study.status, cast(Study.report, Text)).where(Study.id == bindparam("study_id"))


def cached_report_json(session: Session | Connection, study_id: str) -> str | None:
    """A done study's cached report as the JSON text stored in its row, or None (not done, or
    not computed yet); :class:`NotFound` if there is no such study.

    The text goes to the client as it is: decoding the report into Python objects only to encode
    it again cost more than everything else in a request (a 640-trial report is ~50 kB).
    """
    status, text = report_state(session, study_id)
    return text if status == "done" else None


def report_state(session: Session | Connection, study_id: str, *, with_report: bool = True) -> tuple[str, str | None]:
    """(status, the stored report's JSON text or None), by primary key; :class:`NotFound` if there
    is no such study. ``with_report=False`` reads the status only."""
    if not _STUDY_ID.fullmatch(study_id):
        raise NotFound(f"no study {study_id[:64]!r}")
    query = _CACHED_REPORT if with_report else _STATUS_ONLY
    row = session.execute(query, {"study_id": study_id}).one_or_none()
    if row is None:
        raise NotFound(f"no study {study_id!r}")
    return row[0], (row[1] if with_report else None)


_STATUS_ONLY = select(Study.status).where(Study.id == bindparam("study_id"))


def cache_report(session: Session, study_id: str, report: dict[str, Any]) -> bool:
    """Keep a done study's report in its row, and its atlas summary (:func:`atlas_summary`) in
    ``atlas_entries``; dropped again if trials are added later (the entries stay until the next
    report replaces them, and :func:`atlas_rows` reads only those of done studies with a report)."""
    now = utcnow()
    result = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.status == "done", Study.report.is_(None))
        .values(report=report, report_computed_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    session.execute(delete(AtlasEntry).where(AtlasEntry.study_id == study_id))
    entries = atlas_summary(report)
    if entries:
        session.execute(insert(AtlasEntry), [{"study_id": study_id, **e} for e in entries])
    return True


def _finite_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def atlas_summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The atlas's fields of each optimizer of a report (``service.report.build_report``'s JSON):
    ``optimizer, task, base, convention, metric, verdict`` (``decision.verdict``, else
    ``not_enough_data``), ``ridge_slope, ridge_slope_ci, best_lr, best_wd, best_value``,
    ``best_tau_epochs`` (``parametrizations.best_tau`` when in epochs) and ``seeds`` (the most
    finished seeds any cell has). ``migrations/versions/0003_atlas.py`` keeps a frozen copy."""
    out = []
    for e in report.get("optimizers") or []:
        dec = e.get("decision") or {}
        best = e.get("best") or {}
        params = e.get("parametrizations") or {}
        ci = dec.get("ridge_slope_ci")
        seeds = [int(n) for row in ((e.get("grid") or {}).get("seeds") or []) for n in row if n is not None]
        out.append({
            "optimizer": e["name"], "task": report.get("task") or "", "base": e.get("base") or "",
            "convention": e.get("convention") or "", "metric": report.get("metric") or "val_error",
            "verdict": dec.get("verdict") or "not_enough_data",
            "ridge_slope": _finite_or_none(dec.get("ridge_slope")),
            "ridge_slope_ci": [_finite_or_none(ci[0]), _finite_or_none(ci[1])] if ci else None,
            "best_lr": _finite_or_none(best.get("lr")), "best_wd": _finite_or_none(best.get("wd")),
            "best_value": _finite_or_none(best.get("value")),
            "best_tau_epochs": _finite_or_none(params.get("best_tau")) if params.get("tau_unit") == "epochs" else None,
            "seeds": max(seeds, default=0),
        })
    return out


#: The atlas entry of each newest study, in full (with the study's end): :func:`atlas_rows`.
_ATLAS_COLUMNS = (
    AtlasEntry.task, AtlasEntry.optimizer, AtlasEntry.base, AtlasEntry.convention, AtlasEntry.metric,
    AtlasEntry.verdict, AtlasEntry.ridge_slope, AtlasEntry.ridge_slope_ci, AtlasEntry.best_lr,
    AtlasEntry.best_wd, AtlasEntry.best_value, AtlasEntry.best_tau_epochs, AtlasEntry.seeds,
    AtlasEntry.study_id, Study.finished_at,
)


def atlas_rows(session: Session | Connection, *, task: str | None = None, base: str | None = None,
               convention: str | None = None, owner: str | None = None) -> tuple[list[Any], dict[tuple[str, str], Any]]:
    """The atlas entries of done studies with a stored report, filtered by exact task, base,
    convention and owner, in two queries: ``members``, every entry as ``(task, optimizer,
    study_id, owner, verdict)`` sorted by task, optimizer, newest study first (plain strings:
    thousands of rows cost no per-value decoding); and ``newest``, the full entry
    (:data:`_ATLAS_COLUMNS`) of each (task, optimizer)'s first member, by ``(study_id, optimizer)``."""
    conditions = [Study.status == "done", Study.report_computed_at.is_not(None)]
    for column, value in ((AtlasEntry.task, task), (AtlasEntry.base, base),
                          (AtlasEntry.convention, convention), (Study.owner, owner)):
        if value is not None:
            conditions.append(column == value)
    members = list(session.execute(
        select(AtlasEntry.task, AtlasEntry.optimizer, AtlasEntry.study_id, Study.owner, AtlasEntry.verdict)
        .join(Study, Study.id == AtlasEntry.study_id).where(*conditions)
        .order_by(AtlasEntry.task, AtlasEntry.optimizer, Study.finished_at.desc().nulls_last(), Study.id.desc())
    ).all())
    firsts: dict[tuple[str, str], str] = {}
    for m in members:
        firsts.setdefault((m.task, m.optimizer), m.study_id)
    newest: dict[tuple[str, str], Any] = {}
    wanted = {(sid, opt) for (_, opt), sid in firsts.items()}
    for chunk in _chunks(sorted({sid for sid, _ in wanted}), 500):
        for row in session.execute(
            select(*_ATLAS_COLUMNS).join(Study, Study.id == AtlasEntry.study_id).where(AtlasEntry.study_id.in_(chunk))
        ):
            if (row.study_id, row.optimizer) in wanted:
                newest[(row.study_id, row.optimizer)] = row
    return members, newest


def done_studies_without_report(session: Session | Connection, *, task: str | None = None, base: str | None = None,
                                convention: str | None = None, owner: str | None = None,
                                limit: int = 100) -> list[str]:
    """Done studies whose report has not been computed yet (so the atlas cannot show them), newest
    first, at most ``limit``, under the atlas's filters: ``owner`` exact, ``task`` the spec's,
    ``base`` and ``convention`` those of any of its optimizers (``conventions.parse``, as the
    report names them). Workers store the report as they finish a study, so these are few."""
    conditions = [Study.status == "done", Study.report_computed_at.is_(None)]
    if owner is not None:
        conditions.append(Study.owner == owner)
    out: list[str] = []
    rows = session.execute(select(Study.id, Study.spec).where(*conditions)
                           .order_by(Study.finished_at.desc().nulls_last(), Study.id.desc()))
    for study_id, spec in rows:
        if len(out) >= limit:
            break
        if task is not None and (spec or {}).get("task") != task:
            continue
        if base is not None or convention is not None:
            variants = [_variant((o or {}).get("name")) for o in (spec or {}).get("optimizers") or []]
            if not any(v is not None and (base is None or v.base == base)
                       and (convention is None or v.convention == convention) for v in variants):
                continue
        out.append(study_id)
    return out


def _variant(name: Any) -> conventions.UpdateRule | None:
    return conventions.parse(name) if conventions.is_known(name) else None


# --- the queue (worker side) ---------------------------------------------------------------------


#: Queued studies one claim looks at when some need plugins this worker lacks (beyond them, only
#: studies of built-ins are looked for).
CLAIM_WINDOW = 50


def missing_plugins(needed: dict[str, Any] | None, installed: dict[str, Any] | None) -> str | None:
    """Why a worker with ``installed`` ("task:NAME"/"rule:NAME" -> {"distribution", "version"})
    cannot run a study that ``needed`` them; None when it can (or ``installed`` is None: no check)."""
    if not needed or installed is None:
        return None
    problems = []
    for key, want in sorted(needed.items()):
        have = installed.get(key)
        what = f"{key.replace(':', ' ', 1)} from {want['distribution']} {want['version']}"
        if have is None:
            problems.append(f"{what} is not installed")
        elif (have["distribution"], have["version"]) != (want["distribution"], want["version"]):
            problems.append(f"{what}: the worker has {have['distribution']} {have['version']}")
    return "; ".join(problems) or None


def record_waiting(study: Study, worker_id: str, missing: str) -> None:
    """Record on a queued ``study`` that ``worker_id`` passed it over for the plugins it lacks
    (``missing``, from :func:`missing_plugins`): the reason the API, the pages and the CLI show."""
    reason = f"no worker with the plugins it needs has claimed it ({worker_id}: {missing})"
    if study.waiting_reason != reason[:10_000]:
        study.waiting_reason = reason[:10_000]


def claim_study(
    session: Session, worker_id: str, lease_seconds: float, *, only: str | None = None,
    installed: dict[str, Any] | None = None,
) -> Study | None:
    """Take the next study to run, or None when there is none.

    The next study is the queued one with the highest priority, oldest first, or a running one
    whose lease has expired (its worker died). Exactly one of several concurrent claimers gets a
    given study: PostgreSQL skips rows another transaction has locked; SQLite serializes the
    claims because write transactions begin IMMEDIATE. The caller commits (``session_scope``).
    ``only`` restricts the claim to one study (``decouple demo`` runs its own study, not the queue).

    ``installed`` is the worker's plugins (``workers.worker.installed_plugins``): a study that
    needs a plugin the worker lacks, or has at another version, is passed over (it stays queued
    for a worker that has it) and its ``waiting_reason`` says why; None claims without checking.
    """
    now = utcnow()
    query = (
        select(Study)
        .where(or_(
            Study.status == "queued",
            and_(Study.status == "running", Study.lease_expires_at < now),
        ))
        .order_by(Study.priority.desc(), Study.created_at.asc(), Study.id.asc())
        .limit(1 if installed is None else CLAIM_WINDOW)
    )
    if only is not None:
        query = query.where(Study.id == only)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    study = None
    passed_over = 0
    for candidate in session.scalars(query):
        reason = missing_plugins(candidate.plugins, installed)
        if reason is None:
            study = candidate
            break
        passed_over += 1
        record_waiting(candidate, worker_id, reason)
    if study is None and passed_over == CLAIM_WINDOW:
        # The whole window needs plugins this worker lacks: a study of built-ins only, further
        # back in the queue, must not wait behind them.
        study = session.scalars(query.where(Study.plugins.is_(None)).limit(1)).first()
    if study is None:
        session.flush()
        return None
    study.status = "running"
    study.claimed_by = worker_id
    study.lease_expires_at = now + timedelta(seconds=lease_seconds)
    study.attempts += 1
    study.started_at = study.started_at or now
    study.updated_at = now
    study.waiting_reason = None
    session.flush()
    return study


def heartbeat(session: Session, study_id: str, worker_id: str, lease_seconds: float) -> bool:
    """Extend the lease; False when the claim is lost (cancelled, deleted, taken over)."""
    now = utcnow()
    result = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.claimed_by == worker_id, Study.status == "running")
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def release_study(session: Session, study_id: str, worker_id: str) -> bool:
    """Give a claimed study back to the queue (a worker shutting down cleanly)."""
    result = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.claimed_by == worker_id, Study.status == "running")
        .values(status="queued", claimed_by=None, lease_expires_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def pending_trials(session: Session, study_id: str, *, phase: str | None = None) -> list[Trial]:
    """The study's trials that are not done (queued, running when a worker died, failed)."""
    query = select(Trial).where(Trial.study_id == study_id, Trial.status != "done")
    if phase is not None:
        query = query.where(Trial.phase == phase)
    return list(session.scalars(query.order_by(Trial.id)))


def mark_trials_running(session: Session, trial_ids: Sequence[int], worker_id: str) -> int:
    """Mark trials as started by ``worker_id`` (done ones are left alone); returns how many."""
    now, n = utcnow(), 0
    for chunk in _chunks(list(trial_ids), 500):
        result = session.execute(
            update(Trial)
            .where(Trial.id.in_(chunk), Trial.status != "done")
            .values(status="running", worker=worker_id, started_at=now, attempts=Trial.attempts + 1, error=None)
            .execution_options(synchronize_session=False)
        )
        n += result.rowcount
    return n


def record_epochs(session: Session, points: Iterable[dict[str, Any]]) -> int:
    """Upsert curve points ``{"trial_id", "epoch", "train_loss", "val_loss", "val_error"}``.

    Idempotent: recording the same epoch again (a retried block) overwrites it. Points of trials
    that no longer exist (their study was deleted) are skipped; returns how many were written.
    """
    rows = [
        {"trial_id": int(p["trial_id"]), "epoch": int(p["epoch"]),
         **_metric_columns(p.get("train_loss"), p.get("val_loss"), p.get("val_error"))}
        for p in points
    ]
    if not rows:
        return 0
    study_of: dict[int, str] = {
        trial_id: study_id for trial_id, study_id in
        session.execute(select(Trial.id, Trial.study_id).where(Trial.id.in_({r["trial_id"] for r in rows})))}
    rows = [r for r in rows if r["trial_id"] in study_of]
    if not rows:
        return 0
    per_study: dict[str, int] = {}
    for r in rows:
        per_study[study_of[r["trial_id"]]] = per_study.get(study_of[r["trial_id"]], 0) + 1
    # The report cache's key (report_key): epochs landed. The study rows first, in id order, as
    # cancel and delete lock them before the trials (the inserts below lock the trial rows).
    for study_id, n in sorted(per_study.items()):
        session.execute(
            update(Study).where(Study.id == study_id).values(epochs_recorded=Study.epochs_recorded + n)
            .execution_options(synchronize_session=False))
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    table = CurvePoint.__table__
    stmt = upsert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.trial_id, table.c.epoch],
        set_={c: stmt.excluded[c] for c in _METRIC_COLUMNS},
    )
    session.execute(stmt, rows)
    return len(rows)


_METRIC_COLUMNS = (
    "train_loss", "train_loss_kind", "val_loss", "val_loss_kind", "val_error", "val_error_kind",
)


def _metric_columns(train_loss: float | None, val_loss: float | None, val_error: float | None) -> dict[str, Any]:
    """Metrics as table columns (``train_loss``, ``train_loss_kind``, ...) for Core statements."""
    values = metric_values(train_loss=train_loss, val_loss=val_loss, val_error=val_error)
    return {k.removesuffix("_value"): v for k, v in values.items()}


def record_epoch(
    session: Session, trial_id: int, epoch: int,
    train_loss: float | None, val_loss: float | None, val_error: float | None,
) -> bool:
    """Upsert one curve point (see :func:`record_epochs`); False if the trial no longer exists."""
    return record_epochs(session, [{
        "trial_id": trial_id, "epoch": epoch, "train_loss": train_loss,
        "val_loss": val_loss, "val_error": val_error,
    }]) == 1


def finish_trial(
    session: Session, trial_id: int, worker_id: str, *,
    train_loss: float | None, val_loss: float | None, val_error: float | None,
    diverged: bool = False, diverged_epoch: int | None = None,
) -> bool:
    """Store a trial's final metrics. The first result wins: a trial already done is never
    overwritten (a slow duplicate run after a lease takeover changes nothing). Returns whether
    this call stored it."""
    metrics = metric_values(train_loss=train_loss, val_loss=val_loss, val_error=val_error)
    result = session.execute(
        update(Trial)
        .where(Trial.id == trial_id, Trial.status != "done")
        .values(
            status="done", worker=worker_id, finished_at=utcnow(), error=None,
            diverged=bool(diverged), diverged_epoch=diverged_epoch, **metrics,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def fail_trials(session: Session, trial_ids: Sequence[int], error: str) -> int:
    """Mark trials failed with the reason (done ones are left alone); returns how many."""
    now, n = utcnow(), 0
    for chunk in _chunks(list(trial_ids), 500):
        result = session.execute(
            update(Trial)
            .where(Trial.id.in_(chunk), Trial.status != "done")
            .values(status="failed", error=error[:10_000], finished_at=now)
            .execution_options(synchronize_session=False)
        )
        n += result.rowcount
    return n


def finish_study(
    session: Session, study_id: str, worker_id: str, status: str, error: str | None = None,
) -> bool:
    """End a study this worker holds as ``done`` or ``failed``; False if the claim was lost
    (cancelled, deleted or taken over meanwhile), in which case nothing changes."""
    if status not in ("done", "failed"):
        raise ValueError(f"a worker finishes a study as 'done' or 'failed', not {status!r}")
    now = utcnow()
    result = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.claimed_by == worker_id, Study.status == "running")
        .values(
            status=status, finished_at=now, updated_at=now, lease_expires_at=None,
            last_error=error[:10_000] if error else None, report=None, report_computed_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def add_trials(
    session: Session, study_id: str, rows: Iterable[dict[str, Any]], *, phase: str = "grid",
) -> int:
    """Add trials to a study (a pilot run, or the grid an ``auto`` axis gets after its pilot).

    Each row: ``optimizer, lr_index, wd_index, lr, wd, seed``. Cells the study already has are
    skipped (the unique constraint decides), so a retried pilot adds nothing twice. The cached
    report is dropped. Returns how many trials were added.
    """
    study = get_study(session, study_id)
    new = [{**r, "phase": phase} for r in rows]
    if not new:
        return 0
    have = {
        tuple(row) for row in session.execute(
            select(Trial.phase, Trial.optimizer, Trial.lr_index, Trial.wd_index, Trial.seed)
            .where(Trial.study_id == study_id, Trial.phase == phase)
        )
    }
    new = [r for r in new if (phase, r["optimizer"], r["lr_index"], r["wd_index"], r["seed"]) not in have]
    if new:
        _insert_trials(session, study_id, new)
        study.report, study.report_computed_at, study.updated_at = None, None, utcnow()
        session.flush()
    return len(new)

