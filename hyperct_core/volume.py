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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from pydicom.dataset import Dataset

from hyperct_core.ct_frames import (
    DatasetOrPath,
    Frame,
    FullDataset,
    frames_of,
    instance_label,
    label_of,
    read_source,
)
from hyperct_core.errors import PreprocessError

__all__ = [
    "CANONICAL_ORIENTATION",
    "DUPLICATE_MM",
    "DatasetOrPath",
    "HUVolume",
    "SeriesRead",
    "SeriesTooLarge",
    "check_geometry",
    "describe_orientation",
    "parse_orientation",
    "read_series",
    "reading_bytes",
    "same_images",
    "volume_from_array",
    "volume_from_datasets",
]

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


# Tolerances for header geometry, which scanners write as decimal strings (DS).
_COSINE_TOL = 1e-3  # direction cosines that differ by less are the same orientation
# Slices closer than this along the normal share one position (positions are
# decimal strings with a few decimals, PS3.5 6.2 DS); the agent's completeness
# check uses the same value.
DUPLICATE_MM = 0.01


class SeriesTooLarge(PreprocessError):
    """The series would need more memory than allowed; it was refused before any decoding."""


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


class SeriesRead(NamedTuple):
    """A series read for screening: its volume and the headers read on the way."""

    volume: HUVolume
    #: One per item given, in the same order: the header read from a file
    #: (attributes before Pixel Data only), or the dataset itself.
    headers: list[Dataset]


def volume_from_datasets(
    datasets_or_paths: Iterable[DatasetOrPath],
    orientation: str = CANONICAL_ORIENTATION,
    *,
    spacing_tolerance: float = 0.2,
    max_bytes: int | None = None,
    extra_bytes: int = 0,
) -> HUVolume:
    """Build a HU volume from the images of one CT series (:func:`read_series`)."""
    return read_series(
        datasets_or_paths,
        orientation,
        spacing_tolerance=spacing_tolerance,
        max_bytes=max_bytes,
        extra_bytes=extra_bytes,
    ).volume


def read_series(
    datasets_or_paths: Iterable[DatasetOrPath],
    orientation: str = CANONICAL_ORIENTATION,
    *,
    spacing_tolerance: float = 0.2,
    max_bytes: int | None = None,
    extra_bytes: int = 0,
) -> SeriesRead:
    """Build a HU volume from the images of one CT series; keep the headers read.

    Slices are ordered by ImagePositionPatient projected on the slice normal, the cross
    product of the ImageOrientationPatient row and column cosines (PS3.3 C.7.6.2.1.1);
    InstanceNumber is ignored. Stored values become HU through each slice's own
    RescaleSlope/RescaleIntercept (PS3.3 C.8.2.1, CT Image Module). Enhanced CT
    multi-frame images are read through their functional groups (PS3.3 C.7.6.16).

    Each file is opened twice and parsed once: its header first (up to Pixel Data),
    then, one file at a time, the rest of it for the pixels, which go straight into
    the volume in its final orientation (a deflated file is read whole the second
    time). Memory therefore peaks at the volume plus one instance, which the
    headers tell before anything is decoded; ``max_bytes`` bounds that estimate.
    The headers are returned with the volume, so a caller that needs them (the
    reports cite every image) reads no file again.

    Args:
        datasets_or_paths: pydicom datasets and/or paths of DICOM files, in any order.
        orientation: Orientation code of the result (module docstring).
        spacing_tolerance: Largest relative deviation of a slice gap from the median
            gap; beyond it the series is refused (usually a missing slice).
        max_bytes: Refuse the series (:class:`SeriesTooLarge`) when reading it would
            need more memory than this; ``None`` sets no bound.
        extra_bytes: What the caller needs beside the volume (e.g. preprocessing),
            counted against ``max_bytes`` too.

    Raises:
        PreprocessError: The series cannot become one volume; the message says why.
    """
    parse_orientation(orientation)
    sources = [read_source(item, i) for i, item in enumerate(datasets_or_paths)]
    stack = _stack(sources, spacing_tolerance, max_bytes=max_bytes, extra_bytes=extra_bytes)
    frames, order, first, gap = stack.frames, stack.order, stack.frames[0], stack.gap
    normal, row_cos, col_cos = stack.normal, stack.row_cos, stack.col_cos

    # Acquisition axes: slices ascend along the normal; row index follows the column
    # cosine, column index the row cosine (PS3.3 C.7.6.2.1.1).
    directions = np.stack([normal, col_cos, row_cos])
    spacing = (gap, first.pixel_spacing[0], first.pixel_spacing[1])  # PixelSpacing is row\col
    transpose, flips = _reorientation(directions, orientation)
    acquired_shape = (len(frames), first.rows, first.columns)
    # Allocated in the final orientation and written through a view in acquisition
    # order: reorienting never copies the volume.
    array = np.empty(tuple(acquired_shape[i] for i in transpose), dtype=np.float32)
    acquired = (np.flip(array, axis=flips) if flips else array).transpose(np.argsort(transpose))
    for dst, src in enumerate(order):
        frame = frames[src]
        pixels = frame.pixels()
        if pixels.shape != (first.rows, first.columns):
            raise PreprocessError(
                f"{frame.label}: pixel data has shape {pixels.shape}, header says "
                f"{first.rows}x{first.columns}"
            )
        out = acquired[dst]
        out[...] = pixels
        del pixels
        if frame.slope != 1.0:
            out *= frame.slope
        if frame.intercept != 0.0:
            out += frame.intercept
    new_spacing = tuple(float(spacing[i]) for i in transpose)
    volume = HUVolume(_readonly(array), new_spacing, orientation)  # type: ignore[arg-type]
    return SeriesRead(volume, [header for header, _ in sources])


