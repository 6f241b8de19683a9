"""Synthetic CT series as DICOM datasets: the project's one builder of them.

Phantoms (:mod:`hyperct_core.phantoms`, :mod:`hyperct_core.grid_phantom`) and the
test fixtures hand over stored pixel values and geometry; this module makes the
instances. :func:`ct_image_series` gives one CT Image Storage instance per slice
(PS3.3 A.3), :func:`enhanced_ct_image` one Enhanced CT Image Storage instance
(PS3.3 A.38), :func:`write_datasets` writes either as Part 10 files (PS3.10 7.1).

Each instance carries the attributes every builder needs: Patient (C.7.1.1),
General Study (C.7.2.1), General Series (C.7.3.1), Frame of Reference (C.7.4.1),
General Equipment (C.7.5.1), Image Pixel (C.7.6.3), the plane geometry of the
Image Plane Module (C.7.6.2) and the rescale of the CT Image Module (C.8.2.1).
``attrs`` then sets or deletes (``None``) further attributes by keyword, so each
caller states only what differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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

__all__ = ["AXIAL", "ct_image_series", "enhanced_ct_image", "write_datasets"]

#: ImageOrientationPatient of an axial slice: rows along +x, columns along +y (LPS).
AXIAL: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _instance(
    sop_class: str, *, study_uid: str, series_uid: str, frame_uid: str, stored: np.ndarray
) -> Dataset:
    """The attributes shared by every instance, pixel description included."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    # Patient (C.7.1.1) and General Study (C.7.2.1)
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = "PHANTOM0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    # General Series (C.7.3.1): Patient Position is required for CT; with the body part
    # named, Laterality (2C, paired parts only) may be absent.
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    # Frame of Reference (C.7.4.1) and General Equipment (C.7.5.1)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "HyperCT phantom"
    # Image Pixel (C.7.6.3): 16-bit greyscale, signed or not as the stored array.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(v) for v in stored.shape[-2:])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(stored.dtype.kind == "i")
    ds.KVP = 120
    return ds


def _apply(ds: Dataset, attrs: Mapping[str, Any] | None) -> None:
    for keyword, value in (attrs or {}).items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)


def _pixels(stored: np.ndarray) -> np.ndarray:
    stored = np.asarray(stored)
    if stored.dtype not in (np.int16, np.uint16):
        raise ValueError(f"stored values must be int16 or uint16, not {stored.dtype}")
    return stored


def ct_image_series(
    stored: Sequence[np.ndarray] | np.ndarray,
    positions: Sequence[Sequence[float]],
    *,
    pixel_spacing: Sequence[float],
    slice_thickness: float,
    orientation: Sequence[float] = AXIAL,
    rescale: Sequence[tuple[float, float]] = ((1.0, -1024.0),),
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_uid: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> list[Dataset]:
    """One CT Image Storage instance per slice, in the order given.

    Args:
        stored: Stored pixel values of each slice, ``(rows, columns)``, int16 or uint16
            (Pixel Representation follows).
        positions: Image Position (Patient) of each slice (C.7.6.2.1.1).
        pixel_spacing: Row spacing then column spacing, mm (Pixel Spacing, C.7.6.2).
        slice_thickness: Slice Thickness, mm.
        orientation: Image Orientation (Patient), row then column cosines.
        rescale: (slope, intercept) pairs used cyclically along the slices, so one
            series can mix them (Rescale Slope/Intercept, C.8.2.1; type HU).
        study_uid, series_uid, frame_uid: New UIDs where not given; the one
            Frame of Reference is shared by every slice.
        attrs: Further attributes of every slice by keyword; ``None`` deletes one.
    """
    if len(stored) != len(positions):
        raise ValueError(f"{len(positions)} positions for {len(stored)} slices")
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    out = []
    for k, (pixels, position) in enumerate(zip(stored, positions, strict=True)):
        pixels = _pixels(pixels)
        slope, intercept = rescale[k % len(rescale)]
        ds = _instance(
            CTImageStorage,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_uid=frame_uid,
            stored=pixels,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = slice_thickness
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "HU"
        ds.AcquisitionNumber = 1  # Type 2 in the CT Image Module
        ds.PixelData = pixels.tobytes()
        _apply(ds, attrs)
        out.append(ds)
    return out


def enhanced_ct_image(
    frames: Sequence[np.ndarray] | np.ndarray,
    positions: Sequence[Sequence[float]],
    *,
    pixel_spacing: Sequence[float],
    slice_thickness: float,
    orientation: Sequence[float] = AXIAL,
    slope: float = 1.0,
    intercept: float = -1024.0,
    attrs: Mapping[str, Any] | None = None,
) -> Dataset:
    """One Enhanced CT Image Storage instance holding ``frames`` in the order given.

    Orientation, pixel measures and rescale sit in the Shared Functional Groups,
    each frame's position in the Per-frame Functional Groups (C.7.6.16). It holds what
    reading the volume needs, not every Type 1 attribute of the IOD (the Enhanced
    General Equipment Module and the Frame Anatomy macro, for instance, are absent).
    """
    if len(frames) != len(positions):
        raise ValueError(f"{len(positions)} positions for {len(frames)} frames")
    stack = np.stack([_pixels(f) for f in frames])
    ds = _instance(
        EnhancedCTImageStorage,
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        frame_uid=generate_uid(),
        stored=stack,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(stack)

    measures, plane, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = list(pixel_spacing)
    measures.SliceThickness = slice_thickness
    plane.ImageOrientationPatient = [float(v) for v in orientation]
    transform.RescaleSlope = slope
    transform.RescaleIntercept = intercept
    transform.RescaleType = "HU"
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([plane])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    groups = []
    for ipp in positions:
        position = Dataset()
        position.ImagePositionPatient = list(ipp)
        group = Dataset()
        group.PlanePositionSequence = DicomSequence([position])
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(groups)
    ds.PixelData = stack.tobytes()
    _apply(ds, attrs)
    return ds


def write_datasets(
    datasets: Sequence[Dataset], folder: str | Path, *, name: str = "CT{number:06d}.dcm"
) -> list[Path]:
    """Write each dataset as a Part 10 file into ``folder`` (created if missing).

    ``name`` is formatted with ``index`` (from 0) and ``number`` (from 1).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / name.format(index=i, number=i + 1)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
