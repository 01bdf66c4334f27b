"""The study store's tables (SQLAlchemy 2 declarative models).

Five tables: ``studies`` (one submitted spec and its queue state), ``trials`` (one row per grid
cell x seed, the unit a worker trains), ``curve_points`` (per-epoch metrics of a trial),
``atlas_entries`` (per done study and optimizer, the summary ``GET /atlas`` reads) and
``api_tokens``. The schema itself keeps concurrent workers honest:

* ``UNIQUE(study_id, phase, optimizer, lr_index, wd_index, seed)`` makes "each trial exactly once"
  a property of the database, not of careful code;
* ``PRIMARY KEY(trial_id, epoch)`` makes recording an epoch an idempotent upsert;
* ``ix_studies_queue(status, priority, created_at)`` serves the claim query.

Diverged runs are data: a metric is stored as a ``DOUBLE`` that is NULL
unless finite, plus a ``*_kind`` column in {``finite``, ``nan``, ``inf``, ``-inf``} (NULL kind:
not measured yet). Neither SQLite (which turns NaN into NULL) nor JSON can carry NaN, so the
kind is explicit; on the Python side the attribute without suffix (``trial.val_loss``) reads and
writes plain floats, NaN and infinities included.

Schema changes go through Alembic revisions in ``migrations/`` only; never ``create_all``.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

STUDY_STATUSES = ("queued", "running", "done", "failed", "cancelled")
#: A study in one of these will not change any more (except by deletion).
FINAL_STUDY_STATUSES = ("done", "failed", "cancelled")
TRIAL_STATUSES = ("queued", "running", "done", "failed")
PHASES = ("grid", "pilot")
VALUE_KINDS = ("finite", "nan", "inf", "-inf")
METRICS = ("train_loss", "val_loss", "val_error")

# Deterministic constraint names, so that Alembic revisions and both backends agree.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_study_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC
    (which keeps its text comparison in ``lease_expires_at < now`` correct) and read back as
    aware UTC. Naive values coming in are taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- non-finite floats: value + kind ---------------------------------------------------------

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def encode_float(x: float | None) -> tuple[float | None, str | None]:
    """``x`` as (column value, kind): NaN -> (None, "nan"), -inf -> (None, "-inf"), None -> (None, None)."""
    if x is None:
        return None, None
    x = float(x)
    if math.isfinite(x):
        return x, "finite"
    if math.isnan(x):
        return None, "nan"
    return None, "inf" if x > 0 else "-inf"


def decode_float(value: float | None, kind: str | None) -> float | None:
    """The inverse of :func:`encode_float`."""
    if kind is None:
        return None
    if kind == "finite":
        return float(value) if value is not None else None
    return _NONFINITE[kind]


def metric_values(**metrics: float | None) -> dict[str, Any]:
    """Column values for an INSERT/UPDATE: ``val_loss=nan`` -> ``{"val_loss_value": None, "val_loss_kind": "nan"}``."""
    out: dict[str, Any] = {}
    for name, x in metrics.items():
        out[f"{name}_value"], out[f"{name}_kind"] = encode_float(x)
    return out


def _metric_property(name: str) -> property:
    def fget(self: Any) -> float | None:
        return decode_float(getattr(self, f"{name}_value"), getattr(self, f"{name}_kind"))

    def fset(self: Any, x: float | None) -> None:
        value, kind = encode_float(x)
        setattr(self, f"{name}_value", value)
        setattr(self, f"{name}_kind", kind)

    return property(fget, fset, doc=f"{name} as a float (NaN and +-inf included); None until measured.")


def _metric_columns(name: str) -> tuple[Mapped[float | None], Mapped[str | None]]:
    return (
        mapped_column(name, Double, nullable=True),
        mapped_column(f"{name}_kind", String(8), nullable=True),
    )


def _kind_checks() -> tuple[CheckConstraint, ...]:
    kinds = ", ".join(f"'{k}'" for k in VALUE_KINDS)
    return tuple(
        CheckConstraint(f"{m}_kind IS NULL OR {m}_kind IN ({kinds})", name=f"{m}_kind")
        for m in METRICS
    )


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# --- tables ----------------------------------------------------------------------------------


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Study(Base):
    """A submitted study: its spec, its place in the queue and the lease of the worker running it."""

    __tablename__ = "studies"
    __table_args__ = (
        CheckConstraint(_in("status", STUDY_STATUSES), name="status"),
        Index("ix_studies_queue", "status", "priority", "created_at"),
        Index("ix_studies_created_at", "created_at"),
        Index("ix_studies_owner", "owner"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_study_id)
    name: Mapped[str] = mapped_column(String(200))
    #: The normalized spec (every default filled in; see ``service.schemas.StudySpec.stored``).
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    owner: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # The lease: a worker holds the study while lease_expires_at is in the future.
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Grid-phase trials the study will have, exact from submission on (also for "auto" axes).
    trials_total: Mapped[int] = mapped_column(Integer)
    #: The report JSON, computed once when the study is done and served from here afterwards.
    #: Deferred: tens of kB per done study, which listing or reading studies must not decode.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True, deferred=True)
    report_computed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The installed plugins the study names, ``{"task:NAME" | "rule:NAME": {"distribution", "version"}}``
    #: (None: built-ins only), recorded at submission; a worker claims the study only with each of
    #: them installed at that version (``service.store.claim_study``).
    plugins: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: Why the last worker that looked at this queued study left it (a missing or different plugin).
    waiting_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Curve points written for the study's trials so far (each upsert counts, a retried epoch
    #: again): with the trial counts, the cheap key of a running study's cached report.
    epochs_recorded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    def __repr__(self) -> str:
        return f"Study(id={self.id!r}, name={self.name!r}, status={self.status!r})"


class Trial(Base):
    """One grid cell x seed of one optimizer: the unit of work, trained once."""

    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint(
            "study_id", "phase", "optimizer", "lr_index", "wd_index", "seed", name="uq_trials_cell"
        ),
        Index("ix_trials_study_id_status", "study_id", "status"),
        CheckConstraint(_in("status", TRIAL_STATUSES), name="status"),
        CheckConstraint(_in("phase", PHASES), name="phase"),
        *_kind_checks(),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(String(32), ForeignKey("studies.id", ondelete="CASCADE"))
    #: "grid" for the study's grid; "pilot" for the coarse run that places an "auto" grid.
    phase: Mapped[str] = mapped_column(String(8), default="grid")
    optimizer: Mapped[str] = mapped_column(String(32))
    lr_index: Mapped[int] = mapped_column(Integer)
    wd_index: Mapped[int] = mapped_column(Integer)
    lr: Mapped[float] = mapped_column(Double)
    wd: Mapped[float] = mapped_column(Double)
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    train_loss_value, train_loss_kind = _metric_columns("train_loss")
    val_loss_value, val_loss_kind = _metric_columns("val_loss")
    val_error_value, val_error_kind = _metric_columns("val_error")
    diverged: Mapped[bool] = mapped_column(Boolean, default=False)
    diverged_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    train_loss = _metric_property("train_loss")
    val_loss = _metric_property("val_loss")
    val_error = _metric_property("val_error")

    def __repr__(self) -> str:
        return (
            f"Trial(id={self.id!r}, {self.optimizer} lr={self.lr:g} wd={self.wd:g} "
            f"seed={self.seed}, status={self.status!r})"
        )


class CurvePoint(Base):
    """A trial's metrics after one epoch (epochs count from 0, as the trainer writes them)."""

    __tablename__ = "curve_points"
    __table_args__ = _kind_checks()

    trial_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss_value, train_loss_kind = _metric_columns("train_loss")
    val_loss_value, val_loss_kind = _metric_columns("val_loss")
    val_error_value, val_error_kind = _metric_columns("val_error")

    train_loss = _metric_property("train_loss")
    val_loss = _metric_property("val_loss")
    val_error = _metric_property("val_error")


