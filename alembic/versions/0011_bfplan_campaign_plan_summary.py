"""What planning a backfill campaign found besides its series: queries, splits, malformed answers.

Revision ID: 0011
Revises: 0007
Create Date: 2026-11-29 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("backfill_campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plan_summary", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backfill_campaigns", schema=None) as batch_op:
        batch_op.drop_column("plan_summary")
