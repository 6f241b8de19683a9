"""The decision for a study's series, with every reason, as data and as text.

The decision is the sweep's (:mod:`agent.series.decision`), never a second
opinion:

- a stored series shows its job row: the state and the reasons the sweep
  recorded (:func:`decide_stored`). A series the sweep has not decided yet
  also shows what the next sweep would decide, by the sweep's own functions
  and the configured settings; so does a decided one whose judgement today
  differs (settings or instances changed since);
- a folder (:func:`decide_folder`) is decided by the sweep's functions as if
  its series had arrived in folder order and no more instances will come.

The completeness and eligibility checks below each decision are judged now,
with the settings given; nothing here reads patient attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from agent.config import CompletenessSettings, EligibilitySettings
from agent.series.decision import (
    CHOSEN_STATES,
    YIELDING_STATES,
    Verdict,
    judge_series,
    place_in_study,
)
from agent.series.eligibility import CONTRAST_BY_IMAGE
from agent.series.facts import SeriesFacts
from agent.series.selection import RULE

Source = Literal["stored", "folder"]


@dataclass(frozen=True)
class JobNote:
    """What the database's job row says about a series (``explain UID`` only)."""

    state: str
    reason: str | None = None
    last_error: str | None = None
    # The image check before screening (blood-pool HU), when it ran.
    image_check: str | None = None
    # The echo referral as stored at screening, in words (None before screening).
    referral: str | None = None

    @property
    def contrast_by_image(self) -> bool:
        return self.state == "skipped" and (self.reason or "").startswith(CONTRAST_BY_IMAGE)


@dataclass(frozen=True)
class SeriesDecision:
    facts: SeriesFacts
    verdict: Verdict  # completeness and eligibility, judged with the settings given
    state: str  # the job state: stored, or the sweep's for a folder
    reason: str | None  # the reasons as the job row keeps them ("; "-joined)
    source: Source
    last_error: str | None = None
    # What the sweep would decide now, when that is not ``state``/``reason``.
    next_sweep: str | None = None
    image_check: str | None = None
    referral: str | None = None


@dataclass(frozen=True)
class StudyDecision:
    study_instance_uid: str
    study_description: str | None
    series: list[SeriesDecision]

    @property
    def chosen(self) -> list[SeriesDecision]:
        return [d for d in self.series if d.state in CHOSEN_STATES]


def _joined(reasons: Sequence[str]) -> str:
    return "; ".join(reasons)


def _by_study(facts: Sequence[SeriesFacts]) -> dict[str, list[SeriesFacts]]:
    out: dict[str, list[SeriesFacts]] = {}
    for f in facts:
        out.setdefault(f.study_instance_uid, []).append(f)
    return out


def _study(uid: str, members: Sequence[SeriesFacts], series: list[SeriesDecision]) -> StudyDecision:
    description = next((f.study_description for f in members if f.study_description), None)
    return StudyDecision(uid, description, series)


def decide_folder(
    facts: Sequence[SeriesFacts],
    completeness: CompletenessSettings,
    eligibility: EligibilitySettings,
    now: datetime,
) -> list[StudyDecision]:
    """The sweep's decisions for the series of a folder, taken as all there is.

    Series are decided in the order given (one sweep over jobs created in
    that order), each against the study's series already queued, exactly as
    the sweep places a series against its stored siblings.
    """
    out = []
    for study_uid, members in _by_study(facts).items():
        by_uid = {f.series_instance_uid: f for f in members}
        verdicts: dict[str, Verdict] = {}
        decided: dict[str, tuple[str, list[str]]] = {}
        for f in members:
            uid = f.series_instance_uid
            v = verdicts[uid] = judge_series(f, completeness, eligibility, now, final=True)
            if v.state != "eligible":
                decided[uid] = (v.state, v.reasons)
                continue
            chosen = {u: by_uid[u] for u, (state, _) in decided.items() if state == "queued"}
            placement = place_in_study(v, f, chosen, yielding=chosen)
            for other, reasons in placement.displaced.items():
                decided[other] = ("skipped", reasons)
            decided[uid] = ("queued" if placement.queued else "skipped", placement.reasons)
        series = [
            SeriesDecision(
                f,
                verdicts[f.series_instance_uid],
                decided[f.series_instance_uid][0],
                _joined(decided[f.series_instance_uid][1]),
                "folder",
            )
            for f in members
        ]
        out.append(_study(study_uid, members, series))
    return out


