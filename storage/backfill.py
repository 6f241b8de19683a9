"""Backfill campaigns in the database: create, find, plan into, move between states, count.

A campaign (``backfill_campaigns``) holds one row per series its query found
(``backfill_series``), judged when planned: ``planned`` (to retrieve),
``skipped`` (not eligible by its query attributes) or ``already`` (stored or
screened by the agent, or held by another campaign). Retrieval moves planned
rows on (:class:`storage.models.BackfillState`). Every function takes the
caller's session; the caller commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.errors import StorageError
from storage.models import (
    BackfillCampaign,
    BackfillSeries,
    BackfillState,
    CampaignState,
    Job,
    Series,
)
from storage.types import utcnow

#: Series states that hold a series for their campaign: another campaign leaves it alone.
HELD = (
    BackfillState.PLANNED,
    BackfillState.RETRIEVING,
    BackfillState.RETRIEVED,
    BackfillState.FAILED,
)
#: Series states still to retrieve (a failed one is retried after its backoff).
REMAINING = (BackfillState.PLANNED, BackfillState.RETRIEVING, BackfillState.FAILED)
#: Series states a cancel ends: waiting, not held by a retriever.
WAITING = (BackfillState.PLANNED, BackfillState.FAILED)

# IN lists stay under SQLite's bound on query parameters.
_CHUNK = 500


class CampaignError(StorageError):
    """A campaign that does not exist, a name taken, or a transition its state forbids."""


@dataclass(frozen=True)
class SeriesPlan:
    """One series of a campaign as planned from the archive's answer."""

    study_instance_uid: str
    series_instance_uid: str
    state: BackfillState
    reason: str | None = None
    study_date: str | None = None
    modality: str | None = None
    series_description: str | None = None
    body_part_examined: str | None = None
    expected_instances: int | None = None


@dataclass
class Progress:
    """Where a campaign's retrieval stands: series per state, and the three totals.

    ``done`` counts retrieved series, ``failed`` those out of attempts (dead),
    ``remaining`` those still to retrieve (planned, retrieving, failed awaiting
    a retry). Skipped, already and cancelled series are in ``counts`` only.
    """

    counts: dict[str, int] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    remaining: int = 0

    @property
    def total(self) -> int:
        return self.done + self.failed + self.remaining


# -- campaigns --------------------------------------------------------------------------


def create_campaign(
    session: Session,
    *,
    name: str,
    archive: str,
    date_from: str,
    date_to: str,
    filters: dict[str, Any] | None = None,
) -> BackfillCampaign:
    """A new campaign in state ``planning``; a name already taken is a CampaignError."""
    taken = session.scalar(select(BackfillCampaign).where(BackfillCampaign.name == name))
    if taken is not None:
        raise CampaignError(
            f"a campaign named {name!r} exists (id {taken.id}, {taken.state}): give another --name"
        )
    campaign = BackfillCampaign(
        name=name,
        archive=archive,
        date_from=date_from,
        date_to=date_to,
        filters=filters or None,
        state=CampaignState.PLANNING,
    )
    session.add(campaign)
    session.flush()
    return campaign


def find_campaign(session: Session, ref: str) -> BackfillCampaign:
    """The campaign named ``ref``, or with id ``ref`` when no name matches."""
    campaign = session.scalar(select(BackfillCampaign).where(BackfillCampaign.name == ref))
    if campaign is None and ref.isascii() and ref.isdigit() and len(ref) < 10:
        campaign = session.get(BackfillCampaign, int(ref))
    if campaign is None:
        raise CampaignError(f"no campaign {ref!r} (give its name or id; see 'backfill list')")
    return campaign


def list_campaigns(session: Session) -> list[BackfillCampaign]:
    return list(session.scalars(select(BackfillCampaign).order_by(BackfillCampaign.id)))


# -- planning ---------------------------------------------------------------------------


def held_elsewhere(
    session: Session, campaign_id: int, series_uids: Iterable[str]
) -> dict[str, str]:
    """Series the agent already has or another campaign holds: UID -> why, in one line."""
    uids = list(dict.fromkeys(series_uids))
    found: dict[str, str] = {}
    for start in range(0, len(uids), _CHUNK):
        chunk = uids[start : start + _CHUNK]
        stored = session.execute(
            select(Series.series_instance_uid, Job.state)
            .outerjoin(Job, Job.series_id == Series.id)
            .where(Series.series_instance_uid.in_(chunk))
        )
        for uid, job_state in stored:
            found[uid] = "stored by the agent" + (f" (job {job_state})" if job_state else "")
        held = session.execute(
            select(BackfillSeries.series_instance_uid, BackfillCampaign.name, BackfillSeries.state)
            .join(BackfillCampaign, BackfillSeries.campaign_id == BackfillCampaign.id)
            .where(
                BackfillSeries.series_instance_uid.in_(chunk),
                BackfillSeries.campaign_id != campaign_id,
                BackfillSeries.state.in_(HELD),
                # A campaign whose planning failed never starts: it holds nothing.
                BackfillCampaign.state != CampaignState.FAILED,
            )
        )
        for uid, name, state in held:
            found.setdefault(uid, f"{state} by campaign {name!r}")
    return found


