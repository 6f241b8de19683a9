"""What an echocardiogram contributes: the measurements the echo-derived tasks need.

Each measurement has one name, used as the CSV column header, the key in
``echo_outcomes.measurements`` and in the code; the unit is part of the name so a
value never travels without it. Values are in the units named: converted on the
way in (PS3.16 measurements carry UCUM units, e.g. LVIDd in mm or cm).
"""

from __future__ import annotations

from typing import Final, Literal

LVEF: Final = "lvef_percent"  # left ventricular ejection fraction, %
LVIDD: Final = "lvidd_cm"  # LV internal dimension in diastole, cm
LAVI: Final = "lavi_ml_m2"  # left atrial volume indexed to body surface area, mL/m2
TR_VELOCITY: Final = "tr_velocity_m_s"  # peak tricuspid regurgitation velocity, m/s
PASP: Final = "pasp_mmhg"  # estimated pulmonary artery systolic pressure, mmHg
E_A: Final = "e_a_ratio"  # mitral inflow E/A ratio
RV_FUNCTION: Final = "rv_function"  # qualitative RV systolic function (RV_GRADES)

#: Numeric measurements and the range a plausible value lies in (outside: a unit mix-up).
NUMERIC_RANGES: Final[dict[str, tuple[float, float]]] = {
    LVEF: (0.0, 100.0),
    LVIDD: (1.0, 15.0),
    LAVI: (0.0, 300.0),
    TR_VELOCITY: (0.0, 10.0),
    PASP: (0.0, 200.0),
    E_A: (0.0, 20.0),
}
MEASUREMENT_NAMES: Final = (*NUMERIC_RANGES, RV_FUNCTION)

RVGrade = Literal["normal", "mildly_reduced", "moderately_reduced", "severely_reduced"]
RV_GRADES: Final[tuple[RVGrade, ...]] = (
    "normal",
    "mildly_reduced",
    "moderately_reduced",
    "severely_reduced",
)

#: Patient's Sex (0010,0040) values (PS3.3 C.7.1.1) that the LVIDd threshold depends on.
Sex = Literal["F", "M"]


def rv_grade(text: str) -> RVGrade | None:
    """A written RV systolic function grade ("Mildly reduced", "normal", ...); None if unknown."""
    words = text.strip().lower().replace("-", " ").replace("_", " ").split()
    if not words:
        return None
    joined = "_".join(words)
    for grade in RV_GRADES:
        # "mildly reduced", "mildly_reduced", or the severity alone ("mild", "severe")
        if joined == grade or (len(words) == 1 and grade.startswith(f"{words[0]}ly_")):
            return grade
    return None


def sex_of(text: str | None) -> Sex | None:
    """``F``/``M`` from a DICOM code string or a written word; anything else is unknown."""
    value = (text or "").strip().upper()
    if value in ("F", "FEMALE"):
        return "F"
    if value in ("M", "MALE"):
        return "M"
    return None
