"""The work queues: jobs (one per series) and report deliveries, one implementation.

Both tables carry the same queue columns (``state``, ``attempts``,
``next_attempt_at``, ``last_error``, ``claimed_by``, ``claimed_at``) and the
same four kinds of state: waiting, held by a worker, failed (due again after
a backoff) and dead (out of attempts). :class:`LeasedQueue` is the queue over
one such table; :data:`JOBS` and :data:`DELIVERIES` name each table's states.

Workers claim rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so several agent processes sharing one database never take the same row; on
SQLite the writer's ``BEGIN IMMEDIATE`` serialises claims instead. A claim
stamps ``claimed_by``; ending, failing or renewing a claim checks that stamp,
so a worker whose claim was taken back (lapsed, or released at shutdown)
cannot overwrite the row afterwards.

A claim is a lease: ``claimed_at`` is when it was claimed or last renewed.
The worker renews it while it works (:meth:`LeasedQueue.renew`); a lease left
unrenewed past its length means the worker died, and
:meth:`LeasedQueue.take_over_lapsed` gives the row back to the queue.

Every function takes an explicit session; callers commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from storage.models import BackfillSeries, Job, JobState, Report, ReportState
from storage.types import utcnow

Row = TypeVar("Row", Job, Report, BackfillSeries)

#: What ``last_error`` says of a row whose worker stopped renewing its lease.
LEASE_LAPSED = "lease lapsed: its worker stopped renewing it (stopped or unreachable)"


def backoff(base_seconds: float, attempts: int, cap_seconds: float = 6 * 3600) -> timedelta:
    """Exponential backoff: base, 2 x base, 4 x base, ... capped."""
    return timedelta(seconds=min(cap_seconds, base_seconds * 2 ** max(0, attempts - 1)))


def _claim_order(model: type[Job] | type[Report] | type[BackfillSeries]) -> list[Any]:
    # Jobs, and the deliveries of their reports: live before backfill (priority),
    # then first come first served.
    if model is Job:
        return [Job.priority, Job.id]
    if model is Report:
        priority = select(Job.priority).where(Job.id == Report.job_id).scalar_subquery()
        return [priority, Report.id]
    return [model.id]


class LeasedQueue(Generic[Row]):
    """Claim, lease, retry-with-backoff and dead-letter over one table's rows."""

    def __init__(
        self, model: type[Row], *, waiting: StrEnum, held: StrEnum, failed: StrEnum, dead: StrEnum
    ) -> None:
        self.model: type[Row] = model
        self.waiting = waiting
        self.held = held
        self.failed = failed
        self.dead = dead

    def claim(
        self,
        session: Session,
        worker: str,
        limit: int,
        now: datetime | None = None,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> list[Row]:
        """Claim up to ``limit`` due rows (waiting, or failed and past their backoff).

        ``where``: further conditions a row must meet (a backfill series: its
        campaign is running).
        """
        m = self.model
        now = now or utcnow()
        rows = list(
            session.scalars(
                select(m)
                .where(
                    m.state.in_((self.waiting, self.failed)),
                    or_(m.next_attempt_at.is_(None), m.next_attempt_at <= now),
                    *where,
                )
                .order_by(*_claim_order(m))
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        for row in rows:
            row.state = self.held  # type: ignore[assignment]
            row.claimed_by = worker
            row.claimed_at = now
            row.attempts += 1
        session.flush()
        return rows

    def close(
        self, session: Session, row_id: int, worker: str, state: StrEnum, **values: object
    ) -> bool:
        """End ``worker``'s claim on a row in ``state``; False if the claim is gone."""
        m = self.model
        result = session.execute(
            update(m)
            .where(m.id == row_id, m.state == self.held, m.claimed_by == worker)
            .values(state=state, last_error=None, next_attempt_at=None, claimed_by=None, **values)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def fail(
        self,
        session: Session,
        row_id: int,
        worker: str,
        error: str,
        *,
        max_attempts: int,
        retry_seconds: float,
        now: datetime | None = None,
    ) -> StrEnum | None:
        """Record a failed attempt: due again after a backoff, or dead after ``max_attempts``.

        Returns the new state, or None when ``worker`` no longer holds the row.
        """
        row = session.get(self.model, row_id, with_for_update=True, populate_existing=True)
        if row is None or row.state != self.held or row.claimed_by != worker:
            return None
        row.last_error = error[:2000]
        row.claimed_by = None
        if row.attempts >= max_attempts:
            row.state = self.dead  # type: ignore[assignment]
            row.next_attempt_at = None
        else:
            row.state = self.failed  # type: ignore[assignment]
            row.next_attempt_at = (now or utcnow()) + backoff(retry_seconds, row.attempts)
        session.flush()
        return row.state

    def release(self, session: Session, worker: str, ids: Sequence[int] | None = None) -> int:
        """Give ``worker``'s claims back without counting the attempt (shutdown)."""
        m = self.model
        stmt = update(m).where(m.state == self.held, m.claimed_by == worker)
        if ids is not None:
            stmt = stmt.where(m.id.in_(ids))
        result = session.execute(
            stmt.values(state=self.waiting, claimed_by=None, attempts=m.attempts - 1)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    def renew(
        self, session: Session, worker: str, ids: Sequence[int], now: datetime | None = None
    ) -> set[int]:
        """Extend the lease on rows ``worker`` still holds; returns the ids still held."""
        if not ids:
            return set()
        m = self.model
        held = session.scalars(
            update(m)
            .where(m.id.in_(ids), m.state == self.held, m.claimed_by == worker)
            .values(claimed_at=now or utcnow())
            .returning(m.id)
        )
        return set(held)

    def take_over_lapsed(
        self,
        session: Session,
        lease_seconds: float,
        *,
        max_attempts: int | None = None,
        now: datetime | None = None,
    ) -> int:
        """Give back rows whose lease went unrenewed for ``lease_seconds`` (the worker died).

        The dead worker's attempt counts. With ``max_attempts``, a row that
        has used them all is dead instead: a row that kills every worker
        taking it (out of memory, say) does not go round for ever.
        """
        m = self.model
        cutoff = (now or utcnow()) - timedelta(seconds=lease_seconds)
        lapsed: list[ColumnElement[bool]] = [m.state == self.held, m.claimed_at < cutoff]
        taken = 0
        if max_attempts is not None:
            taken += self._lapse(session, [*lapsed, m.attempts >= max_attempts], self.dead)
        taken += self._lapse(session, lapsed, self.waiting)
        return taken

    def _lapse(self, session: Session, where: Sequence[ColumnElement[bool]], state: StrEnum) -> int:
        result = session.execute(
            update(self.model)
            .where(*where)
            .values(state=state, claimed_by=None, next_attempt_at=None, last_error=LEASE_LAPSED)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    def requeue(self, session: Session, row: Row, *, reset_attempts: bool = True) -> None:
        """Put a row back in the queue by hand (an administrator's retry or resend)."""
        row.state = self.waiting  # type: ignore[assignment]
        row.claimed_by = None
        row.next_attempt_at = None
        row.last_error = None
        if reset_attempts:
            row.attempts = 0
        session.flush()

    def lease_lapsed(self, row: Row, lease_seconds: float, now: datetime | None = None) -> bool:
        """Whether a held row's lease has run out (its worker is presumed gone)."""
        if row.state != self.held or row.claimed_at is None:
            return False
        return row.claimed_at < (now or utcnow()) - timedelta(seconds=lease_seconds)


JOBS = LeasedQueue(
    Job, waiting=JobState.QUEUED, held=JobState.RUNNING, failed=JobState.FAILED, dead=JobState.DEAD
)
DELIVERIES = LeasedQueue(
    Report,
    waiting=ReportState.PENDING,
    held=ReportState.SENDING,
    failed=ReportState.FAILED,
    dead=ReportState.DEAD,
)


# -- jobs: the names the pipeline and the commands call ---------------------------


def claim_jobs(session: Session, worker: str, limit: int, now: datetime | None = None) -> list[Job]:
    """Claim up to ``limit`` jobs that are due (queued, or failed and past their backoff)."""
    return JOBS.claim(session, worker, limit, now)


def finish_job(session: Session, job_id: int, worker: str, **values: object) -> bool:
    """Mark a claimed job done with ``values``; False if the claim was taken back."""
    return JOBS.close(session, job_id, worker, JobState.DONE, **values)


def skip_job(session: Session, job_id: int, worker: str, reason: str, **values: object) -> bool:
    """Mark a claimed job skipped (not screened) with ``reason``; False if the claim is gone."""
    return JOBS.close(session, job_id, worker, JobState.SKIPPED, reason=reason, **values)


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
    state = JOBS.fail(
        session, job_id, worker, error, max_attempts=max_attempts, retry_seconds=retry_seconds,
        now=now,
    )  # fmt: skip
    return None if state is None else JobState(state)


def release_jobs(session: Session, worker: str, job_ids: Sequence[int] | None = None) -> int:
    """Give claimed jobs back to the queue without counting the attempt (shutdown)."""
    return JOBS.release(session, worker, job_ids)


def renew_jobs(
    session: Session, worker: str, job_ids: Sequence[int], now: datetime | None = None
) -> set[int]:
    """Extend the lease on jobs ``worker`` still holds; returns the ids still held."""
    return JOBS.renew(session, worker, job_ids, now)


def requeue_stale_jobs(
    session: Session,
    timeout_seconds: float,
    now: datetime | None = None,
    *,
    max_attempts: int | None = None,
) -> int:
    """Requeue jobs whose lease was not renewed for ``timeout_seconds`` (the worker died)."""
    return JOBS.take_over_lapsed(session, timeout_seconds, max_attempts=max_attempts, now=now)


def requeue_job(session: Session, job: Job, *, reset_attempts: bool = True) -> None:
    """Put a job back in the queue by hand (``jobs retry`` / ``jobs requeue``)."""
    JOBS.requeue(session, job, reset_attempts=reset_attempts)


# -- deliveries -----------------------------------------------------------------


def claim_reports(
    session: Session, worker: str, limit: int, now: datetime | None = None
) -> list[Report]:
    """Claim report deliveries that are due."""
    return DELIVERIES.claim(session, worker, limit, now)


def report_sent(session: Session, report_id: int, worker: str, now: datetime | None = None) -> bool:
    """Mark a claimed delivery sent; False if the claim was taken back."""
    return DELIVERIES.close(session, report_id, worker, ReportState.SENT, sent_at=now or utcnow())


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
    """Record a failed send: retry after a backoff, or dead after ``max_attempts``."""
    state = DELIVERIES.fail(
        session, report_id, worker, error, max_attempts=max_attempts,
        retry_seconds=retry_seconds, now=now,
    )  # fmt: skip
    return None if state is None else ReportState(state)


def release_reports(session: Session, worker: str, report_ids: Sequence[int] | None = None) -> int:
    """Give claimed deliveries back (shutdown) without counting the attempt."""
    return DELIVERIES.release(session, worker, report_ids)


def renew_reports(
    session: Session, worker: str, report_ids: Sequence[int], now: datetime | None = None
) -> set[int]:
    """Extend the lease on deliveries ``worker`` is sending; returns the ids still held."""
    return DELIVERIES.renew(session, worker, report_ids, now)


def take_over_lapsed_reports(
    session: Session,
    lease_seconds: float,
    now: datetime | None = None,
    *,
    max_attempts: int | None = None,
) -> int:
    """Deliveries whose sender stopped renewing their lease go back to pending."""
    return DELIVERIES.take_over_lapsed(session, lease_seconds, max_attempts=max_attempts, now=now)
