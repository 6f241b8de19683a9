"""Job and delivery queues: one behaviour table, run on both queues and both backends.

Claims, backoff, dead letters, release at shutdown, leases renewed and lapsed,
and a late worker refused once its row was taken over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage.db import make_session_factory
from storage.ingest import record_instance
from storage.models import BACKFILL_PRIORITY, Job, JobOrigin, JobState, Report, ReportState
from storage.queue import (
    DELIVERIES,
    JOBS,
    LEASE_LAPSED,
    LeasedQueue,
    backoff,
    claim_jobs,
    claim_reports,
    finish_job,
    release_jobs,
    release_reports,
    renew_jobs,
    renew_reports,
    report_failed,
    report_sent,
    requeue_stale_jobs,
    take_over_lapsed_reports,
)
from storage.types import utcnow
from tests.storage.storage_records import make_record


def queued_jobs(session: Session, n: int) -> list[int]:
    ids = []
    for i in range(n):
        uid = f"1.2.826.0.1.3680043.10.7.{i + 1}"
        record_instance(
            session, replace(make_record(1), series_instance_uid=uid, sop_instance_uid=uid + ".1")
        )
    session.flush()
    for job in session.scalars(select(Job)):
        job.state = JobState.QUEUED
        ids.append(job.id)
    session.commit()
    return ids


def pending_reports(session: Session, n: int) -> list[int]:
    [job_id] = queued_jobs(session, 1)
    reports = [
        Report(
            job_id=job_id,
            kind="sr",
            sop_instance_uid=f"1.2.826.0.1.3680043.10.8.{i + 1}",
            series_instance_uid="1.2.826.0.1.3680043.10.8",
            destination="pacs",
        )
        for i in range(n)
    ]
    session.add_all(reports)
    session.commit()
    return [r.id for r in reports]


@dataclass(frozen=True)
class Case:
    queue: LeasedQueue[Any]
    make: Callable[[Session, int], list[int]]
    done: Any  # the state a completed row ends in


CASES = {
    "jobs": Case(JOBS, queued_jobs, JobState.DONE),
    "deliveries": Case(DELIVERIES, pending_reports, ReportState.SENT),
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def two(sessions: sessionmaker[Session]) -> Iterator[tuple[Session, Session]]:
    """Two workers' sessions on one database."""
    with sessions() as a, sessions() as b:
        yield a, b


def state_of(session: Session, case: Case, row_id: int) -> Any:
    session.expire_all()
    return session.get(case.queue.model, row_id)


@dataclass(frozen=True)
class Snap:
    state: Any
    attempts: int
    claimed_by: str | None
    last_error: str | None


def snap(session: Session, case: Case, row_id: int) -> Snap:
    """The row's queue columns as committed; ends the session's transaction.

    On SQLite a writer's transaction holds the write lock, so one worker's
    session must end its transaction before the other's can start.
    """
    row = state_of(session, case, row_id)
    out = Snap(row.state, row.attempts, row.claimed_by, row.last_error)
    session.commit()
    return out


def test_backoff_doubles_and_caps() -> None:
    assert [backoff(30, a).total_seconds() for a in (1, 2, 3)] == [30, 60, 120]
    assert backoff(30, 40).total_seconds() == 6 * 3600


def test_a_row_is_claimed_once_across_two_workers(case: Case, two: tuple[Session, Session]) -> None:
    a, b = two
    ids = case.make(a, 3)
    first = [(r.id, r.state, r.attempts) for r in case.queue.claim(a, "w1", limit=2)]
    a.commit()
    assert first == [(i, case.queue.held, 1) for i in ids[:2]]
    assert [r.id for r in case.queue.claim(b, "w2", limit=5)] == [ids[2]]
    b.commit()
    assert case.queue.claim(a, "w1", limit=5) == []
    a.commit()
    # Only the holder ends its claim.
    assert not case.queue.close(b, ids[0], "w2", case.done)
    b.commit()
    assert case.queue.close(a, ids[0], "w1", case.done)
    a.commit()
    assert snap(b, case, ids[0]).state == case.done


