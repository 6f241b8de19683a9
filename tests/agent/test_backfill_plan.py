"""Planning a backfill campaign against a real archive: Orthanc, by C-FIND and by QIDO-RS.

One Orthanc for the module (:mod:`tests.support.archives`), holding the studies of
:mod:`tests.support.archive_cases` over five days, with ``LimitFindResults = 3`` so
a day of seven studies must be split by Study Time. The finders run on a thread in
Orthanc's network namespace; the database (SQLite and PostgreSQL) stays outside.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from agent.backfill.find import Finder
from agent.backfill.plan import PlanFilters, PlanOutcome, plan_campaign
from agent.backfill.qido import QidoFind
from agent.backfill.query import StudyRootFind
from agent.config import EligibilitySettings, NodeSettings
from agent.config_backfill import Archive
from agent.logs import configure_logging
from agent.resources import alembic_dir
from storage.backfill import create_campaign
from storage.db import make_engine, make_session_factory, upgrade
from storage.models import (
    BackfillCampaign,
    BackfillSeries,
    BackfillState,
    CampaignState,
    Series,
    Study,
)
from tests.support.archive_cases import (
    ELIGIBILITY,
    FIRST_DAY,
    LAST_DAY,
    WrittenSeries,
    write_cases,
)
from tests.support.archives import Orthanc, running_orthanc
from tests.support.ct_series import CANARY_BIRTH, CANARY_ID, CANARY_NAME

LIMIT = 3
FIRST = date(2024, 3, 4)
LAST = date(2024, 3, 6)


@dataclass
class Archived:
    orthanc: Orthanc
    series: list[WrittenSeries]

    def expected(self) -> dict[str, str]:
        return {s.series_instance_uid: s.expect for s in self.series if s.expect != "absent"}

    def archive(self, **extra: Any) -> Archive:
        return Archive.model_validate(self.orthanc.archive(**extra))

    def finder(self, kind: str, **extra: Any) -> Finder:
        """A finder whose every call runs inside Orthanc's namespace."""
        thread = self.orthanc.thread
        if kind == "cfind":
            made = thread.call(StudyRootFind, self.archive(**extra), NodeSettings())
        else:
            url = self.orthanc.dicomweb_url
            made = thread.call(QidoFind, self.archive(dicomweb_url=url, **extra))
        proxy: Finder = thread.proxy(made)
        return proxy


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archived]:
    folder = tmp_path_factory.mktemp("archive")
    files, series = write_cases(folder / "cases")
    with running_orthanc(folder / "orthanc", limit_find_results=LIMIT) as orthanc:
        orthanc.store(files)
        yield Archived(orthanc, series)


def plan(
    sessions: sessionmaker[Session],
    finder: Finder,
    name: str = "c1",
    *,
    find_limit: int | None = None,
    filters: PlanFilters | None = None,
) -> tuple[int, PlanOutcome]:
    with sessions.begin() as s:
        campaign_id = create_campaign(
            s, name=name, archive="orthanc", date_from=FIRST_DAY, date_to=LAST_DAY
        ).id
    outcome = plan_campaign(
        sessions,
        campaign_id,
        finder,
        EligibilitySettings.model_validate(ELIGIBILITY),
        first=FIRST,
        last=LAST,
        filters=filters or PlanFilters(),
        find_limit=find_limit,
    )
    return campaign_id, outcome


def rows(sessions: sessionmaker[Session], campaign_id: int) -> dict[str, BackfillSeries]:
    with sessions() as s:
        found = s.scalars(select(BackfillSeries).where(BackfillSeries.campaign_id == campaign_id))
        return {r.series_instance_uid: r for r in found}


def check_against_cases(found: dict[str, BackfillSeries], archived: Archived) -> None:
    expected = archived.expected()
    assert set(found) == set(expected)  # nothing out of range or of another modality
    for uid, expect in expected.items():
        row = found[uid]
        if expect == "planned":
            assert row.state == BackfillState.PLANNED, row.reason
        else:
            check = expect.split(":", 1)[1]
            assert row.state == BackfillState.SKIPPED, row.reason
            assert f"{check}:" in (row.reason or ""), row.reason


def test_cfind_plans_exactly_the_eligible_series(engine: Engine, archived: Archived) -> None:
    sessions = make_session_factory(engine)
    campaign_id, outcome = plan(sessions, archived.finder("cfind"))

    assert outcome.error is None
    found = rows(sessions, campaign_id)
    check_against_cases(found, archived)
    # Orthanc cut the seven-study day short (status Cancel): it was split, nothing lost.
    assert outcome.summary["days_split"] >= 1
    assert outcome.summary["queries"] > outcome.summary["days"]
    assert outcome.summary.get("slices_at_limit", 0) == 0
    assert outcome.summary["limit_detected"] == LIMIT
    studies = {s.study_instance_uid for s in archived.series if s.expect != "absent"}
    assert outcome.studies == len(studies)
    with sessions() as s:
        campaign = s.get_one(BackfillCampaign, campaign_id)
        assert campaign.state == CampaignState.PLANNED
        assert campaign.studies_found == len(studies)
    # What the archive said about each series, for the operator.
    chest = next(r for r in found.values() if r.series_description == "CHEST NON-CONTRAST")
    assert (chest.modality, chest.body_part_examined, chest.expected_instances) == (
        "CT",
        "CHEST",
        4,
    )
    assert chest.study_date == FIRST_DAY


