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
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("plugins", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("waiting_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("waiting_reason")
        batch.drop_column("plugins")
