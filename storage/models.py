"""The agent's database schema: typed SQLAlchemy 2.0 declarative models.

What is stored is bookkeeping, not patient data: UIDs, geometry, paths relative
to the storage root, states and results. Patient name, ID and birth date stay
in the DICOM files and never appear in a column.

Length limits follow DICOM PS3.5 section 6.2: UI (unique identifier) values
are at most 64 characters, AE titles at most 16, CS values at most 16, LO at
most 64.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from storage.types import UTCDateTime, utcnow

# Deterministic constraint names: SQLite batch migrations can only alter or drop
# a constraint that has a name, and both backends then agree on it.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)  # PS3.5 6.2: UI, 64 bytes maximum
AE = String(16)  # PS3.5 6.2: AE, 16 bytes maximum


class JobState(StrEnum):
    """Where a series stands in the work queue (one job per series)."""

    RECEIVING = "receiving"  # instances still arriving
    INCOMPLETE = "incomplete"  # idle but geometry says slices are missing
    SKIPPED = "skipped"  # not eligible for screening; reason says why
    QUEUED = "queued"  # eligible and complete, waiting for a worker
    RUNNING = "running"  # claimed by a worker
    DONE = "done"
    FAILED = "failed"  # will be retried at next_attempt_at
    DEAD = "dead"  # out of attempts; requeue by hand


class ReportState(StrEnum):
    """Delivery state of one report to one destination."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"  # will be retried at next_attempt_at
    DEAD = "dead"


def _state_enum(enum_cls: type[StrEnum]) -> Enum:
    # Stored as VARCHAR(16) holding the value ("receiving"), not a native enum:
    # adding a state then needs no ALTER TYPE on PostgreSQL and no table rebuild
    # on SQLite, and both backends reflect the same type for autogenerate.
    return Enum(
        enum_cls,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda cls: [member.value for member in cls],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    # DA is YYYYMMDD (PS3.5 6.2); room for the legacy "YYYY.MM.DD" form as sent.
    study_date: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    series: Mapped[list[Series]] = relationship(back_populates="study", passive_deletes=True)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    # What eligibility reads, from the first instance recorded (PS3.3 C.7.3.1, C.8.2.1,
    # C.7.6.4): SOP class, Image Type values joined by "\\", Protocol Name and
    # Contrast/Bolus Agent.
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    image_type: Mapped[str | None] = mapped_column(String(128))
    protocol_name: Mapped[str | None] = mapped_column(String(64))
    contrast_agent: Mapped[str | None] = mapped_column(String(64))
    # Requested Procedure Description (0032,1060), a study-level description of the order.
    requested_procedure: Mapped[str | None] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    first_received_at: Mapped[datetime | None]
    last_received_at: Mapped[datetime | None]
    # Geometry the completeness check needs (PS3.3 C.7.6.2: Image Plane Module).
    # Orientation is taken from the first instance recorded; a later instance with
    # another orientation clears orientation_consistent.
    image_orientation: Mapped[list[float] | None] = mapped_column(JSON)
    orientation_consistent: Mapped[bool] = mapped_column(
        Boolean, default=True, server_default=text("true")
    )
    pixel_spacing: Mapped[list[float] | None] = mapped_column(JSON)
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    # Extent of Image Position (Patient) projected on the slice normal, in mm.
    min_slice_position: Mapped[float | None] = mapped_column(Float)
    max_slice_position: Mapped[float | None] = mapped_column(Float)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", passive_deletes=True)
    job: Mapped[Job | None] = relationship(back_populates="series", passive_deletes=True)


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    # Frames in a multi-frame object (Enhanced CT); None for single-frame images.
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    image_position: Mapped[list[float] | None] = mapped_column(JSON)
    slice_position: Mapped[float | None] = mapped_column(Float)
    # Relative to the storage root and derived by the agent, never a raw UID.
    rel_path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # multi-frame objects exceed 2 GiB
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(AE)
    received_at: Mapped[datetime]

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """The work item for one series: completeness, eligibility, inference."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_next_attempt_at", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), unique=True)
    state: Mapped[JobState] = mapped_column(_state_enum(JobState), default=JobState.RECEIVING)
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    next_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None]
    # Outcome of the latest screening: which model, which revision of the
    # results (bumped by each re-screening; part of the report UIDs) and
    # whether the echo referral rule fired, with the tasks that fired it and
    # the rule as applied (agent.report.referral.ReferralDecision): decided
    # once at screening, read by every output.
    model_version: Mapped[str | None] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    echo_referral: Mapped[bool | None] = mapped_column(Boolean)
    referral_tasks: Mapped[list[str] | None] = mapped_column(JSON)
    referral_rule: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    screened_at: Mapped[datetime | None]
    # The image check before screening (hyperct_core.bloodpool): median HU of the
    # blood pool (None when not measured) and the one-line outcome.
    blood_pool_hu: Mapped[float | None] = mapped_column(Float)
    image_check: Mapped[str | None] = mapped_column(Text)

    series: Mapped[Series] = relationship(back_populates="job")
    results: Mapped[list[Result]] = relationship(back_populates="job", passive_deletes=True)
    reports: Mapped[list[Report]] = relationship(back_populates="job", passive_deletes=True)


class Result(Base):
    """One task's probability for one job."""

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("job_id", "task_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    task_index: Mapped[int] = mapped_column(Integer)
    task_name: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    flagged: Mapped[bool] = mapped_column(Boolean)
    model_version: Mapped[str] = mapped_column(String(64))

    job: Mapped[Job] = relationship(back_populates="results")


class Report(Base):
    """One report object (e.g. an SR) and its delivery to one destination."""

    __tablename__ = "reports"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination"),
        Index("ix_reports_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "sr", "text_sr", ...
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    destination: Mapped[str] = mapped_column(String(64))  # a [[destinations]] name
    state: Mapped[ReportState] = mapped_column(
        _state_enum(ReportState), default=ReportState.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    rel_path: Mapped[str | None] = mapped_column(String(512))
    revision: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]

    job: Mapped[Job] = relationship(back_populates="reports")


class AuditEvent(Base):
    """An auditable event: association accepted/rejected, instance received, report sent.

    Deliberately not linked by foreign key: audit rows must outlive the rows
    they describe (retention may delete a study; its audit trail stays).
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(32))
    source_ae: Mapped[str | None] = mapped_column(AE)
    study_instance_uid: Mapped[str | None] = mapped_column(UID)
    series_instance_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
