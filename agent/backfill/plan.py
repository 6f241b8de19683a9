"""Planning a campaign: every study of every day in the range, every series judged and stored.

Day by day (:func:`~agent.backfill.find.scan_day`), each study's series are
queried and each series recorded in ``backfill_series``:

- ``already``: the agent has the series (``series`` table) or another campaign
  holds it (planned, retrieving, retrieved or awaiting a retry);
- ``skipped``: the query says it is not a non-contrast chest CT
  (:mod:`agent.backfill.judge`), or its study's answer is unusable (a date
  that is not one); the reason says which;
- ``planned``: eligible by what the archive returned: to retrieve.

An answer without usable UIDs cannot be recorded or retrieved: it is counted
in the campaign's ``plan_summary``. Each day is committed as it is planned;
an archive that goes down ends the campaign ``failed`` with one line, the
days planned so far kept for the record.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from agent.backfill.find import ArchiveError, Finder, ResultLimit, scan_day, text
from agent.backfill.judge import date_problem, judge, uid_problem, values
from agent.config import EligibilitySettings
from agent.logs import get_logger
from storage.backfill import (
    SeriesPlan,
    add_series,
    fail_planning,
    finish_planning,
    held_elsewhere,
)
from storage.models import BackfillCampaign, BackfillState

log = get_logger(__name__)


@dataclass(frozen=True)
class PlanFilters:
    """Which studies and series a campaign looks at, besides the eligibility rules."""

    modalities: tuple[str, ...] = ("CT",)
    study_description: str | None = None  # a regular expression (re.search, any case)
    series_description: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("modalities", list(self.modalities)),
                ("study_description", self.study_description),
                ("series_description", self.series_description),
            )
            if v
        }


@dataclass
class PlanOutcome:
    """What one plan found: studies, series per state, and how (the plan summary)."""

    studies: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    summary: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def bump(self, key: str, n: int = 1) -> None:
        self.summary[key] = self.summary.get(key, 0) + n


def days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def plan_campaign(
    sessions: sessionmaker[Session],
    campaign_id: int,
    finder: Finder,
    eligibility: EligibilitySettings,
    *,
    first: date,
    last: date,
    filters: PlanFilters,
    find_limit: int | None = None,
    on_day: Callable[[str, PlanOutcome], None] | None = None,
) -> PlanOutcome:
    """Plan campaign ``campaign_id`` (state ``planning``) over ``first``..``last``.

    Returns the outcome; an archive failure is in ``outcome.error`` and the
    campaign is then ``failed``, not raised.
    """
    outcome = PlanOutcome()
    limit = ResultLimit(configured=find_limit)
    seen_studies: set[str] = set()
    span = (f"{first:%Y%m%d}", f"{last:%Y%m%d}")
    study_rx = _regex(filters.study_description)
    series_rx = _regex(filters.series_description)
    try:
        for day in days(first, last):
            key = f"{day:%Y%m%d}"
            scan = scan_day(finder, key, limit)
            outcome.bump("days")
            outcome.bump("queries", scan.queries)
            outcome.bump("days_split", int(scan.split))
            outcome.bump("slices_at_limit", scan.slices_at_limit)
            outcome.bump("studies_malformed", scan.malformed)
            plans: list[SeriesPlan] = []
            for study in scan.studies:
                uid = text(study, "StudyInstanceUID")
                if uid_problem(uid, "Study Instance UID") is not None or uid is None:
                    outcome.bump("studies_malformed")
                    continue
                if uid in seen_studies:
                    continue
                seen_studies.add(uid)
                if not _wanted(study, filters, study_rx):
                    outcome.bump("studies_filtered")
                    continue
                outcome.studies += 1
                plans += _plan_study(finder, study, uid, key, span, eligibility, series_rx, outcome)
            with sessions.begin() as session:
                campaign = session.get_one(BackfillCampaign, campaign_id)
                plans = _mark_held(session, campaign_id, plans)
                add_series(session, campaign, plans)
                campaign.studies_found = outcome.studies
                campaign.plan_summary = dict(outcome.summary)
            for plan in plans:
                outcome.counts[plan.state] = outcome.counts.get(plan.state, 0) + 1
            if on_day is not None:
                on_day(key, outcome)
    except ArchiveError as exc:
        outcome.error = str(exc)
    except KeyboardInterrupt:
        outcome.error = "planning interrupted"
        _record_end(sessions, campaign_id, outcome)
        raise
    finally:
        finder.close()
    if limit.detected is not None:
        outcome.summary["limit_detected"] = limit.detected
    _record_end(sessions, campaign_id, outcome)
    log.info(
        "backfill planned",
        campaign=campaign_id,
        studies=outcome.studies,
        series={str(k): v for k, v in outcome.counts.items()},
        error=outcome.error,
        **outcome.summary,
    )
    return outcome


def _record_end(sessions: sessionmaker[Session], campaign_id: int, outcome: PlanOutcome) -> None:
    with sessions.begin() as session:
        campaign = session.get_one(BackfillCampaign, campaign_id)
        if outcome.error is None:
            finish_planning(session, campaign, outcome.studies, dict(outcome.summary))
        else:
            fail_planning(session, campaign, outcome.error, outcome.studies, dict(outcome.summary))


def _regex(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern, re.IGNORECASE) if pattern else None


def _wanted(study: Dataset, filters: PlanFilters, rx: re.Pattern[str] | None) -> bool:
    """The study's own answer against the filters (an archive may ignore a matching key)."""
    modalities = values(study, "ModalitiesInStudy")
    wanted = {m.upper() for m in filters.modalities}
    if modalities and wanted and not wanted & {m.upper() for m in modalities}:
        return False
    return rx is None or bool(rx.search(text(study, "StudyDescription") or ""))