class AtlasEntry(Base):
    """One optimizer of one done study as the atlas (``GET /atlas``) shows it: a compact summary
    of its stored report, written with the report (``service.store.cache_report``), so the atlas
    of every finished study is one indexed query, not a thousand reports to decode.

    An entry is current while its study is ``done`` with a stored report; a study whose report is
    dropped (extended, run again) has its entries replaced when the new report is stored."""

    __tablename__ = "atlas_entries"
    __table_args__ = (Index("ix_atlas_entries_task_optimizer", "task", "optimizer"),)

    study_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    optimizer: Mapped[str] = mapped_column(String(32), primary_key=True)
    task: Mapped[str] = mapped_column(String(64))
    base: Mapped[str] = mapped_column(String(32))
    convention: Mapped[str] = mapped_column(String(16))
    metric: Mapped[str] = mapped_column(String(16))
    #: ``decision.verdict``: separable, no_wd_effect, inconclusive, coupled, not_enough_data.
    verdict: Mapped[str] = mapped_column(String(32))
    ridge_slope: Mapped[float | None] = mapped_column(Double, nullable=True)
    #: ``[lo, hi]`` (a null end: unbounded), or null without a ridge fit.
    ridge_slope_ci: Mapped[list[float | None] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    best_lr: Mapped[float | None] = mapped_column(Double, nullable=True)
    best_wd: Mapped[float | None] = mapped_column(Double, nullable=True)
    best_value: Mapped[float | None] = mapped_column(Double, nullable=True)
    best_tau_epochs: Mapped[float | None] = mapped_column(Double, nullable=True)
    #: Seeds with a finished trial (the most any cell of the grid has).
    seeds: Mapped[int] = mapped_column(Integer)


class ApiToken(Base):
    """An API token: only its SHA-256 is stored; ``name`` is the owner of what it submits."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
