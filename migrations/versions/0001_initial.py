"""Initial schema: studies, trials, curve points, API tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

A migration is frozen history: it spells out its types instead of importing ``service.models``
(``service.models.UTCDateTime`` is a ``DateTime(timezone=True)`` underneath).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = "('finite', 'nan', 'inf', '-inf')"


def _timestamp(name: str, nullable: bool) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _metrics(table: str) -> list:
    """The three metrics, each as a DOUBLE (NULL unless finite) plus its kind."""
    items: list = []
    for m in ("train_loss", "val_loss", "val_error"):
        items += [
            sa.Column(m, sa.Double(), nullable=True),
            sa.Column(f"{m}_kind", sa.String(length=8), nullable=True),
            sa.CheckConstraint(
                f"{m}_kind IS NULL OR {m}_kind IN {KINDS}", name=op.f(f"ck_{table}_{m}_kind")
            ),
        ]
    return items


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        _timestamp("created_at", False),
        _timestamp("revoked_at", True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_name"), "api_tokens", ["name"])

    op.create_table(
        "studies",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        _timestamp("created_at", False),
        _timestamp("started_at", True),
        _timestamp("finished_at", True),
        _timestamp("updated_at", False),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        _timestamp("lease_expires_at", True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("trials_total", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        _timestamp("report_computed_at", True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'cancelled')",
            name=op.f("ck_studies_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    op.create_index("ix_studies_created_at", "studies", ["created_at"])
    op.create_index("ix_studies_owner", "studies", ["owner"])
    op.create_index("ix_studies_queue", "studies", ["status", "priority", "created_at"])

    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_id", sa.String(length=32), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("optimizer", sa.String(length=32), nullable=False),
        sa.Column("lr_index", sa.Integer(), nullable=False),
        sa.Column("wd_index", sa.Integer(), nullable=False),
        sa.Column("lr", sa.Double(), nullable=False),
        sa.Column("wd", sa.Double(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        *_metrics("trials"),
        sa.Column("diverged", sa.Boolean(), nullable=False),
        sa.Column("diverged_epoch", sa.Integer(), nullable=True),
        _timestamp("started_at", True),
        _timestamp("finished_at", True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("phase IN ('grid', 'pilot')", name=op.f("ck_trials_phase")),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed')", name=op.f("ck_trials_status")
        ),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_trials_study_id_studies"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trials")),
        # Each trial exactly once: a property of the schema.
        sa.UniqueConstraint(
            "study_id", "phase", "optimizer", "lr_index", "wd_index", "seed", name="uq_trials_cell"
        ),
    )
    op.create_index("ix_trials_study_id_status", "trials", ["study_id", "status"])

    op.create_table(
        "curve_points",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        *_metrics("curve_points"),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trials.id"], name=op.f("fk_curve_points_trial_id_trials"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("trial_id", "epoch", name=op.f("pk_curve_points")),
    )


def downgrade() -> None:
    op.drop_table("curve_points")
    op.drop_index("ix_trials_study_id_status", table_name="trials")
    op.drop_table("trials")
    op.drop_index("ix_studies_queue", table_name="studies")
    op.drop_index("ix_studies_owner", table_name="studies")
    op.drop_index("ix_studies_created_at", table_name="studies")
    op.drop_table("studies")
    op.drop_index(op.f("ix_api_tokens_name"), table_name="api_tokens")
    op.drop_table("api_tokens")
