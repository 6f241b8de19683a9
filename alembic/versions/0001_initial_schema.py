"""Initial schema: studies, series, instances, jobs, results, reports, audit events.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Written out by hand rather than importing the models, so this revision keeps
creating exactly this schema however the models change later. Timestamps are
``timestamptz`` on PostgreSQL and UTC text on SQLite (storage.types.UTCDateTime
does the conversion); states are VARCHAR(16) holding the enum value.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UID = sa.String(64)
AE = sa.String(16)


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _state(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=False, length=16)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", UID, nullable=False),
        sa.Column("study_date", sa.String(16), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_studies"),
        sa.UniqueConstraint("study_instance_uid", name="uq_studies_study_instance_uid"),
    )

    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", UID, nullable=False),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(64), nullable=True),
        sa.Column("body_part_examined", sa.String(16), nullable=True),
        sa.Column("instance_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _ts("first_received_at", nullable=True),
        _ts("last_received_at", nullable=True),
        sa.Column("image_orientation", sa.JSON(), nullable=True),
        sa.Column(
            "orientation_consistent", sa.Boolean(), server_default=sa.text("true"), nullable=False
        ),
        sa.Column("pixel_spacing", sa.JSON(), nullable=True),
        sa.Column("slice_thickness", sa.Float(), nullable=True),
        sa.Column("min_slice_position", sa.Float(), nullable=True),
        sa.Column("max_slice_position", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name="fk_series_study_id_studies", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_series"),
        sa.UniqueConstraint("series_instance_uid", name="uq_series_series_instance_uid"),
    )
    op.create_index("ix_series_study_id", "series", ["study_id"])

    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("sop_class_uid", UID, nullable=False),
        sa.Column("transfer_syntax_uid", UID, nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("image_position", sa.JSON(), nullable=True),
        sa.Column("slice_position", sa.Float(), nullable=True),
        sa.Column("rel_path", sa.String(512), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("calling_ae", AE, nullable=True),
        _ts("received_at"),
        sa.ForeignKeyConstraint(
            ["series_id"], ["series.id"], name="fk_instances_series_id_series", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_instances"),
        sa.UniqueConstraint("sop_instance_uid", name="uq_instances_sop_instance_uid"),
    )
    op.create_index("ix_instances_series_id", "instances", ["series_id"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column(
            "state",
            _state(
                "jobstate",
                "receiving",
                "incomplete",
                "skipped",
                "queued",
                "running",
                "done",
                "failed",
                "dead",
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("next_attempt_at", nullable=True),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        _ts("claimed_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["series_id"], ["series.id"], name="fk_jobs_series_id_series", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("series_id", name="uq_jobs_series_id"),
    )
    # Workers poll "state = queued/failed and next_attempt_at <= now".
    op.create_index("ix_jobs_state_next_attempt_at", "jobs", ["state", "next_attempt_at"])

    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("task_index", sa.Integer(), nullable=False),
        sa.Column("task_name", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_results_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_results"),
        sa.UniqueConstraint("job_id", "task_name", name="uq_results_job_id_task_name"),
    )

    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sop_instance_uid", UID, nullable=False),
        sa.Column("series_instance_uid", UID, nullable=False),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column(
            "state",
            _state("reportstate", "pending", "sending", "sent", "failed", "dead"),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("rel_path", sa.String(512), nullable=True),
        _ts("created_at"),
        _ts("sent_at", nullable=True),
        _ts("next_attempt_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_reports_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_reports"),
        sa.UniqueConstraint(
            "sop_instance_uid", "destination", name="uq_reports_sop_instance_uid_destination"
        ),
    )
    op.create_index("ix_reports_job_id", "reports", ["job_id"])
    # The sender polls "state = pending/failed and next_attempt_at <= now".
    op.create_index("ix_reports_state_next_attempt_at", "reports", ["state", "next_attempt_at"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        _ts("occurred_at"),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("source_ae", AE, nullable=True),
        sa.Column("study_instance_uid", UID, nullable=True),
        sa.Column("series_instance_uid", UID, nullable=True),
        sa.Column("sop_instance_uid", UID, nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"])
    op.create_index("ix_audit_events_event_type", "audit_events", ["event_type"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("reports")
    op.drop_table("results")
    op.drop_table("jobs")
    op.drop_table("instances")
    op.drop_table("series")
    op.drop_table("studies")