def test_qido_plan_equals_cfind_plan(
    tmp_path: Path, sqlite_engine: Engine, archived: Archived
) -> None:
    by_cfind = make_session_factory(sqlite_engine)
    cfind_id, _ = plan(by_cfind, archived.finder("cfind"))
    other = make_engine(f"sqlite:///{tmp_path / 'qido.db'}")
    upgrade(other, alembic_dir())
    by_qido = make_session_factory(other)
    # QIDO-RS through Orthanc stops silently at its limit: the archive's find_limit says where.
    qido_id, outcome = plan(by_qido, archived.finder("qido"), find_limit=LIMIT)
    assert outcome.error is None and outcome.summary["days_split"] >= 1

    def summary(found: dict[str, BackfillSeries]) -> dict[str, tuple[Any, ...]]:
        return {
            uid: (r.study_instance_uid, r.state, r.reason, r.study_date, r.modality,
                  r.series_description, r.body_part_examined, r.expected_instances)
            for uid, r in found.items()
        }  # fmt: skip

    assert summary(rows(by_qido, qido_id)) == summary(rows(by_cfind, cfind_id))
    check_against_cases(rows(by_qido, qido_id), archived)
    other.dispose()


def test_a_silent_result_limit_hides_studies_unless_configured(
    sqlite_engine: Engine, archived: Archived
) -> None:
    # Without find_limit, QIDO-RS answers the busy day with LIMIT + 1 studies and no warning:
    # the limit, not the planner, is what would hide studies.
    sessions = make_session_factory(sqlite_engine)
    blind_id, blind = plan(sessions, archived.finder("qido"), "blind")
    assert blind.summary.get("days_split", 0) == 0
    assert len(rows(sessions, blind_id)) < len(archived.expected())


def test_series_the_agent_has_or_another_campaign_holds_are_already(
    engine: Engine, archived: Archived
) -> None:
    sessions = make_session_factory(engine)
    expected = archived.expected()
    stored = next(s for s in archived.series if s.expect == "planned")
    with sessions.begin() as s:
        study = Study(study_instance_uid=stored.study_instance_uid)
        s.add(study)
        s.flush()
        s.add(Series(study_id=study.id, series_instance_uid=stored.series_instance_uid))

    first_id, _ = plan(sessions, archived.finder("cfind"), "first")
    first = rows(sessions, first_id)
    assert first[stored.series_instance_uid].state == BackfillState.ALREADY
    assert "stored by the agent" in (first[stored.series_instance_uid].reason or "")
    planned = {u for u, r in first.items() if r.state == BackfillState.PLANNED}
    assert planned == {u for u, e in expected.items() if e == "planned"} - {
        stored.series_instance_uid
    }

    second_id, outcome = plan(sessions, archived.finder("cfind"), "second")
    second = rows(sessions, second_id)
    assert not [r for r in second.values() if r.state == BackfillState.PLANNED]
    for uid in planned:
        assert second[uid].state == BackfillState.ALREADY
        assert "campaign 'first'" in (second[uid].reason or "")


def test_filters_narrow_the_plan(sqlite_engine: Engine, archived: Archived) -> None:
    sessions = make_session_factory(sqlite_engine)
    filters = PlanFilters(study_description=r"W/WO|WITH CONTRAST")
    campaign_id, outcome = plan(sessions, archived.finder("cfind"), filters=filters)
    found = rows(sessions, campaign_id)
    assert {r.series_description for r in found.values()} == {
        "CHEST WO",
        "CHEST ARTERIAL",
        "CHEST PORTAL",
        "PE",
    }
    # Twelve studies in range: two match the description; the MR one is not CT either.
    assert (outcome.studies, outcome.summary["studies_filtered"]) == (2, 10)


@pytest.mark.parametrize("kind", ["qido", "cfind"])
def test_no_patient_data_reaches_the_database_or_the_log(
    sqlite_engine: Engine,
    archived: Archived,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    # QIDO-RS returns Patient's Name, ID and Birth Date unasked: none may go further.
    caplog.set_level(logging.DEBUG)
    # The agent's log, at debug level, into a stream of this test's own (an earlier
    # test may have pointed the logger at its captured stderr).
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    sessions = make_session_factory(sqlite_engine)
    plan(sessions, archived.finder(kind), find_limit=LIMIT)
    with sqlite_engine.connect() as conn:
        dumped = "\n".join(
            str(tuple(row))
            for table in ("backfill_campaigns", "backfill_series")
            for row in conn.execute(text(f"SELECT * FROM {table}"))
        )
    assert "CHEST WO" in dumped  # the dump holds the plan
    written = stream.getvalue()
    assert "backfill planned" in written  # the log was written
    for canary in (CANARY_NAME, CANARY_ID, CANARY_BIRTH, "CANARYNAME"):
        assert canary not in dumped
        assert canary not in caplog.text
        assert canary not in written
