"""One series per study: the stated rule, its reasons, and the issue's mixed study."""

from __future__ import annotations

import pytest

from agent.config import CompletenessSettings, EligibilitySettings
from agent.series.explain import decide_folder
from agent.series.selection import choose_series
from tests.agent.series_cases import IDLE_NOW, chest, stack

THIN = chest(
    "1.2.3.5",
    series_number=5,
    slice_thickness=1.0,
    series_description="CHEST 1.0",
    slice_positions=stack(298, spacing=1.0),
)
THIN_SOFT = chest(
    "1.2.3.6",
    series_number=6,
    slice_thickness=1.0,
    series_description="CHEST 1.0 SOFT",
    slice_positions=stack(298, spacing=1.0),
)
THICK = chest("1.2.3.3", series_number=3, slice_thickness=2.5)
SHORT_THIN = chest(
    "1.2.3.7", series_number=7, slice_thickness=1.0, slice_positions=stack(200, spacing=1.0)
)


def test_thinnest_slices_win() -> None:
    selection = choose_series([THICK, THIN])
    assert selection.chosen_uid == THIN.series_instance_uid
    assert selection.reasons[THICK.series_instance_uid] == (
        "not chosen: thicker slices (2.5 mm) than series 5 'CHEST 1.0' (1 mm)"
    )
    assert selection.reasons[THIN.series_instance_uid].startswith("chosen over 1 other")


def test_then_coverage_then_series_number() -> None:
    assert choose_series([SHORT_THIN, THIN]).chosen_uid == THIN.series_instance_uid
    reason = choose_series([SHORT_THIN, THIN]).reasons[SHORT_THIN.series_instance_uid]
    assert reason == (
        "not chosen: less coverage (199 mm) than series 5 'CHEST 1.0' (297 mm), same thickness"
    )
    tie = choose_series([THIN_SOFT, THIN])
    assert tie.chosen_uid == THIN.series_instance_uid
    assert "higher series number" in tie.reasons[THIN_SOFT.series_instance_uid]


@pytest.mark.parametrize("order", [0, 1, 2])
def test_choice_does_not_depend_on_arrival_order(order: int) -> None:
    series = [THICK, THIN, THIN_SOFT, SHORT_THIN]
    rotated = series[order:] + series[:order]
    assert choose_series(rotated).chosen_uid == THIN.series_instance_uid


def test_single_and_empty() -> None:
    assert choose_series([THICK]).reasons == {
        THICK.series_instance_uid: "chosen: the only eligible series in the study"
    }
    assert choose_series([]).chosen_uid is None


def test_candidates_from_two_studies_are_refused() -> None:
    other = chest("9.9.9.1", study_instance_uid="9.9.9")
    with pytest.raises(ValueError, match="2 studies"):
        choose_series([THIN, other])


def test_issue_study_localizer_contrast_thick_and_thin_screens_only_the_thin() -> None:
    localizer = chest(
        "1.2.3.1",
        series_number=1,
        series_description="Topogram 0.6 T20f",
        image_type="ORIGINAL\\PRIMARY\\LOCALIZER",
        slice_positions=(0.0,),
    )
    contrast = chest(
        "1.2.3.2",
        series_number=2,
        series_description="CHEST C+ 1.0",
        contrast_agent="IOPAMIDOL",
        slice_thickness=1.0,
        slice_positions=stack(298, spacing=1.0),
    )
    thick = chest(
        "1.2.3.4",
        series_number=4,
        slice_thickness=5.0,
        series_description="CHEST 5.0",
        slice_positions=stack(60, spacing=5.0),
    )
    (study,) = decide_folder(
        [localizer, contrast, thick, THIN],
        CompletenessSettings(),
        EligibilitySettings(),
        IDLE_NOW,
    )
    state = {d.facts.series_instance_uid: d.state for d in study.series}
    # The sweep judges completeness first: one slice is never a stack.
    assert state == {
        "1.2.3.1": "incomplete",
        "1.2.3.2": "skipped",
        "1.2.3.4": "skipped",
        "1.2.3.5": "queued",
    }
    assert [d.facts for d in study.chosen] == [THIN]
    why = {d.facts.series_instance_uid: d.reason or "" for d in study.series}
    assert "coverage 0.0 mm is below the minimum 150 mm" in why["1.2.3.1"]
    loc = next(d for d in study.series if d.facts is localizer).verdict.eligibility
    assert {c.name for c in loc.failed} >= {"image_type", "series_kind"}
    assert "non_contrast: Contrast/Bolus Agent is 'IOPAMIDOL'" in why["1.2.3.2"]
    assert "slice_thickness: 5 mm outside 0.5-3 mm" in why["1.2.3.4"]


def test_a_thin_series_with_a_missing_slice_is_partial_and_the_next_best_is_screened() -> None:
    holed = list(stack(298, spacing=1.0))
    del holed[100]
    thin_holed = chest(
        "1.2.3.5", series_number=5, slice_thickness=1.0, slice_positions=tuple(holed)
    )
    forced = IDLE_NOW.replace(hour=13)  # an hour idle: past the forced timeout
    (study,) = decide_folder(
        [thin_holed, THICK], CompletenessSettings(), EligibilitySettings(), forced
    )
    holed_decision = next(d for d in study.series if d.facts is thin_holed)
    assert holed_decision.verdict.completeness.state == "partial"
    reasons = holed_decision.verdict.completeness.reasons
    assert reasons[0] == "1 slice missing (gaps in the slice positions)"
    assert holed_decision.state == "incomplete"
    assert [d.facts for d in study.chosen] == [THICK]