def test_failures_back_off_then_dead_letter(case: Case, session: Session) -> None:
    [row_id] = case.make(session, 1)
    q, now = case.queue, utcnow()
    for attempt in (1, 2):
        [row] = q.claim(session, "w", limit=1, now=now)
        assert row.attempts == attempt
        state = q.fail(session, row_id, "w", "boom", max_attempts=3, retry_seconds=10, now=now)
        assert state == q.failed
        session.commit()
        assert row.next_attempt_at == now + timedelta(seconds=10 * 2 ** (attempt - 1))
        assert q.claim(session, "w", limit=1, now=now) == []  # not due yet
        now = row.next_attempt_at
    [row] = q.claim(session, "w", limit=1, now=now)
    assert q.fail(session, row_id, "w", "boom", max_attempts=3, retry_seconds=10) == q.dead
    session.commit()
    assert q.claim(session, "w", limit=1, now=now + timedelta(days=1)) == []
    row = state_of(session, case, row_id)
    assert (row.state, row.attempts, row.last_error, row.claimed_by) == (q.dead, 3, "boom", None)
    # A failure reported by a worker that does not hold the row changes nothing.
    assert q.fail(session, row_id, "w", "late", max_attempts=3, retry_seconds=10) is None


def test_release_at_shutdown_does_not_count_the_attempt(
    case: Case, two: tuple[Session, Session]
) -> None:
    a, b = two
    ids = case.make(a, 3)
    q = case.queue
    q.claim(a, "w1", limit=2)
    a.commit()
    q.claim(b, "w2", limit=1)
    b.commit()
    assert q.release(a, "w1", [ids[1]]) == 1  # only the ids given
    assert q.release(a, "w1") == 1  # then the rest of w1's
    a.commit()
    for row_id in ids[:2]:
        assert snap(a, case, row_id) == Snap(q.waiting, 0, None, None)
    assert snap(a, case, ids[2]).claimed_by == "w2"  # another worker's claim stays
    # Released: a late completion or failure is refused.
    assert not q.close(a, ids[0], "w1", case.done)
    assert q.fail(a, ids[0], "w1", "late", max_attempts=3, retry_seconds=1) is None
    a.commit()


def test_a_renewed_lease_keeps_its_claim_and_a_lapsed_one_is_taken_over(
    case: Case, two: tuple[Session, Session]
) -> None:
    slow, other = two
    q = case.queue
    kept, lapsed = case.make(slow, 2)
    start = utcnow() - timedelta(minutes=10)
    q.claim(slow, "slow", limit=1, now=start)
    q.claim(slow, "dead", limit=1, now=start)
    slow.commit()
    # Only the holder renews; another worker's renewal touches nothing.
    assert q.renew(slow, "slow", [kept, lapsed]) == {kept}
    assert q.renew(slow, "intruder", [kept]) == set()
    slow.commit()
    assert q.take_over_lapsed(other, lease_seconds=120) == 1
    other.commit()
    assert snap(other, case, lapsed) == Snap(q.waiting, 1, None, LEASE_LAPSED)
    assert snap(other, case, kept).state == q.held
    # Another worker takes the lapsed row over; the dead one, should it come
    # back, can neither finish, fail, renew nor release it.
    taken = [(r.id, r.attempts) for r in q.claim(other, "other", limit=5)]
    other.commit()
    assert taken == [(lapsed, 2)]
    assert not q.close(slow, lapsed, "dead", case.done)
    assert q.fail(slow, lapsed, "dead", "late", max_attempts=9, retry_seconds=1) is None
    assert q.renew(slow, "dead", [lapsed]) == set()
    assert q.release(slow, "dead") == 0
    slow.commit()
    assert snap(slow, case, lapsed) == Snap(q.held, 2, "other", LEASE_LAPSED)
    assert q.close(other, lapsed, "other", case.done)
    other.commit()
    assert q.close(slow, kept, "slow", case.done)
    slow.commit()
    assert {snap(slow, case, i) for i in (kept, lapsed)} == {
        Snap(case.done, 1, None, None),
        Snap(case.done, 2, None, None),
    }


def test_a_lapsed_row_out_of_attempts_is_dead_not_requeued(case: Case, session: Session) -> None:
    q = case.queue
    spent, fresh = case.make(session, 2)
    long_ago = utcnow() - timedelta(hours=1)
    for _ in range(2):  # two workers died holding ``spent``
        q.claim(session, "w", limit=1, now=long_ago)
        session.commit()
        q.take_over_lapsed(session, lease_seconds=60, max_attempts=3)
    q.claim(session, "w", limit=2, now=long_ago)  # spent's third attempt, fresh's first
    session.commit()
    assert q.take_over_lapsed(session, lease_seconds=60, max_attempts=3) == 2
    session.commit()
    assert state_of(session, case, spent).state == q.dead
    assert state_of(session, case, fresh).state == q.waiting
    # Without a limit, a lapsed row always goes back (the dead one stays dead).
    q.claim(session, "w", limit=1, now=long_ago)
    assert q.take_over_lapsed(session, lease_seconds=60) == 1
    assert state_of(session, case, fresh).attempts == 2


