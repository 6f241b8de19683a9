"""Referral episodes: one echo recommendation per patient episode, and what became of it.

A screening whose echo rule fires is linked to a referral: the patient's
referral raised for a CT within ``repeat_days`` of this CT (a repeat), or a
new one. Patients are known by their keyed pseudonym only (``studies.
patient_pseudonym``); a CT without one always gets a new referral.

Concurrency: two workers screening two CTs of one patient at once must see
each other's referral. On PostgreSQL the decision runs under a transaction
advisory lock on the pseudonym (``pg_advisory_xact_lock``), held to commit;
on SQLite the engine's ``BEGIN IMMEDIATE`` serialises writers already.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.audit import audit
from storage.errors import StorageError
from storage.models import Job, Referral, ReferralEvent, ReferralState, Series, Study
from storage.types import utcnow

#: The actor of the events the agent itself records (a referral raised at screening).
AGENT_ACTOR = "hyperct-agent"


class UnknownReferral(StorageError):
    """No referral has this ID."""


@dataclass(frozen=True)
class ReferralLink:
    """A screening's place in its patient's episode."""

    referral_id: int
    #: True when the referral was raised earlier, for another CT.
    repeat: bool
    #: When the referral was first made: its CT's Study Date (DA, YYYYMMDD), else
    #: the day it was raised.
    referred_on: str


@dataclass(frozen=True)
class ReferralCT:
    """One screened CT linked to a referral."""

    job_id: int
    study_instance_uid: str
    series_instance_uid: str
    study_date: str | None
    repeat: bool


@dataclass(frozen=True)
class ReferralView:
    """A referral with its CTs and state history (oldest first)."""

    referral: Referral
    cts: list[ReferralCT]
    events: list[ReferralEvent]


def parse_da(value: str | None) -> date | None:
    """A DA value (PS3.5 6.2, YYYYMMDD; the retired YYYY.MM.DD too) as a date, else None."""
    digits = (value or "").strip().replace(".", "")
    try:
        return datetime.strptime(digits, "%Y%m%d").date() if len(digits) == 8 else None
    except ValueError:
        return None


def referred_on(referral: Referral) -> str:
    """The referral's date: its CT's Study Date, else the day it was raised (YYYYMMDD)."""
    day = parse_da(referral.study_date) or referral.referred_at.date()
    return day.strftime("%Y%m%d")


def link_referral(
    session: Session, job_id: int, tasks: list[str], *, repeat_days: int
) -> ReferralLink:
    """Link job ``job_id``, whose echo rule fired for ``tasks``, to its patient's referral.

    A job already linked keeps its referral (a re-screening is the same CT).
    Otherwise the patient's referral whose CT date is closest to this CT's, and
    within ``repeat_days``, makes this a repeat; failing that a new referral
    (state ``new``) is raised. Flushes; the caller commits.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise StorageError(f"job {job_id} does not exist")
    if job.referral_id is not None:
        kept = session.get(Referral, job.referral_id)
        if kept is not None:
            return ReferralLink(kept.id, bool(job.referral_repeat), referred_on(kept))
    study = session.execute(
        select(Study.patient_pseudonym, Study.study_date, Study.study_instance_uid)
        .join(Series, Series.study_id == Study.id)
        .where(Series.id == job.series_id)
    ).one()
    pseudonym = study.patient_pseudonym
    episode = None
    if pseudonym is not None:
        _lock_patient(session, pseudonym)
        this_day = parse_da(study.study_date) or utcnow().date()
        episode = _episode(session, pseudonym, this_day, repeat_days)
    if episode is not None:
        _set_link(session, job, episode.id, repeat=True)
        return ReferralLink(episode.id, True, referred_on(episode))

    referral = Referral(
        patient_pseudonym=pseudonym,
        job_id=job_id,
        study_date=study.study_date,
        tasks=list(tasks),
        state=ReferralState.NEW,
    )
    session.add(referral)
    session.flush()
    session.add(
        ReferralEvent(
            referral_id=referral.id,
            from_state=None,
            to_state=ReferralState.NEW.value,
            actor=AGENT_ACTOR,
            note=f"raised by the screening of job {job_id}",
        )
    )
    _set_link(session, job, referral.id, repeat=False)
    audit(
        session,
        "referral",
        "created",
        study_instance_uid=study.study_instance_uid,
        detail={"referral_id": referral.id, "job_id": job_id, "tasks": list(tasks)},
    )
    session.flush()
    return ReferralLink(referral.id, False, referred_on(referral))


