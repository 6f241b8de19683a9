"""Helpers for the report tests: external validators, a viewer's rendering, and a reader.

The reader goes through highdicom's parsed content tree (``srread``), not
through the builder's own objects, so a test that uses it checks what a
receiving system would find in the file.
"""

from __future__ import annotations

import html
import os
import re
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
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def dsr2html(path: Path) -> str:
    """What a reader sees of an SR rendered by DCMTK's dsr2html: the page's text, in order.

    Tags are dropped, entities decoded and whitespace folded to single spaces,
    so a test can look for phrases and their order the way a reader meets them.
    """
    exe = tool("/usr/bin/dsr2html", "dcmtk")
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.run(
        [exe, str(path)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    text = re.sub(r"<[^>]+>", " ", proc.stdout)
    return " ".join(html.unescape(text).split())


# XPath limits the JDK imposes by default are too small for PixelMed's compiled templates.
_JAVA_XPATH_LIMITS = (
    "-Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathExprGrpLimit=0 -Djdk.xml.xpathTotalOpLimit=0"
)

#: PixelMed 20220618 (Debian's pixelmed-apps) has TID 1501 without the row for
#: qualitative evaluations (a CODE item directly in the Measurement Group, which
#: highdicom's QualitativeEvaluation writes and PS3.16 TID 1501 defines), so it
#: warns "Content Item not in template" for each Present/Absent and for the
#: referral group's Recommended Follow-up. These and only these are expected.
QUALITATIVE_ROW_WARNING = re.compile(
    r'^Warning: [0-9.]+: /CONTAINER \(126000,DCM,"Imaging Measurement Report"\)'
    r'/CONTAINER \(126010,DCM,"Imaging Measurements"\)'
    r'/CONTAINER \(125007,DCM,"Measurement Group"\)'
    r"/CODE \([^/]*\): Content Item not in template$"
)


@dataclass
class PixelMed:
    errors: list[str]
    warnings: list[str]


def pixelmed_validate(path: Path) -> PixelMed:
    """Run PixelMed's DicomSRValidator (IOD and template checks) on one SR."""
    jar = tool("/usr/share/java/pixelmed.jar", "pixelmed-apps")
    java = tool("/usr/bin/java", "pixelmed-apps")
    env = {**os.environ, "JAVA_TOOL_OPTIONS": _JAVA_XPATH_LIMITS}
    proc = subprocess.run(
        [java, "-cp", jar, "com.pixelmed.validate.DicomSRValidator", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    assert any(ln.startswith("Root Template Validation Complete") for ln in lines), lines[-5:]
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    return PixelMed(errors, warnings)


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
