"""Helpers for the report tests: external validators and a reader of our TID 1500 SR.

The reader goes through highdicom's parsed content tree (``srread``), not
through the builder's own objects, so a test that uses it checks what a
receiving system would find in the file.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from hyperct_core.tasks import TASKS


def tool(path: str, package: str) -> str:
    """Path of a validator; fail under CI=true when it is missing, else skip."""
    if not Path(path).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is not installed (CI must install {package})")
        pytest.skip(f"{path} is not installed (apt-get install {package})")
    return path


@dataclass
class Dciodvfy:
    errors: list[str]
    warnings: list[str]


def dciodvfy(path: Path) -> Dciodvfy:
    """Run dicom3tools' dciodvfy; sort its lines into errors and warnings."""
    exe = tool("/usr/bin/dciodvfy", "dicom3tools")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    return Dciodvfy(errors, warnings)


def dsrdump(path: Path) -> tuple[int, str]:
    """Run DCMTK's dsrdump; return its exit status and combined output."""
    exe = tool("/usr/bin/dsrdump", "dcmtk")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


@dataclass
class ParsedGroup:
    tracking_identifier: str | None
    tracking_uid: str | None
    finding_type: hd.sr.CodedConcept | None
    finding_sites: list[hd.sr.CodedConcept]
    algorithm_name: str | None = None
    algorithm_version: str | None = None
    algorithm_parameters: list[str] = field(default_factory=list)
    probability: float | None = None
    probability_unit: hd.sr.CodedConcept | None = None
    # (concept name, coded value) of each qualitative evaluation.
    evaluations: list[tuple[hd.sr.CodedConcept, Any]] = field(default_factory=list)


@dataclass
class ParsedReport:
    by_task: dict[str, ParsedGroup]
    referral: ParsedGroup | None


_DISPLAY_TO_TASK = {t.display_name: t.name for t in TASKS}


def parse_measurement_report(path: Path) -> ParsedReport:
    """Read a TID 1500 report back with highdicom; one group per task plus the referral."""
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    by_task: dict[str, ParsedGroup] = {}
    referral: ParsedGroup | None = None
    for group in report.get_image_measurement_groups():
        parsed = ParsedGroup(
            tracking_identifier=group.tracking_identifier,
            tracking_uid=group.tracking_uid,
            finding_type=group.finding_type,
            finding_sites=[s.value for s in group.finding_sites],
        )
        for item in group[0].ContentSequence:
            name = item.ConceptNameCodeSequence[0]
            if name.CodeValue == codes.DCM.AlgorithmName.value:
                parsed.algorithm_name = item.TextValue
            elif name.CodeValue == codes.DCM.AlgorithmVersion.value:
                parsed.algorithm_version = item.TextValue
            elif name.CodeValue == codes.DCM.AlgorithmParameters.value:
                parsed.algorithm_parameters.append(item.TextValue)
        for m in group.get_measurements():
            assert m.name == codes.DCM.Probability
            parsed.probability = m.value
            parsed.probability_unit = m.unit
        parsed.evaluations = [(e.name, e.value) for e in group.get_qualitative_evaluations()]
        task = _DISPLAY_TO_TASK.get(parsed.tracking_identifier or "")
        if task is None:
            assert referral is None, "two groups that are not tasks"
            referral = parsed
        else:
            assert task not in by_task, f"two groups for {task}"
            by_task[task] = parsed
    return ParsedReport(by_task, referral)


def walk(ds: Dataset):
    """Every dataset nested in ``ds`` (depth first), including ``ds``."""
    yield ds
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)
