"""Eligibility judged on what an archive's query returned, with the live series' rules.

The query answer becomes a :class:`~agent.series.facts.SeriesFacts` holding
only what the archive returned, and :func:`~agent.series.eligibility.assess_eligibility`
runs unchanged. A failed check counts only where the answer carried what that
check reads: an attribute the archive did not return is no reason to skip a
series (the full check runs on the images after retrieval). So:

- ``sop_class``, ``image_type`` and ``axial`` read image attributes no
  series-level answer has: never judged here;
- ``modality``, ``slice_thickness``: judged when the answer has a value;
- ``slices``: Number of Series Related Instances (PS3.4 C.6.1.1.4) against
  ``min_slices``, unless the study holds multi-frame CT (SOP Classes in Study),
  where one instance holds many slices;
- ``chest``: judged when the body part or a description has a value;
- ``non_contrast``, ``series_kind``: a failure is words found, always judged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset

from agent.backfill.find import text
from agent.config import EligibilitySettings
from agent.series.eligibility import Check, assess_eligibility
from agent.series.facts import SeriesFacts

#: Multi-frame CT storage classes (PS3.4 B.5): their instances count frames, not slices.
MULTIFRAME_CT = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    }
)
# PS3.5 9.1: digits and dots, no empty component, no leading zero, 64 characters at most.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DA = re.compile(r"[0-9]{8}")


@dataclass(frozen=True)
class Verdict:
    eligible: bool
    reason: str


def values(ds: Dataset, keyword: str) -> list[str]:
    """A multi-valued attribute's values (ModalitiesInStudy, SOPClassesInStudy)."""
    joined = text(ds, keyword)
    return [v.strip() for v in joined.split("\\") if v.strip()] if joined else []


def number(ds: Dataset, keyword: str) -> float | None:
    raw = text(ds, keyword)
    if raw is None:
        return None
    try:
        value = float(raw.split("\\")[0])
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def uid_problem(value: str | None, what: str) -> str | None:
    """Why ``value`` is not a UID the agent can store and ask for, or None."""
    if not value:
        return f"no {what}"
    if len(value) > 64 or not _UID.fullmatch(value):
        return f"{what} {value[:70]!r} is not a valid UID"
    return None


def date_problem(value: str | None, first: str, last: str) -> str | None:
    """Why a Study Date (DA, YYYYMMDD) is unusable or outside the campaign, or None."""
    if value is None:
        return None  # matched by the query's date: the day is known
    if not _DA.fullmatch(value):
        return f"study date {value[:20]!r} is not a date (YYYYMMDD)"
    try:
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return f"study date {value!r} is not a date (YYYYMMDD)"
    if not first <= value <= last:
        return f"study date {value} is outside the campaign ({first}-{last})"
    return None


def _judged(check: Check, facts: SeriesFacts, returned: set[str], multiframe: bool) -> bool:
    """Whether a failed ``check`` rests on what the archive returned."""
    name = check.name
    if name in ("sop_class", "image_type", "axial"):
        return False
    if name == "modality":
        return "Modality" in returned
    if name == "slice_thickness":
        return "SliceThickness" in returned
    if name == "slices":
        return "NumberOfSeriesRelatedInstances" in returned and not multiframe
    if name == "chest":
        return bool(
            facts.body_part_examined
            or facts.series_description
            or facts.protocol_name
            or facts.study_description
        )
    return True  # non_contrast, series_kind: words that were returned


def judge(study: Dataset, series: Dataset, settings: EligibilitySettings) -> Verdict:
    """Eligible (to retrieve) or not, and why, from one study's and one series' answers."""
    sop_classes = set(values(study, "SOPClassesInStudy"))
    multiframe = bool(sop_classes & MULTIFRAME_CT)
    instances = number(series, "NumberOfSeriesRelatedInstances")
    thickness = number(series, "SliceThickness")
    series_number = number(series, "SeriesNumber")
    facts = SeriesFacts(
        series_instance_uid=text(series, "SeriesInstanceUID") or "",
        study_instance_uid=text(study, "StudyInstanceUID") or "",
        modality=text(series, "Modality"),
        series_number=int(series_number) if series_number is not None else None,
        series_description=text(series, "SeriesDescription"),
        body_part_examined=text(series, "BodyPartExamined"),
        protocol_name=text(series, "ProtocolName"),
        study_description=text(study, "StudyDescription"),
        instance_count=int(instances) if instances is not None else 0,
        number_of_frames=int(instances) if instances is not None else 0,
        slice_thickness=thickness,
    )
    returned = {
        k
        for k, v in (
            ("Modality", facts.modality),
            ("SliceThickness", thickness),
            ("NumberOfSeriesRelatedInstances", instances),
        )
        if v is not None
    }
    result = assess_eligibility(facts, settings)
    failed = [c for c in result.failed if _judged(c, facts, returned, multiframe)]
    if failed:
        return Verdict(False, "not eligible: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))
    passed = [c.name for c in result.checks if c.passed]
    return Verdict(True, "eligible by the query: " + ", ".join(passed) + " passed")
