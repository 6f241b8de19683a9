"""Completeness: idle timer plus geometry, then the forced timeout (one case a line)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from agent.config import CompletenessSettings
from agent.series.completeness import judge_completeness, measure_geometry
from tests.agent.series_cases import T0, chest, stack

S = CompletenessSettings()  # idle 30 s, force 600 s, tolerance 20 %, coverage >= 150 mm
IDLE = T0 + timedelta(seconds=60)  # past the idle timer, before the forced timeout
FORCED = T0 + timedelta(seconds=601)

GAP = stack(50) + stack(67, start=-300.0 + 53 * 2.5)  # 3 slices missing after the 50th
IRREGULAR = stack(60) + stack(60, start=-300.0 + 59 * 2.5 + 4.2)  # one 4.2 mm step
DUPLICATE = tuple(sorted((*stack(120), -300.0 + 10 * 2.5)))
SHORT = stack(40)  # 97.5 mm

CASES = [
    # id, facts, now, state, a reason containing
    ("regular complete", chest(), IDLE, "complete", "regular stack: 120 positioned slices"),
    ("still arriving", chest(), T0 + timedelta(seconds=5), "waiting", "still receiving"),
    ("gap waits", chest(slice_positions=GAP), IDLE, "waiting", "3 slices missing"),
    ("gap forced partial", chest(slice_positions=GAP), FORCED, "partial", "force timer (600 s"),
    ("irregular spacing", chest(slice_positions=IRREGULAR), IDLE, "partial", "irregular spacing"),
    (
        "duplicate positions",
        chest(slice_positions=DUPLICATE),
        IDLE,
        "partial",
        "1 instance at a position",
    ),
    ("mixed orientation", chest(orientation_consistent=False), IDLE, "partial", "orientations"),
    ("short coverage waits", chest(slice_positions=SHORT), IDLE, "waiting", "coverage 97.5 mm"),
    ("short coverage forced", chest(slice_positions=SHORT), FORCED, "partial", "coverage 97.5"),
    ("one slice", chest(slice_positions=(0.0,)), FORCED, "partial", "coverage 0.0 mm"),
    ("unpositioned", chest(instance_count=121), IDLE, "partial", "1 of 121 instances have no"),
    ("nothing yet", chest(instance_count=0, slice_positions=()), IDLE, "waiting", "no instance"),
    (
        "enhanced CT",
        chest(instance_count=1, multiframe_instances=1, slice_positions=(-300.0,)),
        IDLE,
        "complete",
        "multi-frame (Enhanced CT): 1 object(s), 120 frames",
    ),
    (
        "enhanced CT arriving",
        chest(instance_count=1, multiframe_instances=1, slice_positions=(-300.0,)),
        T0 + timedelta(seconds=1),
        "waiting",
        "still receiving",
    ),
    (
        "enhanced mixed with single frames",
        chest(instance_count=3, multiframe_instances=1, slice_positions=(0.0, 1.0, 2.0)),
        IDLE,
        "partial",
        "mixes 1 multi-frame and 2 single-frame",
    ),
]


@pytest.mark.parametrize(
    ("facts", "now", "state", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_completeness_table(facts, now: datetime, state: str, reason: str) -> None:
    verdict = judge_completeness(facts, S, now)
    assert verdict.state == state, verdict.reasons
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_gap_is_counted_and_the_series_waits_until_the_forced_timeout() -> None:
    facts = chest(slice_positions=GAP)
    g = measure_geometry(facts, S.spacing_tolerance)
    assert (g.missing_slices, g.irregular_steps, g.duplicate_positions) == (3, 0, 0)
    assert g.spacing_mm == pytest.approx(2.5)
    just_before = T0 + timedelta(seconds=S.force_seconds - 1)
    waiting = judge_completeness(facts, S, just_before)
    assert waiting.state == "waiting"
    assert waiting.recheck_at == T0 + timedelta(seconds=S.force_seconds)
    assert judge_completeness(facts, S, T0 + timedelta(seconds=S.force_seconds)).state == "partial"


def test_spacing_tolerance_decides_between_regular_and_irregular() -> None:
    # One step of 2.9 mm in a 2.5 mm stack: 16 % off the median.
    positions = stack(60) + stack(60, start=-300.0 + 59 * 2.5 + 2.9)
    facts = chest(slice_positions=positions)
    assert judge_completeness(facts, S, IDLE).state == "complete"
    strict = S.model_copy(update={"spacing_tolerance": 0.1})
    assert judge_completeness(facts, strict, IDLE).state == "partial"


def test_order_of_arrival_does_not_matter_and_descending_stacks_work() -> None:
    down = chest(slice_positions=tuple(sorted(-p for p in stack(120))))
    assert judge_completeness(down, S, IDLE).state == "complete"


def test_while_arriving_the_recheck_is_the_idle_deadline() -> None:
    verdict = judge_completeness(chest(), S, T0 + timedelta(seconds=10))
    assert verdict.recheck_at == T0 + timedelta(seconds=S.idle_seconds)


def test_a_folder_is_final_no_timers() -> None:
    # Files written a second ago: no waiting, and a gap is partial at once.
    just_now = T0 + timedelta(seconds=1)
    assert judge_completeness(chest(), S, just_now, final=True).state == "complete"
    gap = judge_completeness(chest(slice_positions=GAP), S, just_now, final=True)
    assert gap.state == "partial"
    assert gap.reasons[0] == "3 slices missing (gaps in the slice positions)"


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        judge_completeness(chest(), S, datetime(2026, 1, 1, 12, 1))
