"""`hyperct-agent demo`, as a newcomer runs it: one command, findings printed, reports on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from hyperct_core.tasks import TASKS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_demo_screens_a_synthetic_study_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--workdir", str(work), "--timeout", "400"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for task in TASKS:  # the findings table lists every task
        assert task.display_name in out
    assert "DEMO (not for clinical use)" in out and "training:" in out
    reports = sorted((work / "pacs-received").glob("*.dcm"))
    assert len(reports) == 2
    assert {dcmread(p).Modality for p in reports} == {"SR"}
    # serve (embedded model settings) said at start that it screens with the demo model
    assert "DEMO model" in (work / "agent.log").read_text()
    assert "DEMO^PHANTOM" not in (work / "agent.log").read_text()  # no patient data in logs
