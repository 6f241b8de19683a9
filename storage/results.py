"""Read-only questions admins ask of the results database.

Shared by the ``results`` and ``studies`` commands and the web dashboard;
every function takes the caller's session (a read-only one where possible,
see :func:`storage.db.make_session_factory`) and returns plain dataclasses,
so nothing here holds a transaction open after it returns.

Patient data is not in the database (see :mod:`storage.models`): nothing here
can return it. Whoever needs a name reads it from the stored DICOM file.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, exists, func, or_, select
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
from storage.types import utcnow

# -- results list --------------------------------------------------------------


@dataclass(frozen=True)
class ResultFilter:
    """What ``results`` narrows to; every field left empty means "any".

    ``since``/``until`` bound when the series was first received
    (``until`` exclusive). ``task`` alone keeps jobs where that task is
    flagged; with ``above`` it keeps jobs where that task's probability is
    greater than ``above``; ``above`` alone keeps jobs where any task is.
    """

    since: datetime | None = None
    until: datetime | None = None
    echo: bool | None = None
    task: str | None = None
    above: float | None = None
    states: tuple[JobState, ...] = ()
    job_ids: tuple[int, ...] = ()
    limit: int | None = None


@dataclass
class ResultRow:
    """One series' way through the pipeline and, once screened, its 25 probabilities."""

    job_id: int
    study_instance_uid: str
    series_instance_uid: str
    study_date: str | None
    series_number: int | None
    series_description: str | None
    instances: int
    received_at: datetime | None
    state: str
    reason: str | None
    attempts: int
    last_error: str | None
    screened_at: datetime | None
    model_version: str | None
    echo_referral: bool | None
    referral_tasks: list[str] = field(default_factory=list)
    flagged_tasks: list[str] = field(default_factory=list)
    # task name -> probability, in the model's task order
    probabilities: dict[str, float] = field(default_factory=dict)


def list_results(session: Session, flt: ResultFilter = ResultFilter()) -> list[ResultRow]:
    """Jobs matching ``flt``, newest received first, with their results."""
    stmt: Select[Job, Series, Study] = (
        select(Job, Series, Study)
        .join(Series, Job.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
    )
    if flt.since is not None:
        stmt = stmt.where(Series.first_received_at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(Series.first_received_at < flt.until)
    if flt.echo is not None:
        stmt = stmt.where(Job.echo_referral.is_(flt.echo))
    if flt.states:
        stmt = stmt.where(Job.state.in_(flt.states))
    if flt.job_ids:
        stmt = stmt.where(Job.id.in_(flt.job_ids))
    if flt.task is not None or flt.above is not None:
        cond = [Result.job_id == Job.id]
        if flt.task is not None:
            cond.append(Result.task_name == flt.task)
        cond.append(
            Result.flagged.is_(True) if flt.above is None else Result.probability > flt.above
        )
        stmt = stmt.where(exists().where(and_(*cond)))
    stmt = stmt.order_by(Series.first_received_at.desc(), Job.id.desc())
    if flt.limit is not None:
        stmt = stmt.limit(flt.limit)
    rows = session.execute(stmt).all()
    results = _results_by_job(session, [job.id for job, _s, _st in rows])
    out = []
    for job, series, study in rows:
        mine = results.get(job.id, [])
        out.append(
            ResultRow(
                job_id=job.id,
                study_instance_uid=study.study_instance_uid,
                series_instance_uid=series.series_instance_uid,
                study_date=study.study_date,
                series_number=series.series_number,
                series_description=series.series_description,
                instances=series.instance_count,
                received_at=series.first_received_at,
                state=JobState(job.state).value,
                reason=job.reason,
                attempts=job.attempts,
                last_error=job.last_error,
                screened_at=job.screened_at,
                model_version=job.model_version,
                echo_referral=job.echo_referral,
                referral_tasks=list(job.referral_tasks or []),
                flagged_tasks=[r.task_name for r in mine if r.flagged],
                probabilities={r.task_name: r.probability for r in mine},
            )
        )
    return out


def _results_by_job(session: Session, job_ids: Sequence[int]) -> dict[int, list[Result]]:
    by_job: dict[int, list[Result]] = defaultdict(list)
    # Chunked: SQLite allows a limited number of bound parameters per statement.
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        for r in session.scalars(
            select(Result)
            .where(Result.job_id.in_(chunk))
            .order_by(Result.job_id, Result.task_index)
        ):
            by_job[r.job_id].append(r)
    return by_job


# -- export and re-import ----------------------------------------------------------

#: Fixed CSV columns, before one ``p_<task>`` column per task.
CSV_COLUMNS = (
    "job_id",
    "study_instance_uid",
    "series_instance_uid",
    "study_date",
    "series_number",
    "series_description",
    "instances",
    "received_at",
    "state",
    "reason",
    "attempts",
    "last_error",
    "screened_at",
    "model_version",
    "echo_referral",
    "referral_tasks",
    "flagged_tasks",
)
_INTS = {"job_id", "series_number", "instances", "attempts"}
_TIMES = {"received_at", "screened_at"}
_LISTS = {"referral_tasks", "flagged_tasks"}


def task_columns(rows: Iterable[ResultRow]) -> list[str]:
    """Task names across ``rows`` in the models' order (first seen first)."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.probabilities))
    return list(names)


def to_record(row: ResultRow, tasks: Sequence[str]) -> dict[str, Any]:
    """A flat, JSON-ready dict: times in ISO 8601, lists as lists, ``p_<task>`` floats."""
    rec: dict[str, Any] = {}
    for col in CSV_COLUMNS:
        value = getattr(row, col)
        rec[col] = value.isoformat() if isinstance(value, datetime) else value
    for task in tasks:
        rec[f"p_{task}"] = row.probabilities.get(task)
    return rec


def write_csv(rows: Sequence[ResultRow], out: io.TextIOBase | Any) -> None:
    """CSV with a header; empty cell = no value; lists joined by ``;``; floats exact (repr)."""
    tasks = task_columns(rows)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *(f"p_{t}" for t in tasks)])
    for row in rows:
        rec = to_record(row, tasks)
        writer.writerow([_cell(v) for v in rec.values()])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return ";".join(value)
    return str(value)


def read_csv(text: str) -> list[ResultRow]:
    """Rows back from :func:`write_csv` output (the inverse, for re-import and checks)."""
    out = []
    for rec in csv.DictReader(io.StringIO(text)):
        values: dict[str, Any] = {}
        for col in CSV_COLUMNS:
            cell = rec[col]
            if col in _LISTS:
                values[col] = cell.split(";") if cell else []
            elif cell == "":
                values[col] = None
            elif col in _INTS:
                values[col] = int(cell)
            elif col in _TIMES:
                values[col] = datetime.fromisoformat(cell)
            elif col == "echo_referral":
                values[col] = cell == "true"
            else:
                values[col] = cell
        probabilities = {
            key[2:]: float(cell) for key, cell in rec.items() if key.startswith("p_") and cell
        }
        out.append(ResultRow(**values, probabilities=probabilities))
    return out


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
