"""Synthetic CT Image Storage series for tests and benchmarks.

Strict fixtures: every dataset is a complete CT Image IOD instance that
pydicom writes as a valid Part 10 file, with patient "canaries" that tests
look for in logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

CANARY_NAME = "CANARYNAME^ZZTOP"
CANARY_ID = "CANARYID7731"
CANARY_BIRTH = "19010203"


def ct_slice(
    index: int,
    *,
    study_uid: str,
    series_uid: str,
    rows: int = 64,
    columns: int = 64,
    spacing: float = 2.5,
    sop_uid: str | None = None,
    seed: int = 0,
    position: float | None = None,
    attrs: dict[str, Any] | None = None,
) -> Dataset:
    """Slice ``index`` of a series; ``position`` overrides the z of Image Position (Patient).

    ``attrs`` sets any further attributes by keyword after the defaults
    (e.g. ``{"ContrastBolusAgent": "IOPAMIDOL"}``); a value of ``None`` deletes one.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = CANARY_NAME
    ds.PatientID = CANARY_ID
    ds.PatientBirthDate = CANARY_BIRTH
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.SeriesNumber = 2
    ds.PatientPosition = "FFS"
    ds.SeriesDescription = "CHEST NON-CONTRAST"
    ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"
    ds.ProtocolName = "CHEST ROUTINE"
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "HyperCT test"
    ds.FrameOfReferenceUID = series_uid + ".1" if len(series_uid) < 62 else generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = index + 1
    z = -float(index) * spacing if position is None else float(position)
    ds.ImagePositionPatient = [-80.0, -80.0, z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = spacing
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    rng = np.random.default_rng(seed * 100003 + index)
    pixels = rng.integers(0, 2000, size=(rows, columns), dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    for keyword, value in (attrs or {}).items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


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
    spacing); ``attrs`` overrides attributes of every slice (see :func:`ct_slice`).
    """
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    if positions is not None and len(positions) != n:
        raise ValueError(f"{len(positions)} positions for {n} slices")
    return [
        ct_slice(
            i,
            study_uid=study_uid,
            series_uid=series_uid,
            rows=rows,
            columns=columns,
            seed=seed,
            spacing=spacing,
            position=None if positions is None else positions[i],
            attrs=attrs,
        )
        for i in range(n)
    ]


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"img{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
