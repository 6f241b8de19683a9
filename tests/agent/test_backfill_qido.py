"""QIDO-RS finding against a faulty DICOMweb server (stdlib HTTP on 127.0.0.1, port 0):
results cut short with ``Warning: 299`` or ``413`` are split, broken answers are one line."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from sqlalchemy import Engine, select

from agent.backfill.find import ArchiveError
from agent.backfill.plan import PlanFilters, plan_campaign
from agent.backfill.qido import QidoFind
from agent.config import EligibilitySettings
from agent.config_backfill import Archive
from storage.backfill import create_campaign
from storage.db import make_session_factory
from storage.models import BackfillSeries, BackfillState

# (status, headers, body) for a path and its query parameters.
Responder = Callable[[str, dict[str, list[str]]], tuple[int, dict[str, str], bytes]]


@pytest.fixture
def web() -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"respond": None, "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            url = urlparse(self.path)
            params = parse_qs(url.query)
            state["requests"].append((url.path, params))
            status, headers, body = state["respond"](url.path, params)
            self.send_response(status)
            for k, v in {"Content-Type": "application/dicom+json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["archive"] = Archive(
        name="web",
        ae_title="WEB",
        host="127.0.0.1",
        port=104,
        dicomweb_url=f"http://127.0.0.1:{server.server_address[1]}/dicom-web/",
    )
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def study(hour: int, day: str = "20240304") -> dict[str, Any]:
    return {
        "0020000D": {"vr": "UI", "Value": [f"1.2.5.{hour}"]},
        "00080020": {"vr": "DA", "Value": [day]},
        "00080030": {"vr": "TM", "Value": [f"{hour:02d}0000"]},
        "00081030": {"vr": "LO", "Value": ["CT CHEST"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "CANARY^QIDO"}]},
    }


def series(study_uid: str) -> dict[str, Any]:
    return {
        "0020000D": {"vr": "UI", "Value": [study_uid]},
        "0020000E": {"vr": "UI", "Value": [study_uid + ".1"]},
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "0008103E": {"vr": "LO", "Value": ["CHEST WO"]},
    }


def _range(params: dict[str, list[str]]) -> tuple[int, int]:
    if "StudyTime" not in params:
        return 0, 86399
    lo, _, hi = params["StudyTime"][0].partition("-")
    return _sec(lo), _sec(hi)


def _sec(t: str) -> int:
    t = t.split(".")[0]
    return int(t[:2]) * 3600 + int(t[2:4]) * 60 + int(t[4:6])


@pytest.mark.parametrize("cut_short", ["warning", "413"])
def test_cut_short_answers_are_split_and_nothing_is_lost(
    web: dict[str, Any], sqlite_engine: Engine, cut_short: str
) -> None:
    hours = [1, 6, 8, 13, 22]

    def respond(path: str, params: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        if path.endswith("/series"):
            return 200, {}, json.dumps([series(path.split("/")[-2])]).encode()
        lo, hi = _range(params)
        found = [study(h) for h in hours if lo <= h * 3600 <= hi]
        if len(found) > 2:
            if cut_short == "413":
                return 413, {}, b""
            warning = '299 pacs "The number of results exceeded the maximum supported"'
            return 200, {"Warning": warning}, json.dumps(found[:2]).encode()
        return (200, {}, json.dumps(found).encode()) if found else (204, {}, b"")

    web["respond"] = respond
    sessions = make_session_factory(sqlite_engine)
    with sessions.begin() as s:
        cid = create_campaign(
            s, name="w", archive="web", date_from="20240304", date_to="20240304"
        ).id
    outcome = plan_campaign(
        sessions,
        cid,
        QidoFind(web["archive"]),
        EligibilitySettings(min_slices=3),
        first=date(2024, 3, 4),
        last=date(2024, 3, 4),
        filters=PlanFilters(),
    )
    assert outcome.error is None and outcome.summary["days_split"] == 1
    with sessions() as s:
        rows = s.scalars(select(BackfillSeries)).all()
    assert {r.series_instance_uid for r in rows} == {f"1.2.5.{h}.1" for h in hours}
    assert {r.state for r in rows} == {BackfillState.PLANNED}
    path, params = web["requests"][0]
    assert path == "/dicom-web/studies" and params["StudyDate"] == ["20240304"]
    assert "PatientName" not in params["includefield"]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b"<html>login</html>", "QIDO-RS answer is not JSON"),
        (200, b'{"a": 1}', "QIDO-RS answer is not a JSON array"),
        (500, b"", "QIDO-RS /studies answered HTTP 500 Internal Server Error"),
        (401, b"", "answered HTTP 401"),
    ],
)
def test_broken_answers_are_one_line(
    web: dict[str, Any], status: int, body: bytes, message: str
) -> None:
    web["respond"] = lambda path, params: (status, {}, body)
    with pytest.raises(ArchiveError, match=message) as caught:
        QidoFind(web["archive"]).studies("20240304", None)
    assert "\n" not in str(caught.value)


def test_malformed_items_are_counted_and_patient_data_dropped(web: dict[str, Any]) -> None:
    items = [study(9), {"0020000D": "not an element"}, study(10)]
    web["respond"] = lambda path, params: (200, {}, json.dumps(items).encode())
    result = QidoFind(web["archive"]).studies("20240304", None)
    assert (len(result.answers), result.malformed, result.complete) == (2, 1, True)
    assert all("PatientName" not in ds for ds in result.answers)


def test_an_unreachable_server_is_one_line(web: dict[str, Any]) -> None:
    archive = web["archive"].model_copy(update={"dicomweb_url": "http://127.0.0.1:9/dicom-web"})
    with pytest.raises(ArchiveError, match=r"archive 'web' \(http://127.0.0.1:9/dicom-web\): "):
        QidoFind(archive).series("1.2.3")
