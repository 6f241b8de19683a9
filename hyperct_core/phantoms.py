"""Synthetic non-contrast chest CT phantoms with controllable findings.

What a phantom shows and how it is labelled: :mod:`hyperct_core.phantom_spec`
(:class:`PhantomSpec`, :func:`labels`, :func:`random_spec`). How it is drawn as a HU
volume: :mod:`hyperct_core.phantom_anatomy` (:func:`make_volume`). This module writes
phantoms out: one as a CT series (:func:`write_dicom_series`, instances built by
:mod:`hyperct_core.ct_series`), many as a labelled dataset
(:func:`write_phantom_dataset`), and re-exports the names above.

Everything is a phantom: it exists to test the pipeline end to end and to train the
project's demo model, never to stand in for clinical data.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hyperct_core.phantom_anatomy import (
    AIR,
    BLOOD,
    BONE_CANCELLOUS,
    BONE_CORTEX,
    CHAMBER_WALL_MM,
    EMPHYSEMA,
    ENHANCED_MYOCARDIUM,
    FAT,
    FLUID,
    LIVER,
    LUNG,
    METAL,
    MUSCLE,
    SOLID,
    make_volume,
)
from hyperct_core.phantom_spec import (
    CARDIOMEGALY_SCALE,
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    EMPHYSEMA_FRACTION,
    ENCODED_TASKS,
    PERICARDIAL_MM,
    PLEURAL_MM,
    Phantom,
    PhantomSpec,
    Side,
    labels,
    random_spec,
    with_findings,
)
from hyperct_core.tasks import TASK_NAMES

__all__ = [
    "AIR",
    "BLOOD",
    "BONE_CANCELLOUS",
    "BONE_CORTEX",
    "CARDIOMEGALY_SCALE",
    "CHAMBER_WALL_MM",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "EMPHYSEMA",
    "EMPHYSEMA_FRACTION",
    "ENCODED_TASKS",
    "ENHANCED_MYOCARDIUM",
    "FAT",
    "FLUID",
    "LIVER",
    "LUNG",
    "METAL",
    "MUSCLE",
    "PERICARDIAL_MM",
    "PLEURAL_MM",
    "SOLID",
    "Phantom",
    "PhantomSpec",
    "Side",
    "labels",
    "make_volume",
    "random_spec",
    "with_findings",
    "write_dicom_series",
    "write_phantom_dataset",
]


def write_dicom_series(
    volume_or_spec: np.ndarray | PhantomSpec,
    folder: str | Path,
    *,
    patient_name: str = "PHANTOM^SYNTHETIC",
    patient_id: str = "PHANTOM0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    description: str = "CHEST W/O CONTRAST",
    spacing: Sequence[float] = DEFAULT_SPACING,
    shape: Sequence[int] = DEFAULT_SHAPE,
    rng: np.random.Generator | None = None,
    accession_number: str = "",
    study_date: _dt.date | None = None,
    series_number: int = 1,
    manufacturer: str = "HyperCT phantom",
    study_description: str = "CT CHEST",
    protocol_name: str | None = None,
    contrast_agent: str | None = None,
) -> list[Path]:
    """Write a HU volume (or a spec, rendered first) as a CT Image Storage series.

    One single-frame image per slice, Explicit VR Little Endian, signed 16-bit stored
    values with RescaleIntercept -1024 (PS3.3 C.8.2.1 CT Image Module), axial
    ImageOrientationPatient [1, 0, 0, 0, 1, 0] and ImagePositionPatient per slice
    (PS3.3 C.7.6.2 Image Plane Module), PatientPosition HFS (required for CT, PS3.3
    C.7.3.1), a Contrast/Bolus Module (C.7.6.4) only when ``contrast_agent`` is given.
    Files are named ``CT000001.dcm``...

    Args:
        volume_or_spec: HU array ``(slices, rows, columns)`` in LPS order, or a spec.
        folder: Created if missing.
        spacing: mm along the array axes (also used to render a spec).
        shape: Array shape to render a spec at (ignored for an array).
        rng: Noise generator used to render a spec.

    Returns:
        The written paths, inferior to superior.
    """
    from hyperct_core.ct_series import ct_image_series, write_datasets

    if isinstance(volume_or_spec, PhantomSpec):
        volume = make_volume(volume_or_spec, shape, spacing, rng)
    else:
        volume = np.asarray(volume_or_spec, dtype=np.float32)
        if volume.ndim != 3:
            raise ValueError(f"volume must be (slices, rows, columns), got {volume.shape}")
    nz, ny, nx = volume.shape
    dz, dy, dx = (float(v) for v in spacing)
    date = (study_date or _dt.date(2026, 1, 1)).strftime("%Y%m%d")
    intercept = -1024.0
    stored = np.clip(np.rint(volume - intercept), -32768, 32767).astype(np.int16)
    # Centred on the origin of patient coordinates, slices inferior to superior.
    x0, y0 = -(nx - 1) / 2.0 * dx, -(ny - 1) / 2.0 * dy
    zs = [round(-(nz - 1) / 2.0 * dz + k * dz, 4) for k in range(nz)]
    header: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 100",
        "PatientName": patient_name,
        "PatientID": patient_id,
        "StudyDate": date,
        "AccessionNumber": accession_number,
        "StudyDescription": study_description,
        "SeriesNumber": series_number,
        "SeriesDescription": description,
        "SeriesDate": date,
        "SeriesTime": "120000",
        "Manufacturer": manufacturer,
        "ProtocolName": protocol_name,
        "ContrastBolusAgent": contrast_agent,  # Contrast/Bolus Module (C.7.6.4)
        "ContentDate": date,
        "ContentTime": "120000",
        "BurnedInAnnotation": "NO",
        "WindowCenter": -600,
        "WindowWidth": 1500,
    }
    datasets = ct_image_series(
        stored,
        [[round(x0, 4), round(y0, 4), z] for z in zs],
        pixel_spacing=[round(dy, 6), round(dx, 6)],  # row spacing \ column spacing
        slice_thickness=round(dz, 6),
        rescale=[(1.0, intercept)],
        study_uid=study_uid,
        series_uid=series_uid,
        attrs=header,
    )
    for ds, z in zip(datasets, zs, strict=True):
        ds.SliceLocation = z
    return write_datasets(datasets, folder)


def write_phantom_dataset(
    folder: str | Path,
    count: int,
    *,
    seed: int = 0,
    fmt: Literal["dicom", "npz"] = "npz",
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    splits: Sequence[tuple[str, float]] = (("train", 0.7), ("val", 0.15), ("test", 0.15)),
    prevalence: float | dict[str, float] = 0.35,
    tasks: Sequence[str] = ENCODED_TASKS,
    progress: Any = None,
) -> Path:
    """Write ``count`` random phantoms and their manifest (``manifest.csv``) into ``folder``.

    One patient per series (``PHANTOM0001``...), assigned to splits in the given
    proportions. ``fmt="dicom"`` writes a CT series folder per phantom (slow, realistic);
    ``"npz"`` writes ``hu`` (int16) and ``spacing`` arrays (fast). Labels of the encoded
    tasks are 1/0, the others blank. The same arguments give the same dataset.

    Returns:
        The manifest path.
    """
    from hyperct_core.dataset import write_manifest

    if count < 1:
        raise ValueError("count must be >= 1")
    fractions = np.array([f for _, f in splits], dtype=float)
    if (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError("split fractions must be >= 0 and not all 0")
    bounds = np.round(np.cumsum(fractions / fractions.sum()) * count).astype(int)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    rows = []
    for i in range(count):
        split = splits[int(np.searchsorted(bounds, i, side="right"))][0]
        spec = random_spec(rng, prevalence=prevalence, tasks=tasks)
        noise = np.random.default_rng([seed, 8, i])
        pid = f"PHANTOM{i + 1:04d}"
        row: dict[str, Any] = {"patient_id": pid, "split": split, "series_id": pid}
        if fmt == "dicom":
            write_dicom_series(
                spec, folder / pid, patient_id=pid, shape=shape, spacing=spacing, rng=noise
            )
            row["path"] = pid
        elif fmt == "npz":
            hu = make_volume(spec, shape, spacing, noise).astype(np.int16)
            np.savez(folder / f"{pid}.npz", hu=hu, spacing=np.asarray(spacing, dtype=float))
            row["path"] = f"{pid}.npz"
        else:
            raise ValueError(f"fmt must be 'dicom' or 'npz', not {fmt!r}")
        lab = labels(spec)
        row.update({t: lab[t] if t in tasks else None for t in TASK_NAMES})
        rows.append(row)
        if progress is not None:
            progress(i + 1)
    return write_manifest(folder / "manifest.csv", rows)
