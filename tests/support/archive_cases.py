"""An archive's worth of small CT studies over several days, each series with what a plan
should make of it: eligible chest CTs, contrast series, head CTs, localizers, short series,
thick slices, an MR study and studies outside the range.

Every series is written by :func:`tests.support.ct_series.ct_series` (16 x 16 pixels, a few
slices, the patient canaries of that module). The expectations are what the eligibility
rules say for the attributes written here, with ``min_slices = MIN_SLICES``:
``"planned"``, ``"skipped:<check>"`` (the first check that must fail), or ``"absent"``
(never answered for the campaign's range and modality).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from tests.support.ct_series import ct_series, write_series

#: The campaign range the cases are built around, and the eligibility they assume.
FIRST_DAY = "20240304"
LAST_DAY = "20240306"
MIN_SLICES = 3
ELIGIBILITY = {"min_slices": MIN_SLICES}


@dataclass(frozen=True)
class SeriesCase:
    description: str
    expect: str
    slices: int = 4
    body_part: str | None = "CHEST"
    thickness: float = 2.5
    modality: str = "CT"


@dataclass(frozen=True)
class StudyCase:
    day: str
    time: str | None
    description: str
    series: tuple[SeriesCase, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


CHEST_WO = SeriesCase("CHEST WO", "planned")

CASES: tuple[StudyCase, ...] = (
    # 20240304: seven studies, more than a small result limit: the day must be split.
    StudyCase(
        FIRST_DAY,
        "000000",
        "CT CHEST WITHOUT CONTRAST",
        (
            SeriesCase("CHEST NON-CONTRAST", "planned"),
            SeriesCase("SCOUT", "skipped:series_kind", slices=1),
        ),
    ),
    StudyCase(
        FIRST_DAY,
        "091500",
        "CT CHEST W/WO",
        (SeriesCase("CHEST WO", "planned"), SeriesCase("CHEST ARTERIAL", "skipped:non_contrast")),
    ),
    StudyCase(
        FIRST_DAY,
        "104000",
        "CT HEAD WO",
        (SeriesCase("HEAD WO", "skipped:chest", body_part="HEAD"),),
    ),
    StudyCase(
        FIRST_DAY,
        "130500",
        "CT CHEST",
        (SeriesCase("CHEST 1.0", "skipped:slices", slices=MIN_SLICES - 1),),
    ),
    StudyCase(
        FIRST_DAY,
        "162000",
        "CT CHEST LOW DOSE",
        (SeriesCase("LUNG 5mm", "skipped:slice_thickness", thickness=5.0),),
    ),
    StudyCase(FIRST_DAY, "180000", "CT THORAX", (SeriesCase("THORAX NATIV", "planned"),)),
    StudyCase(FIRST_DAY, "235959", "CT CHEST", (CHEST_WO,)),
    # 20240305: an MR study (left out by the modality), a contrast study, one without a time.
    StudyCase(
        "20240305",
        "080000",
        "MR CHEST",
        (SeriesCase("T1 AX", "absent", modality="MR"),),
    ),
    StudyCase(
        "20240305",
        "120000",
        "CT CHEST WITH CONTRAST",
        (
            SeriesCase("CHEST PORTAL", "skipped:non_contrast"),
            SeriesCase("PE", "skipped:non_contrast"),
        ),
    ),
    StudyCase("20240305", None, "CT CHEST", (CHEST_WO,)),
    # 20240306: two studies in the same hour, a localizer beside an eligible series.
    StudyCase(
        LAST_DAY,
        "070000",
        "CT CHEST",
        (SeriesCase("TOPOGRAM", "skipped:series_kind", slices=1), CHEST_WO),
    ),
    StudyCase(LAST_DAY, "073000", "CT LUNG SCREENING", (SeriesCase("LUNG", "planned"),)),
    # Outside 20240304-20240306: never answered.
    StudyCase("20240303", "120000", "CT CHEST", (SeriesCase("CHEST WO", "absent"),)),
    StudyCase("20240307", "090000", "CT CHEST", (SeriesCase("CHEST WO", "absent"),)),
)


@dataclass(frozen=True)
class WrittenSeries:
    study_instance_uid: str
    series_instance_uid: str
    day: str
    description: str
    expect: str


def write_cases(
    folder: Path, cases: tuple[StudyCase, ...] = CASES
) -> tuple[list[Path], list[WrittenSeries]]:
    """Write every case under ``folder``: the files, and each series with its expectation."""
    files: list[Path] = []
    written: list[WrittenSeries] = []
    for i, study in enumerate(cases):
        study_uid = generate_uid()
        for j, case in enumerate(study.series):
            attrs: dict[str, Any] = {
                "StudyDate": study.day,
                "StudyTime": study.time,
                "SeriesDate": None,
                "StudyDescription": study.description,
                "SeriesDescription": case.description,
                "BodyPartExamined": case.body_part,
                "Modality": case.modality,
                "SeriesNumber": j + 1,
                "ProtocolName": None,
                **study.attrs,
            }
            datasets = ct_series(
                case.slices,
                rows=16,
                columns=16,
                study_uid=study_uid,
                spacing=case.thickness,
                seed=i * 10 + j,
                attrs=attrs,
            )
            files += write_series(datasets, folder / f"study{i:02d}" / f"series{j}")
            written.append(
                WrittenSeries(
                    study_uid,
                    str(datasets[0].SeriesInstanceUID),
                    study.day,
                    case.description,
                    case.expect,
                )
            )
    return files, written