def test_requeue_by_hand_resets_a_dead_row(case: Case, session: Session) -> None:
    q = case.queue
    [row_id] = case.make(session, 1)
    q.claim(session, "w", limit=1)
    q.fail(session, row_id, "w", "boom", max_attempts=1, retry_seconds=1)
    session.commit()
    row = state_of(session, case, row_id)
    assert row.state == q.dead
    q.requeue(session, row)
    session.commit()
    row = state_of(session, case, row_id)
    assert (row.state, row.attempts, row.last_error) == (q.waiting, 0, None)
    assert not q.lease_lapsed(row, 60)
    [claimed] = q.claim(session, "w", limit=1, now=utcnow() - timedelta(minutes=5))
    assert q.lease_lapsed(claimed, 60) and not q.lease_lapsed(claimed, 600)


# -- the names the pipeline calls ---------------------------------------------------


def test_job_names_finish_with_values(session: Session) -> None:
    ids = queued_jobs(session, 2)
    claim_jobs(session, "w1", limit=2)
    session.commit()
    assert finish_job(session, ids[0], "w1", model_version="1.0", echo_referral=True)
    assert renew_jobs(session, "w1", ids) == {ids[1]}
    assert release_jobs(session, "w1") == 1
    session.commit()
    job = state_of(session, CASES["jobs"], ids[0])
    assert (job.state, job.model_version, job.echo_referral) == (JobState.DONE, "1.0", True)
    claim_jobs(session, "w2", limit=1, now=utcnow() - timedelta(hours=1))
    assert requeue_stale_jobs(session, 60) == 1


def test_live_jobs_are_claimed_before_older_backfill_jobs(session: Session) -> None:
    ids = queued_jobs(session, 4)
    for job_id in ids[:3]:  # the three oldest came from an archive
        job = session.get(Job, job_id)
        assert job is not None
        job.origin, job.priority = JobOrigin.BACKFILL, BACKFILL_PRIORITY
    session.commit()
    assert [j.id for j in claim_jobs(session, "w1", limit=2)] == [ids[3], ids[0]]


def test_report_names_record_sent_and_failed(session: Session) -> None:
    ids = pending_reports(session, 2)
    now = utcnow()
    claim_reports(session, "w", limit=5, now=now)
    failed = report_failed(session, ids[0], "w", "refused", max_attempts=5, retry_seconds=5)
    assert failed == ReportState.FAILED
    assert renew_reports(session, "w", ids) == {ids[1]}
    assert report_sent(session, ids[1], "w")
    session.commit()
    report = state_of(session, CASES["deliveries"], ids[1])
    assert (report.state, report.attempts, report.sent_at is not None) == (
        ReportState.SENT,
        1,
        True,
    )
    [again] = claim_reports(session, "w", limit=5, now=now + timedelta(seconds=6))
    assert again.id == ids[0] and again.attempts == 2
    assert release_reports(session, "w") == 1
    claim_reports(session, "x", limit=5, now=now + timedelta(seconds=6))
    assert take_over_lapsed_reports(session, 60, now=now + timedelta(seconds=60)) == 0
    assert take_over_lapsed_reports(session, 60, now=now + timedelta(seconds=67)) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("which", list(CASES))
def test_concurrent_claims_never_overlap_on_postgresql(pg_engine: Engine, which: str) -> None:
    # SKIP LOCKED is PostgreSQL's; on SQLite BEGIN IMMEDIATE serialises claimers.
    case = CASES[which]
    sessions = make_session_factory(pg_engine)
    with sessions() as s:
        ids = case.make(s, 40)
    claimed: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        got: list[int] = []
        barrier.wait()
        while True:
            with sessions() as s:
                rows = case.queue.claim(s, name, limit=3)
                s.commit()
                if not rows:
                    break
                got += [r.id for r in rows]
        claimed[name] = got

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [i for got in claimed.values() for i in got]
    assert sorted(every) == sorted(ids)  # each row claimed exactly once
