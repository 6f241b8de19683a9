"""What the dashboard and ``/metrics`` show of the whole node: the worklist of recent
studies, failures, throughput per hour and the counts behind ``/metrics``.

Read-only; patient data is not in the database (see :mod:`storage.models`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
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
from storage.queries import counts_by_state
from storage.result_list import ResultFilter, ResultRow, list_results
from storage.trail import ReportRow
from storage.types import utcnow

# -- worklist, failures, throughput ---------------------------------------------------


@dataclass
class WorklistRow:
    study_instance_uid: str
    study_date: str | None
    study_description: str | None
    received_at: datetime
    updated_at: datetime
    series: int
    instances: int
    states: dict[str, int]  # job state -> series in it
    echo_referral: bool
    flagged_tasks: list[str]


def recent_studies(session: Session, limit: int = 100) -> list[WorklistRow]:
    """The most recently active studies, newest first, with their series' states."""
    studies = session.scalars(
        select(Study).order_by(Study.updated_at.desc(), Study.id.desc()).limit(limit)
    ).all()
    ids = [s.id for s in studies]
    per_study: dict[int, list[tuple[Series, Job | None]]] = defaultdict(list)
    if ids:
        for series, job in session.execute(
            select(Series, Job)
            .outerjoin(Job, Job.series_id == Series.id)
            .where(Series.study_id.in_(ids))
        ):
            per_study[series.study_id].append((series, job))
    flagged: dict[int, set[str]] = defaultdict(set)
    if ids:
        for study_id, task in session.execute(
            select(Series.study_id, Result.task_name)
            .join(Job, Job.series_id == Series.id)
            .join(Result, Result.job_id == Job.id)
            .where(Series.study_id.in_(ids), Result.flagged.is_(True))
        ):
            flagged[study_id].add(task)
    out = []
    for study in studies:
        members = per_study.get(study.id, [])
        states: dict[str, int] = defaultdict(int)
        for _series, member in members:
            states[JobState(member.state).value if member else "none"] += 1
        out.append(
            WorklistRow(
                study.study_instance_uid,
                study.study_date,
                study.study_description,
                study.created_at,
                study.updated_at,
                len(members),
                sum(s.instance_count for s, _j in members),
                dict(states),
                any(j is not None and j.echo_referral for _s, j in members),
                sorted(flagged.get(study.id, ())),
            )
        )
    return out


@dataclass
class Failures:
    jobs: list[ResultRow]  # failed, dead, incomplete, or retried at least once
    reports: list[tuple[str, str, ReportRow]]  # (study uid, series uid, report)


