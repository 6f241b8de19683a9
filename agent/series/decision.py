"""The sweep's decision for one series, as pure functions the sweep and ``explain`` share.

A received series is decided in two steps, always in this order:

1. :func:`judge_series`: completeness first (a series still arriving or partial
   is not judged further), then eligibility;
2. :func:`place_in_study`: a complete, eligible series is queued for screening
   unless a series of its study already chosen ranks first by the selection
   rule; one not screened yet that ranks below gives way.

The sweep records the resulting state and reasons in the job row; ``hyperct-agent
explain`` shows those stored reasons, and for a folder runs these same
functions, so a folder and a received series get the same words.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from agent.config import CompletenessSettings, EligibilitySettings
from agent.series.completeness import Completeness, judge_completeness, repeats_note
from agent.series.eligibility import Eligibility, assess_eligibility
from agent.series.facts import SeriesFacts
from agent.series.selection import choose_series

#: ``eligible`` means complete and eligible: :func:`place_in_study` decides the rest.
Judged = Literal["receiving", "incomplete", "skipped", "eligible"]

_ANOTHER = "not chosen: another series was chosen"

#: Job states of a series chosen for screening in its study (stored as these words).
CHOSEN_STATES = ("queued", "running", "done", "failed")
#: Those of them not screened yet: they give way to a better series.
YIELDING_STATES = ("queued", "failed")


@dataclass(frozen=True)
class Verdict:
    """Completeness and eligibility of one series, and the reasons the job row keeps."""

    state: Judged
    reasons: list[str]
    completeness: Completeness
    eligibility: Eligibility


def judge_series(
    facts: SeriesFacts,
    completeness: CompletenessSettings,
    eligibility: EligibilitySettings,
    now: datetime,
    *,
    final: bool = False,
) -> Verdict:
    """Completeness, then eligibility; every check runs so ``explain`` can show it.

    ``final`` says no more instances will come (a folder), see
    :func:`~agent.series.completeness.judge_completeness`.
    """
    c = judge_completeness(facts, completeness, now, final=final)
    e = assess_eligibility(facts, eligibility)
    if c.state == "waiting":
        return Verdict("receiving", list(c.reasons), c, e)
    if c.state != "complete":
        return Verdict("incomplete", list(c.reasons), c, e)
    if not e.eligible:
        failed = [f"{check.name}: {check.detail}" for check in e.failed]
        return Verdict("skipped", ["not eligible", *failed], c, e)
    return Verdict("eligible", ["complete and eligible", *repeats_note(facts)], c, e)


@dataclass(frozen=True)
class Placement:
    """Whether a complete, eligible series is queued, and the siblings that give way to it."""

    queued: bool
    reasons: list[str]
    # Series Instance UID -> reasons, for chosen siblings now skipped.
    displaced: dict[str, list[str]] = field(default_factory=dict)


def place_in_study(
    verdict: Verdict,
    facts: SeriesFacts,
    chosen: Mapping[str, SeriesFacts],
    yielding: Collection[str],
) -> Placement:
    """Queue ``facts`` (judged ``eligible``) or skip it, against the siblings already chosen.

    ``chosen`` maps the study's other series already chosen (queued, screening,
    screened or failed) to their facts; ``yielding`` names those of them that
    are not screened yet and so give way to a better series.
    """
    if not chosen:
        return Placement(True, list(verdict.reasons))
    selection = choose_series([facts, *chosen.values()])
    uid = facts.series_instance_uid
    if selection.chosen_uid != uid:
        return Placement(False, [selection.reasons.get(uid, _ANOTHER)])
    displaced = {
        other: [selection.reasons.get(other, _ANOTHER)] for other in chosen if other in yielding
    }
    return Placement(True, [*verdict.reasons, selection.reasons.get(uid, "chosen")], displaced)
