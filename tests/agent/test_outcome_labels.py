"""The seven echo task labels from measurements: each threshold on both sides, and absence."""

from __future__ import annotations

import pytest

from agent.outcomes.labels import echo_labels
from agent.outcomes.measurements import rv_grade, sex_of
from hyperct_core.tasks import TASKS

ECHO_TASKS = {t.name for t in TASKS if t.group == "opportunistic"}


@pytest.mark.parametrize(
    ("measurements", "sex", "expected"),
    [
        ({"lvef_percent": 49.9}, None, {"reduced_lv_systolic_function": 1}),
        ({"lvef_percent": 50.0}, None, {"reduced_lv_systolic_function": 0}),
        ({"pasp_mmhg": 35.0}, None, {"pulmonary_hypertension": 0}),
        ({"pasp_mmhg": 35.5}, None, {"pulmonary_hypertension": 1}),
        ({"rv_function": "normal"}, None, {"reduced_rv_systolic_function": 0}),
        ({"rv_function": "mildly_reduced"}, None, {"reduced_rv_systolic_function": 1}),
        (
            {"tr_velocity_m_s": 3.4},
            None,
            {"right_atrial_filling_pressure": 0, "left_atrial_filling_pressure": 1},
        ),
        ({"tr_velocity_m_s": 2.8}, None, {"right_atrial_filling_pressure": 0}),
        (
            {"tr_velocity_m_s": 3.5},
            None,
            {"right_atrial_filling_pressure": 1, "left_atrial_filling_pressure": 1},
        ),
        # LAVI alone decides atrial enlargement, and the LA pressure only when it is present
        ({"lavi_ml_m2": 34.0}, None, {"atrial_chamber_enlargement": 0}),
        (
            {"lavi_ml_m2": 34.1},
            None,
            {"atrial_chamber_enlargement": 1, "left_atrial_filling_pressure": 1},
        ),
        # LA filling pressure: absent only when all three criteria are measured and unmet
        ({"e_a_ratio": 2.0}, None, {"left_atrial_filling_pressure": 1}),
        ({"e_a_ratio": 1.9, "lavi_ml_m2": 34.0}, None, {"atrial_chamber_enlargement": 0}),
        (
            {"e_a_ratio": 1.9, "lavi_ml_m2": 34.0, "tr_velocity_m_s": 2.8},
            None,
            {
                "atrial_chamber_enlargement": 0,
                "left_atrial_filling_pressure": 0,
                "right_atrial_filling_pressure": 0,
            },
        ),
        # LVIDd: sex-specific limits; without the sex only unambiguous values
        ({"lvidd_cm": 5.4}, "F", {"ventricular_enlargement": 1}),
        ({"lvidd_cm": 5.4}, "M", {"ventricular_enlargement": 0}),
        ({"lvidd_cm": 5.3}, "F", {"ventricular_enlargement": 0}),
        ({"lvidd_cm": 6.0}, "M", {"ventricular_enlargement": 1}),
        ({"lvidd_cm": 5.4}, None, {}),
        ({"lvidd_cm": 5.9}, None, {}),
        ({"lvidd_cm": 5.91}, None, {"ventricular_enlargement": 1}),
        ({"lvidd_cm": 5.3}, None, {"ventricular_enlargement": 0}),
        ({}, "F", {}),
    ],
)
def test_labels(measurements: dict, sex: str | None, expected: dict) -> None:
    assert echo_labels(measurements, sex) == expected  # type: ignore[arg-type]


def test_every_echo_task_can_be_labelled_and_no_other() -> None:
    full = {
        "lvef_percent": 40.0,
        "lvidd_cm": 6.2,
        "lavi_ml_m2": 20.0,
        "tr_velocity_m_s": 2.0,
        "pasp_mmhg": 30.0,
        "e_a_ratio": 1.0,
        "rv_function": "severely_reduced",
    }
    labels = echo_labels(full, "M")
    assert set(labels) == ECHO_TASKS
    assert labels == {
        "reduced_rv_systolic_function": 1,
        "reduced_lv_systolic_function": 1,
        "pulmonary_hypertension": 0,
        "atrial_chamber_enlargement": 0,
        "ventricular_enlargement": 1,
        "left_atrial_filling_pressure": 0,
        "right_atrial_filling_pressure": 0,
    }


@pytest.mark.parametrize(
    ("text", "grade"),
    [
        ("Normal", "normal"),
        ("mildly reduced", "mildly_reduced"),
        ("Moderately-Reduced", "moderately_reduced"),
        ("severe", "severely_reduced"),
        ("reduced", None),
        ("hyperdynamic", None),
    ],
)
def test_rv_grades(text: str, grade: str | None) -> None:
    assert rv_grade(text) == grade


def test_sex_words() -> None:
    assert [sex_of(v) for v in ("F", "male", "O", "", None)] == ["F", "M", None, None, None]
