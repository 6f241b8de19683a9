"""`hyperct-agent demo`, as a newcomer runs it: one command, findings printed, reports on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from agent.commands.demo import announced_findings
from hyperct_core.tasks import TASKS, task_by_name
from tests.agent.report_tools import parse_measurement_report

PRESENT = "52101004"  # SCT Present
UNDETERMINED = "373068000"  # SCT Undetermined: no operating point
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"

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
    assert "DEMO (not for clinical use)" in out and "trained only on 1600 synthetic" in out
    assert "unknown" not in out and "opportunistic" not in out
    reports = sorted((work / "pacs-received").glob("*.dcm"))
    assert len(reports) == 3
    assert sorted(dcmread(p).Modality for p in reports) == ["OT", "SR", "SR"]
    assert (work / "summary.png").is_file()

    # What the demo says the phantom has is exactly what the report says is Present.
    [line] = [ln for ln in out.splitlines() if "phantom with these findings:" in ln]
    announced = line.split("findings:", 1)[1].removesuffix(" ...").strip().split(", ")
    assert announced == announced_findings() and "Cardiomegaly" in announced
    [sr] = [p for p in reports if dcmread(p).SOPClassUID == COMPREHENSIVE_3D_SR]
    parsed = parse_measurement_report(sr)
    present = [
        task_by_name(task).display_name
        for task, group in parsed.by_task.items()
        if any(getattr(v, "value", None) == PRESENT for _, v in group.evaluations)
    ]
    assert sorted(present) == sorted(announced)
    table = [ln for ln in out.splitlines() if ln.rstrip().endswith("PRESENT")]
    assert sorted(ln.split("  ")[1].strip() for ln in table) == sorted(announced)
    # The table says "not assessed" where the SR says Undetermined, never "absent".
    undetermined = {
        task_by_name(task).display_name
        for task, group in parsed.by_task.items()
        if any(getattr(v, "value", None) == UNDETERMINED for _, v in group.evaluations)
    }
    not_assessed = {
        ln.split("  ")[1].strip()[:44]
        for ln in out.splitlines()
        if ln.rstrip().endswith("not assessed")
    }
    assert undetermined and not_assessed == {name[:44] for name in undetermined}
    # serve (embedded model settings) said at start that it screens with the demo model
    assert "DEMO model" in (work / "agent.log").read_text()
    assert "DEMO^PHANTOM" not in (work / "agent.log").read_text()  # no patient data in logs
