"""One series per study: which eligible series is screened when several qualify.

A chest CT study often holds the same acquisition reconstructed more than once
(thin and thick slices, lung and soft-tissue kernels). The model is screened
once per study, on the series ranked first by this rule, each key breaking the
ties of the one before:

1. thinnest Slice Thickness (to 0.01 mm): the most detail along the body axis;
2. largest coverage along the slice normal: the whole chest;
3. most slices (frames for Enhanced CT);
4. lowest Series Number: usually the scanner's primary reconstruction;
5. Series Instance UID, so the choice never depends on arrival order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.series.facts import SeriesFacts

RULE = (
    "thinnest slice thickness, then largest coverage, then most slices, "
    "then lowest series number, then series UID"
)


@dataclass(frozen=True)
class Selection:
    """The chosen series (None when there were no candidates) and a reason per candidate."""

    chosen_uid: str | None
    reasons: dict[str, str]


def _key(f: SeriesFacts) -> tuple[float, float, int, int, str]:
    thickness = round(f.slice_thickness, 2) if f.slice_thickness is not None else float("inf")
    coverage = round(f.coverage_mm or 0.0, 1)
    number = f.series_number if f.series_number is not None else 2**31
    return (thickness, -coverage, -f.number_of_frames, number, f.series_instance_uid)


def _why_not(loser: SeriesFacts, winner: SeriesFacts) -> str:
    a, b = _key(loser), _key(winner)
    name = winner.label()
    if a[0] != b[0]:
        shown = "unknown" if loser.slice_thickness is None else f"{loser.slice_thickness:g} mm"
        return f"thicker slices ({shown}) than {name} ({winner.slice_thickness:g} mm)"
    if a[1] != b[1]:
        return f"less coverage ({-a[1]:g} mm) than {name} ({-b[1]:g} mm), same thickness"
    if a[2] != b[2]:
        return f"fewer slices ({-a[2]}) than {name} ({-b[2]}), same thickness and coverage"
    if a[3] != b[3]:
        return f"higher series number than {name}; same thickness, coverage and slices"
    return f"same as {name} on every key; its series UID sorts first"


def choose_series(candidates: Sequence[SeriesFacts]) -> Selection:
    """Choose one of ``candidates`` (eligible series of one study) by :data:`RULE`.

    Raises ValueError when the candidates come from more than one study.
    """
    if not candidates:
        return Selection(None, {})
    studies = {f.study_instance_uid for f in candidates}
    if len(studies) > 1:
        raise ValueError(f"candidates come from {len(studies)} studies; choose per study")
    ranked = sorted(candidates, key=_key)
    winner = ranked[0]
    reasons: dict[str, str] = {}
    if len(ranked) == 1:
        reasons[winner.series_instance_uid] = "chosen: the only eligible series in the study"
    else:
        reasons[winner.series_instance_uid] = (
            f"chosen over {len(ranked) - 1} other eligible series by the rule: {RULE}"
        )
    for loser in ranked[1:]:
        reasons[loser.series_instance_uid] = "not chosen: " + _why_not(loser, winner)
    return Selection(winner.series_instance_uid, reasons)
