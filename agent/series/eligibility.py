"""Whether a series is a non-contrast chest CT the model may screen.

Every check runs and is reported, pass or fail, so ``hyperct-agent explain``
can show the whole decision rather than the first objection. What each check
reads (PS3.3 sections of the attributes):

- ``modality``: Modality (C.7.3.1) is one of ``modalities``.
- ``sop_class``: SOP Class UID (C.12.1) is one of ``sop_classes``.
- ``chest``: a ``chest_patterns`` match in Body Part Examined (C.7.3.1),
  Series Description, Protocol Name or Study Description.
- ``non_contrast``: the tags do not say the series is enhanced
  (:func:`contrast_by_tags`). Where they say nothing, or the study holds both
  kinds ("W/WO"), the series passes and the image check before screening
  (:mod:`hyperct_core.bloodpool`) decides.
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
from typing import Literal

from pydicom.uid import UID

from agent.config import EligibilitySettings
from agent.series.facts import SeriesFacts

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


#: How the job reason of a series skipped by the image check before screening begins.
CONTRAST_BY_IMAGE = "contrast by image"

TagVerdict = Literal["contrast", "non_contrast", "unknown"]
WordKind = Literal["mixed", "non_contrast", "contrast"]


_KIND_WORDS = {
    "mixed": "both kinds",
    "non_contrast": "non-contrast words",
    "contrast": "contrast words",
}


@dataclass(frozen=True)
class ContrastByTags:
    """What the header says about intravenous contrast, and which attribute said it."""

    verdict: TagVerdict
    detail: str


def classify_words(text: str | None, s: EligibilitySettings) -> tuple[WordKind, str] | None:
    """The kind of contrast words in one description, and the words that matched.

    Mixed words ("W/WO") are looked for first, then non-contrast words, then
    contrast words: "WO CONTRAST" contains "CONTRAST" and must not count as it.
    """
    if not text:
        return None
    kinds: tuple[tuple[WordKind, list[str]], ...] = (
        ("mixed", s.mixed_patterns),
        ("non_contrast", s.non_contrast_patterns),
        ("contrast", s.contrast_patterns),
    )
    for kind, patterns in kinds:
        for rx in _compiled(tuple(patterns)):
            found = rx.search(text)
            if found:
                return kind, found.group(0).strip() or found.group(0)
    return None


def agent_says_none(value: str, s: EligibilitySettings) -> bool:
    return any(rx.fullmatch(value.strip()) for rx in _compiled(tuple(s.no_agent_patterns)))


def contrast_by_tags(facts: SeriesFacts, s: EligibilitySettings) -> ContrastByTags:
    """Contrast or not, from the Contrast/Bolus Agent and the descriptions.

    Precedence, first decisive source wins:

    1. Contrast/Bolus Agent (PS3.3 C.7.6.4) naming an agent: contrast.
    2. Series-level words: Series Description (C.7.3.1), then Protocol Name.
    3. Contrast/Bolus Agent saying none (``no_agent_patterns``): not contrast.
    4. Study-level words: Requested Procedure Description (C.4.11, or its
       Request Attributes Sequence item), then Study Description (C.7.2.1).

    A description with mixed words ("W/WO") decides nothing for its series; a
    series- or study-level one also stops the study-level words below it from
    deciding (a "W/WO" study marks no series). Undecided is ``unknown``: the
    image decides.
    """
    agent = (facts.contrast_agent or "").strip()
    if agent and not agent_says_none(agent, s):
        return ContrastByTags("contrast", f"Contrast/Bolus Agent is {agent!r}")
    mixed: list[str] = []
    series_level = [
        ("series description", facts.series_description),
        ("protocol", facts.protocol_name),
    ]
    study_level = [
        ("requested procedure", facts.requested_procedure),
        ("study description", facts.study_description),
    ]
    for name, value in series_level:
        found = classify_words(value, s)
        if found is None:
            continue
        kind, words = found
        said = f"{name} {value!r}: {_KIND_WORDS[kind]} {words!r}"
        if kind == "mixed":
            mixed.append(f"{name} {value!r} says both kinds")
            continue
        return ContrastByTags(kind, said)
    if agent:
        return ContrastByTags("non_contrast", f"Contrast/Bolus Agent {agent!r} says none")
    if not mixed:
        for name, value in study_level:
            found = classify_words(value, s)
            if found is None:
                continue
            kind, words = found
            if kind == "mixed":
                mixed.append(f"{name} {value!r} says both kinds")
                break
            return ContrastByTags(kind, f"{name} {value!r}: {_KIND_WORDS[kind]} {words!r}")
    if mixed:
        return ContrastByTags("unknown", f"{mixed[0]}; the image decides")
    fields = [*series_level, *study_level]
    return ContrastByTags(
        "unknown",
        f"no Contrast/Bolus Agent, no contrast words in {_shown(fields)}; the image decides",
    )


def _non_contrast(facts: SeriesFacts, s: EligibilitySettings) -> Check:
    tags = contrast_by_tags(facts, s)
    if tags.verdict == "contrast":
        return Check("non_contrast", False, tags.detail)
    return Check("non_contrast", True, tags.detail)


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
