"""A phantom of known geometry, acquired at any axis-aligned orientation.

The phantom is defined in DICOM patient coordinates (LPS, mm) and sampled on an
axis-aligned :class:`Grid`. :func:`make_series` acquires that same grid with any
axis-aligned Image Orientation (Patient), so every acquisition of one grid must give
the same canonical volume, :func:`reference_volume`. The HU pattern is linear in x, y
and z with different even coefficients, so a flip, a permutation or a mis-ordered slice
changes the volume; even values keep stored integers exact for slope 2. It is the
reference of the volume-reading and preprocessing tests; the instances come from
:mod:`hyperct_core.ct_series`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from hyperct_core.ct_series import ct_image_series, enhanced_ct_image

__all__ = ["Grid", "Phantom", "body_phantom", "make_enhanced", "make_series", "reference_volume"]

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
    if np.count_nonzero(v) != 1 or abs(v[axis]) != 1.0:
        raise ValueError(f"axis-aligned cosines only, not {v.tolist()}")
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
    if not np.array_equal(stored, np.round(stored)):
        raise ValueError(f"HU not representable with slope {slope:g}, intercept {intercept:g}")
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(f"stored values outside {np.dtype(dtype).name}")
    return stored.astype(dtype)


# Who the instances say they are: one synthetic patient, one series each.
_HEADER = {
    "PatientName": "SYNTHETIC^PHANTOM",
    "PatientID": "SYN0001",
    "Manufacturer": "HyperCT synthetic",
}


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
    slices, positions, pixel_spacing, gap = _acquire(grid, row, col, phantom or body_phantom())
    stored = [_stored(hu, *rescale[k % len(rescale)], dtype) for k, hu in enumerate(slices)]
    return ct_image_series(
        stored,
        positions,
        pixel_spacing=pixel_spacing,
        slice_thickness=gap,
        orientation=(*row, *col),
        rescale=rescale,
        attrs=_HEADER,
    )


def make_enhanced(
    grid: Grid | None = None,
    *,
    row: Sequence[float] = (1.0, 0.0, 0.0),
    col: Sequence[float] = (0.0, 1.0, 0.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    phantom: Phantom | None = None,
) -> Dataset:
    """One Enhanced CT Image Storage dataset, frames in reverse acquisition order."""
    grid = grid or Grid()
    slices, positions, pixel_spacing, gap = _acquire(grid, row, col, phantom or body_phantom())
    return enhanced_ct_image(
        [_stored(hu, slope, intercept, np.uint16) for hu in slices[::-1]],
        positions[::-1],
        pixel_spacing=pixel_spacing,
        slice_thickness=gap,
        orientation=(*row, *col),
        slope=slope,
        intercept=intercept,
        attrs=_HEADER,
    )