def _plan_study(
    finder: Finder,
    study: Dataset,
    study_uid: str,
    day: str,
    span: tuple[str, str],
    eligibility: EligibilitySettings,
    series_rx: re.Pattern[str] | None,
    outcome: PlanOutcome,
) -> list[SeriesPlan]:
    result = finder.series(study_uid)
    outcome.bump("queries")
    outcome.bump("series_malformed", result.malformed)
    if not result.complete:
        outcome.bump("studies_series_cut_short")
    study_date = text(study, "StudyDate")
    bad_date = date_problem(study_date, *span)
    plans: list[SeriesPlan] = []
    for series in result.answers:
        said = text(series, "StudyInstanceUID")
        if said is not None and said != study_uid:
            # An archive ignoring the study key: the series is found under its own study.
            outcome.bump("series_of_another_study")
            continue
        uid = text(series, "SeriesInstanceUID")
        problem = uid_problem(uid, "Series Instance UID")
        if uid is None or len(uid) > 64:
            outcome.bump("series_malformed")  # nothing to record it under
            continue
        reason = problem or bad_date
        state = BackfillState.SKIPPED
        description = text(series, "SeriesDescription")
        if reason is None and series_rx is not None and not series_rx.search(description or ""):
            reason = "series description does not match --series-description"
        if reason is None:
            verdict = judge(study, series, eligibility)
            reason = verdict.reason
            state = BackfillState.PLANNED if verdict.eligible else BackfillState.SKIPPED
        instances = _count(series)
        plans.append(
            SeriesPlan(
                study_instance_uid=study_uid,
                series_instance_uid=uid,
                state=state,
                reason=reason,
                study_date=(study_date if bad_date is None and study_date else day)[:16],
                modality=_cut(text(series, "Modality"), 16),
                series_description=_cut(description, 64),
                body_part_examined=_cut(text(series, "BodyPartExamined"), 16),
                expected_instances=instances,
            )
        )
    return plans


def _mark_held(session: Session, campaign_id: int, plans: Sequence[SeriesPlan]) -> list[SeriesPlan]:
    """Series the agent has or another campaign holds become ``already``, whatever they are."""
    held = held_elsewhere(session, campaign_id, [p.series_instance_uid for p in plans])
    marked = []
    for plan in plans:
        why = held.get(plan.series_instance_uid)
        if why is not None:
            plan = replace(plan, state=BackfillState.ALREADY, reason=f"already {why}")
        marked.append(plan)
    return marked


def _count(series: Dataset) -> int | None:
    raw = text(series, "NumberOfSeriesRelatedInstances")
    if raw is None or not raw.isdigit() or len(raw) > 9:
        return None
    return int(raw)


def _cut(value: str | None, n: int) -> str | None:
    return value[:n] if value else value
