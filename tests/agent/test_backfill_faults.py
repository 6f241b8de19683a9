"""Planning against archives that misbehave: malformed answers, "too many" refusals,
refusals of the query, an archive down from the start or going down mid-plan.

The archive is a pynetdicom C-FIND SCP on 127.0.0.1 (port 0) whose handler answers
what each test sets: real associations and DIMSE messages, with the faults Orthanc
never produces.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from agent.backfill.plan import PlanFilters, PlanOutcome, plan_campaign
from agent.backfill.query import StudyRootFind
from agent.config import EligibilitySettings, NodeSettings
from agent.config_backfill import Archive
from agent.config_base import DestinationTLS
from storage.backfill import create_campaign
from storage.db import make_session_factory
from storage.models import BackfillCampaign, BackfillSeries, BackfillState, CampaignState
from tests.agent.security_support import make_pki

# The fake archive's own encoder warns of the invalid values it is made to send.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length:UserWarning"),
]

Handler = Callable[[Dataset], Iterator[tuple[int, Dataset | None]]]


def answer(**attrs: str) -> Dataset:
    """An identifier with any values, valid or not, as raw bytes (as a faulty archive sends
    them): pydicom would refuse to convert some of them if set as values."""
    ds = Dataset()
    for keyword, value in attrs.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        raw = value.encode("ascii")
        raw += b" " * (len(raw) % 2)
        ds[tag] = RawDataElement(BaseTag(tag), dictionary_VR(tag), len(raw), raw, 0, True, True)
    return ds


@dataclass
class FakeArchive:
    """A C-FIND SCP; ``studies(day, time)`` and ``series(uid)`` say what it answers."""

    port: int
    ae: AE
    queries: list[tuple[str, str, str]] = field(default_factory=list)
    studies: Callable[[str, str], Iterator[tuple[int, Dataset | None]]] = lambda d, t: iter(())
    series: Callable[[str], Iterator[tuple[int, Dataset | None]]] = lambda uid: iter(())

    def settings(self) -> Archive:
        return Archive(name="fake", ae_title="FAKEPACS", host="127.0.0.1", port=self.port)


@pytest.fixture
def fake_archive() -> Iterator[FakeArchive]:
    with serve_fake() as fake:
        yield fake


@contextmanager
def serve_fake(ssl_context: ssl.SSLContext | None = None) -> Iterator[FakeArchive]:
    ae = AE(ae_title="FAKEPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    holder: dict[str, FakeArchive] = {}

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        fake = holder["archive"]
        ident = event.identifier
        level = str(ident.QueryRetrieveLevel)
        if level == "STUDY":
            day, time = str(ident.StudyDate), str(ident.get("StudyTime", "") or "")
            fake.queries.append((level, day, time))
            yield from fake.studies(day, time)
        else:
            uid = str(ident.StudyInstanceUID)
            fake.queries.append((level, uid, ""))
            yield from fake.series(uid)

    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_FIND, on_find)],
        ssl_context=ssl_context,
    )
    holder["archive"] = FakeArchive(server.server_address[1], ae)
    try:
        yield holder["archive"]
    finally:
        server.shutdown()


def run_plan(
    sessions: sessionmaker[Session],
    archive: Archive,
    first: date,
    last: date,
    name: str = "faults",
) -> tuple[int, PlanOutcome]:
    with sessions.begin() as s:
        cid = create_campaign(
            s, name=name, archive=archive.name, date_from=f"{first:%Y%m%d}",
            date_to=f"{last:%Y%m%d}",
        ).id  # fmt: skip
    outcome = plan_campaign(
        sessions,
        cid,
        StudyRootFind(archive, NodeSettings(ae_title="HYPERCT")),
        EligibilitySettings(min_slices=3),
        first=first,
        last=last,
        filters=PlanFilters(),
        find_limit=archive.find_limit,
    )
    return cid, outcome


def series_rows(sessions: sessionmaker[Session], cid: int) -> dict[str, BackfillSeries]:
    with sessions() as s:
        found = s.scalars(select(BackfillSeries).where(BackfillSeries.campaign_id == cid))
        return {r.series_instance_uid: r for r in found}


def campaign(sessions: sessionmaker[Session], cid: int) -> BackfillCampaign:
    with sessions() as s:
        c = s.get_one(BackfillCampaign, cid)
        s.expunge(c)
        return c


PENDING = 0xFF00
DAY = date(2024, 3, 4)


def test_malformed_answers_are_skipped_or_counted_never_a_crash(
    engine: Engine, fake_archive: FakeArchive
) -> None:
    def studies(day: str, time: str) -> Iterator[tuple[int, Dataset | None]]:
        base = {"QueryRetrieveLevel": "STUDY", "StudyDescription": "CT CHEST"}
        yield PENDING, answer(**base, StudyDate=day)  # no Study Instance UID
        yield PENDING, answer(**base, StudyDate=day, StudyInstanceUID="1.2.x.3")
        yield PENDING, answer(**base, StudyDate=day, StudyInstanceUID="1." + "2" * 70)
        yield PENDING, answer(**base, StudyDate="2024-03-04", StudyInstanceUID="1.2.3.1")
        yield PENDING, answer(**base, StudyDate="20240399", StudyInstanceUID="1.2.3.2")
        yield PENDING, answer(**base, StudyDate=day, StudyInstanceUID="1.2.3.3")
        yield PENDING, answer(**base, StudyDate="20240310", StudyInstanceUID="1.2.3.4")
        yield 0x0000, None

    def series(uid: str) -> Iterator[tuple[int, Dataset | None]]:
        base = {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": uid, "Modality": "CT"}
        if uid != "1.2.3.3":
            yield PENDING, answer(**base, SeriesInstanceUID=uid + ".1", SeriesDescription="CHEST")
            yield 0x0000, None
            return
        yield PENDING, answer(**base, SeriesDescription="CHEST")  # no Series Instance UID
        yield (
            PENDING,
            answer(
                **base,
                SeriesInstanceUID="1.2.3.3.2",
                SeriesDescription="CHEST WO",
                NumberOfSeriesRelatedInstances="abc",
                SliceThickness="thin",
            ),
        )
        yield PENDING, answer(**base, SeriesInstanceUID="1.2.3.3.x9", SeriesDescription="CHEST")
        yield PENDING, answer(QueryRetrieveLevel="SERIES", SeriesInstanceUID="1.2.3.3.4")
        # A series of another study (an archive ignoring the study key): not this study's.
        yield (
            PENDING,
            answer(
                QueryRetrieveLevel="SERIES",
                StudyInstanceUID="1.2.3.1",
                SeriesInstanceUID="1.2.3.1.1",
            ),
        )
        yield 0x0000, None

    fake_archive.studies, fake_archive.series = studies, series
    sessions = make_session_factory(engine)
    cid, outcome = run_plan(sessions, fake_archive.settings(), DAY, DAY)

    assert outcome.error is None
    assert outcome.summary["studies_malformed"] == 3  # no UID, not a UID, too long
    assert outcome.summary["series_malformed"] == 1  # no UID: nothing to record it under
    assert outcome.summary["series_of_another_study"] == 1
    rows = series_rows(sessions, cid)
    reasons = {uid: (r.state, r.reason or "") for uid, r in rows.items()}
    assert reasons["1.2.3.1.1"][0] == BackfillState.SKIPPED
    assert "'2024-03-04' is not a date" in reasons["1.2.3.1.1"][1]
    assert "'20240399' is not a date" in reasons["1.2.3.2.1"][1]
    assert "outside the campaign" in reasons["1.2.3.4.1"][1]
    assert reasons["1.2.3.3.x9"][0] == BackfillState.SKIPPED
    assert "not a valid UID" in reasons["1.2.3.3.x9"][1]
    # Unreadable counts and thickness are as good as not returned: no reason to skip.
    assert reasons["1.2.3.3.2"][0] == BackfillState.PLANNED
    assert rows["1.2.3.3.2"].expected_instances is None
    # Nothing returned at all: nothing says it is not eligible; the images will.
    assert reasons["1.2.3.3.4"][0] == BackfillState.PLANNED
    assert campaign(sessions, cid).state == CampaignState.PLANNED


def _studies_by_hour(hours: list[int]) -> Callable[[str, str], list[Dataset]]:
    """One eligible study at each hour; the matches of a Study Time range."""

    def matches(day: str, time: str) -> list[Dataset]:
        lo, hi = (0, 86399) if not time else _seconds(time)
        return [
            answer(
                QueryRetrieveLevel="STUDY",
                StudyDate=day,
                StudyTime=f"{h:02d}0000",
                StudyInstanceUID=f"1.2.9.{h}",
                StudyDescription="CT CHEST",
            )
            for h in hours
            if lo <= h * 3600 <= hi
        ]

    return matches


def _answering(
    matches: Callable[[str, str], list[Dataset]],
) -> Callable[[str, str], Iterator[tuple[int, Dataset | None]]]:
    def studies(day: str, time: str) -> Iterator[tuple[int, Dataset | None]]:
        for ds in matches(day, time):
            yield PENDING, ds
        yield 0x0000, None

    return studies


def _seconds(time: str) -> tuple[int, int]:
    lo, _, hi = time.partition("-")

    def sec(t: str) -> int:
        t = t.split(".")[0]
        return int(t[:2]) * 3600 + int(t[2:4]) * 60 + int(t[4:6])

    return sec(lo), sec(hi)


def _one_series(uid: str) -> Iterator[tuple[int, Dataset | None]]:
    yield (
        PENDING,
        answer(
            QueryRetrieveLevel="SERIES",
            StudyInstanceUID=uid,
            SeriesInstanceUID=uid + ".1",
            Modality="CT",
            SeriesDescription="CHEST WO",
            NumberOfSeriesRelatedInstances="120",
        ),
    )
    yield 0x0000, None


@pytest.mark.parametrize("refusal", [0xA700, 0xFE00])
def test_too_many_matches_refused_splits_until_each_slice_answers(
    sqlite_engine: Engine, fake_archive: FakeArchive, refusal: int
) -> None:
    hours = [0, 1, 2, 7, 8, 9, 12, 13, 18, 23]
    matches = _studies_by_hour(hours)

    def studies(day: str, time: str) -> Iterator[tuple[int, Dataset | None]]:
        found = matches(day, time)
        if len(found) > 2:  # the archive's limit: more is refused (A700) or cut short (FE00)
            if refusal == 0xFE00:
                for ds in found[:2]:
                    yield PENDING, ds
            yield refusal, None
            return
        for ds in found:
            yield PENDING, ds
        yield 0x0000, None

    fake_archive.studies, fake_archive.series = studies, _one_series
    sessions = make_session_factory(sqlite_engine)
    cid, outcome = run_plan(sessions, fake_archive.settings(), DAY, DAY)

    assert outcome.error is None
    planned = {u for u, r in series_rows(sessions, cid).items() if r.state == BackfillState.PLANNED}
    assert planned == {f"1.2.9.{h}.1" for h in hours}
    assert outcome.summary["days_split"] == 1
    study_queries = [q for q in fake_archive.queries if q[0] == "STUDY"]
    assert study_queries[0][2] == ""  # the whole day first, Study Time universal
    assert all(q[2].endswith(".999999") for q in study_queries[1:])


def test_a_limit_the_archive_keeps_silently_needs_find_limit(
    sqlite_engine: Engine, fake_archive: FakeArchive
) -> None:
    hours = [1, 5, 9, 14, 20]
    matches = _studies_by_hour(hours)

    def studies(day: str, time: str) -> Iterator[tuple[int, Dataset | None]]:
        for ds in matches(day, time)[:2]:  # at most two, and "success"
            yield PENDING, ds
        yield 0x0000, None

    fake_archive.studies, fake_archive.series = studies, _one_series
    sessions = make_session_factory(sqlite_engine)
    archive = fake_archive.settings().model_copy(update={"find_limit": 2})
    cid, outcome = run_plan(sessions, archive, DAY, DAY)
    assert outcome.error is None
    assert {r.study_instance_uid for r in series_rows(sessions, cid).values()} == {
        f"1.2.9.{h}" for h in hours
    }


def test_a_refused_query_fails_the_campaign_in_one_line(
    sqlite_engine: Engine, fake_archive: FakeArchive
) -> None:
    def studies(day: str, time: str) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xC000, answer(ErrorComment="Unable to process: key not supported")

    fake_archive.studies = studies
    sessions = make_session_factory(sqlite_engine)
    cid, outcome = run_plan(sessions, fake_archive.settings(), DAY, DAY)
    assert outcome.error is not None and "\n" not in outcome.error
    assert "refused C-FIND at STUDY level: status 0xC000" in outcome.error
    c = campaign(sessions, cid)
    assert c.state == CampaignState.FAILED and c.last_error == outcome.error
    assert len([q for q in fake_archive.queries if q[0] == "STUDY"]) == 1  # not split


def test_an_archive_down_fails_the_campaign(sqlite_engine: Engine) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    archive = Archive(name="down", ae_title="PACS", host="127.0.0.1", port=port)
    sessions = make_session_factory(sqlite_engine)
    cid, outcome = run_plan(sessions, archive, DAY, date(2024, 3, 10))
    assert outcome.error == (
        f"archive 'down' (PACS@127.0.0.1:{port}): no association: connection refused or"
        " aborted (archive down, or it does not accept this AE title)"
    )
    c = campaign(sessions, cid)
    assert c.state == CampaignState.FAILED and c.finished_at is not None


def test_an_archive_going_down_mid_plan_keeps_the_days_planned(
    sqlite_engine: Engine, fake_archive: FakeArchive
) -> None:
    matches = _studies_by_hour([10])

    def studies(day: str, time: str) -> Iterator[tuple[int, Dataset | None]]:
        if day == "20240305":  # the archive goes away: no answer, no new association
            fake_archive.ae.require_calling_aet = ["SOMEONEELSE"]
            raise ConnectionAbortedError("archive stopped")
        for ds in matches(day, time):
            yield PENDING, ds
        yield 0x0000, None

    fake_archive.studies, fake_archive.series = studies, _one_series
    sessions = make_session_factory(sqlite_engine)
    cid, outcome = run_plan(sessions, fake_archive.settings(), DAY, date(2024, 3, 6))
    assert outcome.error is not None
    c = campaign(sessions, cid)
    assert c.state == CampaignState.FAILED and c.last_error == outcome.error
    assert c.plan_summary is not None and c.plan_summary["days"] == 1
    assert set(series_rows(sessions, cid)) == {"1.2.9.10.1"}


def test_more_matches_in_one_second_than_the_limit_are_kept_and_reported(
    sqlite_engine: Engine, fake_archive: FakeArchive
) -> None:
    def studies(day: str, time: str) -> Iterator[tuple[int, Dataset | None]]:
        lo, hi = (0, 86399) if not time else _seconds(time)
        found = [
            answer(QueryRetrieveLevel="STUDY", StudyDate=day, StudyTime="101500",
                   StudyInstanceUID=f"1.2.7.{i}", StudyDescription="CT CHEST")
            for i in range(4)
            if lo <= 36900 <= hi
        ]  # fmt: skip
        for ds in found[:2]:
            yield PENDING, ds
        yield (0xFE00 if len(found) > 2 else 0x0000), None

    fake_archive.studies, fake_archive.series = studies, _one_series
    sessions = make_session_factory(sqlite_engine)
    cid, outcome = run_plan(sessions, fake_archive.settings(), DAY, DAY)
    assert outcome.error is None
    assert outcome.summary["slices_at_limit"] == 1  # 10:15:00 holds more than two
    assert len(series_rows(sessions, cid)) == 2  # what it did return is planned
    # Halving one branch down to a second: about two queries per level, not thousands.
    assert len([q for q in fake_archive.queries if q[0] == "STUDY"]) < 40


def test_an_archive_refusing_every_slice_is_not_split_forever(
    sqlite_engine: Engine, fake_archive: FakeArchive
) -> None:
    def studies(day: str, time: str) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xA700, None

    fake_archive.studies = studies
    sessions = make_session_factory(sqlite_engine)
    cid, outcome = run_plan(sessions, fake_archive.settings(), DAY, date(2024, 12, 31))
    assert outcome.error == (
        "the archive refuses the study query for 20240304 even for one second (000000):"
        " not a result limit"
    )
    assert len(fake_archive.queries) == 18  # the day, then 17 halvings down to one second
    assert campaign(sessions, cid).state == CampaignState.FAILED


def test_cfind_over_tls_with_the_archive_tls_table(sqlite_engine: Engine, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    server.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    server.verify_mode = ssl.CERT_REQUIRED
    with serve_fake(server) as fake:
        fake.studies, fake.series = _answering(_studies_by_hour([9])), _one_series
        tls = DestinationTLS(
            ca_certificates=pki.ca, certificate=pki.client_cert, private_key=pki.client_key
        )
        sessions = make_session_factory(sqlite_engine)
        cid, outcome = run_plan(sessions, fake.settings().model_copy(update={"tls": tls}), DAY, DAY)
        assert outcome.error is None
        assert set(series_rows(sessions, cid)) == {"1.2.9.9.1"}
        # Without the TLS table the archive's TLS port gives no association: one line.
        _, plain = run_plan(sessions, fake.settings(), DAY, DAY, name="plain")
        assert plain.error is not None and "no association" in plain.error
