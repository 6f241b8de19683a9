"""Echo outcomes: stored once per source record, matched to the patient's screened CT.

The matching rule (the paper's, section 3): an echocardiogram belongs to the
patient's screened CT closest in time, within ``match_days`` days either side.
A screened CT is a job in state ``done`` with results. When the outcome names an
accession (a pseudonym of it), a screened CT of that accession within the window is
taken first; otherwise, or if none is, the patient's closest one. Ties go to the CT
before the echo, then to the lower job id. An outcome with no such CT stays unmatched
(``job_id`` NULL) until :func:`match_pending` finds one: nodes call it every minute
(agent.pipeline.scheduler), so a CT screened after its echo arrived still gets it.

Several outcomes may match one CT; :func:`closest_outcomes` gives each CT the one
closest in time, which is the one whose labels count for that CT.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session

from storage.models import EchoOutcome, Job, JobState, Result, Series, Study


@dataclass(frozen=True)
class OutcomeRecord:
    """One echocardiogram's result as it enters the database: pseudonyms only."""

    source: str  # "csv" | "sr"
    source_key: str  # the same source record always gives the same key
    patient_pseudonym: str | None
    accession_pseudonym: str | None
    exam_date: str  # DA, YYYYMMDD
    measurements: dict[str, Any]
    labels: dict[str, int]
    rel_path: str | None = None

    def __post_init__(self) -> None:
        if self.source not in ("csv", "sr"):
            raise ValueError(f"unknown outcome source {self.source!r}")
        if parse_da(self.exam_date) is None:
            raise ValueError("exam_date is not a date (YYYYMMDD)")
        if not (self.patient_pseudonym or self.accession_pseudonym):
            raise ValueError("an outcome needs a patient or an accession pseudonym")


class OutcomeWrite(StrEnum):
    IMPORTED = "imported"
    DUPLICATE = "duplicate"  # same source key, same content: nothing changed
    UPDATED = "updated"  # same source key (a CSV row re-exported), new measurements


@dataclass(frozen=True)
class RecordedOutcome:
    write: OutcomeWrite
    outcome_id: int
    job_id: int | None
    rel_path: str | None  # the stored row's file (a duplicate keeps the first one's)


@dataclass(frozen=True)
class ScreenedCT:
    job_id: int
    study_date: date
    accession_pseudonym: str | None


def parse_da(value: str | None) -> date | None:
    """A DA value (PS3.5 6.2, YYYYMMDD; the legacy YYYY.MM.DD too) as a date; None if not one."""
    text = (value or "").strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def record_outcome(session: Session, record: OutcomeRecord, match_days: int) -> RecordedOutcome:
    """Insert ``record`` (or find it by source key) and match it; the caller commits.

    A received SR already stored is kept as first received; a CSV row with a known key
    and other measurements replaces the stored ones (the export was corrected).
    Two writers inserting one key at once: the second fails on the unique key
    (IntegrityError) and may call again to find the first one's row.
    """
    existing = session.scalar(
        select(EchoOutcome).where(EchoOutcome.source_key == record.source_key)
    )
    if existing is not None:
        same = (
            existing.measurements == record.measurements
            and existing.labels == record.labels
            and existing.exam_date == record.exam_date
        )
        if same or record.source == "sr":
            return RecordedOutcome(
                OutcomeWrite.DUPLICATE, existing.id, existing.job_id, existing.rel_path
            )
        existing.measurements = record.measurements
        existing.labels = record.labels
        existing.exam_date = record.exam_date
        match_outcome(session, existing, match_days)
        session.flush()
        return RecordedOutcome(OutcomeWrite.UPDATED, existing.id, existing.job_id, None)
    outcome = EchoOutcome(
        source=record.source,
        source_key=record.source_key,
        patient_pseudonym=record.patient_pseudonym,
        accession_pseudonym=record.accession_pseudonym,
        exam_date=record.exam_date,
        measurements=record.measurements,
        labels=record.labels,
        rel_path=record.rel_path,
    )
    session.add(outcome)
    match_outcome(session, outcome, match_days)
    session.flush()
    return RecordedOutcome(OutcomeWrite.IMPORTED, outcome.id, outcome.job_id, outcome.rel_path)


def _screened() -> Any:
    return (Job.state == JobState.DONE) & exists().where(Result.job_id == Job.id)


