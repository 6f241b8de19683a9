"""Hounsfield-unit volumes from DICOM CT series, in a fixed patient orientation.

Orientation codes
-----------------
A volume's ``array`` has shape ``(slices, rows, columns)`` (NumPy order z, y, x). Its
orientation is a three-letter code naming the patient direction toward which the index of
each array axis *increases*, listed from the last array axis to the first, i.e. in x, y, z
order (the ITK/SimpleITK convention for arrays from ``GetArrayFromImage``). Letters refer
to the DICOM patient coordinate system (PS3.3 C.7.6.2.1.1): L(eft)/R(ight),
P(osterior)/A(nterior), S(uperior)/I(nferior).

The canonical orientation ``"LPS"`` therefore means: columns run from the patient's right
to the patient's left, rows run from anterior to posterior, slices run from inferior
(feet) to superior (head). Each axial slice is in the radiological display convention
(patient's left on the image right, anterior at the top).

Reorientation only permutes and flips axes; it never resamples. Oblique or gantry-tilted
series are mapped to the nearest axis-aligned orientation (the shear is ignored, as the
fixed-size resize that follows ignores spacing anyway).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from hyperct_core.decoders import register as _register_decoders
from hyperct_core.errors import PreprocessError

# 12-bit JPEG Extended (lossy CT) decodes through hyperct_core.decoders' plugin.
_register_decoders()

CANONICAL_ORIENTATION = "LPS"

# Letter -> (patient axis, sign) in DICOM LPS patient coordinates.
_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_NAMES = {
    "L": "left",
    "R": "right",
    "P": "posterior",
    "A": "anterior",
    "S": "superior",
    "I": "inferior",
}

# PS3.4 B.5: CT Image, Enhanced CT Image, Legacy Converted Enhanced CT Image Storage.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
_CT_SOP_CLASSES = frozenset(
    {CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE}
)

DatasetOrPath = Dataset | str | os.PathLike[str]

# Tolerances for header geometry, which scanners write as decimal strings (DS).
_COSINE_TOL = 1e-3  # direction cosines that differ by less are the same orientation
_DUPLICATE_MM = 0.01  # slices closer than this along the normal are duplicates


def parse_orientation(code: str) -> tuple[tuple[int, int], ...]:
    """Return ``(patient_axis, sign)`` for array axes 0, 1, 2 of orientation ``code``.

    Only axial codes (slices along S or I) are accepted: the model reads axial slices.
    """
    if not isinstance(code, str) or len(code) != 3 or any(c not in _LETTERS for c in code):
        raise PreprocessError(
            f"orientation {code!r} is not a 3-letter code of L/R, P/A, S/I (e.g. 'LPS')"
        )
    axes = [_LETTERS[c] for c in reversed(code)]
    if len({axis for axis, _ in axes}) != 3:
        raise PreprocessError(f"orientation {code!r} names a patient axis twice")
    if axes[0][0] != 2:
        raise PreprocessError(
            f"orientation {code!r} is not axial: its last letter (the slice axis) must be S or I"
        )
    return tuple(axes)


def describe_orientation(code: str) -> str:
    """One line saying what each array axis of ``code`` means, for model cards."""
    parse_orientation(code)
    cols, rows, slices = (_NAMES[c] for c in code)
    return (
        f"array (slices, rows, columns); column index increases toward patient {cols}, "
        f"row index toward {rows}, slice index toward {slices} (DICOM patient coordinates)"
    )


@dataclass(frozen=True, eq=False)
class HUVolume:
    """A CT volume in Hounsfield units.

    Attributes:
        array: float32, shape ``(slices, rows, columns)``, read-only.
        spacing: Voxel size in mm along the same three axes.
        orientation: Orientation code (module docstring), ``"LPS"`` unless reoriented.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    orientation: str = CANONICAL_ORIENTATION

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or self.array.dtype != np.float32:
            raise PreprocessError(
                f"HUVolume needs a 3-D float32 array, got {self.array.ndim}-D {self.array.dtype}"
            )
        if min(self.array.shape) < 1:
            raise PreprocessError(f"HUVolume array is empty: shape {self.array.shape}")
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise PreprocessError(f"spacing must be 3 positive lengths in mm, got {self.spacing}")
        parse_orientation(self.orientation)

    @property
    def shape(self) -> tuple[int, int, int]:
        slices, rows, columns = self.array.shape
        return slices, rows, columns

    def reoriented(self, orientation: str) -> HUVolume:
        """The same voxels with axes permuted/flipped into ``orientation`` (no resampling)."""
        if orientation == self.orientation:
            return self
        source = parse_orientation(self.orientation)
        directions = np.zeros((3, 3))
        for array_axis, (patient_axis, sign) in enumerate(source):
            directions[array_axis, patient_axis] = sign
        array, spacing = _reorient(self.array, self.spacing, directions, orientation)
        return HUVolume(_readonly(array), spacing, orientation)