def reading_bytes(frames: Sequence[Frame], sources: Sequence[tuple[Dataset, Any]]) -> int:
    """Memory that reading a series needs, from its headers alone.

    The float32 volume, plus the largest instance while it is decoded: its file
    as read, its Pixel Data value (inflated when deflated) and the decoded array.
    """
    rows, columns = frames[0].rows, frames[0].columns
    volume = len(frames) * rows * columns * 4
    largest = max(_instance_bytes(ds, full) for ds, full in sources)
    return volume + largest


def _instance_bytes(ds: Dataset, full: Any) -> int:
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    item = max(1, -(-int(ds.get("BitsAllocated", 16) or 16) // 8))
    decoded = rows * columns * frames * samples * item
    on_disk = int(getattr(full, "file_size", 0))
    return on_disk + 2 * decoded


def check_geometry(
    datasets_or_paths: Iterable[DatasetOrPath], *, spacing_tolerance: float = 0.2
) -> None:
    """Run the checks of :func:`volume_from_datasets` that the headers answer.

    Only headers are read: pixels are decoded only where two frames share a
    position (to tell one slice sent twice from two images). The agent asks
    this of an Enhanced CT series when it decides whether the series is
    complete, so a series screening would refuse is judged so before it is queued.

    Raises:
        PreprocessError: The series cannot become one volume; the message says why.
    """
    sources = [read_source(item, i) for i, item in enumerate(datasets_or_paths)]
    # Named by Instance Number, not file name: the same series reads the same
    # wherever its files are kept.
    _stack(sources, spacing_tolerance, instance_label)


@dataclass(frozen=True)
class _Stack:
    frames: list[Frame]  # without repeats
    order: np.ndarray  # indices of ``frames`` ascending along the normal
    normal: np.ndarray
    row_cos: np.ndarray
    col_cos: np.ndarray
    gap: float  # median step between slices, mm


def _stack(
    sources: list[tuple[Dataset, FullDataset]],
    spacing_tolerance: float,
    label: Callable[[Dataset, int], str] | None = None,
    *,
    max_bytes: int | None = None,
    extra_bytes: int = 0,
) -> _Stack:
    """The frames of one series in slice order, refused where they are not one regular stack.

    The memory bound is checked from the headers before any pixel is decoded
    (repeated positions are told apart by their pixels).
    """
    if not sources:
        raise PreprocessError("the series is empty: no datasets or files were given")
    datasets = [header for header, _ in sources]
    series = {str(ds.SeriesInstanceUID) for ds in datasets if "SeriesInstanceUID" in ds}
    if len(series) > 1:
        raise PreprocessError(f"the datasets come from {len(series)} different series")
    name = label or label_of
    frames = [
        frame for i, (ds, full) in enumerate(sources) for frame in frames_of(ds, name(ds, i), full)
    ]
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
    if max_bytes is not None:
        needed = reading_bytes(frames, sources) + extra_bytes
        if needed > max_bytes:
            raise SeriesTooLarge(
                f"reading the series needs about {needed / 2**20:,.0f} MiB "
                f"({len(frames)} images of {first.rows} x {first.columns}), over the "
                f"{max_bytes / 2**20:,.0f} MiB allowed"
            )

    normal = np.cross(row_cos, col_cos)
    frames = _drop_repeats(frames, [float(frame.position @ normal) for frame in frames])
    if len(frames) < 2:
        raise PreprocessError("the series has 1 distinct image; a volume needs at least 2")
    along = np.array([frame.position @ normal for frame in frames])
    order = np.argsort(along, kind="stable")
    gaps = np.diff(along[order])
    gap = float(np.median(gaps))
    if np.abs(gaps - gap).max() > spacing_tolerance * gap:
        raise PreprocessError(
            f"non-uniform slice spacing: gaps range from {gaps.min():.3f} to "
            f"{gaps.max():.3f} mm (median {gap:.3f}); is a slice missing?"
        )
    return _Stack(frames, order, normal, row_cos, col_cos, gap)


def same_images(datasets_or_paths: Sequence[DatasetOrPath]) -> bool:
    """Whether single-frame CT images hold the same picture, in Hounsfield units.

    Two instances at one slice position are one slice sent twice (for example
    resent under a new SOP Instance UID) when this holds; otherwise they are
    two different images and no volume can be built. The agent asks this of
    the files at a shared position, :func:`volume_from_datasets` of its frames.

    Raises:
        PreprocessError: An image cannot be read or decoded.
    """
    sources = [read_source(item, i) for i, item in enumerate(datasets_or_paths)]
    frames = [
        frame
        for i, (ds, full) in enumerate(sources)
        for frame in frames_of(ds, label_of(ds, i), full)
    ]
    return all(_same_image(frames[0], frame) for frame in frames[1:])


# --------------------------------------------------------------------------- internals


def _same_image(a: Frame, b: Frame) -> bool:
    if (a.rows, a.columns) != (b.rows, b.columns):
        return False
    if not np.allclose(a.orientation, b.orientation, atol=_COSINE_TOL):
        return False
    hu_a = a.pixels().astype(np.float64) * a.slope + a.intercept
    hu_b = b.pixels().astype(np.float64) * b.slope + b.intercept
    return bool(np.array_equal(hu_a, hu_b))


def _drop_repeats(frames: list[Frame], along: Sequence[float]) -> list[Frame]:
    """Frames without repeats: at a shared position, one copy of one image is kept.

    Different images at one position cannot be ordered into a volume and are refused.
    """
    order = sorted(range(len(frames)), key=lambda i: along[i])
    drop: set[int] = set()
    kept = order[0]  # the first frame of the current run of shared positions
    for prev, cur in itertools.pairwise(order):
        if along[cur] - along[prev] >= DUPLICATE_MM:
            kept = cur
            continue
        a, b = frames[kept], frames[cur]
        if not _same_image(a, b):
            raise PreprocessError(
                f"duplicate slice position: {a.label} and {b.label} both lie at "
                f"{along[kept]:.3f} mm along the slice normal and hold different images"
            )
        drop.add(cur)
    return [frame for i, frame in enumerate(frames) if i not in drop]


def _check_cosines(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
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
    transpose, flips = _reorientation(directions, orientation)
    result = array.transpose(transpose)
    if flips:
        result = np.flip(result, axis=flips)
    new_spacing = tuple(float(spacing[i]) for i in transpose)
    return result, new_spacing  # type: ignore[return-value]


def _reorientation(
    directions: np.ndarray, orientation: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The axis order and the flipped axes that take ``directions`` to ``orientation``."""
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
    return tuple(transpose), tuple(flips)


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _fmt(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"