def _lock_patient(session: Session, pseudonym: str) -> None:
    """Serialise episode decisions for one patient until this transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        # 60 bits of the HMAC: a signed bigint, and collisions only make two patients wait.
        session.execute(select(func.pg_advisory_xact_lock(int(pseudonym[:15], 16))))


def _episode(session: Session, pseudonym: str, day: date, repeat_days: int) -> Referral | None:
    candidates = session.scalars(
        select(Referral).where(Referral.patient_pseudonym == pseudonym).order_by(Referral.id)
    ).all()
    best: tuple[int, Referral] | None = None
    for referral in candidates:
        other = parse_da(referral.study_date) or referral.referred_at.date()
        distance = abs((day - other).days)
        if distance <= repeat_days and (best is None or distance < best[0]):
            best = (distance, referral)
    return best[1] if best else None


def _set_link(session: Session, job: Job, referral_id: int, *, repeat: bool) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(referral_id=referral_id, referral_repeat=repeat)
        .execution_options(synchronize_session=False)
    )
    session.expire(job, ["referral_id", "referral_repeat"])


def list_referrals(
    session: Session, state: ReferralState | None = None
) -> list[tuple[Referral, int]]:
    """Referrals, newest first, each with the number of CTs linked to it."""
    cts = (
        select(Job.referral_id, func.count().label("n"))
        .where(Job.referral_id.is_not(None))
        .group_by(Job.referral_id)
        .subquery()
    )
    stmt = (
        select(Referral, func.coalesce(cts.c.n, 0))
        .outerjoin(cts, cts.c.referral_id == Referral.id)
        .order_by(Referral.referred_at.desc(), Referral.id.desc())
    )
    if state is not None:
        stmt = stmt.where(Referral.state == state)
    return [(r, int(n)) for r, n in session.execute(stmt).all()]


def referral_view(session: Session, referral_id: int) -> ReferralView:
    """One referral, its CTs (by study date) and its state history; UnknownReferral if none."""
    referral = session.get(Referral, referral_id)
    if referral is None:
        raise UnknownReferral(f"no referral {referral_id}")
    rows = session.execute(
        select(
            Job.id,
            Study.study_instance_uid,
            Series.series_instance_uid,
            Study.study_date,
            Job.referral_repeat,
        )
        .join(Series, Series.id == Job.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(Job.referral_id == referral_id)
        .order_by(Study.study_date, Job.id)
    ).all()
    cts = [ReferralCT(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]
    events = list(
        session.scalars(
            select(ReferralEvent)
            .where(ReferralEvent.referral_id == referral_id)
            .order_by(ReferralEvent.id)
        )
    )
    return ReferralView(referral, cts, events)


def set_referral_state(
    session: Session,
    referral_id: int,
    state: ReferralState,
    *,
    actor: str,
    note: str | None = None,
) -> ReferralEvent:
    """Move a referral to ``state``, recording who did it (a referral event and an audit row).

    The row is locked while it changes, so two people changing it at once
    record two events in order. Flushes; the caller commits.
    """
    referral = session.scalars(
        select(Referral).where(Referral.id == referral_id).with_for_update()
    ).one_or_none()
    if referral is None:
        raise UnknownReferral(f"no referral {referral_id}")
    before = referral.state
    referral.state = state
    event = ReferralEvent(
        referral_id=referral_id,
        from_state=before.value,
        to_state=state.value,
        actor=actor[:64],
        note=note,
    )
    session.add(event)
    # The note is free text and stays out of the audit trail (it may name the patient).
    audit(
        session,
        "referral",
        "state_changed",
        detail={
            "referral_id": referral_id,
            "from": before.value,
            "to": state.value,
            "actor": actor,
        },
    )
    session.flush()
    return event


def referral_counts(session: Session) -> dict[str, int]:
    """How many referrals are in each state (every state named, zeros included)."""
    counts: dict[str, Any] = dict(
        session.execute(select(Referral.state, func.count()).group_by(Referral.state)).all()
    )
    return {s.value: int(counts.get(s, 0)) for s in ReferralState}


__all__ = [
    "AGENT_ACTOR",
    "ReferralCT",
    "ReferralLink",
    "ReferralView",
    "UnknownReferral",
    "link_referral",
    "list_referrals",
    "parse_da",
    "referral_counts",
    "referral_view",
    "referred_on",
    "set_referral_state",
]
