"""Synthetic CT series with known geometry, for the preprocessing tests.

A phantom is defined in DICOM patient coordinates (LPS, mm) and sampled on an
axis-aligned grid. ``make_series`` acquires that same grid with any axis-aligned
ImageOrientationPatient, so every acquisition of one grid must give the same canonical
volume, ``reference_volume(grid)``. The HU pattern is linear in x, y and z with
different even coefficients, so a flip, a permutation or a mis-ordered slice changes
the volume; even values keep stored integers exact for slope 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

AIR = -1000.0
Phantom = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Grid:
    """Axis-aligned sample points: ``start[a] + spacing[a] * arange(size[a])`` per LPS axis."""

    start: tuple[float, float, float] = (-12.0, -20.0, -10.0)
    spacing: tuple[float, float, float] = (0.5, 1.0, 2.0)  # x, y, z (mm): all different
    size: tuple[int, int, int] = (48, 40, 12)  # x, y, z

    def coords(self, axis: int) -> np.ndarray:
        return self.start[axis] + self.spacing[axis] * np.arange(self.size[axis])


def body_phantom(
    z_range: tuple[float, float] = (-np.inf, np.inf),
) -> Phantom:
    """Elliptic body, HU = -500 + 4x + 2y + 6z inside, air outside and beyond ``z_range``."""

    def hu(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        inside = ((x / 10.0) ** 2 + (y / 16.0) ** 2 <= 1.0) & (z >= z_range[0]) & (z <= z_range[1])
        return np.where(inside, -500.0 + 4.0 * x + 2.0 * y + 6.0 * z, AIR)

    return hu


def reference_volume(grid: Grid, phantom: Phantom | None = None) -> np.ndarray:
    """The phantom on ``grid`` in canonical LPS array order (z, y, x), float32."""
    phantom = phantom or body_phantom()
    z, y, x = np.meshgrid(grid.coords(2), grid.coords(1), grid.coords(0), indexing="ij")
    return phantom(x, y, z).astype(np.float32)


def _unit_axis(vector: Sequence[float] | np.ndarray) -> tuple[int, int]:
    v = np.asarray(vector, dtype=float)
    axis = int(np.argmax(np.abs(v)))
    assert np.count_nonzero(v) == 1 and abs(v[axis]) == 1.0, "axis-aligned cosines only"
    return axis, int(np.sign(v[axis]))


def _acquire(
    grid: Grid, row: Sequence[float], col: Sequence[float], phantom: Phantom
) -> tuple[list[np.ndarray], list[list[float]], tuple[float, float], float]:
    """HU slices (ascending along the normal), their IPPs, PixelSpacing, slice gap."""
    normal = np.cross(row, col)
    (ra, rs), (ca, cs), (na, ns) = _unit_axis(row), _unit_axis(col), _unit_axis(normal)
    along = {a: grid.coords(a)[::s] for a, s in ((ra, rs), (ca, cs), (na, ns))}
    slices, positions = [], []
    for value in along[na]:
        point: list[np.ndarray] = [np.empty(0)] * 3
        point[na] = np.full((grid.size[ca], grid.size[ra]), value)
        point[ca], point[ra] = np.meshgrid(along[ca], along[ra], indexing="ij")
        slices.append(phantom(point[0], point[1], point[2]))
        ipp = [0.0, 0.0, 0.0]
        ipp[na], ipp[ca], ipp[ra] = float(value), float(along[ca][0]), float(along[ra][0])
        positions.append(ipp)
    return slices, positions, (grid.spacing[ca], grid.spacing[ra]), grid.spacing[na]


def _stored(hu: np.ndarray, slope: float, intercept: float, dtype: type) -> np.ndarray:
    stored = (hu - intercept) / slope
    assert np.array_equal(stored, np.round(stored)), "HU not representable with this rescale"
    info = np.iinfo(dtype)
    assert stored.min() >= info.min and stored.max() <= info.max
    return stored.astype(dtype)


def _base(sop_class: str, series_uid: str, study_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = "SYN0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Modality = "CT"
    ds.Manufacturer = "HyperCT synthetic"
    ds.PositionReferenceIndicator = ""
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def make_series(
    grid: Grid | None = None,
    *,
    row: Sequence[float] = (1.0, 0.0, 0.0),
    col: Sequence[float] = (0.0, 1.0, 0.0),
    rescale: Sequence[tuple[float, float]] = ((1.0, -1024.0),),
    dtype: type = np.uint16,
    phantom: Phantom | None = None,
) -> list[Dataset]:
    """One CT Image Storage dataset per slice, in acquisition order (ascending normal).

    ``row``/``col`` are the ImageOrientationPatient cosines; ``rescale`` gives
    (slope, intercept) pairs used cyclically, so one series can mix them per slice.
    """
    grid = grid or Grid()
    phantom = phantom or body_phantom()
    slices, positions, pixel_spacing, gap = _acquire(grid, row, col, phantom)
    series_uid, study_uid = generate_uid(), generate_uid()
    out = []
    for k, (hu, ipp) in enumerate(zip(slices, positions, strict=True)):
        slope, intercept = rescale[k % len(rescale)]
        ds = _base(CTImageStorage, series_uid, study_uid)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = ipp
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = gap
        ds.Rows, ds.Columns = hu.shape
        ds.PixelRepresentation = int(np.dtype(dtype).kind == "i")
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "HU"
        ds.PixelData = _stored(hu, slope, intercept, dtype).tobytes()
        out.append(ds)
    return out


def make_enhanced(
    grid: Grid | None = None,
    *,
    row: Sequence[float] = (1.0, 0.0, 0.0),
    col: Sequence[float] = (0.0, 1.0, 0.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    phantom: Phantom | None = None,
) -> Dataset:
    """One Enhanced CT Image Storage dataset, frames in reverse acquisition order.

    Orientation, pixel measures and rescale sit in the shared functional groups;
    positions in the per-frame groups (PS3.3 C.7.6.16).
    """
    grid = grid or Grid()
    slices, positions, pixel_spacing, gap = _acquire(grid, row, col, phantom or body_phantom())
    slices, positions = slices[::-1], positions[::-1]
    ds = _base(EnhancedCTImageStorage, generate_uid(), generate_uid())
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(slices)
    ds.Rows, ds.Columns = slices[0].shape
    ds.PixelRepresentation = 0

    measures, plane, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = list(pixel_spacing)
    measures.SliceThickness = gap
    plane.ImageOrientationPatient = [float(v) for v in (*row, *col)]
    transform.RescaleSlope = slope
    transform.RescaleIntercept = intercept
    transform.RescaleType = "HU"
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([plane])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    frames = []
    for ipp in positions:
        position = Dataset()
        position.ImagePositionPatient = ipp
        group = Dataset()
        group.PlanePositionSequence = DicomSequence([position])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    stored = [_stored(hu, slope, intercept, np.uint16) for hu in slices]
    ds.PixelData = np.stack(stored).tobytes()
    return ds
