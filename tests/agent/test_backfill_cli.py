"""``hyperct-agent backfill`` as an operator uses it, against Orthanc: plan (C-FIND and
QIDO-RS), list, show, start, pause, resume, cancel, and every refusal in one line.

The plan commands run inside Orthanc's network namespace (on its thread); the others
need only the database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from agent.cli import main
from storage.db import make_engine, make_session_factory
from storage.models import BackfillSeries, BackfillState
from tests.support.archive_cases import FIRST_DAY, MIN_SLICES, WrittenSeries, write_cases
from tests.support.archives import Orthanc, running_orthanc

FROM, TO = "2024-03-04", "2024-03-06"


@dataclass
class Setup:
    orthanc: Orthanc
    series: list[WrittenSeries]
    root: Path
    capsys: Any = None

    def config(self, name: str, archive_port: int | None = None) -> Path:
        """A config of its own (own database) with this Orthanc as archive ``orthanc``."""
        folder = self.root / name
        folder.mkdir()
        port = archive_port or self.orthanc.dicom_port
        path = folder / "agent.toml"
        path.write_text(
            f'[node]\nae_title = "HYPERCT"\n[storage]\nroot = "{folder / "storage"}"\n'
            f'[database]\nurl = "sqlite:///{folder / "agent.db"}"\n'
            f"[eligibility]\nmin_slices = {MIN_SLICES}\n"
            f'[[archives]]\nname = "orthanc"\nae_title = "{self.orthanc.aet}"\n'
            f'host = "127.0.0.1"\nport = {port}\nfind_limit = 3\n'
            f'dicomweb_url = "{self.orthanc.dicomweb_url}"\n'
        )
        assert main(["db", "upgrade", "--config", str(path)]) == 0
        self.capsys.readouterr()
        return path

    def planned(self) -> int:
        return sum(s.expect == "planned" for s in self.series)


@pytest.fixture(scope="module")
def archive_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("backfill-cli")
    files, series = write_cases(root / "cases")
    with running_orthanc(root / "orthanc", limit_find_results=3) as orthanc:
        orthanc.store(files)
        yield Setup(orthanc, series, root)


@pytest.fixture
def setup(archive_setup: Setup, capsys: pytest.CaptureFixture[str]) -> Setup:
    archive_setup.capsys = capsys
    return archive_setup


def run(setup: Setup, *argv: str, in_ns: bool = False) -> int:
    def go() -> int:
        try:
            return main(list(argv))
        except SystemExit as exc:  # argparse refusing an argument
            return int(exc.code or 0)

    return setup.orthanc.thread.call(go) if in_ns else go()


def out_json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_plan_by_cfind_then_by_qido_then_show_and_list(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(setup.config("plans"))
    argv = ["backfill", "plan", "orthanc", "--from", FROM, "--to", TO, "--config", cfg]
    assert run(setup, *argv, "--query", "dimse", "--json", in_ns=True) == 0
    first = out_json(capsys)
    assert first["name"] == f"orthanc-{FIRST_DAY}-20240306" and first["state"] == "planned"
    assert first["series"]["planned"] == setup.planned()
    assert first["progress"] == {
        "done": 0,
        "failed": 0,
        "remaining": setup.planned(),
        "total": setup.planned(),
        "series_per_hour": None,
        "eta": None,
    }
    assert first["filters"] == {"modalities": ["CT"]}
    assert first["plan_summary"]["days"] == 3 and first["plan_summary"]["days_split"] >= 1

    # The archive has a DICOMweb URL: QIDO-RS by default. Everything is held by the first.
    assert run(setup, *argv, "--name", "web", in_ns=True) == 0
    captured = capsys.readouterr()
    assert "planning web" in captured.err and "3/3" in captured.err  # the progress bar
    assert "campaign 'web'" in captured.out
    assert f"{setup.planned()} already" in captured.out

    assert run(setup, "backfill", "show", "web", "--config", cfg) == 0
    shown = capsys.readouterr().out
    assert "studies found: 11" in shown and "retrieval: 0 done, 0 failed, 0 remaining" in shown

    assert run(setup, "backfill", "show", first["name"], "--config", cfg) == 0
    assert "ETA: unknown (no retrieve rate recorded yet)" in capsys.readouterr().out

    assert run(setup, "backfill", "list", "--json", "--config", cfg) == 0
    assert [c["name"] for c in out_json(capsys)] == [first["name"], "web"]
    assert run(setup, "backfill", "list", "--config", cfg) == 0
    listed = capsys.readouterr().out
    assert f"0/{setup.planned()} retrieved" in listed and "web" in listed

    # Once retrieves record their times, show gives the rate and the ETA.
    engine = make_engine(f"sqlite:///{Path(cfg).parent / 'agent.db'}")
    with make_session_factory(engine).begin() as s:
        rows = s.scalars(
            select(BackfillSeries).where(BackfillSeries.state == BackfillState.PLANNED).limit(3)
        ).all()
        start = datetime.now(UTC) - timedelta(hours=1)
        for i, row in enumerate(rows):  # one every 30 minutes
            row.state, row.retrieved_at = BackfillState.RETRIEVED, start + timedelta(minutes=30 * i)
    engine.dispose()
    assert run(setup, "backfill", "show", first["name"], "--config", cfg) == 0
    shown = capsys.readouterr().out
    assert f"retrieval: 3 done, 0 failed, {setup.planned() - 3} remaining" in shown
    assert "rate: 2.0 series/hour, ETA 20" in shown


def test_transitions_and_refusals(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(setup.config("transitions"))
    plan = ["backfill", "plan", "orthanc", "--from", FROM, "--to", FROM, "--name", "t"]
    assert run(setup, *plan, "--config", cfg, "--no-progress", in_ns=True) == 0
    capsys.readouterr()

    def act(action: str, ref: str = "t") -> int:
        return run(setup, "backfill", action, ref, "--config", cfg)

    assert act("pause") == 1
    assert error_line(capsys) == (
        "hyperct-agent: error: cannot pause campaign 't': it is planned;"
        " only a running campaign pauses"
    )
    assert act("start") == 0
    assert capsys.readouterr().out == "campaign 't' is running\n"
    assert act("start") == 1
    assert error_line(capsys) == "hyperct-agent: error: campaign 't' is already running"
    assert act("pause") == 0 and act("resume") == 0
    capsys.readouterr()
    assert run(setup, "backfill", "cancel", "1", "--config", cfg, "--json") == 0
    cancelled = out_json(capsys)
    assert cancelled["state"] == "cancelled" and cancelled["cancelled_series"] > 0
    assert act("resume") == 1
    assert error_line(capsys) == (
        "hyperct-agent: error: cannot resume campaign 't': it was cancelled"
    )
    assert act("start", "nothing") == 1
    assert "no campaign 'nothing'" in error_line(capsys)
    # The same name again.
    assert run(setup, *plan, "--config", cfg, in_ns=True) == 1
    assert "a campaign named 't' exists (id 1, cancelled)" in error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--from", "2024-03-06", "--to", "2024-03-04"], 1, "--to 2024-03-04 is before --from"),
        (["--from", "2024-02-30", "--to", "2024-03-04"], 2, "not a date: '2024-02-30'"),
        (["--from", FROM, "--to", TO, "--study-description", "("], 2, "not a regular expr"),
        (["--from", FROM, "--to", TO, "--modality", "C T!"], 2, "not a modality"),
        (["--from", "1900-01-01", "--to", "2024-03-04"], 1, "more than 36600: plan a shorter"),
    ],
)
def test_bad_plan_arguments_are_one_line(
    setup: Setup, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    cfg = setup.config(f"bad{abs(hash(tuple(argv)))}")
    assert run(setup, "backfill", "plan", "orthanc", *argv, "--config", str(cfg)) == code
    assert message in error_line(capsys)


def test_unknown_archive_and_archive_down(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(setup.config("down", archive_port=4243))  # nothing listens there
    plan = ["backfill", "plan", "--from", FROM, "--to", TO, "--config", cfg, "--no-progress"]
    assert run(setup, *plan, "nowhere") == 2
    assert error_line(capsys) == (
        "hyperct-agent: error: unknown archive 'nowhere' (known: orthanc)"
    )
    assert run(setup, *plan, "orthanc", "--query", "dimse", in_ns=True) == 1
    captured = capsys.readouterr()
    # The log (on stderr) says what happened; the error itself is the last line, alone.
    assert "Traceback" not in captured.err
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith("hyperct-agent: error: planning 'orthanc-20240304-20240306' failed:")
    assert "connection refused or aborted" in line
    assert "failed" in captured.out and "error:" in captured.out  # the campaign as stored
    assert (
        run(setup, "backfill", "show", "orthanc-20240304-20240306", "--json", "--config", cfg) == 0
    )
    shown = out_json(capsys)
    assert shown["state"] == "failed" and "connection refused" in shown["last_error"]