def decide_stored(
    facts: Sequence[SeriesFacts],
    jobs: Mapping[str, JobNote],
    completeness: CompletenessSettings,
    eligibility: EligibilitySettings,
    now: datetime,
) -> list[StudyDecision]:
    """Stored series: each job row's state and reasons, and the next sweep's where it differs.

    ``jobs`` maps Series Instance UIDs to their job rows (every received series has one).
    """
    out = []
    for study_uid, members in _by_study(facts).items():
        series = []
        for f in members:
            uid = f.series_instance_uid
            job = jobs.get(uid, JobNote("receiving"))
            verdict = judge_series(f, completeness, eligibility, now)
            series.append(
                SeriesDecision(
                    f,
                    verdict,
                    job.state,
                    job.reason,
                    "stored",
                    last_error=job.last_error,
                    image_check=job.image_check,
                    referral=job.referral,
                    next_sweep=_next_sweep(f, verdict, job, members, jobs),
                )
            )
        out.append(_study(study_uid, members, series))
    return out


def _next_sweep(
    f: SeriesFacts,
    verdict: Verdict,
    job: JobNote,
    members: Sequence[SeriesFacts],
    jobs: Mapping[str, JobNote],
) -> str | None:
    """What the sweep would decide for ``f`` now, unless the job row already says so.

    A series not decided yet is decided so by the next sweep; a decided one is
    decided again only when new instances arrive, so this shows how settings
    changed since would judge it.
    """
    if job.state in (*CHOSEN_STATES, "dead") or (job.reason or "").startswith("not chosen"):
        return None  # placed in its study: that depended on what was chosen then
    if job.contrast_by_image:
        return None  # decided on the images, which the sweep's rules never read
    if verdict.state == "eligible":
        others = {
            m.series_instance_uid: m
            for m in members
            if m.series_instance_uid != f.series_instance_uid
            and jobs.get(m.series_instance_uid, JobNote("receiving")).state in CHOSEN_STATES
        }
        yielding = [u for u in others if jobs[u].state in YIELDING_STATES]
        placement = place_in_study(verdict, f, others, yielding)
        state = "queued" if placement.queued else "skipped"
        reason = _joined(placement.reasons)
    else:
        state, reason = verdict.state, _joined(verdict.reasons)
    if state == job.state and reason == job.reason:
        return None
    return f"{state}: {reason}"


def render(studies: Sequence[StudyDecision], *, only: str | None = None) -> str:
    """The decisions as text: per study the choice, per series every reason.

    ``only`` shows that Series Instance UID's details alone (the study line stays).
    """
    lines: list[str] = []
    for study in studies:
        if lines:
            lines.append("")
        desc = f" {study.study_description!r}" if study.study_description else ""
        lines.append(f"study {study.study_instance_uid}{desc}: {len(study.series)} series")
        chosen = study.chosen
        if not chosen:
            lines.append("  chosen: none (no series queued or screened)")
        else:
            names = "; ".join(f"{d.facts.label()} {d.facts.series_instance_uid}" for d in chosen)
            lines.append(f"  chosen: {names}")
        lines.append(f"  selection rule: {RULE}")
        for d in study.series:
            if only is None or d.facts.series_instance_uid == only:
                lines.extend(_render_series(d))
    return "\n".join(lines) + "\n"


_SOURCE = {
    "stored": "the sweep, as stored in the job row",
    "folder": "the sweep's rules, the folder taken as all there is",
}


def _render_series(d: SeriesDecision) -> list[str]:
    f = d.facts
    v = d.verdict
    lines = [
        "",
        f"  {f.label()} {f.series_instance_uid}",
        f"    decision: {d.state}",
        f"    reason: {d.reason or 'none recorded yet'}",
        f"    decided by: {_SOURCE[d.source]}",
    ]
    if d.next_sweep is not None and d.state == "receiving":
        lines.append(f"    next sweep (judged now, configured settings): {d.next_sweep}")
    elif d.next_sweep is not None:
        lines.append(
            f"    judged now with the configured settings: {d.next_sweep} "
            "(the stored decision stands until new instances arrive)"
        )
    if d.last_error:
        lines.append(f"    last error: {d.last_error}")
    if d.image_check:
        lines.append(f"    image check: {d.image_check}")
    if d.referral:
        lines.append(f"    echo referral: {d.referral}")
    lines += [
        f"    instances {f.instance_count}, frames {f.number_of_frames}, "
        f"slice thickness {_mm(f.slice_thickness)}, image type {f.image_type or 'missing'}",
        f"    completeness: {v.completeness.state}",
    ]
    lines += [f"      - {r}" for r in v.completeness.reasons]
    verdict = "eligible" if v.eligibility.eligible else "not eligible"
    lines.append(f"    eligibility: {verdict}")
    lines += [
        f"      [{'pass' if c.passed else 'FAIL'}] {c.name}: {c.detail}"
        for c in v.eligibility.checks
    ]
    return lines


def _mm(value: float | None) -> str:
    return "missing" if value is None else f"{value:g} mm"
