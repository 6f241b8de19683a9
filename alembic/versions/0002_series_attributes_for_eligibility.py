"""Series attributes eligibility reads; frames per instance for Enhanced CT.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 07:58:40.802128
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("number_of_frames", sa.Integer(), nullable=True))

    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sop_class_uid", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("image_type", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("protocol_name", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("contrast_agent", sa.String(length=64), nullable=True))

    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("study_description", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("study_description")

    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_column("contrast_agent")
        batch_op.drop_column("protocol_name")
        batch_op.drop_column("image_type")
        batch_op.drop_column("sop_class_uid")

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("number_of_frames")