def volume_from_array(
    hu: np.ndarray,
    spacing: Sequence[float],
    orientation: str = CANONICAL_ORIENTATION,
) -> HUVolume:
    """Wrap a research volume already in HU.

    Args:
        hu: 3-D array ``(slices, rows, columns)`` in Hounsfield units.
        spacing: Voxel size in mm for the same axes.
        orientation: The code the array is already in (module docstring); it is
            recorded, not checked, since a bare array carries no patient geometry.
    """
    array = np.asarray(hu)
    if array.ndim != 3:
        raise PreprocessError(f"a HU volume must be 3-D (slices, rows, columns), got {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)):
        raise PreprocessError(f"a HU volume must be real-valued, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise PreprocessError("the HU volume contains NaN or infinite values")
    spacing_mm = tuple(float(s) for s in spacing)
    return HUVolume(_readonly(array), spacing_mm, orientation)  # type: ignore[arg-type]


def volume_from_datasets(
    datasets_or_paths: Iterable[DatasetOrPath],
    orientation: str = CANONICAL_ORIENTATION,
    *,
    spacing_tolerance: float = 0.2,
) -> HUVolume:
    """Build a HU volume from the images of one CT series.

    Slices are ordered by ImagePositionPatient projected on the slice normal, the cross
    product of the ImageOrientationPatient row and column cosines (PS3.3 C.7.6.2.1.1);
    InstanceNumber is ignored. Stored values become HU through each slice's own
    RescaleSlope/RescaleIntercept (PS3.3 C.8.2.1, CT Image Module). Enhanced CT
    multi-frame images are read through their functional groups (PS3.3 C.7.6.16).

    Args:
        datasets_or_paths: pydicom datasets and/or paths of DICOM files, in any order.
        orientation: Orientation code of the result (module docstring).
        spacing_tolerance: Largest relative deviation of a slice gap from the median
            gap; beyond it the series is refused (usually a missing slice).

    Raises:
        PreprocessError: The series cannot become one volume; the message says why.
    """
    parse_orientation(orientation)
    datasets = [_load(item, i) for i, item in enumerate(datasets_or_paths)]
    if not datasets:
        raise PreprocessError("the series is empty: no datasets or files were given")
    series = {str(ds.SeriesInstanceUID) for ds in datasets if "SeriesInstanceUID" in ds}
    if len(series) > 1:
        raise PreprocessError(f"the datasets come from {len(series)} different series")
    frames = [frame for i, ds in enumerate(datasets) for frame in _frames(ds, _label(ds, i))]
    if len(frames) < 2:
        raise PreprocessError(
            f"the series has {len(frames)} image; a volume needs at least 2 parallel slices"
        )
    first = frames[0]
    row_cos, col_cos = _check_cosines(first)
    for frame in frames[1:]:
        if not np.allclose(frame.orientation, first.orientation, atol=_COSINE_TOL):
            raise PreprocessError(
                f"mixed orientations: {frame.label} has ImageOrientationPatient "
                f"{_fmt(frame.orientation)} but {first.label} has {_fmt(first.orientation)} "
                "(a localizer or a second reconstruction in the series?)"
            )
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise PreprocessError(
                f"inconsistent image size: {frame.label} is {frame.rows}x{frame.columns}, "
                f"{first.label} is {first.rows}x{first.columns}"
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-3):
            raise PreprocessError(
                f"inconsistent PixelSpacing: {frame.label} has {_fmt(frame.pixel_spacing)}, "
                f"{first.label} has {_fmt(first.pixel_spacing)}"
            )

    normal = np.cross(row_cos, col_cos)
    along = np.array([frame.position @ normal for frame in frames])
    order = np.argsort(along, kind="stable")
    gaps = np.diff(along[order])
    if gaps.min() < _DUPLICATE_MM:
        k = int(gaps.argmin())
        a, b = frames[order[k]], frames[order[k + 1]]
        raise PreprocessError(
            f"duplicate slice position: {a.label} and {b.label} both lie at "
            f"{along[order[k]]:.3f} mm along the slice normal"
        )
    gap = float(np.median(gaps))
    if np.abs(gaps - gap).max() > spacing_tolerance * gap:
        raise PreprocessError(
            f"non-uniform slice spacing: gaps range from {gaps.min():.3f} to "
            f"{gaps.max():.3f} mm (median {gap:.3f}); is a slice missing?"
        )

    array = np.empty((len(frames), first.rows, first.columns), dtype=np.float32)
    for dst, src in enumerate(order):
        frame = frames[src]
        pixels = frame.pixels()
        if pixels.shape != (first.rows, first.columns):
            raise PreprocessError(
                f"{frame.label}: pixel data has shape {pixels.shape}, header says "
                f"{first.rows}x{first.columns}"
            )
        out = array[dst]
        out[...] = pixels
        if frame.slope != 1.0:
            out *= frame.slope
        if frame.intercept != 0.0:
            out += frame.intercept

    # Acquisition axes: slices ascend along the normal; row index follows the column
    # cosine, column index the row cosine (PS3.3 C.7.6.2.1.1).
    directions = np.stack([normal, col_cos, row_cos])
    spacing = (gap, first.pixel_spacing[0], first.pixel_spacing[1])  # PixelSpacing is row\col
    array, spacing = _reorient(array, spacing, directions, orientation)
    return HUVolume(_readonly(np.ascontiguousarray(array)), spacing, orientation)


# --------------------------------------------------------------------------- internals


@dataclass(frozen=True)
class _Frame:
    """One 2-D image of the series with the header facts the volume needs."""

    label: str
    position: np.ndarray  # ImagePositionPatient, mm
    orientation: np.ndarray  # ImageOrientationPatient, 6 cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    rows: int
    columns: int
    slope: float
    intercept: float
    pixels: Callable[[], np.ndarray]  # stored values, shape (rows, columns)


def _load(item: DatasetOrPath, index: int) -> Dataset:
    if isinstance(item, Dataset):
        return item
    if isinstance(item, str | os.PathLike):
        try:
            return pydicom.dcmread(item)
        except (OSError, InvalidDicomError) as exc:
            raise PreprocessError(
                f"cannot read DICOM file {Path(item).name}: {_first_line(exc)}"
            ) from None
    raise PreprocessError(
        f"item {index} of the series is a {type(item).__name__}, not a pydicom Dataset or a path"
    )


def _label(ds: Dataset, index: int) -> str:
    filename = getattr(ds, "filename", None)
    if isinstance(filename, str | os.PathLike) and filename:
        return f"file {Path(filename).name}"
    instance = ds.get("InstanceNumber")
    return f"dataset {index}" + (f" (InstanceNumber {instance})" if instance is not None else "")


def _frames(ds: Dataset, label: str) -> list[_Frame]:
    modality = ds.get("Modality")
    if modality != "CT":
        raise PreprocessError(f"{label} has Modality {modality!r}; only CT series can be screened")
    sop_class = ds.get("SOPClassUID")
    if sop_class is not None and str(sop_class) not in _CT_SOP_CLASSES:
        raise PreprocessError(
            f"{label} is SOP class {sop_class} ({getattr(sop_class, 'name', '?')}), "
            "not a CT image storage class"
        )
    if "PixelData" not in ds:
        raise PreprocessError(f"{label} has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise PreprocessError(f"{label} is not a greyscale image (SamplesPerPixel != 1)")
    rows, columns = _required(ds, "Rows", label), _required(ds, "Columns", label)
    if "PerFrameFunctionalGroupsSequence" in ds or str(sop_class) in (
        ENHANCED_CT_IMAGE_STORAGE,
        LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
    ):
        return _enhanced_frames(ds, label, int(rows), int(columns))
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise PreprocessError(f"{label} is multi-frame but has no per-frame functional groups")
    return [
        _Frame(
            label=label,
            position=_vector(_required(ds, "ImagePositionPatient", label), 3, label),
            orientation=_vector(_required(ds, "ImageOrientationPatient", label), 6, label),
            pixel_spacing=_spacing(_required(ds, "PixelSpacing", label), label),
            rows=int(rows),
            columns=int(columns),
            slope=float(_required(ds, "RescaleSlope", label)),
            intercept=float(_required(ds, "RescaleIntercept", label)),
            pixels=lambda: _decode(ds, label),
        )
    ]


def _enhanced_frames(ds: Dataset, label: str, rows: int, columns: int) -> list[_Frame]:
    """Frames of an Enhanced CT image (PS3.3 A.38, functional groups C.7.6.16)."""
    count = int(ds.get("NumberOfFrames", 0) or 0)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if count < 1 or per_frame is None or len(per_frame) != count:
        raise PreprocessError(
            f"{label}: multi-frame image with NumberOfFrames {count} and "
            f"{0 if per_frame is None else len(per_frame)} per-frame functional groups"
        )
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else Dataset()
    cache: list[np.ndarray] = []

    def frame_pixels(k: int) -> np.ndarray:
        if not cache:
            decoded = _decode(ds, label)
            cache.append(decoded.reshape(count, rows, columns) if decoded.ndim == 2 else decoded)
        return cache[0][k]

    def attr(groups: Dataset, sequence: str, keyword: str, where: str) -> Any:
        # A functional group sits either in the frame's item or in the shared item.
        for item in (groups, shared):
            seq = item.get(sequence)
            if seq and keyword in seq[0]:
                return seq[0][keyword].value
        raise PreprocessError(f"{where} lacks {keyword} (in {sequence})")

    frames = []
    for k, groups in enumerate(per_frame):
        where = f"{label} frame {k + 1}"
        frames.append(
            _Frame(
                label=where,
                position=_vector(
                    attr(groups, "PlanePositionSequence", "ImagePositionPatient", where), 3, where
                ),
                orientation=_vector(
                    attr(groups, "PlaneOrientationSequence", "ImageOrientationPatient", where),
                    6,
                    where,
                ),
                pixel_spacing=_spacing(
                    attr(groups, "PixelMeasuresSequence", "PixelSpacing", where), where
                ),
                rows=rows,
                columns=columns,
                slope=float(
                    attr(groups, "PixelValueTransformationSequence", "RescaleSlope", where)
                ),
                intercept=float(
                    attr(groups, "PixelValueTransformationSequence", "RescaleIntercept", where)
                ),
                pixels=lambda k=k: frame_pixels(k),  # type: ignore[misc]
            )
        )
    return frames


def _required(ds: Dataset, keyword: str, label: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        raise PreprocessError(f"{label} lacks {keyword}")
    return value


def _vector(value: object, length: int, label: str) -> np.ndarray:
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        vector = np.empty(0)
    if vector.shape != (length,) or not np.isfinite(vector).all():
        raise PreprocessError(f"{label}: expected {length} numbers, got {value!r}")
    return vector


def _spacing(value: object, label: str) -> tuple[float, float]:
    row, col = _vector(value, 2, f"{label} PixelSpacing")
    if row <= 0 or col <= 0:
        raise PreprocessError(f"{label}: PixelSpacing must be positive, got {value!r}")
    return float(row), float(col)


def _decode(ds: Dataset, label: str) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad or undecodable data
        # pydicom lists each plugin's refusal on a line of its own: keep them, on one line.
        why = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise PreprocessError(
            f"cannot decode pixel data of {label}: {why or _first_line(exc)}"
        ) from None


def _check_cosines(frame: _Frame) -> tuple[np.ndarray, np.ndarray]:
    row_cos, col_cos = frame.orientation[:3], frame.orientation[3:]
    norms = np.linalg.norm(row_cos), np.linalg.norm(col_cos)
    if abs(norms[0] - 1) > 1e-2 or abs(norms[1] - 1) > 1e-2 or abs(row_cos @ col_cos) > 1e-2:
        raise PreprocessError(
            f"{frame.label}: ImageOrientationPatient {_fmt(frame.orientation)} is not two "
            "orthogonal unit vectors"
        )
    return row_cos / norms[0], col_cos / norms[1]


def _reorient(
    array: np.ndarray,
    spacing: Sequence[float],
    directions: np.ndarray,
    orientation: str,
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Permute/flip ``array`` (axis i points along ``directions[i]`` in LPS) to ``orientation``.

    Returns a view; each array axis is matched to the patient axis that maximises the
    total alignment, so a 45-degree oblique still gets one axis per patient direction.
    """
    alignment = np.abs(directions)
    best = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(alignment[i, perm[i]] for i in range(3)),
    )
    patient_to_array = {patient: i for i, patient in enumerate(best)}
    transpose, flips = [], []
    for target_axis, (patient, sign) in enumerate(parse_orientation(orientation)):
        source_axis = patient_to_array[patient]
        transpose.append(source_axis)
        if np.sign(directions[source_axis, patient]) != sign:
            flips.append(target_axis)
    result = array.transpose(transpose)
    if flips:
        result = np.flip(result, axis=tuple(flips))
    new_spacing = tuple(float(spacing[i]) for i in transpose)
    return result, new_spacing  # type: ignore[return-value]


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _fmt(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
