"""The seven echo-derived task labels from an echocardiogram's measurements.

The thresholds are those of the HyperCT paper (section 3, appendix L). The comparison
signs were lost from the copy of appendix L the project holds; the directions used
here are the clinically standard ones (a low LVEF is reduced function, a high PASP is
pulmonary hypertension, a large LA volume or LV dimension is enlargement, a fast TR
jet or a high E/A ratio a raised filling pressure): see docs/admin-database.md.

A label is 1 (present) or 0 (absent), and only when the measurements decide it: a
task whose measurement is missing, or that the measurements leave undecided, has no
label at all (it is left out, never guessed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.outcomes.measurements import E_A, LAVI, LVEF, LVIDD, PASP, RV_FUNCTION, TR_VELOCITY, Sex

#: LVIDd above which the left ventricle is enlarged, cm (clinically standard sex-specific limits).
LVIDD_LIMIT_CM: dict[Sex, float] = {"F": 5.3, "M": 5.9}


def _above(value: float | None, limit: float) -> int | None:
    return None if value is None else int(value > limit)


def _number(measurements: Mapping[str, Any], name: str) -> float | None:
    value = measurements.get(name)
    return None if value is None else float(value)


def ventricular_enlargement(lvidd_cm: float | None, sex: Sex | None) -> int | None:
    """LVIDd > 5.3 cm (female) or > 5.9 cm (male).

    Without the sex only the unambiguous values are labelled: above both limits
    (> 5.9 cm) present, at or below both (<= 5.3 cm) absent; in between, none.
    """
    if lvidd_cm is None:
        return None
    if sex is not None:
        return int(lvidd_cm > LVIDD_LIMIT_CM[sex])
    if lvidd_cm > max(LVIDD_LIMIT_CM.values()):
        return 1
    if lvidd_cm <= min(LVIDD_LIMIT_CM.values()):
        return 0
    return None


def left_atrial_filling_pressure(
    e_a: float | None, lavi: float | None, tr_velocity: float | None
) -> int | None:
    """Any of E/A >= 2, LAVI > 34 mL/m2, peak TR velocity > 2.8 m/s.

    Present as soon as one measured criterion is met; absent only when all three
    are measured and none is met (a missing one might have been met).
    """
    criteria = [
        None if e_a is None else e_a >= 2.0,
        None if lavi is None else lavi > 34.0,
        None if tr_velocity is None else tr_velocity > 2.8,
    ]
    if any(c is True for c in criteria):
        return 1
    if all(c is False for c in criteria):
        return 0
    return None


def echo_labels(measurements: Mapping[str, Any], sex: Sex | None = None) -> dict[str, int]:
    """Task name -> 1/0 for the tasks the measurements decide (hyperct_core.tasks names).

    ``sex`` is used for the LVIDd limit only and is never stored with the labels.
    """
    lvef = _number(measurements, LVEF)
    lavi = _number(measurements, LAVI)
    tr = _number(measurements, TR_VELOCITY)
    rv = measurements.get(RV_FUNCTION)
    labels: dict[str, int | None] = {
        "reduced_rv_systolic_function": None if rv is None else int(rv != "normal"),
        "reduced_lv_systolic_function": None if lvef is None else int(lvef < 50.0),
        "pulmonary_hypertension": _above(_number(measurements, PASP), 35.0),
        "atrial_chamber_enlargement": _above(lavi, 34.0),
        "ventricular_enlargement": ventricular_enlargement(_number(measurements, LVIDD), sex),
        "left_atrial_filling_pressure": left_atrial_filling_pressure(
            _number(measurements, E_A), lavi, tr
        ),
        "right_atrial_filling_pressure": _above(tr, 3.4),
    }
    return {task: label for task, label in labels.items() if label is not None}
