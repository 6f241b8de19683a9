"""DICOM CT series to a canonical HU volume: ordering, rescale, orientation, refusals."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from hyperct_core.errors import PreprocessError
from hyperct_core.grid_phantom import (
    Grid,
    make_enhanced,
    make_series,
    reference_volume,
)
from hyperct_core.volume import (
    HUVolume,
    check_geometry,
    describe_orientation,
    same_images,
    volume_from_array,
    volume_from_datasets,
)

GRID = Grid()
REFERENCE = reference_volume(GRID)
REFERENCE_SPACING = (GRID.spacing[2], GRID.spacing[1], GRID.spacing[0])

# (row cosine, column cosine) of acquisitions that all sample GRID.
ACQUISITIONS = {
    "axial head-first": ((1, 0, 0), (0, 1, 0)),
    "axial feet-first": ((-1, 0, 0), (0, 1, 0)),
    "axial rows flipped": ((1, 0, 0), (0, -1, 0)),
    "axial transposed": ((0, 1, 0), (1, 0, 0)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
}


def test_phantom_is_asymmetric_so_flips_would_show() -> None:
    # Guards the other tests: a symmetric phantom would hide orientation bugs.
    for axis in range(3):
        assert not np.array_equal(REFERENCE, np.flip(REFERENCE, axis))


@pytest.mark.parametrize("name", list(ACQUISITIONS))
def test_every_acquisition_gives_the_canonical_volume(name: str) -> None:
    row, col = ACQUISITIONS[name]
    series = make_series(GRID, row=row, col=col)
    volume = volume_from_datasets(series)
    assert volume.orientation == "LPS"
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, REFERENCE)
    assert volume.spacing == pytest.approx(REFERENCE_SPACING)


def test_file_order_does_not_matter() -> None:
    series = make_series(GRID)
    shuffled = series[:]
    random.Random(7).shuffle(shuffled)
    assert shuffled != series
    for order in (series[::-1], shuffled):
        np.testing.assert_array_equal(volume_from_datasets(order).array, REFERENCE)


def test_instance_number_is_ignored_for_ordering() -> None:
    series = make_series(GRID)
    numbers = list(range(1, len(series) + 1))
    random.Random(3).shuffle(numbers)
    for ds, number in zip(series, numbers, strict=True):
        ds.InstanceNumber = number
    by_instance = sorted(series, key=lambda ds: ds.InstanceNumber)
    np.testing.assert_array_equal(volume_from_datasets(by_instance).array, REFERENCE)


def test_rescale_is_applied_per_slice() -> None:
    # Signed storage with slope 2 on some slices, unsigned with offset on others.
    mixed = make_series(GRID, rescale=[(2.0, -2048.0), (1.0, -1024.0), (1.0, 0.0)], dtype=np.int16)
    plain = make_series(GRID, rescale=[(1.0, -1024.0)], dtype=np.uint16)
    assert mixed[0].PixelData != plain[0].PixelData  # stored values really differ
    np.testing.assert_array_equal(volume_from_datasets(mixed).array, REFERENCE)
    np.testing.assert_array_equal(volume_from_datasets(plain).array, REFERENCE)


@pytest.mark.parametrize("name", ["axial head-first", "axial feet-first", "sagittal"])
def test_enhanced_ct_multiframe(name: str) -> None:
    row, col = ACQUISITIONS[name]
    volume = volume_from_datasets(
        [make_enhanced(GRID, row=row, col=col, slope=2.0, intercept=-2048)]
    )
    np.testing.assert_array_equal(volume.array, REFERENCE)
    assert volume.spacing == pytest.approx(REFERENCE_SPACING)


def test_reads_files_from_disk(tmp_path: Path) -> None:
    paths = []
    for k, ds in enumerate(make_series(GRID, row=(-1, 0, 0))):
        path = tmp_path / f"{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    mixed_types = [str(p) if k % 2 else p for k, p in enumerate(reversed(paths))]
    volume = volume_from_datasets(mixed_types)
    np.testing.assert_array_equal(volume.array, REFERENCE)

    enhanced = tmp_path / "enhanced.dcm"
    make_enhanced(GRID).save_as(enhanced, enforce_file_format=True)
    np.testing.assert_array_equal(volume_from_datasets([enhanced]).array, REFERENCE)


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not dicom")
    with pytest.raises(PreprocessError, match="cannot read DICOM file notes.txt"):
        volume_from_datasets([junk, junk])
    with pytest.raises(PreprocessError, match="cannot read DICOM file"):
        volume_from_datasets([tmp_path / "missing.dcm"])


def test_a_slice_sent_twice_is_read_once() -> None:
    # A resend under a new SOP Instance UID: the same image at the same position.
    series = make_series(GRID)
    twin = copy.deepcopy(series[3])
    twin.SOPInstanceUID = generate_uid()
    volume = volume_from_datasets([*series, twin])
    np.testing.assert_array_equal(volume.array, REFERENCE)
    assert same_images([series[3], twin]) and not same_images([series[3], series[4]])
    # The same stored values under another rescale are another image.
    twin.RescaleIntercept = float(twin.RescaleIntercept) + 1
    assert not same_images([series[3], twin])


def test_check_geometry_reads_headers_and_refuses_what_the_volume_refuses(
    tmp_path: Path,
) -> None:
    ds = make_enhanced(GRID)
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    check_geometry([path])  # a regular stack: no complaint
    frames = ds.PerFrameFunctionalGroupsSequence
    frames[5].PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, 500.0]
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(PreprocessError, match="non-uniform slice spacing") as refused:
        check_geometry([path])
    with pytest.raises(PreprocessError) as read:
        volume_from_datasets([path])
    assert str(refused.value) == str(read.value)


def test_a_small_oblique_tilt_maps_to_the_nearest_axial_orientation() -> None:
    angle = np.deg2rad(5)
    series = make_series(GRID)
    row = [np.cos(angle), np.sin(angle), 0.0]
    col = [-np.sin(angle), np.cos(angle), 0.0]
    for ds in series:
        ds.ImageOrientationPatient = row + col
    volume = volume_from_datasets(series[::-1])
    np.testing.assert_array_equal(volume.array, REFERENCE)


# ---------------------------------------------------------------- series that are refused


def _series() -> list[Dataset]:
    return make_series(GRID)


def _mixed_orientation() -> list[Dataset]:
    series = _series()
    series[4].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    return series


def _inconsistent_size() -> list[Dataset]:
    series = _series()
    other = make_series(Grid(size=(40, 40, 12)))
    other[5].SeriesInstanceUID = series[0].SeriesInstanceUID
    series[5] = other[5]
    return series


def _inconsistent_spacing() -> list[Dataset]:
    series = _series()
    series[2].PixelSpacing = [0.7, 0.7]
    return series


def _duplicate() -> list[Dataset]:
    """Two different images at one position (not a resent copy)."""
    series = _series()
    twin = copy.deepcopy(series[3])
    twin.SOPInstanceUID = generate_uid()
    twin.PixelData = series[4].PixelData
    return [*series, twin]


def _missing_slice() -> list[Dataset]:
    series = _series()
    del series[6]
    return series


def _two_series() -> list[Dataset]:
    series = _series()
    series[1].SeriesInstanceUID = generate_uid()
    return series


def _deleted(keyword: str, index: int = 2) -> Callable[[], list[Dataset]]:
    def build() -> list[Dataset]:
        series = _series()
        delattr(series[index], keyword)
        return series

    return build


def _modified(keyword: str, value: object, index: int = 2) -> Callable[[], list[Dataset]]:
    def build() -> list[Dataset]:
        series = _series()
        setattr(series[index], keyword, value)
        return series

    return build


def _truncated_pixels() -> list[Dataset]:
    series = _series()
    series[0].PixelData = series[0].PixelData[:100]
    return series


def _enhanced_wrong_frame_count() -> list[Dataset]:
    ds = make_enhanced(GRID)
    ds.NumberOfFrames = 5
    return [ds]


BAD_SERIES: dict[str, tuple[Callable[[], list[Dataset]], str]] = {
    "empty": (lambda: [], "series is empty"),
    "single slice": (lambda: _series()[:1], "at least 2 parallel slices"),
    "mixed orientations": (_mixed_orientation, "mixed orientations: dataset 4"),
    "inconsistent rows/columns": (_inconsistent_size, "inconsistent image size"),
    "inconsistent pixel spacing": (_inconsistent_spacing, "inconsistent PixelSpacing"),
    "duplicate positions": (_duplicate, "duplicate slice position: .* different images"),
    "missing slice": (_missing_slice, "non-uniform slice spacing"),
    "two series": (_two_series, "2 different series"),
    "missing pixel data": (_deleted("PixelData"), "dataset 2 .*has no pixel data"),
    "missing position": (_deleted("ImagePositionPatient"), "lacks ImagePositionPatient"),
    "missing orientation": (_deleted("ImageOrientationPatient"), "lacks ImageOrientationPatient"),
    "missing rescale": (_deleted("RescaleSlope"), "lacks RescaleSlope"),
    "non-CT modality": (_modified("Modality", "MR"), "Modality 'MR'; only CT"),
    "non-CT SOP class": (
        _modified("SOPClassUID", SecondaryCaptureImageStorage),
        "not a CT image storage class",
    ),
    "colour image": (_modified("SamplesPerPixel", 3), "not a greyscale image"),
    "bad orientation cosines": (
        _modified("ImageOrientationPatient", [1, 0, 0, 1, 0, 0], index=0),
        "not two orthogonal unit vectors",
    ),
    "truncated pixel data": (_truncated_pixels, "cannot decode pixel data of dataset 0"),
    "enhanced frame count": (_enhanced_wrong_frame_count, "NumberOfFrames 5 and 12 per-frame"),
    "not a dataset": (lambda: [42, 43], "item 0 of the series is a int"),  # type: ignore[list-item]
}


@pytest.mark.parametrize("case", list(BAD_SERIES))
def test_bad_series_is_refused_with_a_clear_line(case: str) -> None:
    build, message = BAD_SERIES[case]
    with pytest.raises(PreprocessError, match=message) as info:
        volume_from_datasets(build())
    assert "\n" not in str(info.value)


def test_patient_identity_stays_out_of_messages() -> None:
    with pytest.raises(PreprocessError) as info:
        volume_from_datasets(_mixed_orientation())
    assert "SYNTHETIC" not in str(info.value) and "SYN0001" not in str(info.value)


# ------------------------------------------------------------------ research volumes


def test_volume_from_array_and_reorientation_round_trip() -> None:
    volume = volume_from_array(REFERENCE.astype(np.int16), REFERENCE_SPACING)
    np.testing.assert_array_equal(volume.array, REFERENCE)
    assert not volume.array.flags.writeable

    flipped = volume.reoriented("RAI")  # every axis reversed
    np.testing.assert_array_equal(flipped.array, REFERENCE[::-1, ::-1, ::-1])
    transposed = volume.reoriented("PLS")  # in-plane axes swapped
    np.testing.assert_array_equal(transposed.array, REFERENCE.transpose(0, 2, 1))
    assert transposed.spacing == (2.0, 0.5, 1.0)
    np.testing.assert_array_equal(transposed.reoriented("LPS").array, REFERENCE)


@pytest.mark.parametrize(
    ("hu", "spacing", "orientation", "message"),
    [
        (np.zeros((4, 4)), (1, 1, 1), "LPS", "must be 3-D"),
        (np.full((2, 2, 2), np.nan), (1, 1, 1), "LPS", "NaN or infinite"),
        (np.zeros((2, 2, 2)), (1, 0, 1), "LPS", "positive lengths"),
        (np.zeros((2, 2, 2)), (1, 1), "LPS", "positive lengths"),
        (np.zeros((2, 2, 2)), (1, 1, 1), "LSP", "not axial"),
        (np.zeros((2, 2, 2)), (1, 1, 1), "LLS", "names a patient axis twice"),
        (np.zeros((2, 2, 2)), (1, 1, 1), "XYZ", "3-letter code"),
        (np.zeros((2, 2, 2), dtype=bool), (1, 1, 1), "LPS", "real-valued"),
    ],
)
def test_volume_from_array_refuses_bad_input(
    hu: np.ndarray, spacing: tuple[float, ...], orientation: str, message: str
) -> None:
    with pytest.raises(PreprocessError, match=message):
        volume_from_array(hu, spacing, orientation)


def test_orientation_description_names_each_axis() -> None:
    text = describe_orientation("LPS")
    assert "column index increases toward patient left" in text
    assert "row index toward posterior" in text
    assert "slice index toward superior" in text
    assert isinstance(volume_from_array(np.zeros((2, 2, 2)), (1, 1, 1)), HUVolume)
