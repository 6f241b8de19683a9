"""The one builder of synthetic CT series: valid instances, one frame of reference, overrides."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from hyperct_core.ct_series import ct_image_series, enhanced_ct_image, write_datasets
from hyperct_core.grid_phantom import Grid, make_series
from hyperct_core.volume import volume_from_datasets

STORED = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
POSITIONS = [[-10.0, -20.0, 2.0 * k] for k in range(3)]


def series(**kwargs: object) -> list[pydicom.Dataset]:
    return ct_image_series(
        STORED,
        POSITIONS,
        pixel_spacing=[0.5, 0.75],
        slice_thickness=2.0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_slices_share_study_series_and_frame_of_reference_but_not_instances() -> None:
    datasets = series()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({ds[keyword].value for ds in datasets}) == 1, keyword
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3]
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)


def test_stored_values_geometry_and_rescale_read_back_as_hounsfield_units() -> None:
    volume = volume_from_datasets(series(rescale=[(2.0, -1000.0), (1.0, -1024.0)]))
    # Slopes alternate per slice, so each slice scales by its own pair.
    expected = np.stack(
        [STORED[0] * 2.0 - 1000.0, STORED[1] * 1.0 - 1024.0, STORED[2] * 2.0 - 1000.0]
    )
    assert np.array_equal(volume.array, expected.astype(np.float32))
    assert tuple(volume.spacing) == (2.0, 0.5, 0.75)


def test_pixel_representation_follows_the_stored_type() -> None:
    assert series()[0].PixelRepresentation == 1
    unsigned = ct_image_series(
        STORED.astype(np.uint16), POSITIONS, pixel_spacing=[1, 1], slice_thickness=1
    )
    assert unsigned[0].PixelRepresentation == 0
    with pytest.raises(ValueError, match="int16 or uint16"):
        ct_image_series(
            STORED.astype(np.float32), POSITIONS, pixel_spacing=[1, 1], slice_thickness=1
        )


def test_attrs_set_and_delete_after_the_defaults() -> None:
    (ds, *_) = series(attrs={"PatientID": "P7", "ContrastBolusAgent": "IOHEXOL", "KVP": None})
    assert ds.PatientID == "P7" and ds.ContrastBolusAgent == "IOHEXOL"
    assert "KVP" not in ds
    assert ds.PatientPosition == "HFS"  # untouched defaults stay


def test_counts_must_match() -> None:
    with pytest.raises(ValueError, match="2 positions for 3 slices"):
        ct_image_series(STORED, POSITIONS[:2], pixel_spacing=[1, 1], slice_thickness=1)
    with pytest.raises(ValueError, match="2 positions for 3 frames"):
        enhanced_ct_image(STORED, POSITIONS[:2], pixel_spacing=[1, 1], slice_thickness=1)


def test_write_names_files_by_index_or_number(tmp_path: Path) -> None:
    paths = write_datasets(series(), tmp_path / "a")
    assert [p.name for p in paths] == ["CT000001.dcm", "CT000002.dcm", "CT000003.dcm"]
    paths = write_datasets(series(), tmp_path / "b", name="img{index:04d}.dcm")
    assert [p.name for p in paths] == ["img0000.dcm", "img0001.dcm", "img0002.dcm"]
    assert np.array_equal(pydicom.dcmread(paths[1]).pixel_array, STORED[1])


def test_grid_phantom_refuses_what_it_cannot_store_exactly() -> None:
    with pytest.raises(ValueError, match="axis-aligned"):
        make_series(row=(0.6, 0.8, 0.0))
    with pytest.raises(ValueError, match="not representable"):
        make_series(rescale=[(3.0, -1024.0)])


def test_a_built_ct_image_passes_dciodvfy(tmp_path: Path) -> None:
    tool = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
    if not os.path.exists(tool):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dciodvfy (dicom3tools) is not installed")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    (path, *_) = write_datasets(make_series(Grid(size=(8, 8, 3))), tmp_path)
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    report = result.stdout + result.stderr
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
