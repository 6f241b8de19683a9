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


class JobOrigin(StrEnum):
    LIVE = "live"  # sent by PACS as it happens
    BACKFILL = "backfill"  # retrieved from an archive by a backfill campaign


#: Queue priorities (lower is claimed first).
LIVE_PRIORITY = 0
BACKFILL_PRIORITY = 10


class ReferralState(StrEnum):
    """What became of an echo recommendation (one referral per patient episode)."""

    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    ECHO_DONE = "echo_done"
    DECLINED = "declined"
    NOT_INDICATED = "not_indicated"


class CampaignState(StrEnum):
    """A backfill campaign's life: planned from C-FIND, then retrieved while running."""

    PLANNING = "planning"
    PLANNED = "planned"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    DONE = "done"
    FAILED = "failed"  # planning failed; last_error says why


class BackfillState(StrEnum):
    """One series of a campaign, from the query to the screening."""

    PLANNED = "planned"  # eligible by its query attributes: to retrieve
    SKIPPED = "skipped"  # not eligible by its query attributes; reason says why
    ALREADY = "already"  # already stored, screened or planned elsewhere: never retrieved
    RETRIEVING = "retrieving"  # held by a retriever (leased)
    RETRIEVED = "retrieved"  # every instance arrived; the normal pipeline takes over
    FAILED = "failed"  # refused, partial or archive down: retried after a backoff
    DEAD = "dead"  # out of attempts
    CANCELLED = "cancelled"


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
    # Keyed pseudonyms (HMAC-SHA256 hex with the installation's key, which is never
    # stored here) of (Issuer of Patient ID, Patient ID) and of Accession Number:
    # they link a patient's CTs, referrals and echo outcomes without patient data.
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)
    accession_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)
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
    # Acquisition characteristics watched for drift (PS3.3 C.7.5.1, C.8.2.1):
    # Manufacturer, KVP, Convolution Kernel (values joined by "\\").
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    kvp: Mapped[float | None] = mapped_column(Float)
    convolution_kernel: Mapped[str | None] = mapped_column(String(64))

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
    # Where the series came from and its place in the queue: live (pushed by
    # PACS) screens before backfill (retrieved from an archive); lower first.
    origin: Mapped[str] = mapped_column(
        String(16), default=JobOrigin.LIVE, server_default=text("'live'")
    )
    priority: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    # The patient episode this screening belongs to, when it recommended an
    # echo: a new referral, or (referral_repeat) one raised within repeat_days.
    referral_id: Mapped[int | None] = mapped_column(
        ForeignKey("referrals.id", ondelete="SET NULL", use_alter=True), index=True
    )
    referral_repeat: Mapped[bool | None] = mapped_column(Boolean)

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


class Referral(Base):
    """One echo recommendation per patient episode, and what became of it."""

    __tablename__ = "referrals"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)
    # The screening that raised it (kept when the job is deleted: the referral stays).
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    study_date: Mapped[str | None] = mapped_column(String(16))
    tasks: Mapped[list[str] | None] = mapped_column(JSON)
    state: Mapped[ReferralState] = mapped_column(
        _state_enum(ReferralState), default=ReferralState.NEW
    )
    referred_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    events: Mapped[list[ReferralEvent]] = relationship(
        back_populates="referral", passive_deletes=True, order_by="ReferralEvent.id"
    )


class ReferralEvent(Base):
    """An audited change of a referral's state: who, when, from what to what, why."""

    __tablename__ = "referral_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    referral_id: Mapped[int] = mapped_column(
        ForeignKey("referrals.id", ondelete="CASCADE"), index=True
    )
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)

    referral: Mapped[Referral] = relationship(back_populates="events")


class EchoOutcome(Base):
    """An echocardiogram's result, its labels for the echo tasks and the CT it matches."""

    __tablename__ = "echo_outcomes"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # "csv" | "sr"
    # Re-importing the same row or receiving the same SR again changes nothing.
    source_key: Mapped[str] = mapped_column(String(128), unique=True)
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)
    accession_pseudonym: Mapped[str | None] = mapped_column(String(64), index=True)
    exam_date: Mapped[str] = mapped_column(String(8))  # DA, YYYYMMDD
    measurements: Mapped[dict[str, Any]] = mapped_column(JSON)
    # task name -> 1 / 0; a task whose measurements are missing is absent.
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    match_days: Mapped[int | None] = mapped_column(Integer)  # echo date - CT date
    rel_path: Mapped[str | None] = mapped_column(String(512))  # a received SR, as stored
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MonitorCheck(Base):
    """One drift or performance check: a statistic against its alert threshold."""

    __tablename__ = "monitor_checks"
    __table_args__ = (Index("ix_monitor_checks_name_checked_at", "name", "checked_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))  # "score" | "input" | "performance"
    name: Mapped[str] = mapped_column(String(64))  # a task or an input characteristic
    statistic: Mapped[str] = mapped_column(String(16))  # "psi" | "ks" | "auc" ...
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    alert: Mapped[bool] = mapped_column(Boolean, default=False)
    n: Mapped[int] = mapped_column(default=0)
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class BackfillCampaign(Base):
    """A retrospective screening of one archive over a date range."""

    __tablename__ = "backfill_campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    archive: Mapped[str] = mapped_column(String(64))  # an [[archives]] name
    date_from: Mapped[str] = mapped_column(String(8))  # DA, inclusive
    date_to: Mapped[str] = mapped_column(String(8))
    filters: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[CampaignState] = mapped_column(
        _state_enum(CampaignState), default=CampaignState.PLANNING
    )
    studies_found: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    # What planning met besides series (storage.backfill.PlanSummary): queries, days
    # split below the archive's result limit, answers left out as malformed.
    plan_summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    series: Mapped[list[BackfillSeries]] = relationship(
        back_populates="campaign", passive_deletes=True
    )


class BackfillSeries(Base):
    """One series a campaign found, judged from its query attributes, and its retrieve.

    Carries the queue columns of :mod:`storage.queue`, so retrieves are leased,
    retried with backoff and dead-lettered like jobs and deliveries.
    """

    __tablename__ = "backfill_series"
    __table_args__ = (
        UniqueConstraint("campaign_id", "series_instance_uid"),
        Index("ix_backfill_series_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("backfill_campaigns.id", ondelete="CASCADE"), index=True
    )
    study_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    study_date: Mapped[str | None] = mapped_column(String(16))
    modality: Mapped[str | None] = mapped_column(String(16))
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[BackfillState] = mapped_column(
        _state_enum(BackfillState), default=BackfillState.PLANNED
    )
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None]
    # The last retrieve's sub-operation counts (PS3.4 C.4.2.1.6 / C.4.3.1.3).
    completed_suboperations: Mapped[int | None] = mapped_column(Integer)
    failed_suboperations: Mapped[int | None] = mapped_column(Integer)
    warning_suboperations: Mapped[int | None] = mapped_column(Integer)
    received_instances: Mapped[int | None] = mapped_column(Integer)
    retrieved_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    campaign: Mapped[BackfillCampaign] = relationship(back_populates="series")
