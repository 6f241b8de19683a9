"""Synthetic CT Image Storage series for tests and benchmarks.

The instances come from :mod:`hyperct_core.ct_series`; this module fixes what the
tests rely on: a 64 x 64 noise image per slice (seeded), a non-contrast chest
series description, and patient "canaries" that tests look for in logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from hyperct_core.ct_series import ct_image_series, write_datasets

CANARY_NAME = "CANARYNAME^ZZTOP"
CANARY_ID = "CANARYID7731"
CANARY_BIRTH = "19010203"

HEADER: dict[str, Any] = {
    "PatientName": CANARY_NAME,
    "PatientID": CANARY_ID,
    "PatientBirthDate": CANARY_BIRTH,
    "AccessionNumber": "ACC0001",
    "SeriesNumber": 2,
    "PatientPosition": "FFS",
    "SeriesDescription": "CHEST NON-CONTRAST",
    "StudyDescription": "CT CHEST WITHOUT CONTRAST",
    "ProtocolName": "CHEST ROUTINE",
    "Manufacturer": "HyperCT test",
}


def ct_series(
    n: int,
    *,
    rows: int = 64,
    columns: int = 64,
    study_uid: str | None = None,
    seed: int = 0,
    spacing: float = 2.5,
    positions: Sequence[float] | None = None,
    attrs: dict[str, Any] | None = None,
) -> list[Dataset]:
    """``n`` slices ``spacing`` mm apart (also the Slice Thickness) in one new series.

    ``positions`` gives each slice's z instead (gaps, duplicates, irregular
    spacing); ``attrs`` sets any further attributes of every slice by keyword after
    the defaults (e.g. ``{"ContrastBolusAgent": "IOPAMIDOL"}``); ``None`` deletes one.
    """
    if positions is not None and len(positions) != n:
        raise ValueError(f"{len(positions)} positions for {n} slices")
    zs = [-float(i) * spacing for i in range(n)] if positions is None else positions
    series_uid = generate_uid()
    noise = [
        np.random.default_rng(seed * 100003 + i).integers(
            0, 2000, size=(rows, columns), dtype=np.int16
        )
        for i in range(n)
    ]
    return ct_image_series(
        noise,
        [[-80.0, -80.0, float(z)] for z in zs],
        pixel_spacing=[0.7, 0.7],
        slice_thickness=spacing,
        rescale=[(1, -1024)],
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid,
        frame_uid=series_uid + ".1" if len(series_uid) < 62 else generate_uid(),
        attrs={**HEADER, **(attrs or {})},
    )


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    return write_datasets(datasets, folder, name="img{index:04d}.dcm")
