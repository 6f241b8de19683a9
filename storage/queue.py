"""The work queues: jobs (one per series) and report deliveries.

Workers claim rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so several agent processes sharing one database never take the same row; on
SQLite the writer's ``BEGIN IMMEDIATE`` serialises claims instead. A claim
stamps ``claimed_by``; completing or failing a claimed row checks that stamp,
so a worker whose claim was taken back (stale, or requeued at shutdown)
cannot overwrite the row afterwards.

A job's claim is a lease: ``claimed_at`` is when it was claimed or last
renewed. The worker renews it while it works (:func:`renew_jobs`); a lease
left unrenewed past its length means the worker died, and
:func:`requeue_stale_jobs` gives the job back to the queue.

Every function takes an explicit session; callers commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from storage.models import Job, JobState, Report, ReportState
from storage.types import utcnow

RETRYABLE_JOB_STATES = (JobState.QUEUED, JobState.FAILED)
RETRYABLE_REPORT_STATES = (ReportState.PENDING, ReportState.FAILED)


def backoff(base_seconds: float, attempts: int, cap_seconds: float = 6 * 3600) -> timedelta:
    """Exponential backoff: base, 2 x base, 4 x base, ... capped."""
    return timedelta(seconds=min(cap_seconds, base_seconds * 2 ** max(0, attempts - 1)))


def _retry_or_dead(
    row: Job | Report,
    failed: JobState | ReportState,
    dead: JobState | ReportState,
    error: str,
    max_attempts: int,
    retry_seconds: float,
    now: datetime | None,
) -> None:
    """After a failed attempt: wait out a backoff, or give up after ``max_attempts``."""
    row.last_error = error[:2000]
    row.claimed_by = None
    if row.attempts >= max_attempts:
        row.state = dead
        row.next_attempt_at = None
    else:
        row.state = failed
        row.next_attempt_at = (now or utcnow()) + backoff(retry_seconds, row.attempts)


# -- jobs ------------------------------------------------------------------------


def claim_jobs(session: Session, worker: str, limit: int, now: datetime | None = None) -> list[Job]:
    """Claim up to ``limit`` jobs that are due (queued, or failed and past their backoff)."""
    now = now or utcnow()
    jobs = list(
        session.scalars(
            select(Job)
            .where(
                Job.state.in_(RETRYABLE_JOB_STATES),
                or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now),
            )
            .order_by(Job.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for job in jobs:
        job.state = JobState.RUNNING
        job.claimed_by = worker
        job.claimed_at = now
        job.attempts += 1
    session.flush()
    return jobs


def finish_job(session: Session, job_id: int, worker: str, **values: object) -> bool:
    """Mark a claimed job done with ``values``; False if the claim was taken back."""
    return _close_claim(session, job_id, worker, JobState.DONE, **values)


def skip_job(session: Session, job_id: int, worker: str, reason: str, **values: object) -> bool:
    """Mark a claimed job skipped (not screened) with ``reason``; False if the claim is gone."""
    return _close_claim(session, job_id, worker, JobState.SKIPPED, reason=reason, **values)


def _close_claim(
    session: Session, job_id: int, worker: str, state: JobState, **values: object
) -> bool:
    """End ``worker``'s claim on a running job in ``state``; False if the claim is gone."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.claimed_by == worker)
        .values(
            state=state,
            last_error=None,
            next_attempt_at=None,
            claimed_by=None,
            updated_at=utcnow(),
            **values,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def fail_job(
    session: Session,
    job_id: int,
    worker: str,
    error: str,
    *,
    max_attempts: int,
    retry_seconds: float,
    now: datetime | None = None,
) -> JobState | None:
    """Record a failed attempt: retry after a backoff, or dead after ``max_attempts``."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.state != JobState.RUNNING or job.claimed_by != worker:
        return None
    _retry_or_dead(job, JobState.FAILED, JobState.DEAD, error, max_attempts, retry_seconds, now)
    session.flush()
    return job.state


def release_jobs(session: Session, worker: str, job_ids: Sequence[int] | None = None) -> int:
    """Give claimed jobs back to the queue without counting the attempt (shutdown)."""
    stmt = update(Job).where(Job.state == JobState.RUNNING, Job.claimed_by == worker)
    if job_ids is not None:
        stmt = stmt.where(Job.id.in_(job_ids))
    result = session.execute(
        stmt.values(state=JobState.QUEUED, claimed_by=None, attempts=Job.attempts - 1)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def renew_jobs(
    session: Session, worker: str, job_ids: Sequence[int], now: datetime | None = None
) -> set[int]:
    """Extend the lease on jobs ``worker`` still holds; returns the ids still held."""
    if not job_ids:
        return set()
    held = session.scalars(
        update(Job)
        .where(Job.id.in_(job_ids), Job.state == JobState.RUNNING, Job.claimed_by == worker)
        .values(claimed_at=now or utcnow())
        .returning(Job.id)
    )
    return set(held)


def requeue_stale_jobs(
    session: Session, timeout_seconds: float, now: datetime | None = None
) -> int:
    """Requeue jobs whose lease was not renewed for ``timeout_seconds`` (the worker died)."""
    cutoff = (now or utcnow()) - timedelta(seconds=timeout_seconds)
    result = session.execute(
        update(Job)
        .where(Job.state == JobState.RUNNING, Job.claimed_at < cutoff)
        .values(state=JobState.QUEUED, claimed_by=None, next_attempt_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def requeue_job(session: Session, job: Job, *, reset_attempts: bool = True) -> None:
    """Put a job back in the queue by hand (``jobs retry`` / ``jobs requeue``)."""
    job.state = JobState.QUEUED
    job.claimed_by = None
    job.next_attempt_at = None
    job.last_error = None
    if reset_attempts:
        job.attempts = 0
    session.flush()


# -- reports ---------------------------------------------------------------------


def claim_reports(
    session: Session, worker: str, limit: int, now: datetime | None = None
) -> list[Report]:
    """Claim report deliveries that are due."""
    now = now or utcnow()
    reports = list(
        session.scalars(
            select(Report)
            .where(
                Report.state.in_(RETRYABLE_REPORT_STATES),
                or_(Report.next_attempt_at.is_(None), Report.next_attempt_at <= now),
            )
            .order_by(Report.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for report in reports:
        report.state = ReportState.SENDING
        report.claimed_by = worker
        report.claimed_at = now
        report.attempts += 1
    session.flush()
    return reports


def report_sent(session: Session, report_id: int, worker: str, now: datetime | None = None) -> bool:
    result = session.execute(
        update(Report)
        .where(
            Report.id == report_id, Report.state == ReportState.SENDING, Report.claimed_by == worker
        )
        .values(
            state=ReportState.SENT,
            sent_at=now or utcnow(),
            claimed_by=None,
            last_error=None,
            next_attempt_at=None,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def report_failed(
    session: Session,
    report_id: int,
    worker: str,
    error: str,
    *,
    max_attempts: int,
    retry_seconds: float,
    now: datetime | None = None,
) -> ReportState | None:
    report = session.get(Report, report_id, with_for_update=True)
    if report is None or report.state != ReportState.SENDING or report.claimed_by != worker:
        return None
    _retry_or_dead(
        report, ReportState.FAILED, ReportState.DEAD, error, max_attempts, retry_seconds, now
    )
    session.flush()
    return report.state


def release_reports(session: Session, worker: str) -> int:
    """Give claimed deliveries back (shutdown) without counting the attempt."""
    result = session.execute(
        update(Report)
        .where(Report.state == ReportState.SENDING, Report.claimed_by == worker)
        .values(state=ReportState.PENDING, claimed_by=None, attempts=Report.attempts - 1)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def requeue_stale_reports(
    session: Session, timeout_seconds: float, now: datetime | None = None
) -> int:
    """Deliveries left 'sending' past the timeout by a process that died go back to pending."""
    cutoff = (now or utcnow()) - timedelta(seconds=timeout_seconds)
    result = session.execute(
        update(Report)
        .where(Report.state == ReportState.SENDING, Report.claimed_at < cutoff)
        .values(state=ReportState.PENDING, claimed_by=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
