"""Backfill campaigns in the database: names, transitions, cancel, progress, rate and ETA."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.backfill import (
    CampaignError,
    SeriesPlan,
    add_series,
    cancel_campaign,
    create_campaign,
    eta,
    find_campaign,
    held_elsewhere,
    pause_campaign,
    progress,
    resume_campaign,
    retrieve_rate,
    start_campaign,
)
from storage.models import (
    BackfillCampaign,
    BackfillSeries,
    BackfillState,
    CampaignState,
    Job,
    JobState,
    Series,
    Study,
)
from storage.types import utcnow


def campaign(session: Session, name: str = "c", **states: int) -> BackfillCampaign:
    """A planned campaign with ``n`` series in each given state."""
    c = create_campaign(
        session, name=name, archive="pacs", date_from="20240101", date_to="20240131"
    )
    plans = [
        SeriesPlan("1.2.1", f"1.2.{name_n}.{state}.{i}", BackfillState(state))
        for name_n in [sum(map(ord, name))]
        for state, n in states.items()
        for i in range(n)
    ]
    add_series(session, c, plans)
    c.state = CampaignState.PLANNED
    session.flush()
    return c


def test_names_are_unique_and_found_by_name_or_id(session: Session) -> None:
    c = campaign(session, "nightly")
    with pytest.raises(CampaignError, match="a campaign named 'nightly' exists"):
        create_campaign(session, name="nightly", archive="x", date_from="1", date_to="2")
    assert find_campaign(session, "nightly") is c
    assert find_campaign(session, str(c.id)) is c
    with pytest.raises(CampaignError, match="no campaign 'other'"):
        find_campaign(session, "other")
    with pytest.raises(CampaignError, match="no campaign '99999999999999'"):
        find_campaign(session, "99999999999999")


def test_transitions_and_their_refusals(session: Session) -> None:
    c = campaign(session)
    with pytest.raises(CampaignError, match="cannot pause campaign 'c': it is planned"):
        pause_campaign(session, c)
    with pytest.raises(CampaignError, match="use 'backfill start'"):
        resume_campaign(session, c)
    start_campaign(session, c)
    assert c.state == CampaignState.RUNNING and c.started_at is not None
    with pytest.raises(CampaignError, match="already running"):
        start_campaign(session, c)
    pause_campaign(session, c)
    assert c.state == CampaignState.PAUSED
    with pytest.raises(CampaignError, match="use 'backfill resume'"):
        start_campaign(session, c)
    with pytest.raises(CampaignError, match="already paused"):
        pause_campaign(session, c)
    resume_campaign(session, c)
    assert c.state == CampaignState.RUNNING
    cancel_campaign(session, c)
    for step in (start_campaign, pause_campaign, resume_campaign, cancel_campaign):
        with pytest.raises(CampaignError, match="it was cancelled"):
            step(session, c)
    planning = create_campaign(session, name="p", archive="x", date_from="1", date_to="2")
    with pytest.raises(CampaignError, match="still being planned"):
        start_campaign(session, planning)


def test_cancel_ends_waiting_series_only(session: Session) -> None:
    c = campaign(session, planned=3, failed=1, retrieving=1, retrieved=2, skipped=2)
    other = campaign(session, "other", planned=2)
    assert cancel_campaign(session, c) == 4
    session.expire_all()
    assert progress(session, c.id).counts == {
        "cancelled": 4,
        "retrieving": 1,  # the retriever holding it finishes it
        "retrieved": 2,
        "skipped": 2,
    }
    assert c.state == CampaignState.CANCELLED and c.finished_at is not None
    assert progress(session, other.id).counts == {"planned": 2}


def test_progress_counts_done_failed_remaining(session: Session) -> None:
    c = campaign(
        session, planned=4, retrieving=1, failed=2, retrieved=5, dead=1, skipped=7, already=3
    )
    p = progress(session, c.id)
    assert (p.done, p.failed, p.remaining, p.total) == (5, 1, 7, 13)
    assert p.counts["skipped"] == 7 and p.counts["already"] == 3
    assert progress(session, c.id + 1000).total == 0


def test_rate_and_eta_from_the_retrieves_recorded(session: Session) -> None:
    c = campaign(session, planned=10, retrieved=3)
    assert retrieve_rate(session, c.id) is None  # no times recorded: ETA unknown
    assert eta(session, c.id) is None
    done = session.scalars(
        select(BackfillSeries).where(BackfillSeries.state == BackfillState.RETRIEVED)
    ).all()
    start = utcnow() - timedelta(hours=2)
    for i, row in enumerate(done):  # one every 30 minutes: two per hour
        row.retrieved_at = start + timedelta(minutes=30 * i)
    session.flush()
    assert retrieve_rate(session, c.id) == pytest.approx(2.0)
    now = utcnow()
    assert eta(session, c.id, now) == now + timedelta(hours=5)  # 10 left at 2 per hour


def test_held_elsewhere_names_the_agent_or_the_campaign(session: Session) -> None:
    mine = campaign(session, "mine")
    other = campaign(session, "other")
    add_series(
        session,
        other,
        [
            SeriesPlan("1.9", "1.9.1", BackfillState.PLANNED),
            SeriesPlan("1.9", "1.9.2", BackfillState.RETRIEVED),
            SeriesPlan("1.9", "1.9.3", BackfillState.CANCELLED),  # released
            SeriesPlan("1.9", "1.9.4", BackfillState.SKIPPED),
        ],
    )
    study = Study(study_instance_uid="1.8")
    session.add(study)
    session.flush()
    series = Series(study_id=study.id, series_instance_uid="1.8.1")
    session.add(series)
    session.flush()
    session.add(Job(series_id=series.id, state=JobState.DONE))
    session.flush()
    held = held_elsewhere(session, mine.id, ["1.9.1", "1.9.2", "1.9.3", "1.9.4", "1.8.1", "1.7"])
    assert held == {
        "1.9.1": "planned by campaign 'other'",
        "1.9.2": "retrieved by campaign 'other'",
        "1.8.1": "stored by the agent (job done)",
    }
    # Its own series are not "elsewhere".
    assert held_elsewhere(session, other.id, ["1.9.1"]) == {}
    # A campaign whose planning failed (it cannot start) holds nothing.
    other.state = CampaignState.FAILED
    session.flush()
    assert held_elsewhere(session, mine.id, ["1.9.1", "1.9.2"]) == {}


def test_add_series_keeps_what_the_campaign_has(session: Session) -> None:
    c = campaign(session)
    add_series(session, c, [SeriesPlan("1.5", "1.5.1", BackfillState.PLANNED, "eligible")])
    add_series(
        session,
        c,
        [
            SeriesPlan("1.5", "1.5.1", BackfillState.SKIPPED, "again"),
            SeriesPlan("1.5", "1.5.2", BackfillState.SKIPPED, "no"),
        ],
    )
    rows = {r.series_instance_uid: r for r in session.scalars(select(BackfillSeries))}
    assert (rows["1.5.1"].state, rows["1.5.1"].reason) == (BackfillState.PLANNED, "eligible")
    assert rows["1.5.2"].state == BackfillState.SKIPPED
