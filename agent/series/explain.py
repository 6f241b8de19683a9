"""The whole decision for a study's series, with every reason, as data and as text.

:func:`decide_studies` runs completeness, eligibility and selection on the
series of one or more studies; :func:`render` prints it for ``hyperct-agent
explain``. Nothing here reads patient attributes: facts hold none.

Per series the outcome is one of:

- ``screen``: eligible, complete, and chosen for its study;
- ``wait``: eligible and chosen so far, but still arriving;
- ``skip``: not eligible, partial, or another series of the study was chosen.

Selection considers the eligible series that are not partial, so a thin series
still arriving can be chosen over a thick one already complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from agent.config import CompletenessSettings, EligibilitySettings
from agent.series.completeness import Completeness, judge_completeness
from agent.series.eligibility import CONTRAST_BY_IMAGE, Eligibility, assess_eligibility
from agent.series.facts import SeriesFacts
from agent.series.selection import RULE, choose_series

Outcome = Literal["screen", "wait", "skip"]


@dataclass(frozen=True)
class JobNote:
    """What the database's job row says about a series (``explain UID`` only)."""

    state: str
    reason: str | None = None
    last_error: str | None = None
    # The image check before screening (blood-pool HU), when it ran.
    image_check: str | None = None

    @property
    def contrast_by_image(self) -> bool:
        return self.state == "skipped" and (self.reason or "").startswith(CONTRAST_BY_IMAGE)


@dataclass(frozen=True)
class SeriesDecision:
    facts: SeriesFacts
    completeness: Completeness
    eligibility: Eligibility
    selection: str | None  # the selection reason; None when not a candidate
    chosen: bool
    job: JobNote | None = None

    @property
    def outcome(self) -> Outcome:
        if not self.chosen:
            return "skip"
        return "screen" if self.completeness.state == "complete" else "wait"

    @property
    def summary(self) -> str:
        """One line: the outcome and its main reason."""
        if not self.eligibility.eligible:
            return "skip: " + self.eligibility.reason()
        if self.job is not None and self.job.contrast_by_image:
            return "skip: " + (self.job.reason or CONTRAST_BY_IMAGE)
        if self.completeness.state == "partial":
            return "skip: partial: " + self.completeness.reasons[0]
        if not self.chosen:
            return "skip: " + (self.selection or "another series was chosen")
        if self.completeness.state == "waiting":
            return "wait: " + self.completeness.reasons[0]
        return "screen: complete, eligible and chosen for its study"


@dataclass(frozen=True)
class StudyDecision:
    study_instance_uid: str
    study_description: str | None
    series: list[SeriesDecision]

    @property
    def chosen(self) -> SeriesDecision | None:
        return next((d for d in self.series if d.chosen), None)


def decide_studies(
    facts: Sequence[SeriesFacts],
    completeness: CompletenessSettings,
    eligibility: EligibilitySettings,
    now: datetime,
    *,
    final: bool = False,
    jobs: Mapping[str, JobNote] | None = None,
) -> list[StudyDecision]:
    """Decide every series in ``facts``, grouped by study (in first-seen order).

    ``final`` is passed to :func:`judge_completeness` (a folder: no more
    instances will come). ``jobs`` maps Series Instance UIDs to their job rows.
    """
    by_study: dict[str, list[SeriesFacts]] = {}
    for f in facts:
        by_study.setdefault(f.study_instance_uid, []).append(f)
    out = []
    for study_uid, members in by_study.items():
        judged = [
            (
                f,
                judge_completeness(f, completeness, now, final=final),
                assess_eligibility(f, eligibility),
            )
            for f in members
        ]
        # A series the image check found enhanced is no candidate any more.
        enhanced = {uid for uid, note in (jobs or {}).items() if note.contrast_by_image}
        candidates = [
            f
            for f, c, e in judged
            if e.eligible and c.state != "partial" and f.series_instance_uid not in enhanced
        ]
        selection = choose_series(candidates)
        decisions = [
            SeriesDecision(
                facts=f,
                completeness=c,
                eligibility=e,
                selection=selection.reasons.get(f.series_instance_uid),
                chosen=f.series_instance_uid == selection.chosen_uid,
                job=(jobs or {}).get(f.series_instance_uid),
            )
            for f, c, e in judged
        ]
        description = next((f.study_description for f in members if f.study_description), None)
        out.append(StudyDecision(study_uid, description, decisions))
    return out


def render(studies: Sequence[StudyDecision], *, only: str | None = None) -> str:
    """The decisions as text: per study the choice, per series every reason.

    ``only`` shows that Series Instance UID's details alone (the study line stays).
    """
    lines: list[str] = []
    for study in studies:
        if lines:
            lines.append("")
        desc = f" {study.study_description!r}" if study.study_description else ""
        chosen = study.chosen
        lines.append(f"study {study.study_instance_uid}{desc}: {len(study.series)} series")
        if chosen is None:
            lines.append("  chosen: none (no eligible series that is not partial)")
        else:
            lines.append(f"  chosen: {chosen.facts.label()} {chosen.facts.series_instance_uid}")
        lines.append(f"  selection rule: {RULE}")
        for d in study.series:
            if only is None or d.facts.series_instance_uid == only:
                lines.extend(_render_series(d))
    return "\n".join(lines) + "\n"


def _render_series(d: SeriesDecision) -> list[str]:
    f = d.facts
    lines = [
        "",
        f"  {f.label()} {f.series_instance_uid}",
        f"    decision: {d.summary}",
        f"    instances {f.instance_count}, frames {f.number_of_frames}, "
        f"slice thickness {_mm(f.slice_thickness)}, image type {f.image_type or 'missing'}",
        f"    completeness: {d.completeness.state}",
    ]
    lines += [f"      - {r}" for r in d.completeness.reasons]
    verdict = "eligible" if d.eligibility.eligible else "not eligible"
    lines.append(f"    eligibility: {verdict}")
    lines += [
        f"      [{'pass' if c.passed else 'FAIL'}] {c.name}: {c.detail}"
        for c in d.eligibility.checks
    ]
    if d.selection is not None:
        lines.append(f"    selection: {d.selection}")
    else:
        lines.append("    selection: not a candidate (not eligible or partial)")
    if d.job is not None:
        job = f"    job: {d.job.state}"
        if d.job.reason:
            job += f" - stored reason: {d.job.reason}"
        lines.append(job)
        if d.job.last_error:
            lines.append(f"    last error: {d.job.last_error}")
        if d.job.image_check:
            lines.append(f"    image check: {d.job.image_check}")
    return lines


def _mm(value: float | None) -> str:
    return "missing" if value is None else f"{value:g} mm"
