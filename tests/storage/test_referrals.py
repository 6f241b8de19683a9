"""Referral episodes: one referral per patient episode, audited state changes (both backends)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from itertools import count

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from storage.db import make_session_factory
from storage.models import AuditEvent, Job, Referral, ReferralEvent, ReferralState, Series, Study
from storage.referrals import (
    UnknownReferral,
    link_referral,
    list_referrals,
    referral_counts,
    referral_view,
    set_referral_state,
)

ALICE = "a" * 64
BOB = "b" * 64
_uids = count(1)


def _ct(session: Session, pseudonym: str | None, study_date: str | None) -> int:
    """A study with one series and its job; the job's id."""
    n = next(_uids)
    study = Study(
        study_instance_uid=f"1.2.3.{n}", study_date=study_date, patient_pseudonym=pseudonym
    )
    series = Series(study=study, series_instance_uid=f"1.2.3.{n}.1")
    job = Job(series=series)
    session.add_all([study, series, job])
    session.flush()
    return job.id


def test_one_referral_per_episode(session: Session) -> None:
    first = _ct(session, ALICE, "20260110")
    again = _ct(session, ALICE, "20260301")  # 50 days later
    later = _ct(session, ALICE, "20270601")  # beyond 365 days
    other = _ct(session, BOB, "20260301")
    anonymous = [_ct(session, None, "20260110") for _ in range(2)]
    link = link_referral(session, first, ["cardiomegaly"], repeat_days=365)
    assert (link.repeat, link.referred_on) == (False, "20260110")
    repeat = link_referral(session, again, ["cardiomegaly"], repeat_days=365)
    assert (repeat.referral_id, repeat.repeat, repeat.referred_on) == (
        link.referral_id,
        True,
        "20260110",
    )
    assert not link_referral(session, later, ["x"], repeat_days=365).repeat
    assert link_referral(session, other, ["x"], repeat_days=365).referral_id != link.referral_id
    lone = {link_referral(session, j, ["x"], repeat_days=365).referral_id for j in anonymous}
    assert len(lone) == 2  # no pseudonym: always a new referral
    session.commit()

    # A re-screening keeps the job's referral, even under another window.
    again_link = link_referral(session, again, ["cardiomegaly"], repeat_days=0)
    assert again_link == repeat
    job = session.get(Job, again)
    assert job is not None and (job.referral_id, job.referral_repeat) == (link.referral_id, True)
    referral = session.get(Referral, link.referral_id)
    assert referral is not None and referral.state == ReferralState.NEW
    assert referral.patient_pseudonym == ALICE and referral.job_id == first
    assert len(session.scalars(select(Referral)).all()) == 5
    view = referral_view(session, link.referral_id)
    assert [(c.job_id, c.repeat) for c in view.cts] == [(first, False), (again, True)]
    assert [(e.from_state, e.to_state) for e in view.events] == [(None, "new")]
    listed = {r.id: n for r, n in list_referrals(session)}
    assert listed[link.referral_id] == 2


def test_repeat_window_counts_from_referred_at_without_a_study_date(session: Session) -> None:
    first = _ct(session, ALICE, None)
    second = _ct(session, ALICE, "19990101")
    link = link_referral(session, first, ["x"], repeat_days=30)
    today = datetime.now(UTC).strftime("%Y%m%d")
    assert link.referred_on == today
    assert not link_referral(session, second, ["x"], repeat_days=30).repeat


def test_state_changes_are_audited(session: Session) -> None:
    job = _ct(session, ALICE, "20260110")
    rid = link_referral(session, job, ["x"], repeat_days=365).referral_id
    set_referral_state(session, rid, ReferralState.ACKNOWLEDGED, actor="drwho", note="seen")
    set_referral_state(session, rid, ReferralState.ECHO_DONE, actor="drwho")
    session.commit()
    view = referral_view(session, rid)
    assert view.referral.state == ReferralState.ECHO_DONE
    assert [(e.from_state, e.to_state, e.actor) for e in view.events[1:]] == [
        ("new", "acknowledged", "drwho"),
        ("acknowledged", "echo_done", "drwho"),
    ]
    assert view.events[1].note == "seen"
    audits = session.scalars(
        select(AuditEvent).where(AuditEvent.event_type == "referral").order_by(AuditEvent.id)
    ).all()
    assert [a.outcome for a in audits] == ["created", "state_changed", "state_changed"]
    assert audits[-1].detail == {
        "referral_id": rid,
        "from": "acknowledged",
        "to": "echo_done",
        "actor": "drwho",
    }
    counts = referral_counts(session)
    assert (
        counts["echo_done"] == 1
        and counts["new"] == 0
        and set(counts) == {s.value for s in ReferralState}
    )
    with pytest.raises(UnknownReferral, match="no referral 999"):
        set_referral_state(session, 999, ReferralState.DECLINED, actor="x")
    with pytest.raises(UnknownReferral):
        referral_view(session, 999)
    assert session.scalars(select(ReferralEvent)).all()


@pytest.mark.postgres
def test_concurrent_screenings_of_one_patient_share_one_referral(pg_engine: Engine) -> None:
    sessions = make_session_factory(pg_engine)
    with sessions.begin() as s:
        jobs = [_ct(s, ALICE, f"2026011{i}") for i in range(4)]
    barrier = threading.Barrier(len(jobs))
    links = {}
    errors: list[BaseException] = []

    def screen(job_id: int) -> None:
        try:
            with sessions.begin() as s:
                barrier.wait(10)
                links[job_id] = link_referral(s, job_id, ["x"], repeat_days=365)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=screen, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len({link.referral_id for link in links.values()}) == 1
    assert sorted(link.repeat for link in links.values()) == [False, True, True, True]
    with sessions() as s:
        assert len(s.scalars(select(Referral)).all()) == 1
