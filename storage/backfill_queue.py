"""The retrieval queue of archive backfill: ``backfill_series`` rows as a leased queue.

A planned series is waiting, a series being retrieved is held (leased by the
retriever that claimed it), a refused or partial retrieve is failed and due
again after a backoff, and one out of attempts is dead; the same
:class:`~storage.queue.LeasedQueue` as jobs and deliveries. Only series of a
running campaign are claimed. A campaign is done when none of its series is
waiting, held or failed.

Every function takes an explicit session; callers commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from storage.models import (
    BackfillCampaign,
    BackfillSeries,
    BackfillState,
    CampaignState,
    Instance,
    Job,
    JobState,
    Series,
)
from storage.queue import LeasedQueue
from storage.types import utcnow

RETRIEVALS = LeasedQueue(
    BackfillSeries,
    waiting=BackfillState.PLANNED,
    held=BackfillState.RETRIEVING,
    failed=BackfillState.FAILED,
    dead=BackfillState.DEAD,
)

#: States of a series still to retrieve (a campaign with none left is done).
OPEN_STATES = (BackfillState.PLANNED, BackfillState.RETRIEVING, BackfillState.FAILED)
#: A series whose job reached one of these was stored and decided: never retrieved again.
_SETTLED_JOBS = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.DONE,
    JobState.SKIPPED,
    JobState.FAILED,
    JobState.DEAD,
)


def held_retrievals(session: Session) -> int:
    """Retrieves in progress, by every retriever sharing the database."""
    return (
        session.scalar(
            select(func.count())
            .select_from(BackfillSeries)
            .where(BackfillSeries.state == BackfillState.RETRIEVING)
        )
        or 0
    )


def started_since(session: Session, since: datetime) -> int:
    """Retrieves started (claimed) since ``since``: what ``series_per_hour`` counts."""
    return (
        session.scalar(
            select(func.count())
            .select_from(BackfillSeries)
            .where(BackfillSeries.claimed_at >= since)
        )
        or 0
    )


def settle_already_stored(session: Session) -> int:
    """Series waiting for retrieval that meanwhile arrived and were decided: ``already``.

    A live push of the same series (or another campaign's retrieve) got there
    first; retrieving it again would only fetch duplicates.
    """
    settled = (
        select(Series.series_instance_uid)
        .join(Job, Job.series_id == Series.id)
        .where(Job.state.in_(_SETTLED_JOBS))
    )
    result = session.execute(
        update(BackfillSeries)
        .where(
            BackfillSeries.state.in_((BackfillState.PLANNED, BackfillState.FAILED)),
            BackfillSeries.series_instance_uid.in_(settled),
        )
        .values(
            state=BackfillState.ALREADY,
            reason="stored and decided before its retrieve",
            next_attempt_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def claim_retrievals(
    session: Session, worker: str, limit: int, now: datetime | None = None
) -> list[BackfillSeries]:
    """Claim up to ``limit`` due series of running campaigns, oldest plan first."""
    if limit <= 0:
        return []
    running = exists().where(
        BackfillCampaign.id == BackfillSeries.campaign_id,
        BackfillCampaign.state == CampaignState.RUNNING,
    )
    return RETRIEVALS.claim(session, worker, limit, now, where=[running])


def instances_recorded(session: Session, series_instance_uid: str) -> int:
    """Instances of the series in the ``instances`` table (what actually arrived)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Instance)
            .join(Series, Instance.series_id == Series.id)
            .where(Series.series_instance_uid == series_instance_uid)
        )
        or 0
    )


def retrieval_done(
    session: Session, row_id: int, worker: str, counts: dict[str, int | None]
) -> bool:
    """The retrieve brought every instance: ``retrieved``; False if the claim is gone."""
    return RETRIEVALS.close(
        session, row_id, worker, BackfillState.RETRIEVED, retrieved_at=utcnow(), **counts
    )


