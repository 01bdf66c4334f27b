"""The atlas: ``atlas_entries``, one row per optimizer of each done study with a stored report;
and ``studies.epochs_recorded``, the cheap key of a running study's cached report.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

``GET /atlas`` answers from these rows (``service.store.atlas_rows``) instead of decoding every
stored report. The upgrade fills them in for the done studies whose report is already stored,
from that report, with a frozen copy of ``service.store.atlas_summary`` (a migration is history:
it must keep doing what it did when the code around it changes). Done studies without a stored
report get their entries when their report is first computed.

``studies.epochs_recorded`` counts the curve points written for a study (``service.store.
record_epochs`` adds to it), so the report cache's key (``service.store.report_key``) no longer
counts a running study's curve points on every check; filled in here with that count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """``service.store.atlas_summary`` as of this revision."""
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
            "ridge_slope": _finite(dec.get("ridge_slope")),
            "ridge_slope_ci": [_finite(ci[0]), _finite(ci[1])] if ci else None,
            "best_lr": _finite(best.get("lr")), "best_wd": _finite(best.get("wd")),
            "best_value": _finite(best.get("value")),
            "best_tau_epochs": _finite(params.get("best_tau")) if params.get("tau_unit") == "epochs" else None,
            "seeds": max(seeds, default=0),
        })
    return out


def upgrade() -> None:
    table = op.create_table(
        "atlas_entries",
        sa.Column("study_id", sa.String(length=32), nullable=False),
        sa.Column("optimizer", sa.String(length=32), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("base", sa.String(length=32), nullable=False),
        sa.Column("convention", sa.String(length=16), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("verdict", sa.String(length=32), nullable=False),
        sa.Column("ridge_slope", sa.Double(), nullable=True),
        sa.Column("ridge_slope_ci", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("best_lr", sa.Double(), nullable=True),
        sa.Column("best_wd", sa.Double(), nullable=True),
        sa.Column("best_value", sa.Double(), nullable=True),
        sa.Column("best_tau_epochs", sa.Double(), nullable=True),
        sa.Column("seeds", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_atlas_entries_study_id_studies"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("study_id", "optimizer", name=op.f("pk_atlas_entries")),
    )
    op.create_index("ix_atlas_entries_task_optimizer", "atlas_entries", ["task", "optimizer"])
    op.add_column("studies", sa.Column("epochs_recorded", sa.Integer(), server_default="0", nullable=False))
    op.execute(
        "UPDATE studies SET epochs_recorded = (SELECT count(*) FROM curve_points JOIN trials "
        "ON trials.id = curve_points.trial_id WHERE trials.study_id = studies.id)"
    )

    # Backfill from the reports already stored (text, decoded here: the column type differs by
    # backend and a migration should not depend on the model's).
    studies = sa.table("studies", sa.column("id", sa.String), sa.column("status", sa.String),
                       sa.column("report", sa.Text))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(studies.c.id, sa.cast(studies.c.report, sa.Text))
        .where(studies.c.status == "done", studies.c.report.is_not(None))
    ).all()
    for study_id, text in rows:
        report = json.loads(text) if text else None
        entries = _summary(report) if isinstance(report, dict) else []
        if entries:
            conn.execute(sa.insert(table), [{"study_id": study_id, **e} for e in entries])


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35 too), never a batch copy: with foreign keys on,
    # SQLite's batch mode drops and re-creates the table, and the drop cascades to every trial.
    op.drop_column("studies", "epochs_recorded")
    op.drop_index("ix_atlas_entries_task_optimizer", table_name="atlas_entries")
    op.drop_table("atlas_entries")
