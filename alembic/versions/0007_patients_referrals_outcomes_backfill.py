"""Patient pseudonyms, referral episodes, echo outcomes, monitoring, backfill campaigns.

Adds the keyed pseudonyms to studies, the acquisition characteristics watched
for drift to series, origin and priority (live before backfill) and the
referral episode to jobs, and the tables of referrals, their audited state
changes, echo outcomes, monitoring checks and backfill campaigns.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _queue_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_pseudonym", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("accession_pseudonym", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_studies_patient_pseudonym", ["patient_pseudonym"])
        batch_op.create_index("ix_studies_accession_pseudonym", ["accession_pseudonym"])

    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("manufacturer", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("kvp", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("convolution_kernel", sa.String(length=64), nullable=True))

    op.create_table(
        "referrals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_pseudonym", sa.String(length=64), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("study_date", sa.String(length=16), nullable=True),
        sa.Column("tasks", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("referred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_referrals_job_id_jobs", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_referrals"),
    )
    op.create_index("ix_referrals_patient_pseudonym", "referrals", ["patient_pseudonym"])
    op.create_index("ix_referrals_referred_at", "referrals", ["referred_at"])

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "origin", sa.String(length=16), server_default=sa.text("'live'"), nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("referral_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("referral_repeat", sa.Boolean(), nullable=True))
        batch_op.create_index("ix_jobs_referral_id", ["referral_id"])
        batch_op.create_foreign_key(
            "fk_jobs_referral_id_referrals",
            "referrals",
            ["referral_id"],
            ["id"],
            ondelete="SET NULL",
        )

    op.create_table(
        "referral_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("referral_id", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name="fk_referral_events_referral_id_referrals",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_referral_events"),
    )
    op.create_index("ix_referral_events_referral_id", "referral_events", ["referral_id"])

    op.create_table(
        "echo_outcomes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_key", sa.String(length=128), nullable=False),
        sa.Column("patient_pseudonym", sa.String(length=64), nullable=True),
        sa.Column("accession_pseudonym", sa.String(length=64), nullable=True),
        sa.Column("exam_date", sa.String(length=8), nullable=False),
        sa.Column("measurements", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("match_days", sa.Integer(), nullable=True),
        sa.Column("rel_path", sa.String(length=512), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_echo_outcomes_job_id_jobs", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_echo_outcomes"),
        sa.UniqueConstraint("source_key", name="uq_echo_outcomes_source_key"),
    )
    for column in ("patient_pseudonym", "accession_pseudonym", "job_id"):
        op.create_index(f"ix_echo_outcomes_{column}", "echo_outcomes", [column])

    op.create_table(
        "monitor_checks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("statistic", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("alert", sa.Boolean(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_monitor_checks"),
    )
    op.create_index("ix_monitor_checks_name_checked_at", "monitor_checks", ["name", "checked_at"])

    op.create_table(
        "backfill_campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("archive", sa.String(length=64), nullable=False),
        sa.Column("date_from", sa.String(length=8), nullable=False),
        sa.Column("date_to", sa.String(length=8), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("studies_found", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_backfill_campaigns"),
        sa.UniqueConstraint("name", name="uq_backfill_campaigns_name"),
    )

    op.create_table(
        "backfill_series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(length=16), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("series_description", sa.String(length=64), nullable=True),
        sa.Column("body_part_examined", sa.String(length=16), nullable=True),
        sa.Column("expected_instances", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        *_queue_columns(),
        sa.Column("completed_suboperations", sa.Integer(), nullable=True),
        sa.Column("failed_suboperations", sa.Integer(), nullable=True),
        sa.Column("warning_suboperations", sa.Integer(), nullable=True),
        sa.Column("received_instances", sa.Integer(), nullable=True),
        sa.Column("retrieved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["backfill_campaigns.id"],
            name="fk_backfill_series_campaign_id_backfill_campaigns",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_backfill_series"),
        sa.UniqueConstraint(
            "campaign_id",
            "series_instance_uid",
            name="uq_backfill_series_campaign_id_series_instance_uid",
        ),
    )
    op.create_index("ix_backfill_series_campaign_id", "backfill_series", ["campaign_id"])
    op.create_index(
        "ix_backfill_series_series_instance_uid", "backfill_series", ["series_instance_uid"]
    )
    op.create_index(
        "ix_backfill_series_state_next_attempt_at",
        "backfill_series",
        ["state", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_table("backfill_series")
    op.drop_table("backfill_campaigns")
    op.drop_table("monitor_checks")
    op.drop_table("echo_outcomes")
    op.drop_table("referral_events")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_jobs_referral_id_referrals", type_="foreignkey")
        batch_op.drop_index("ix_jobs_referral_id")
        batch_op.drop_column("referral_repeat")
        batch_op.drop_column("referral_id")
        batch_op.drop_column("priority")
        batch_op.drop_column("origin")
    op.drop_table("referrals")
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_column("convolution_kernel")
        batch_op.drop_column("kvp")
        batch_op.drop_column("manufacturer")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index("ix_studies_accession_pseudonym")
        batch_op.drop_index("ix_studies_patient_pseudonym")
        batch_op.drop_column("accession_pseudonym")
        batch_op.drop_column("patient_pseudonym")