def retrieval_failed(
    session: Session,
    row_id: int,
    worker: str,
    error: str,
    counts: dict[str, int | None],
    *,
    max_attempts: int,
    retry_seconds: float,
    now: datetime | None = None,
) -> BackfillState | None:
    """A refused, partial or lost retrieve: due again after a backoff, or dead."""
    session.execute(
        update(BackfillSeries)
        .where(BackfillSeries.id == row_id, BackfillSeries.claimed_by == worker)
        .values(**counts)
    )
    state = RETRIEVALS.fail(
        session, row_id, worker, error, max_attempts=max_attempts, retry_seconds=retry_seconds,
        now=now,
    )  # fmt: skip
    return None if state is None else BackfillState(state)


def finish_campaigns(session: Session, now: datetime | None = None) -> list[str]:
    """Running campaigns with no series waiting, held or failed become ``done``."""
    open_series = exists().where(
        BackfillSeries.campaign_id == BackfillCampaign.id, BackfillSeries.state.in_(OPEN_STATES)
    )
    done = session.scalars(
        select(BackfillCampaign).where(
            BackfillCampaign.state == CampaignState.RUNNING, ~open_series
        )
    ).all()
    for campaign in done:
        campaign.state = CampaignState.DONE
        campaign.finished_at = now or utcnow()
    session.flush()
    return [c.name for c in done]


@dataclass(frozen=True)
class CampaignProgress:
    """Where one campaign stands: counts per state, its rate and when it should end."""

    name: str
    archive: str
    state: str
    series: dict[str, int]
    done: int  # retrieved
    failed: int  # dead: out of attempts
    remaining: int  # waiting, held or failed (to retry)
    rate_per_hour: float | None  # retrieved over the last hour of retrieves
    eta_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def campaign_progress(
    session: Session, campaign_ids: Sequence[int] | None = None, now: datetime | None = None
) -> list[CampaignProgress]:
    """Progress of the given campaigns (all when None), oldest first.

    The rate counts series retrieved in the hour before ``now`` (or since the
    campaign started, if later); the ETA is the remaining series at that rate.
    """
    now = now or utcnow()
    stmt = select(BackfillCampaign).order_by(BackfillCampaign.id)
    if campaign_ids is not None:
        stmt = stmt.where(BackfillCampaign.id.in_(campaign_ids))
    campaigns = session.scalars(stmt).all()
    counts = {c.id: {s.value: 0 for s in BackfillState} for c in campaigns}
    for cid, state, n in session.execute(
        select(BackfillSeries.campaign_id, BackfillSeries.state, func.count())
        .where(BackfillSeries.campaign_id.in_(list(counts)))
        .group_by(BackfillSeries.campaign_id, BackfillSeries.state)
    ):
        counts[cid][BackfillState(state).value] = n
    hour_ago = now - timedelta(hours=1)
    recent = dict(
        session.execute(
            select(BackfillSeries.campaign_id, func.count())
            .where(
                BackfillSeries.campaign_id.in_(list(counts)),
                BackfillSeries.retrieved_at >= hour_ago,
            )
            .group_by(BackfillSeries.campaign_id)
        ).all()
    )
    out = []
    for c in campaigns:
        by_state = counts[c.id]
        remaining = sum(by_state[s.value] for s in OPEN_STATES)
        window = 3600.0
        if c.started_at is not None and c.started_at > hour_ago:
            window = max(60.0, (now - c.started_at).total_seconds())
        n_recent = int(recent.get(c.id, 0))
        rate = n_recent * 3600.0 / window if n_recent else None
        eta = None
        if remaining == 0:
            eta = 0.0
        elif rate and c.state == CampaignState.RUNNING:
            eta = remaining * 3600.0 / rate
        out.append(
            CampaignProgress(
                name=c.name,
                archive=c.archive,
                state=CampaignState(c.state).value,
                series=by_state,
                done=by_state[BackfillState.RETRIEVED.value],
                failed=by_state[BackfillState.DEAD.value],
                remaining=remaining,
                rate_per_hour=None if rate is None else round(rate, 1),
                eta_seconds=None if eta is None else round(eta),
            )
        )
    return out
