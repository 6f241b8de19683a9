"""Requested Procedure Description on series; the blood-pool image check on jobs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 07:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requested_procedure", sa.String(length=64), nullable=True))

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("blood_pool_hu", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("image_check", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("image_check")
        batch_op.drop_column("blood_pool_hu")

    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_column("requested_procedure")
