"""Plugins: the plugins a study uses, and why a queued study waits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

``studies.plugins``: the distribution and version of every installed plugin (task or update rule)
the study names, recorded at submission; a worker claims the study only when it has each of them
at that version. ``studies.waiting_reason``: why the last worker that looked left it queued.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("plugins", sa.JSON(), nullable=True))
    op.add_column("studies", sa.Column("waiting_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35 too), never a batch copy: with foreign keys on,
    # SQLite's batch mode drops and re-creates the table, and the drop cascades to every trial.
    op.drop_column("studies", "waiting_reason")
    op.drop_column("studies", "plugins")