def screened_cts(
    session: Session, patient_pseudonym: str | None, accession_pseudonym: str | None
) -> list[ScreenedCT]:
    """The screened CTs of this patient or accession (study date known), in job order."""
    keys = []
    if patient_pseudonym:
        keys.append(Study.patient_pseudonym == patient_pseudonym)
    if accession_pseudonym:
        keys.append(Study.accession_pseudonym == accession_pseudonym)
    if not keys:
        return []
    rows = session.execute(
        select(Job.id, Study.study_date, Study.accession_pseudonym)
        .join(Series, Job.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .where(_screened(), or_(*keys))
        .order_by(Job.id)
    ).all()
    found = []
    for job_id, study_date, accession in rows:
        day = parse_da(study_date)
        if day is not None:
            found.append(ScreenedCT(job_id, day, accession))
    return found


def closest_ct(
    exam_date: date,
    cts: Sequence[ScreenedCT],
    match_days: int,
    accession_pseudonym: str | None = None,
) -> tuple[ScreenedCT, int] | None:
    """The CT the rule picks and (echo date - CT date) in days; None if none is in the window."""
    in_window = [(ct, (exam_date - ct.study_date).days) for ct in cts]
    in_window = [(ct, days) for ct, days in in_window if abs(days) <= match_days]
    if accession_pseudonym:
        by_accession = [c for c in in_window if c[0].accession_pseudonym == accession_pseudonym]
        if by_accession:
            in_window = by_accession
    if not in_window:
        return None
    return min(in_window, key=lambda c: (abs(c[1]), c[1] < 0, c[0].job_id))


def match_outcome(session: Session, outcome: EchoOutcome, match_days: int) -> bool:
    """Set ``outcome.job_id``/``match_days`` by the rule (cleared if nothing matches)."""
    exam = parse_da(outcome.exam_date)
    chosen = None
    if exam is not None:
        cts = screened_cts(session, outcome.patient_pseudonym, outcome.accession_pseudonym)
        chosen = closest_ct(exam, cts, match_days, outcome.accession_pseudonym)
    if chosen is None:
        outcome.job_id = None
        outcome.match_days = None
        return False
    ct, days = chosen
    outcome.job_id = ct.job_id
    outcome.match_days = days
    if outcome.patient_pseudonym is None:
        # Matched by accession alone: the CT's patient is the echo's patient.
        outcome.patient_pseudonym = session.scalar(
            select(Study.patient_pseudonym)
            .join(Series, Series.study_id == Study.id)
            .join(Job, Job.series_id == Series.id)
            .where(Job.id == ct.job_id)
        )
    return True


def match_pending(session: Session, match_days: int, *, rematch_all: bool = False) -> int:
    """Match the outcomes still without a CT (every outcome with ``rematch_all``).

    Only outcomes whose patient or accession has a screened CT are looked at, so a
    call after each screening pass costs little. Returns how many outcomes are newly
    matched or moved to another CT; the caller commits.
    """
    screened_study = (
        select(Study.id)
        .join(Series, Series.study_id == Study.id)
        .join(Job, Job.series_id == Series.id)
        .where(_screened())
    )
    has_ct = or_(
        EchoOutcome.patient_pseudonym.in_(
            screened_study.with_only_columns(Study.patient_pseudonym)
        ),
        EchoOutcome.accession_pseudonym.in_(
            screened_study.with_only_columns(Study.accession_pseudonym)
        ),
    )
    stmt = select(EchoOutcome).where(has_ct).order_by(EchoOutcome.id)
    if not rematch_all:
        stmt = stmt.where(EchoOutcome.job_id.is_(None))
    changed = 0
    for outcome in session.scalars(stmt):
        before = outcome.job_id
        if match_outcome(session, outcome, match_days) and outcome.job_id != before:
            changed += 1
    session.flush()
    return changed


def closest_outcomes(
    session: Session, job_ids: Iterable[int] | None = None
) -> dict[int, EchoOutcome]:
    """Per matched CT (job id), its outcome closest in time (ties: the earlier outcome)."""
    stmt = select(EchoOutcome).where(EchoOutcome.job_id.is_not(None)).order_by(EchoOutcome.id)
    if job_ids is not None:
        stmt = stmt.where(EchoOutcome.job_id.in_(list(job_ids)))
    best: dict[int, EchoOutcome] = {}
    for outcome in session.scalars(stmt):
        assert outcome.job_id is not None
        held = best.get(outcome.job_id)
        if held is None or abs(outcome.match_days or 0) < abs(held.match_days or 0):
            best[outcome.job_id] = outcome
    return best


def outcome_counts(session: Session) -> dict[str, int]:
    """Outcomes stored, matched and unmatched (for summaries)."""
    total = session.scalar(select(func.count()).select_from(EchoOutcome)) or 0
    matched = (
        session.scalar(select(func.count(EchoOutcome.id)).where(EchoOutcome.job_id.is_not(None)))
        or 0
    )
    return {"outcomes": total, "matched": matched, "unmatched": total - matched}
