"""Screening outcome on jobs (model version, revision, echo referral); report claims.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 08:05:57.289517
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_version", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("revision", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("echo_referral", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("referral_tasks", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("screened_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("revision", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("revision")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("screened_at")
        batch_op.drop_column("referral_tasks")
        batch_op.drop_column("echo_referral")
        batch_op.drop_column("revision")
        batch_op.drop_column("model_version")
