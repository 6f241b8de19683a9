"""The retrieval queue of archive backfill, on both backends.

Only running campaigns are claimed; a series that arrived and was decided
meanwhile is never retrieved; failures back off and die; campaigns finish;
progress gives rate and ETA; a series being retrieved becomes a backfill job.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.backfill_queue import (
    campaign_progress,
    claim_retrievals,
    finish_campaigns,
    instances_recorded,
    retrieval_done,
    retrieval_failed,
    settle_already_stored,
    started_since,
)
from storage.ingest import record_instance
from storage.models import (
    BACKFILL_PRIORITY,
    LIVE_PRIORITY,
    BackfillCampaign,
    BackfillSeries,
    BackfillState,
    CampaignState,
    Job,
    JobState,
    Report,
    Series,
)
from storage.queue import claim_jobs, claim_reports
from storage.types import utcnow
from tests.storage.storage_records import make_record

ROOT = "1.2.826.0.1.3680043.10.9"


def campaign(session: Session, name: str, state: CampaignState, n: int) -> BackfillCampaign:
    c = BackfillCampaign(
        name=name, archive="pacs", date_from="20200101", date_to="20201231", state=state,
        started_at=utcnow() - timedelta(minutes=30),
    )  # fmt: skip
    session.add(c)
    session.flush()
    for i in range(n):
        session.add(
            BackfillSeries(
                campaign_id=c.id,
                study_instance_uid=f"{ROOT}.{c.id}.{i}",
                series_instance_uid=f"{ROOT}.{c.id}.{i}.1",
                expected_instances=2,
                state=BackfillState.PLANNED,
            )
        )
    session.flush()
    return c


def arrive(session: Session, series_uid: str, n: int = 1) -> None:
    for k in range(n):
        uid = f"{series_uid}.{k + 1}"
        rec = replace(make_record(1), series_instance_uid=series_uid, sop_instance_uid=uid)
        record_instance(session, rec)


def test_only_running_campaigns_are_claimed_up_to_the_limit(session: Session) -> None:
    running = campaign(session, "run", CampaignState.RUNNING, 3)
    campaign(session, "paused", CampaignState.PAUSED, 2)
    campaign(session, "planned", CampaignState.PLANNED, 2)
    claimed = claim_retrievals(session, "w1", 2)
    assert len(claimed) == 2 and {r.campaign_id for r in claimed} == {running.id}
    assert all(r.state == BackfillState.RETRIEVING and r.attempts == 1 for r in claimed)
    assert started_since(session, utcnow() - timedelta(minutes=1)) == 2
    rest = claim_retrievals(session, "w2", 10)
    assert len(rest) == 1
    assert claim_retrievals(session, "w3", 10) == []
    assert claim_retrievals(session, "w3", 0) == []


def test_failure_backs_off_then_dies_and_the_campaign_finishes(session: Session) -> None:
    c = campaign(session, "c", CampaignState.RUNNING, 2)
    a, b = claim_retrievals(session, "w", 2)
    counts = {"completed_suboperations": 1, "failed_suboperations": 1,
              "warning_suboperations": 0, "received_instances": 1}  # fmt: skip
    state = retrieval_failed(
        session, a.id, "w", "partial: 1 of 2", counts, max_attempts=2, retry_seconds=60
    )
    assert state == BackfillState.FAILED
    session.refresh(a)
    assert a.failed_suboperations == 1 and a.last_error == "partial: 1 of 2"
    assert a.next_attempt_at is not None and a.next_attempt_at > utcnow()
    assert claim_retrievals(session, "w", 5) == []  # not due yet
    assert finish_campaigns(session) == []  # a failed series is still open
    later = utcnow() + timedelta(seconds=120)
    [again] = claim_retrievals(session, "w", 5, now=later)
    assert again.id == a.id and again.attempts == 2
    assert retrieval_failed(
        session, a.id, "w", "refused", counts, max_attempts=2, retry_seconds=60
    ) == BackfillState.DEAD  # fmt: skip
    # Another worker cannot close a row it does not hold.
    assert not retrieval_done(session, b.id, "other", counts)
    assert retrieval_done(session, b.id, "w", counts)
    assert finish_campaigns(session) == ["c"]
    session.refresh(c)
    assert c.state == CampaignState.DONE and c.finished_at is not None
    [p] = campaign_progress(session)
    assert (p.done, p.failed, p.remaining, p.eta_seconds) == (1, 1, 0, 0.0)


def test_a_series_stored_and_decided_meanwhile_is_never_retrieved(session: Session) -> None:
    c = campaign(session, "c", CampaignState.RUNNING, 2)
    rows = session.scalars(select(BackfillSeries).order_by(BackfillSeries.id)).all()
    arrive(session, rows[0].series_instance_uid)  # pushed live while planned
    job = session.scalars(select(Job)).one()
    assert settle_already_stored(session) == 0  # still receiving: may be partial
    job.state = JobState.DONE
    session.flush()
    assert settle_already_stored(session) == 1
    session.refresh(rows[0])
    assert rows[0].state == BackfillState.ALREADY
    [claimed] = claim_retrievals(session, "w", 5)
    assert claimed.id == rows[1].id
    assert c.id == claimed.campaign_id


def test_a_series_being_retrieved_becomes_a_backfill_job(session: Session) -> None:
    campaign(session, "c", CampaignState.RUNNING, 1)
    [row] = claim_retrievals(session, "w", 1)
    arrive(session, row.series_instance_uid, 2)
    arrive(session, f"{ROOT}.live.1")  # a live push at the same time
    assert instances_recorded(session, row.series_instance_uid) == 2
    jobs = {
        uid: job
        for uid, job in session.execute(select(Series.series_instance_uid, Job).join(Job.series))
    }
    backfill, live = jobs[row.series_instance_uid], jobs[f"{ROOT}.live.1"]
    assert (backfill.origin, backfill.priority) == ("backfill", BACKFILL_PRIORITY)
    assert (live.origin, live.priority) == ("live", LIVE_PRIORITY)
    # Queued together, the live one is claimed first although it came later.
    backfill.state = live.state = JobState.QUEUED
    session.flush()
    assert [j.id for j in claim_jobs(session, "s", 1)] == [live.id]


def test_progress_rate_and_eta(session: Session) -> None:
    c = campaign(session, "c", CampaignState.RUNNING, 5)
    rows = claim_retrievals(session, "w", 3)
    counts: dict[str, int | None] = {"received_instances": 2}
    for r in rows[:2]:
        assert retrieval_done(session, r.id, "w", counts)
    [p] = campaign_progress(session, [c.id])
    assert (p.done, p.remaining, p.failed) == (2, 3, 0)
    assert p.series["retrieving"] == 1 and p.series["planned"] == 2
    # Two in the 30 minutes since it started: 4 an hour, 3 left: 45 minutes.
    assert p.rate_per_hour == 4.0
    assert p.eta_seconds == 2700
    assert p.as_dict()["name"] == "c"


def test_live_reports_are_delivered_before_backfill_ones(session: Session) -> None:
    campaign(session, "c", CampaignState.RUNNING, 1)
    [row] = claim_retrievals(session, "w", 1)
    arrive(session, row.series_instance_uid)
    arrive(session, f"{ROOT}.live.2")
    jobs = dict(session.execute(select(Series.series_instance_uid, Job.id).join(Job.series)).all())
    for uid in (row.series_instance_uid, f"{ROOT}.live.2"):  # the backfill report first
        session.add(
            Report(
                job_id=jobs[uid],
                kind="sr",
                sop_instance_uid=f"{uid}.9",
                series_instance_uid=uid,
                destination="pacs",
                rel_path=f"reports/{uid}.dcm",
                revision=1,
            )  # fmt: skip
        )
    session.flush()
    [first] = claim_reports(session, "d", 1)
    assert first.job_id == jobs[f"{ROOT}.live.2"]
    [second] = claim_reports(session, "d", 1)
    assert second.job_id == jobs[row.series_instance_uid]
