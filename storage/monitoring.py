"""What live monitoring reads and writes: screened scores, matched echo outcomes,
referral outcomes, acquisition characteristics, and the ``monitor_checks`` rows.

Pseudonyms never leave these functions: a row carries job ids, dates, scores and labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from storage.models import EchoOutcome, Job, MonitorCheck, Referral, Result, Series, Study


@dataclass(frozen=True)
class ScreenedSeries:
    """One screened series: when, what it scored, and how it was acquired."""

    job_id: int
    screened_at: datetime
    study_date: str | None
    scores: dict[str, float]
    flagged: dict[str, bool]
    inputs: dict[str, Any]


@dataclass(frozen=True)
class MatchedOutcome:
    """A screened series and the labels of the echo matched to it."""

    job_id: int
    screened_at: datetime
    study_date: str | None
    exam_date: str
    scores: dict[str, float]
    labels: dict[str, Any]


@dataclass(frozen=True)
class ReferralOutcome:
    """A referral, its tasks, and the labels of the echo matched to its CT (None: none yet)."""

    referral_id: int
    referred_at: datetime
    tasks: list[str]
    labels: dict[str, Any] | None


def _screened(model_version: str | None) -> Any:
    query = select(Job.id, Job.screened_at, Study.study_date, Series.manufacturer, Series.kvp,
                   Series.slice_thickness, Series.convolution_kernel).join(
        Series, Series.id == Job.series_id).join(Study, Study.id == Series.study_id).where(
        Job.screened_at.is_not(None))  # fmt: skip
    if model_version is not None:
        query = query.where(Job.model_version == model_version)
    return query


def _scores_of(
    session: Session, job_ids: Sequence[int]
) -> dict[int, list[tuple[str, float, bool]]]:
    out: dict[int, list[tuple[str, float, bool]]] = {}
    for start in range(0, len(job_ids), 500):  # bound the IN list
        chunk = job_ids[start : start + 500]
        rows = session.execute(
            select(Result.job_id, Result.task_name, Result.probability, Result.flagged).where(
                Result.job_id.in_(chunk)
            )
        )
        for job_id, task, p, flagged in rows:
            out.setdefault(job_id, []).append((task, p, flagged))
    return out


def screened_series(
    session: Session, start: datetime, end: datetime, model_version: str | None = None
) -> list[ScreenedSeries]:
    """Series screened in ``[start, end)`` (by ``model_version`` if given), with scores."""
    rows = session.execute(
        _screened(model_version)
        .where(Job.screened_at >= start, Job.screened_at < end)
        .order_by(Job.id)
    ).all()
    scores = _scores_of(session, [r[0] for r in rows])
    return [
        ScreenedSeries(
            job_id=r[0],
            screened_at=r[1],
            study_date=r[2],
            scores={t: p for t, p, _ in scores.get(r[0], [])},
            flagged={t: f for t, _, f in scores.get(r[0], [])},
            inputs={
                "manufacturer": r[3],
                "kvp": r[4],
                "slice_thickness": r[5],
                "convolution_kernel": r[6],
            },  # fmt: skip
        )
        for r in rows
    ]


def matched_outcomes(
    session: Session, model_version: str | None = None, since: date | None = None
) -> list[MatchedOutcome]:
    """Screened series with an echo matched to it (one row per echo); ``since``: only CTs
    of that day or later by Study Date (those without one are kept: the caller dates them)."""
    query = (
        select(Job.id, Job.screened_at, Study.study_date, EchoOutcome.exam_date,
               EchoOutcome.labels)
        .join(EchoOutcome, EchoOutcome.job_id == Job.id)
        .join(Series, Series.id == Job.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(Job.screened_at.is_not(None))
        .order_by(Job.id, EchoOutcome.id)
    )  # fmt: skip
    if model_version is not None:
        query = query.where(Job.model_version == model_version)
    if since is not None:
        query = query.where(or_(Study.study_date >= f"{since:%Y%m%d}",
                                Study.study_date.is_(None), Study.study_date == ""))  # fmt: skip
    rows = session.execute(query).all()
    scores = _scores_of(session, sorted({r[0] for r in rows}))
    return [
        MatchedOutcome(
            job_id=r[0],
            screened_at=r[1],
            study_date=r[2],
            exam_date=r[3],
            scores={t: p for t, p, _ in scores.get(r[0], [])},
            labels=dict(r[4] or {}),
        )
        for r in rows
    ]


def referral_outcomes(session: Session, start: datetime, end: datetime) -> list[ReferralOutcome]:
    """Referrals made in ``[start, end)`` and the echo matched to the CT that raised each."""
    rows = session.execute(
        select(Referral.id, Referral.referred_at, Referral.tasks, EchoOutcome.labels)
        .outerjoin(EchoOutcome, EchoOutcome.job_id == Referral.job_id)
        .where(Referral.referred_at >= start, Referral.referred_at < end)
        .order_by(Referral.id, EchoOutcome.id)
    ).all()
    out: dict[int, ReferralOutcome] = {}
    for rid, when, tasks, labels in rows:
        if rid in out and out[rid].labels is not None:
            continue  # several echoes on one CT: the first matched is the one counted
        out[rid] = ReferralOutcome(rid, when, list(tasks or []), dict(labels) if labels else None)
    return list(out.values())


def add_checks(session: Session, checks: Iterable[MonitorCheck]) -> int:
    """Store one run's checks; returns how many."""
    rows = list(checks)
    session.add_all(rows)
    return len(rows)


def latest_checks(session: Session) -> list[MonitorCheck]:
    """The checks of the newest run (a run stores all its rows with one ``checked_at``)."""
    newest = select(func.max(MonitorCheck.checked_at)).scalar_subquery()
    return list(
        session.scalars(
            select(MonitorCheck)
            .where(MonitorCheck.checked_at == newest)
            .order_by(MonitorCheck.kind, MonitorCheck.name, MonitorCheck.id)
        )
    )


def check_history(
    session: Session, start: datetime | None = None, end: datetime | None = None
) -> list[MonitorCheck]:
    """Checks made in ``[start, end)``, oldest first."""
    query = select(MonitorCheck).order_by(MonitorCheck.checked_at, MonitorCheck.id)
    if start is not None:
        query = query.where(MonitorCheck.checked_at >= start)
    if end is not None:
        query = query.where(MonitorCheck.checked_at < end)
    return list(session.scalars(query))
