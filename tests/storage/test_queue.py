"""Job and delivery queues: claims, backoff, dead letters, claims taken back, concurrency."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from storage.db import make_session_factory
from storage.ingest import record_instance
from storage.models import Job, JobState, Report, ReportState
from storage.queue import (
    backoff,
    claim_jobs,
    claim_reports,
    fail_job,
    finish_job,
    release_jobs,
    renew_jobs,
    report_failed,
    report_sent,
    requeue_stale_jobs,
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


def test_backoff_doubles_and_caps() -> None:
    assert [backoff(30, a).total_seconds() for a in (1, 2, 3)] == [30, 60, 120]
    assert backoff(30, 40).total_seconds() == 6 * 3600


def test_claim_finish_and_claims_taken_back(session: Session) -> None:
    ids = queued_jobs(session, 3)
    claimed = claim_jobs(session, "w1", limit=2)
    session.commit()
    assert [j.id for j in claimed] == ids[:2]
    assert all(j.state == JobState.RUNNING and j.attempts == 1 for j in claimed)
    assert claim_jobs(session, "w2", limit=5)[0].id == ids[2]
    session.commit()
    assert finish_job(session, ids[0], "w1", model_version="1.0", echo_referral=True)
    assert not finish_job(session, ids[1], "someone-else")  # not its claim
    assert release_jobs(session, "w1") == 1  # ids[1] back in the queue, attempt not counted
    session.commit()
    jobs = {j.id: j for j in session.scalars(select(Job))}
    session.refresh(jobs[ids[1]])
    assert jobs[ids[0]].state == JobState.DONE and jobs[ids[0]].echo_referral is True
    assert (jobs[ids[1]].state, jobs[ids[1]].attempts) == (JobState.QUEUED, 0)
    assert not finish_job(session, ids[1], "w1")  # released: a late finish is refused


def test_failures_back_off_then_dead_letter(session: Session) -> None:
    [job_id] = queued_jobs(session, 1)
    now = utcnow()
    for attempt in (1, 2):
        [job] = claim_jobs(session, "w", limit=1, now=now)
        assert job.attempts == attempt
        assert (
            fail_job(session, job_id, "w", "boom", max_attempts=3, retry_seconds=10, now=now)
            == JobState.FAILED
        )
        session.commit()
        assert claim_jobs(session, "w", limit=1, now=now) == []  # not due yet
        now = job.next_attempt_at  # type: ignore[assignment]
    [job] = claim_jobs(session, "w", limit=1, now=now)
    assert (
        fail_job(session, job_id, "w", "boom", max_attempts=3, retry_seconds=10, now=now)
        == JobState.DEAD
    )
    session.commit()
    assert claim_jobs(session, "w", limit=1, now=now + timedelta(days=1)) == []
    assert session.get(Job, job_id).last_error == "boom"  # type: ignore[union-attr]


def test_stale_claims_are_requeued(session: Session) -> None:
    [job_id] = queued_jobs(session, 1)
    claim_jobs(session, "dead-worker", limit=1, now=utcnow() - timedelta(hours=2))
    session.commit()
    assert requeue_stale_jobs(session, timeout_seconds=3600) == 1
    session.commit()
    assert session.get(Job, job_id).state == JobState.QUEUED  # type: ignore[union-attr]


def test_a_renewed_lease_keeps_the_job_and_a_lapsed_one_loses_it(session: Session) -> None:
    kept, lapsed = queued_jobs(session, 2)
    start = utcnow() - timedelta(minutes=10)
    claim_jobs(session, "slow", limit=1, now=start)
    claim_jobs(session, "dead", limit=1, now=start)
    session.commit()
    # Only the holder renews; another worker's renewal touches nothing.
    assert renew_jobs(session, "slow", [kept, lapsed], now=utcnow()) == {kept}
    assert renew_jobs(session, "intruder", [kept]) == set()
    session.commit()
    assert requeue_stale_jobs(session, timeout_seconds=120) == 1
    session.commit()
    session.expire_all()
    assert session.get(Job, kept).state == JobState.RUNNING  # type: ignore[union-attr]
    assert session.get(Job, lapsed).state == JobState.QUEUED  # type: ignore[union-attr]
    # The dead worker's completion, should it come back, finds its claim gone.
    assert not finish_job(session, lapsed, "dead")
    assert renew_jobs(session, "dead", [lapsed]) == set()
    assert finish_job(session, kept, "slow")
    session.commit()


def test_report_delivery_retries_and_sent(session: Session) -> None:
    [job_id] = queued_jobs(session, 1)
    session.add(
        Report(
            job_id=job_id,
            kind="sr",
            sop_instance_uid="1.2.3.4",
            series_instance_uid="1.2.3",
            destination="pacs",
        )
    )
    session.commit()
    now = utcnow()
    [report] = claim_reports(session, "w", limit=5, now=now)
    assert (
        report_failed(session, report.id, "w", "refused", max_attempts=5, retry_seconds=5, now=now)
        == ReportState.FAILED
    )
    session.commit()
    assert claim_reports(session, "w", limit=5, now=now) == []
    [report] = claim_reports(session, "w", limit=5, now=now + timedelta(seconds=6))
    assert report_sent(session, report.id, "w")
    session.commit()
    session.refresh(report)
    assert (report.state, report.attempts, report.sent_at is not None) == (
        ReportState.SENT,
        2,
        True,
    )


@pytest.mark.postgres
def test_concurrent_claims_never_overlap_on_postgresql(pg_engine: Engine) -> None:
    # SKIP LOCKED is PostgreSQL's; on SQLite BEGIN IMMEDIATE serialises claimers.
    sessions = make_session_factory(pg_engine)
    with sessions() as s:
        ids = queued_jobs(s, 40)
    claimed: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        got: list[int] = []
        barrier.wait()
        while True:
            with sessions() as s:
                jobs = claim_jobs(s, name, limit=3)
                s.commit()
            if not jobs:
                break
            got += [j.id for j in jobs]
        claimed[name] = got

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [i for got in claimed.values() for i in got]
    assert sorted(every) == sorted(ids)  # each job claimed exactly once
