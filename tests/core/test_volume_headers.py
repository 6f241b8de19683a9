"""A series read once: the headers read for the volume come back with it.

Each file's header is parsed once; its pixels are read from where the header
stopped, so the caller (the reports) needs no file again.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from hyperct_core.errors import PreprocessError
from hyperct_core.grid_phantom import Grid, make_enhanced, make_series, reference_volume
from hyperct_core.volume import read_series, volume_from_datasets

GRID = Grid()
REFERENCE = reference_volume(GRID)


def write(datasets: list[Dataset], folder: Path, syntax: str | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(datasets):
        if syntax == RLELossless:
            ds.compress(RLELossless)
        elif syntax is not None:
            ds.file_meta.TransferSyntaxUID = UID(syntax)
        ds.DataSetTrailingPadding = b"\x00\x00"  # an element after Pixel Data is kept out
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    "syntax", [None, ImplicitVRLittleEndian, RLELossless, DeflatedExplicitVRLittleEndian]
)
def test_headers_come_back_in_order_without_pixels(
    syntax: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write(make_series(GRID), tmp_path, syntax)
    parsed: Counter[str] = Counter()
    real = pydicom.dcmread

    def counted(fp: Any, *args: Any, **kwargs: Any) -> Any:
        parsed[os.path.realpath(fp if isinstance(fp, str | os.PathLike) else fp.name)] += 1
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counted)
    given = paths[::-1]
    volume, headers = read_series(given)
    monkeypatch.undo()

    np.testing.assert_array_equal(volume.array, REFERENCE)
    assert [h.filename for h in headers] == [str(p) for p in given]
    assert all("PixelData" not in h for h in headers)
    assert [h.SOPInstanceUID for h in headers] == [
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in given
    ]
    # One dcmread each: the header, whose Pixel Data is read where the header stopped;
    # a deflated file's header is inflated only that far (PS3.5 A.5), and its pixels
    # are read by the one dcmread, since a deflate stream cannot be entered midway.
    assert {os.path.realpath(p): parsed[os.path.realpath(p)] for p in paths} == {
        os.path.realpath(p): 1 for p in paths
    }


def test_enhanced_ct_header_is_parsed_once(tmp_path: Path) -> None:
    path = tmp_path / "enhanced.dcm"
    make_enhanced(GRID).save_as(path, enforce_file_format=True)
    volume, [header] = read_series([path])
    np.testing.assert_array_equal(volume.array, REFERENCE)
    assert "PixelData" not in header and int(header.NumberOfFrames) == GRID.size[2]


def test_datasets_given_are_their_own_headers() -> None:
    series = make_series(GRID)
    volume, headers = read_series(series)
    assert all(h is ds for h, ds in zip(headers, series, strict=True))
    np.testing.assert_array_equal(volume.array, volume_from_datasets(series).array)


def test_a_file_cut_inside_its_pixels_is_refused_in_one_line(tmp_path: Path) -> None:
    paths = write(make_series(GRID), tmp_path)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) - 700])  # the header intact, the pixels short
    with pytest.raises(PreprocessError, match=r"0005\.dcm") as caught:
        read_series(paths)
    assert "\n" not in str(caught.value)
