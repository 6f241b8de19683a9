"""Whether a series is a non-contrast chest CT the model may screen.

Every check runs and is reported, pass or fail, so ``hyperct-agent explain``
can show the whole decision rather than the first objection. What each check
reads (PS3.3 sections of the attributes):

- ``modality``: Modality (C.7.3.1) is one of ``modalities``.
- ``sop_class``: SOP Class UID (C.12.1) is one of ``sop_classes``.
- ``chest``: a ``chest_patterns`` match in Body Part Examined (C.7.3.1),
  Series Description, Protocol Name or Study Description.
- ``non_contrast``: Contrast/Bolus Agent (C.7.6.4) absent or saying none, and
  no ``contrast_patterns`` match in Series Description, Protocol Name or Study
  Description (the study's description counts: when it says contrast, its
  series are assumed enhanced unless shown otherwise by the operator's patterns).
- ``image_type``: every ``required_image_type`` value among Image Type
  (C.8.2.1.1.1: ORIGINAL\\PRIMARY\\AXIAL; LOCALIZER and DERIVED fail).
- ``series_kind``: no ``exclude_patterns`` match in Series Description
  (localizers, reformats, MIPs, dose reports). Only the series' own
  description: a protocol or study description is shared by all its series.
- ``axial``: the slice normal within 30 degrees of the patient's
  head-feet axis (C.7.6.2.1.1), so a reformat labelled AXIAL by mistake fails.
- ``slice_thickness``: Slice Thickness within the range.
- ``slices``: at least ``min_slices`` slices (frames, for Enhanced CT).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from pydicom.uid import UID

from agent.config import EligibilitySettings
from agent.series.facts import SeriesFacts

# A Contrast/Bolus Agent value that says "none" is no agent (scanners write these).
_NO_AGENT = re.compile(
    r"^\s*(none|no|nil|n/?a|-+|0|no contrast|non[- ]?contrast|without contrast|w/o contrast)\s*$",
    re.IGNORECASE,
)
# |normal . z| at least cos(30 deg): an axial stack, gantry tilt included.
_AXIAL_MIN_COSINE = math.cos(math.radians(30.0))


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Eligibility:
    eligible: bool
    checks: list[Check]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def reason(self) -> str:
        """One line: why not (every failed check), or that every check passed."""
        if self.eligible:
            return "eligible: " + ", ".join(c.name for c in self.checks) + " passed"
        return "not eligible: " + "; ".join(f"{c.name}: {c.detail}" for c in self.failed)


@lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


def _first_match(
    patterns: Iterable[str], fields: list[tuple[str, str | None]]
) -> tuple[str, str, str] | None:
    """(field label, value, pattern) of the first pattern matching any field."""
    for name, value in fields:
        if not value:
            continue
        for rx in _compiled(tuple(patterns)):
            if rx.search(value):
                return name, value, rx.pattern
    return None


def _shown(fields: list[tuple[str, str | None]]) -> str:
    present = [f"{name} {value!r}" for name, value in fields if value]
    return ", ".join(present) if present else "no body part or descriptions"


def _uid_name(uid: str | None) -> str:
    if not uid:
        return "missing"
    name = UID(uid).name
    return name if name != uid else uid


def assess_eligibility(facts: SeriesFacts, settings: EligibilitySettings) -> Eligibility:
    """Run every check on ``facts``; eligible when all pass."""
    checks = [
        _modality(facts, settings),
        _sop_class(facts, settings),
        _chest(facts, settings),
        _non_contrast(facts, settings),
        _image_type(facts, settings),
        _series_kind(facts, settings),
        _axial(facts),
        _thickness(facts, settings),
        _slices(facts, settings),
    ]
    return Eligibility(all(c.passed for c in checks), checks)


def _modality(facts: SeriesFacts, s: EligibilitySettings) -> Check:
    allowed = {m.strip().upper() for m in s.modalities}
    value = (facts.modality or "").strip().upper()
    if value in allowed:
        return Check("modality", True, f"{value}")
    return Check(
        "modality", False, f"{value or 'missing'} is not one of {', '.join(sorted(allowed))}"
    )


def _sop_class(facts: SeriesFacts, s: EligibilitySettings) -> Check:
    name = _uid_name(facts.sop_class_uid)
    if facts.sop_class_uid in s.sop_classes:
        return Check("sop_class", True, name)
    allowed = ", ".join(_uid_name(u) for u in s.sop_classes)
    return Check("sop_class", False, f"{name} is not one of {allowed}")


def _descriptions(facts: SeriesFacts) -> list[tuple[str, str | None]]:
    return [
        ("series description", facts.series_description),
        ("protocol", facts.protocol_name),
        ("study description", facts.study_description),
    ]


def _chest(facts: SeriesFacts, s: EligibilitySettings) -> Check:
    fields = [("body part", facts.body_part_examined), *_descriptions(facts)]
    hit = _first_match(s.chest_patterns, fields)
    if hit:
        name, value, pattern = hit
        return Check("chest", True, f"{name} {value!r} matches /{pattern}/")
    return Check("chest", False, f"no chest pattern matches {_shown(fields)}")


def _non_contrast(facts: SeriesFacts, s: EligibilitySettings) -> Check:
    agent = (facts.contrast_agent or "").strip()
    if agent and not _NO_AGENT.match(agent):
        return Check("non_contrast", False, f"Contrast/Bolus Agent is {agent!r}")
    fields = _descriptions(facts)
    hit = _first_match(s.contrast_patterns, fields)
    if hit:
        name, value, pattern = hit
        return Check("non_contrast", False, f"{name} {value!r} matches /{pattern}/")
    agent_note = f"Contrast/Bolus Agent {agent!r} says none" if agent else "no Contrast/Bolus Agent"
    return Check("non_contrast", True, f"{agent_note}; no contrast words in {_shown(fields)}")


def _image_type(facts: SeriesFacts, s: EligibilitySettings) -> Check:
    values = facts.image_type_values
    shown = "\\".join(values) if values else "missing"
    lacking = [v for v in s.required_image_type if v.upper() not in values]
    if lacking:
        return Check("image_type", False, f"Image Type {shown} lacks {', '.join(lacking)}")
    return Check("image_type", True, f"Image Type {shown}")


def _series_kind(facts: SeriesFacts, s: EligibilitySettings) -> Check:
    fields = [("series description", facts.series_description)]
    hit = _first_match(s.exclude_patterns, fields)
    if hit:
        _, value, pattern = hit
        return Check(
            "series_kind", False, f"series description {value!r} matches /{pattern}/ (excluded)"
        )
    return Check("series_kind", True, "no localizer, reformat or report words")


def _axial(facts: SeriesFacts) -> Check:
    o = facts.image_orientation
    if o is None or len(o) != 6:
        return Check("axial", False, "no Image Orientation (Patient)")
    nz = o[0] * o[4] - o[1] * o[3]  # z component of row x column
    norm = math.sqrt((o[1] * o[5] - o[2] * o[4]) ** 2 + (o[2] * o[3] - o[0] * o[5]) ** 2 + nz**2)
    cosine = abs(nz) / norm if norm else 0.0
    angle = math.degrees(math.acos(min(cosine, 1.0)))
    if cosine >= _AXIAL_MIN_COSINE:
        return Check("axial", True, f"slice normal {angle:.0f} deg from the head-feet axis")
    return Check(
        "axial", False, f"slice normal {angle:.0f} deg from the head-feet axis (more than 30)"
    )


def _thickness(facts: SeriesFacts, s: EligibilitySettings) -> Check:
    t = facts.slice_thickness
    bounds = f"{s.min_slice_thickness:g}-{s.max_slice_thickness:g} mm"
    if t is None:
        return Check("slice_thickness", False, f"Slice Thickness missing (need {bounds})")
    ok = s.min_slice_thickness <= t <= s.max_slice_thickness
    return Check("slice_thickness", ok, f"{t:g} mm {'within' if ok else 'outside'} {bounds}")


def _slices(facts: SeriesFacts, s: EligibilitySettings) -> Check:
    n = facts.number_of_frames
    ok = n >= s.min_slices
    what = "frame" if facts.is_multiframe else "slice"
    what += "" if n == 1 else "s"
    return Check("slices", ok, f"{n} {what} ({'>=' if ok else '<'} {s.min_slices})")
