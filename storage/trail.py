"""One study's trail for the ``studies`` command and the dashboard: each series, its job,
results, reports and audit events.

Read-only; patient data is not in the database (see :mod:`storage.models`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from storage.models import (
    AuditEvent,
    Instance,
    Job,
    JobState,
    Report,
    ReportState,
    Result,
    Series,
    Study,
)

# -- one study's trail --------------------------------------------------------------


@dataclass
class ReportRow:
    id: int
    kind: str
    destination: str
    state: str
    attempts: int
    last_error: str | None
    revision: int
    sop_instance_uid: str
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None


@dataclass
class TaskResult:
    index: int
    task: str
    probability: float
    flagged: bool


@dataclass
class SeriesTrail:
    series_instance_uid: str
    series_number: int | None
    series_description: str | None
    modality: str | None
    instances: int
    calling_aes: list[str]
    first_received_at: datetime | None
    last_received_at: datetime | None
    first_instance_path: str | None  # relative to the storage root
    job_id: int | None
    state: str | None
    reason: str | None
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    model_version: str | None
    revision: int
    screened_at: datetime | None
    echo_referral: bool | None
    referral_tasks: list[str]
    results: list[TaskResult]
    reports: list[ReportRow]
    image_check: str | None = None  # the blood-pool check before screening
    #: The referral rule as applied at screening: ``task>=threshold`` each.
    referral_rule: list[str] = field(default_factory=list)
    #: The patient's referral episode, and for a repeat {"of": DA, "mode": ...} as stored.
    referral_id: int | None = None
    referral_repeat: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditRow:
    occurred_at: datetime
    event_type: str
    outcome: str
    source_ae: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    detail: dict[str, Any] | None


@dataclass
class AuditRun:
    """Consecutive audit events alike but for their UIDs (e.g. 300 instances stored)."""

    first_at: datetime
    last_at: datetime
    event_type: str
    outcome: str
    source_ae: str | None
    detail: dict[str, Any] | None
    count: int


def collapse_audit(rows: Sequence[AuditRow]) -> list[AuditRun]:
    """Fold runs of the same event, outcome, AE and detail into one line each."""
    runs: list[AuditRun] = []
    for a in rows:
        last = runs[-1] if runs else None
        if last is not None and (last.event_type, last.outcome, last.source_ae, last.detail) == (
            a.event_type,
            a.outcome,
            a.source_ae,
            a.detail,
        ):
            last.last_at = a.occurred_at
            last.count += 1
        else:
            runs.append(
                AuditRun(
                    a.occurred_at, a.occurred_at, a.event_type, a.outcome, a.source_ae, a.detail, 1
                )
            )
    return runs


@dataclass
class StudyTrail:
    study_instance_uid: str
    study_date: str | None
    study_description: str | None
    created_at: datetime
    updated_at: datetime
    series: list[SeriesTrail]
    audit: list[AuditRow]

    @property
    def echo_referral(self) -> bool:
        return any(s.echo_referral for s in self.series)

    @property
    def audit_runs(self) -> list[AuditRun]:
        return collapse_audit(self.audit)


def study_trail(session: Session, study_instance_uid: str) -> StudyTrail | None:
    """Everything recorded about one study, or None if it is unknown."""
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_instance_uid)
    ).one_or_none()
    if study is None:
        return None
    trails = []
    series_list = session.scalars(
        select(Series).where(Series.study_id == study.id).order_by(Series.series_number, Series.id)
    ).all()
    for series in series_list:
        job = session.scalars(select(Job).where(Job.series_id == series.id)).one_or_none()
        aes = session.scalars(
            select(Instance.calling_ae)
            .where(Instance.series_id == series.id, Instance.calling_ae.is_not(None))
            .distinct()
        ).all()
        first_path = session.scalars(
            select(Instance.rel_path)
            .where(Instance.series_id == series.id)
            .order_by(Instance.id)
            .limit(1)
        ).first()
        results: list[TaskResult] = []
        reports: list[ReportRow] = []
        if job is not None:
            results = [
                TaskResult(r.task_index, r.task_name, r.probability, r.flagged)
                for r in session.scalars(
                    select(Result).where(Result.job_id == job.id).order_by(Result.task_index)
                )
            ]
            reports = [
                ReportRow(
                    r.id,
                    r.kind,
                    r.destination,
                    ReportState(r.state).value,
                    r.attempts,
                    r.last_error,
                    r.revision,
                    r.sop_instance_uid,
                    r.created_at,
                    r.sent_at,
                    r.next_attempt_at,
                )
                for r in session.scalars(
                    select(Report).where(Report.job_id == job.id).order_by(Report.id)
                )
            ]
        trails.append(
            SeriesTrail(
                series_instance_uid=series.series_instance_uid,
                series_number=series.series_number,
                series_description=series.series_description,
                modality=series.modality,
                instances=series.instance_count,
                calling_aes=sorted(a for a in aes if a),
                first_received_at=series.first_received_at,
                last_received_at=series.last_received_at,
                first_instance_path=first_path,
                job_id=job.id if job else None,
                state=JobState(job.state).value if job else None,
                reason=job.reason if job else None,
                attempts=job.attempts if job else 0,
                last_error=job.last_error if job else None,
                next_attempt_at=job.next_attempt_at if job else None,
                model_version=job.model_version if job else None,
                revision=job.revision if job else 0,
                screened_at=job.screened_at if job else None,
                echo_referral=job.echo_referral if job else None,
                referral_tasks=list(job.referral_tasks or []) if job else [],
                results=results,
                reports=reports,
                image_check=job.image_check if job else None,
                referral_rule=_rule(job.referral_rule if job else None),
                referral_id=job.referral_id if job else None,
                referral_repeat=_repeat(job.referral_rule if job else None),
            )
        )
    # Audit rows name a study, one of its series or one of its reports; they are
    # not linked by key (they outlive what they describe), so match on UIDs.
    series_uids = [s.series_instance_uid for s in trails]
    report_uids = [r.sop_instance_uid for s in trails for r in s.reports]
    match = [AuditEvent.study_instance_uid == study_instance_uid]
    if series_uids:
        match.append(AuditEvent.series_instance_uid.in_(series_uids))
    if report_uids:
        match.append(AuditEvent.sop_instance_uid.in_(report_uids))
    audit = [
        AuditRow(
            a.occurred_at,
            a.event_type,
            a.outcome,
            a.source_ae,
            a.series_instance_uid,
            a.sop_instance_uid,
            a.detail,
        )
        for a in session.scalars(
            select(AuditEvent).where(or_(*match)).order_by(AuditEvent.occurred_at, AuditEvent.id)
        )
    ]
    return StudyTrail(
        study.study_instance_uid,
        study.study_date,
        study.study_description,
        study.created_at,
        study.updated_at,
        trails,
        audit,
    )


def _rule(stored: dict[str, Any] | None) -> list[str]:
    """The stored rule (``jobs.referral_rule``) as ``task>=threshold`` strings."""
    thresholds = (stored or {}).get("thresholds") or {}
    return [f"{task}>={float(value):g}" for task, value in thresholds.items()]


def _repeat(stored: dict[str, Any] | None) -> dict[str, Any]:
    """A repeat in the patient's episode as stored with the rule: {"of", "mode"}, else {}."""
    return dict((stored or {}).get("repeat") or {})
