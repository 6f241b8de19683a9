"""When a received series is complete: an idle timer plus its geometry.

DICOM has no "end of series" message (a C-STORE association may carry any part
of a series, PS3.4 B.2), so gateways wait until no instance has arrived for a
while. An idle timer alone closes a series that stalled half-way; here the
slice positions must also form a regular stack:

- spacing: every step between sorted positions is the median step within
  ``spacing_tolerance`` (as a fraction of the median);
- no gaps: a step close to k times the median means k - 1 missing slices;
- no two different images at one position (one slice sent twice, e.g. under
  a new SOP Instance UID, is read once: see
  :func:`~agent.intake.volume_checks.settle_repeats`), one orientation for all
  instances;
- coverage: the stack spans at least ``min_coverage_mm``.

Problems more instances could cure (missing slices, short coverage) keep the
series waiting until it has been idle for ``force_seconds``; then it is
recorded as partial with the reason and not screened. Problems more instances
cannot cure (duplicate positions, irregular spacing, mixed orientation,
instances without a position) make it partial as soon as the idle timer
expires: waiting longer would only delay the verdict.

An Enhanced CT (multi-frame) object is sent whole in one C-STORE, so its frames
are complete by construction; the database keeps one position per instance, so
its frame geometry is read from the files with the volume reader's own checks
(:func:`hyperct_core.volume.check_geometry`): a stack screening would refuse is
partial here, not a failed job later.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from agent.config import CompletenessSettings
from agent.series.facts import SeriesFacts
from hyperct_core.volume import DUPLICATE_MM as VOLUME_DUPLICATE_MM

CompletenessState = Literal["waiting", "complete", "partial"]

# Steps shorter than this are two slices at one position: the volume reader's
# value, so the two never disagree on what a shared position is.
DUPLICATE_MM = VOLUME_DUPLICATE_MM


@dataclass(frozen=True)
class Geometry:
    """The slice stack of a single-frame series, as far as positions tell."""

    slices: int
    spacing_mm: float | None  # median step between distinct positions
    coverage_mm: float
    missing_slices: int  # inferred from steps that are multiples of the spacing
    duplicate_positions: int  # instances sharing a position with another
    irregular_steps: int  # steps that are neither the spacing nor a multiple of it
    unpositioned: int  # instances without Image Position/Orientation


@dataclass(frozen=True)
class Completeness:
    """The verdict and every reason for it, most important first.

    ``recheck_at`` is when the verdict can next change without a new instance
    (the idle or forced timeout); None when it is final until one arrives.
    """

    state: CompletenessState
    reasons: list[str]
    geometry: Geometry | None = None
    recheck_at: datetime | None = field(default=None, compare=False)


def measure_geometry(facts: SeriesFacts, tolerance: float) -> Geometry:
    """Spacing, gaps, duplicates and coverage of a single-frame series' positions."""
    positions = facts.slice_positions
    steps = [b - a for a, b in zip(positions, positions[1:], strict=False)]
    distinct = [s for s in steps if s > DUPLICATE_MM]
    spacing = statistics.median(distinct) if distinct else None
    missing = irregular = 0
    if spacing is not None:
        for step in distinct:
            ratio = step / spacing
            k = round(ratio)
            if abs(ratio - 1.0) <= tolerance:
                continue
            if k >= 2 and abs(ratio - k) <= tolerance:
                missing += k - 1
            else:
                irregular += 1
    return Geometry(
        slices=len(positions),
        spacing_mm=spacing,
        coverage_mm=(positions[-1] - positions[0]) if positions else 0.0,
        missing_slices=missing,
        duplicate_positions=len(steps) - len(distinct),
        irregular_steps=irregular,
        unpositioned=max(facts.instance_count - facts.repeated_images - len(positions), 0),
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def describe_geometry(g: Geometry) -> str:
    spacing = "unknown" if g.spacing_mm is None else f"{g.spacing_mm:.3g} mm"
    return f"{_n(g.slices, 'positioned slice')}, spacing {spacing}, coverage {g.coverage_mm:.1f} mm"


def _problems(
    facts: SeriesFacts, g: Geometry, settings: CompletenessSettings
) -> tuple[list[str], list[str]]:
    """(curable, incurable) geometry problems as sentences."""
    curable: list[str] = []
    incurable: list[str] = []
    if not facts.orientation_consistent:
        incurable.append("instances have different orientations (Image Orientation (Patient))")
    if g.unpositioned:
        incurable.append(
            f"{g.unpositioned} of {facts.instance_count} instances have no "
            "Image Position/Orientation (Patient)"
        )
    if g.duplicate_positions:
        incurable.append(
            f"{_n(g.duplicate_positions, 'instance')} at a position another instance holds, "
            "not with the same image"
        )
    if g.irregular_steps:
        incurable.append(
            f"irregular spacing: {_n(g.irregular_steps, 'step')} differ from the median "
            f"{g.spacing_mm:.3g} mm by more than {settings.spacing_tolerance:.0%}"
        )
    if g.missing_slices:
        curable.append(f"{_n(g.missing_slices, 'slice')} missing (gaps in the slice positions)")
    if g.coverage_mm < settings.min_coverage_mm:
        curable.append(
            f"coverage {g.coverage_mm:.1f} mm is below the minimum {settings.min_coverage_mm:g} mm"
        )
    return curable, incurable


#: Why a folder's series is judged without timers (``explain --dir``).
FOLDER_FINAL = "a folder: no more instances will arrive (timers do not apply)"


def forced_reason(settings: CompletenessSettings) -> str:
    """The clause of a series recorded partial by the force timer."""
    return f"no instance completed it within the force timer ({settings.force_seconds:g} s idle)"


def repeats_note(facts: SeriesFacts) -> list[str]:
    """The note on slices sent twice, which are read once (empty when there are none)."""
    if not facts.repeated_images:
        return []
    verb = "repeats" if facts.repeated_images == 1 else "repeat"
    return [
        f"{_n(facts.repeated_images, 'instance')} {verb} the image of another at the same "
        "position (one slice sent twice, under a new SOP Instance UID); each slice is read once"
    ]


def judge_completeness(
    facts: SeriesFacts,
    settings: CompletenessSettings,
    now: datetime,
    *,
    final: bool = False,
) -> Completeness:
    """Whether ``facts`` is still arriving, complete, or partial (recorded, not screened).

    ``now`` must be timezone-aware. ``final=True`` says no more instances will
    come (a folder given to ``explain --dir``): the timers do not apply and any
    geometry problem makes the series partial.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if facts.instance_count == 0 or (facts.last_received_at is None and not final):
        return Completeness("waiting", ["no instance received yet"])

    if final:
        idle = float("inf")
        timer = FOLDER_FINAL
        idle_deadline = force_deadline = None
    else:
        assert facts.last_received_at is not None
        idle = (now - facts.last_received_at).total_seconds()
        idle_deadline = facts.last_received_at + timedelta(seconds=settings.idle_seconds)
        force_deadline = facts.last_received_at + timedelta(seconds=settings.force_seconds)
        timer = f"idle {idle:.0f} s (idle timer {settings.idle_seconds:g} s)"
        if idle < settings.idle_seconds:
            return Completeness(
                "waiting",
                [
                    f"still receiving: last instance {idle:.0f} s ago, idle timer "
                    f"{settings.idle_seconds:g} s"
                ],
                recheck_at=idle_deadline,
            )

    if facts.is_multiframe:
        return _judge_multiframe(facts, timer)

    g = measure_geometry(facts, settings.spacing_tolerance)
    summary = describe_geometry(g)
    curable, incurable = _problems(facts, g, settings)
    if not curable and not incurable:
        return Completeness(
            "complete", [timer, f"regular stack: {summary}", *repeats_note(facts)], g
        )
    if incurable:
        return Completeness(
            "partial",
            [*incurable, *curable, "more instances cannot make it regular", summary],
            g,
        )
    if final or idle >= settings.force_seconds:
        # Without the measured idle time: a stored reason and a folder's reason
        # for the same slices then read the same except for this one clause.
        forced = timer if final else forced_reason(settings)
        return Completeness("partial", [*curable, forced, summary], g)
    return Completeness(
        "waiting",
        [
            *curable,
            f"{timer}; waiting for the missing instances up to "
            f"{settings.force_seconds:g} s idle, then recorded as partial",
            summary,
        ],
        g,
        recheck_at=force_deadline,
    )


def _judge_multiframe(facts: SeriesFacts, timer: str) -> Completeness:
    # Partial verdicts name no timer: more instances cannot cure them.
    if facts.multiframe_instances < facts.instance_count:
        return Completeness(
            "partial",
            [
                f"mixes {facts.multiframe_instances} multi-frame and "
                f"{facts.instance_count - facts.multiframe_instances} single-frame instances"
            ],
        )
    if not facts.orientation_consistent:
        return Completeness("partial", ["multi-frame instances have different orientations"])
    if facts.frame_problem is not None:
        return Completeness(
            "partial", [f"the frames cannot form one volume: {facts.frame_problem}"]
        )
    checked = (
        "frame geometry checked as screening reads it"
        if facts.frame_problem is None and facts.frames_checked
        else "frame spacing and coverage are checked when the volume is read"
    )
    return Completeness(
        "complete",
        [
            timer,
            f"multi-frame (Enhanced CT): {facts.instance_count} object(s), "
            f"{facts.number_of_frames} frames, each object sent whole; {checked}",
        ],
    )