def add_series(session: Session, campaign: BackfillCampaign, plans: Sequence[SeriesPlan]) -> None:
    """Record planned, skipped and already series; a UID the campaign has is left as it is."""
    uids = [p.series_instance_uid for p in plans]
    have: set[str] = set()
    for start in range(0, len(uids), _CHUNK):
        have.update(
            session.scalars(
                select(BackfillSeries.series_instance_uid).where(
                    BackfillSeries.campaign_id == campaign.id,
                    BackfillSeries.series_instance_uid.in_(uids[start : start + _CHUNK]),
                )
            )
        )
    for plan in plans:
        if plan.series_instance_uid in have:
            continue
        have.add(plan.series_instance_uid)
        session.add(
            BackfillSeries(
                campaign_id=campaign.id,
                study_instance_uid=plan.study_instance_uid,
                series_instance_uid=plan.series_instance_uid,
                study_date=plan.study_date,
                modality=plan.modality,
                series_description=plan.series_description,
                body_part_examined=plan.body_part_examined,
                expected_instances=plan.expected_instances,
                state=plan.state,
                reason=plan.reason,
            )
        )
    session.flush()


def finish_planning(
    session: Session, campaign: BackfillCampaign, studies_found: int, summary: dict[str, Any]
) -> None:
    campaign.state = CampaignState.PLANNED
    campaign.studies_found = studies_found
    campaign.plan_summary = summary
    campaign.last_error = None


def fail_planning(
    session: Session,
    campaign: BackfillCampaign,
    error: str,
    studies_found: int,
    summary: dict[str, Any],
) -> None:
    """Planning stopped (archive down, refused): the series found so far stay, for the record."""
    campaign.state = CampaignState.FAILED
    campaign.last_error = error
    campaign.studies_found = studies_found
    campaign.plan_summary = summary
    campaign.finished_at = utcnow()


# -- transitions ------------------------------------------------------------------------

_WHY_NOT = {
    CampaignState.PLANNING: "it is still being planned",
    CampaignState.CANCELLED: "it was cancelled",
    CampaignState.DONE: "it is done",
    CampaignState.FAILED: "its planning failed (plan it again under a new name)",
}


def _refuse(campaign: BackfillCampaign, action: str, hint: str = "") -> CampaignError:
    why = _WHY_NOT.get(campaign.state, f"it is {campaign.state}")
    return CampaignError(f"cannot {action} campaign {campaign.name!r}: {why}{hint}")


def start_campaign(session: Session, campaign: BackfillCampaign) -> None:
    """planned -> running: retrieval may begin (within the configured windows)."""
    if campaign.state == CampaignState.PAUSED:
        raise _refuse(campaign, "start", "; use 'backfill resume'")
    if campaign.state == CampaignState.RUNNING:
        raise CampaignError(f"campaign {campaign.name!r} is already running")
    if campaign.state != CampaignState.PLANNED:
        raise _refuse(campaign, "start")
    campaign.state = CampaignState.RUNNING
    campaign.started_at = utcnow()
    session.flush()


def pause_campaign(session: Session, campaign: BackfillCampaign) -> None:
    """running -> paused: no new retrieve starts; those under way finish."""
    if campaign.state == CampaignState.PAUSED:
        raise CampaignError(f"campaign {campaign.name!r} is already paused")
    if campaign.state != CampaignState.RUNNING:
        raise _refuse(campaign, "pause", "; only a running campaign pauses")
    campaign.state = CampaignState.PAUSED
    session.flush()


def resume_campaign(session: Session, campaign: BackfillCampaign) -> None:
    """paused -> running."""
    if campaign.state == CampaignState.RUNNING:
        raise CampaignError(f"campaign {campaign.name!r} is already running")
    if campaign.state == CampaignState.PLANNED:
        raise _refuse(campaign, "resume", "; use 'backfill start'")
    if campaign.state != CampaignState.PAUSED:
        raise _refuse(campaign, "resume")
    campaign.state = CampaignState.RUNNING
    session.flush()


def cancel_campaign(session: Session, campaign: BackfillCampaign) -> int:
    """Any unfinished campaign -> cancelled; its waiting series become cancelled (count)."""
    if campaign.state in (CampaignState.CANCELLED, CampaignState.DONE):
        raise _refuse(campaign, "cancel")
    result = session.execute(
        update(BackfillSeries)
        .where(BackfillSeries.campaign_id == campaign.id, BackfillSeries.state.in_(WAITING))
        .values(state=BackfillState.CANCELLED, next_attempt_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    campaign.state = CampaignState.CANCELLED
    campaign.finished_at = utcnow()
    session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


# -- progress ---------------------------------------------------------------------------


def progress(session: Session, campaign_id: int) -> Progress:
    """Series per state of one campaign, and done / failed / remaining."""
    rows = session.execute(
        select(BackfillSeries.state, func.count())
        .where(BackfillSeries.campaign_id == campaign_id)
        .group_by(BackfillSeries.state)
    )
    counts = {str(state): int(n) for state, n in rows}
    return Progress(
        counts=counts,
        done=counts.get(BackfillState.RETRIEVED, 0),
        failed=counts.get(BackfillState.DEAD, 0),
        remaining=sum(counts.get(s, 0) for s in REMAINING),
    )


def retrieve_rate(session: Session, campaign_id: int) -> float | None:
    """Series retrieved per hour, from the retrieves' own times; None before two."""
    first, last, n = session.execute(
        select(
            func.min(BackfillSeries.retrieved_at),
            func.max(BackfillSeries.retrieved_at),
            func.count(BackfillSeries.retrieved_at),
        ).where(BackfillSeries.campaign_id == campaign_id)
    ).one()
    if n < 2 or first is None or last is None or last <= first:
        return None
    return (n - 1) / ((last - first).total_seconds() / 3600.0)


def eta(session: Session, campaign_id: int, now: datetime | None = None) -> datetime | None:
    """When the remaining series should be retrieved at the rate so far; None if unknown."""
    rate = retrieve_rate(session, campaign_id)
    if rate is None:
        return None
    left = progress(session, campaign_id).remaining
    return (now or utcnow()) + timedelta(hours=left / rate)