def failures(session: Session, limit: int = 200) -> Failures:
    """Jobs and deliveries that failed, are waiting for a retry, or needed more than one try."""
    trouble = (JobState.FAILED, JobState.DEAD, JobState.INCOMPLETE)
    job_ids = session.scalars(
        select(Job.id)
        .where(or_(Job.state.in_(trouble), Job.attempts > 1, Job.last_error.is_not(None)))
        .order_by(Job.updated_at.desc())
        .limit(limit)
    ).all()
    jobs = list_results(session, ResultFilter(job_ids=tuple(job_ids))) if job_ids else []
    report_rows = []
    for report, series_uid, study_uid in session.execute(
        select(Report, Series.series_instance_uid, Study.study_instance_uid)
        .join(Job, Report.job_id == Job.id)
        .join(Series, Job.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .where(
            or_(
                Report.state.in_((ReportState.FAILED, ReportState.DEAD)),
                Report.attempts > 1,
                Report.last_error.is_not(None),
            )
        )
        .order_by(Report.id.desc())
        .limit(limit)
    ):
        report_rows.append(
            (
                study_uid,
                series_uid,
                ReportRow(
                    report.id,
                    report.kind,
                    report.destination,
                    ReportState(report.state).value,
                    report.attempts,
                    report.last_error,
                    report.revision,
                    report.sop_instance_uid,
                    report.created_at,
                    report.sent_at,
                    report.next_attempt_at,
                ),
            )
        )
    return Failures(jobs, report_rows)


@dataclass
class ThroughputBucket:
    start: datetime  # start of the hour, UTC
    instances: int = 0
    screened: int = 0
    reports_sent: int = 0


def throughput(
    session: Session, hours: int = 24, now: datetime | None = None
) -> list[ThroughputBucket]:
    """Per hour over the last ``hours``: instances received, series screened, reports sent."""
    now = now or utcnow()
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    buckets = {
        start + timedelta(hours=i): ThroughputBucket(start + timedelta(hours=i))
        for i in range(hours)
    }
    for attr, column in (
        ("instances", Instance.received_at),
        ("screened", Job.screened_at),
        ("reports_sent", Report.sent_at),
    ):
        hour = _hour(session, column)
        for label, n in session.execute(
            select(hour, func.count()).where(column >= start, column < end).group_by(hour)
        ):
            key = _parse_hour(label, start.tzinfo)
            if key in buckets:
                setattr(buckets[key], attr, n)
    return list(buckets.values())


def _hour(session: Session, column: Any) -> Any:
    # Truncation to the hour is the one thing the two backends spell differently.
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:00:00")
    return func.strftime("%Y-%m-%d %H:00:00", column)


def _parse_hour(label: str, tz: Any) -> datetime:
    return datetime.strptime(label, "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz)


# -- counts behind /metrics ------------------------------------------------------------

_INELIGIBLE = re.compile(r"^not eligible[:;]\s*(\w+):")


def skip_reason(reason: str | None) -> str:
    """A bounded label for a free-text skip reason (Prometheus labels must not explode).

    ``not eligible; chest: ...`` -> ``chest`` (the first failed check),
    ``not chosen: ...`` -> ``not_chosen``, ``contrast by image: ...`` ->
    ``contrast_by_image``, anything else -> ``other``.
    """
    if not reason:
        return "other"
    if m := _INELIGIBLE.match(reason):
        return m.group(1)
    if reason.startswith("not chosen"):
        return "not_chosen"
    if reason.startswith("contrast by image"):
        return "contrast_by_image"
    return "other"


@dataclass
class MetricCounts:
    instances: int
    associations: dict[str, int]  # outcome -> count
    screened: int
    echo_referrals: int
    skipped: dict[str, int]  # skip_reason label -> count
    jobs: dict[str, int]  # state -> count
    reports: dict[str, int]  # state -> count
    delivery_failures: int


def metric_counts(session: Session) -> MetricCounts:
    """What ``/metrics`` exports from the database, so every process reports the same."""
    instances = session.scalar(select(func.count()).select_from(Instance)) or 0
    associations = {
        outcome: n
        for outcome, n in session.execute(
            select(AuditEvent.outcome, func.count())
            .where(AuditEvent.event_type == "association")
            .group_by(AuditEvent.outcome)
        )
    }
    screened = session.scalar(select(func.count()).where(Job.screened_at.is_not(None))) or 0
    referrals = session.scalar(select(func.count()).where(Job.echo_referral.is_(True))) or 0
    skipped: dict[str, int] = defaultdict(int)
    for reason, n in session.execute(
        select(Job.reason, func.count()).where(Job.state == JobState.SKIPPED).group_by(Job.reason)
    ):
        skipped[skip_reason(reason)] += n
    jobs, reports = counts_by_state(session)
    # Every claim counts an attempt; an attempt that did not fail either
    # delivered (sent) or is in flight (sending). Releases at shutdown do not count.
    attempts = session.scalar(select(func.coalesce(func.sum(Report.attempts), 0))) or 0
    failures = int(attempts) - reports[ReportState.SENT.value] - reports[ReportState.SENDING.value]
    return MetricCounts(
        instances,
        associations,
        screened,
        referrals,
        dict(skipped),
        jobs,
        reports,
        max(failures, 0),
    )
