"""The main job end to end, with real peers: PACS sends a chest CT, reports land in PACS.

DCMTK storescu sends, DCMTK storescp receives the reports; then Orthanc plays
the PACS on both sides. Both peers listen on every interface, so everything
runs in a private network namespace with only loopback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from storage.models import Job, JobState, Report, ReportState, Result
from tests.agent.pipeline_env import Serve, agent_config, chest_series, tiny_checkpoint, wait_for
from tests.agent.report_tools import dciodvfy, dsrdump, parse_measurement_report, tool
from tests.support.netns import private_netns

pytestmark = pytest.mark.slow

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def db_session(folder: Path) -> Session:
    return Session(create_engine(f"sqlite:///{folder / 'agent.db'}"))


def check_reports(files: list[Path], folder: Path) -> None:
    """Valid SR objects whose probabilities are the ones in the database, and the summary."""
    sr_files, summaries = [], []
    for path in files:
        verdict = dciodvfy(path)
        assert verdict.errors == [], verdict.errors
        ds = dcmread(path)
        if ds.SOPClassUID == SECONDARY_CAPTURE:
            summaries.append(ds)
            continue
        code, text = dsrdump(path)
        assert code == 0 and not any(line.startswith("E:") for line in text.splitlines())
        if ds.SOPClassUID == COMPREHENSIVE_3D_SR:
            sr_files.append(path)
    [sr] = sr_files
    # The summary page: in the CT's study, a series of its own, pixels that are a page.
    [summary] = summaries
    source = dcmread(sorted((folder / "series").glob("*.dcm"))[0], stop_before_pixels=True)
    assert summary.StudyInstanceUID == source.StudyInstanceUID
    assert summary.SeriesInstanceUID != dcmread(sr, stop_before_pixels=True).SeriesInstanceUID
    assert summary.pixel_array.shape == (summary.Rows, summary.Columns, 3)
    assert summary.pixel_array.std() > 10  # drawn on, not blank
    # The key slice through the heart is on the page: its black tile (air outside the
    # body in a mediastinal window) is absent from a page that says "no key image".
    assert (summary.pixel_array.max(axis=2) < 16).mean() > 0.03
    parsed = parse_measurement_report(sr)
    with db_session(folder) as s:
        stored = {r.task_name: r.probability for r in s.scalars(select(Result))}
    assert len(stored) == 25 and len(parsed.by_task) == 25
    for task, group in parsed.by_task.items():
        assert group.probability == pytest.approx(stored[task], abs=1e-6)


def test_storescu_in_reports_out_at_storescp(tmp_path: Path, checkpoint: Path) -> None:
    storescu, storescp = tool("/usr/bin/storescu", "dcmtk"), tool("/usr/bin/storescp", "dcmtk")
    series = chest_series(tmp_path / "series")
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
                180, "two reports and the summary at storescp", serve,
            )  # fmt: skip
            time.sleep(0.5)  # let the delivery rows be committed
        finally:
            assert serve.stop() == 0
    check_reports(files, tmp_path)
    with db_session(tmp_path) as s:
        [job] = s.scalars(select(Job)).all()
        assert job.state == JobState.DONE and job.revision == 1
        reports = s.scalars(select(Report)).all()
        assert {r.state for r in reports} == {ReportState.SENT}
        assert sorted(r.kind for r in reports) == ["sr", "summary", "text_sr"]
        assert job.echo_referral == bool(job.referral_tasks)


def test_orthanc_as_the_pacs(tmp_path: Path, checkpoint: Path) -> None:
    orthanc = tool("/usr/sbin/Orthanc", "orthanc")
    series = chest_series(tmp_path / "series")
    with private_netns() as ns:
        config = agent_config(tmp_path, checkpoint, [("orthanc", "ORTHANC", "127.0.0.1", 4242)])
        serve = Serve(config, ns)
        try:
            (tmp_path / "orthanc.json").write_text(json.dumps({
                "Name": "test-pacs", "StorageDirectory": str(tmp_path / "orthanc"),
                "IndexDirectory": str(tmp_path / "orthanc"), "DicomAet": "ORTHANC",
                "DicomPort": 4242, "HttpPort": 8042, "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False, "Plugins": [],
                "DicomModalities": {"hyperct": ["HYPERCT", "127.0.0.1", serve.port]},
            }))  # fmt: skip
            ns.popen([orthanc, str(tmp_path / "orthanc.json")], stdout=-3, stderr=-3)

            def rest(method: str, path: str, body: str | None = None) -> object:
                cmd = ["curl", "-sf", "-X", method, f"http://127.0.0.1:8042{path}"]
                if body is not None:
                    cmd += ["--data-binary", body]
                out = ns.run(cmd, capture_output=True, text=True)
                return json.loads(out.stdout) if out.returncode == 0 and out.stdout else None

            wait_for(lambda: rest("GET", "/system"), 60, "Orthanc to start")
            for path in series:  # the CT arrives at the PACS first ...
                ns.run(
                    ["curl", "-sf", "-X", "POST", "http://127.0.0.1:8042/instances",
                     "--data-binary", f"@{path}"],
                    capture_output=True, check=True,
                )  # fmt: skip
            [study] = rest("GET", "/studies")  # type: ignore[misc]
            # ... then the PACS pushes it to the agent, as an auto-routing rule would.
            pushed = rest("POST", "/modalities/hyperct/store", json.dumps({"Resources": [study]}))
            assert pushed is not None

            def report_ids() -> list[str]:
                instances = rest("GET", f"/studies/{study}/instances") or []
                return [
                    i["ID"]
                    for i in instances  # type: ignore[attr-defined]
                    if i["MainDicomTags"].get("SOPInstanceUID", "").startswith("2.25.")
                ]

            ids = wait_for(
                lambda: len(r := report_ids()) >= 3 and r, 180,
                "both reports and the summary in the CT's study in Orthanc", serve,
            )  # fmt: skip
            # The CT, the report series and the summary series.
            assert len(rest("GET", f"/studies/{study}/series") or []) == 3  # type: ignore[arg-type]
            files = []
            for n, rid in enumerate(ids):
                out = ns.run(
                    ["curl", "-sf", f"http://127.0.0.1:8042/instances/{rid}/file"],
                    capture_output=True, check=True,
                )  # fmt: skip
                path = tmp_path / f"report{n}.dcm"
                path.write_bytes(out.stdout)
                files.append(path)
        finally:
            assert serve.stop() == 0
    check_reports(files, tmp_path)
