"""End to end: a Japanese series with an invalid birth date is screened and its reports delivered.

DCMTK storescu sends a chest CT phantom whose patient attributes are in
``\\ISO 2022 IR 87`` (JIS escape sequences, chrH31's bytes) with Patient's
Birth Date ``1950010X``; DCMTK storescp plays the PACS that receives the
reports. Both peers run in a private network namespace with only loopback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.tag import Tag
from sqlalchemy import select

from storage.models import AuditEvent, Job, JobState, Report, ReportState
from tests.agent.pipeline_env import Serve, agent_config, chest_series, tiny_checkpoint, wait_for
from tests.agent.report_tools import dciodvfy, tool
from tests.agent.test_pipeline_e2e import db_session
from tests.agent.test_report_charsets import charset_file, keep_bytes, raw
from tests.support.netns import private_netns

pytestmark = pytest.mark.slow

BAD_BIRTH_DATE = b"1950010X"


def japanese_series(folder: Path) -> tuple[list[Path], str]:
    """The phantom series rewritten with chrH31's character set and name, as bytes."""
    source = pydicom.dcmread(charset_file("chrH31.dcm"))
    name = source.get_item(Tag("PatientName")).value
    paths = chest_series(folder)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds[Tag("SpecificCharacterSet")] = source.get_item(Tag("SpecificCharacterSet"))
        ds[Tag("PatientName")] = raw("PatientName", "PN", name)
        ds[Tag("PatientBirthDate")] = raw("PatientBirthDate", "DA", BAD_BIRTH_DATE)
        keep_bytes(ds, None)
        ds["PixelData"].VR = "OW"
        ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(paths[0]).get_item(Tag("PatientName")).value.rstrip(b" ") == name
    return paths, str(source.PatientName)


def log_text(serve: Serve) -> str:
    """The agent's whole log, with JSON lines decoded (names would be \\u escapes there)."""
    out = []
    for line in serve.lines:
        if line.startswith("{"):
            out.append(json.dumps(json.loads(line), ensure_ascii=False))
        else:
            out.append(line)
    return "\n".join(out)


def test_japanese_series_with_invalid_birth_date_reaches_the_pacs(tmp_path: Path) -> None:
    storescu, storescp = tool("/usr/bin/storescu", "dcmtk"), tool("/usr/bin/storescp", "dcmtk")
    checkpoint = tiny_checkpoint(tmp_path)
    series, name = japanese_series(tmp_path / "series")
    received = tmp_path / "received"
    received.mkdir()
    with private_netns() as ns:
        ns.popen([storescp, "-aet", "DESTSCP", "-od", str(received), "11113"])
        config = agent_config(tmp_path, checkpoint, [("pacs", "DESTSCP", "127.0.0.1", 11113)])
        serve = Serve(config, ns)
        try:
            sent = ns.run(
                [storescu, "-aet", "PACS", "-aec", "HYPERCT", "127.0.0.1", str(serve.port),
                 *map(str, series)],
                capture_output=True, text=True,
            )  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            files = wait_for(
                lambda: (f := sorted(received.glob("*"))) and len(f) >= 3 and f,
                240, "two reports and the summary image at storescp", serve,
            )  # fmt: skip
            time.sleep(0.5)  # let the delivery rows be committed
        finally:
            assert serve.stop() == 0
    for path in files:
        assert dciodvfy(path).errors == []
        sr = pydicom.dcmread(path)
        assert sr.SpecificCharacterSet == "ISO_IR 192"
        assert str(sr.PatientName) == name
        assert sr.PatientBirthDate == ""
        assert sr.StudyInstanceUID == pydicom.dcmread(series[0]).StudyInstanceUID
    with db_session(tmp_path) as s:
        [job] = s.scalars(select(Job)).all()
        assert job.state == JobState.DONE and job.attempts <= 1
        reports = s.scalars(select(Report)).all()
        assert len(reports) == 3 and {r.state for r in reports} == {ReportState.SENT}
        [audited] = s.scalars(
            select(AuditEvent).where(AuditEvent.event_type == "report_content")
        ).all()
        assert audited.outcome == "attributes_omitted" and audited.detail is not None
        assert [o["attribute"] for o in audited.detail["omitted"]] == ["PatientBirthDate"]
        assert audited.detail["character_set"] == "\\ISO 2022 IR 87"
    log = log_text(serve)
    assert any(
        e.get("omitted") == "PatientBirthDate"
        for e in serve.events("reports leave out invalid source attributes")
    )
    assert BAD_BIRTH_DATE.decode() not in log
    for part in ("Yamada", "山田", "太郎", "やまだ"):
        assert part not in log
