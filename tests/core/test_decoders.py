"""The 12-bit JPEG Extended plugin against DCMTK's decoder, and what the node offers.

The end-to-end check of every syntax through ``serve`` is
``tests/agent/test_transfer_syntaxes.py`` (slow); these run in a second.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from agent.node.server import decodable_transfer_syntaxes
from hyperct_core import decoders
from hyperct_core.errors import PreprocessError
from hyperct_core.volume import volume_from_datasets
from tests.agent.report_tools import tool
from tests.support.ct_series import ct_series

ENV = {**os.environ, "TCP_NODELAY": "1"}


def _dcmtk(name: str, *args: str) -> None:
    done = subprocess.run(
        [tool(f"/usr/bin/{name}", "dcmtk"), *args], capture_output=True, text=True, env=ENV
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def jpeg12(tmp_path: Path) -> tuple[Path, Path]:
    """Two slices of 12-bit unsigned CT (GE/Siemens style: intercept -1024) as JPEG
    Extended by DCMTK dcmcjpeg, and the same decoded by DCMTK dcmdjpeg."""
    rng = np.random.default_rng(7)
    for i, ds in enumerate(ct_series(2, rows=48, columns=40)):
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        ds.PixelData = rng.integers(0, 4096, (48, 40), dtype=np.uint16).tobytes()
        src, enc, dec = (tmp_path / f"{kind}{i}.dcm" for kind in ("src", "jpeg", "dcmtk"))
        ds.save_as(src, enforce_file_format=True)
        _dcmtk("dcmcjpeg", "+ee", str(src), str(enc))
        _dcmtk("dcmdjpeg", str(enc), str(dec))
    return tmp_path, tmp_path / "jpeg0.dcm"


LOSSLESS = {
    JPEGLosslessSV1: ("dcmcjpeg", "+e1"),
    JPEGLossless: ("dcmcjpeg", "+el"),
    JPEGLSLossless: ("dcmcjpls", "+el"),
    RLELossless: ("dcmcrle",),
    ExplicitVRBigEndian: ("dcmconv", "+tb"),
    DeflatedExplicitVRLittleEndian: ("dcmconv", "+td"),
}


@pytest.mark.parametrize("syntax", list(LOSSLESS), ids=lambda uid: uid.name)
@pytest.mark.parametrize("kind", ["signed 16-bit", "unsigned 12-bit"])
def test_lossless_syntaxes_give_back_the_stored_values(
    tmp_path: Path, syntax: UID, kind: str
) -> None:
    """Both ways scanners store CT: signed 16-bit (negative values) and unsigned 12-bit."""
    [ds] = ct_series(1, rows=40, columns=36)
    rng = np.random.default_rng(11)
    if kind == "signed 16-bit":
        values = rng.integers(-2048, 3072, (40, 36)).astype(np.int16)
        values[:4] = -2000  # padding outside the field of view
        ds.RescaleIntercept = 0
    else:
        values = rng.integers(0, 4096, (40, 36)).astype(np.uint16)
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    ds.PixelData = values.tobytes()
    src, enc = tmp_path / "src.dcm", tmp_path / "enc.dcm"
    ds.save_as(src, enforce_file_format=True)
    name, *args = LOSSLESS[syntax]
    _dcmtk(name, *args, str(src), str(enc))
    encoded = pydicom.dcmread(enc)
    assert encoded.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(encoded.pixel_array, values)


def test_12bit_jpeg_extended_decodes_like_dcmtk(jpeg12: tuple[Path, Path]) -> None:
    folder, _ = jpeg12
    for i in range(2):
        encoded = pydicom.dcmread(folder / f"jpeg{i}.dcm")
        assert encoded.file_meta.TransferSyntaxUID == JPEGExtended12Bit
        assert encoded.BitsStored == 12
        ours = encoded.pixel_array
        theirs = pydicom.dcmread(folder / f"dcmtk{i}.dcm").pixel_array
        assert ours.dtype == np.uint16 and ours.shape == (48, 40)
        np.testing.assert_array_equal(ours, theirs)
        assert 0 < int(ours.max()) < 4096 and len(np.unique(ours)) > 256  # 12-bit, not 8


def test_12bit_frames_decode_without_plugin_refusals_logged(
    jpeg12: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """pydicom logs each refusing plugin as an error: the 12-bit plugin must come first."""
    _, path = jpeg12
    with caplog.at_level(logging.DEBUG, logger="pydicom"):
        pixels = pydicom.dcmread(path).pixel_array
    assert int(pixels.max()) > 255
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_8bit_jpeg_extended_decodes_like_dcmtk(tmp_path: Path) -> None:
    [ds] = ct_series(1, rows=32, columns=32)
    src, enc, dec = tmp_path / "src.dcm", tmp_path / "jpeg.dcm", tmp_path / "dcmtk.dcm"
    ds.save_as(src, enforce_file_format=True)
    _dcmtk("dcmcjpeg", "+ee", "+be", str(src), str(enc))  # +be: 8 bits per sample
    _dcmtk("dcmdjpeg", str(enc), str(dec))
    encoded = pydicom.dcmread(enc)
    assert encoded.file_meta.TransferSyntaxUID == JPEGExtended12Bit and encoded.BitsStored == 8
    np.testing.assert_array_equal(encoded.pixel_array, pydicom.dcmread(dec).pixel_array)


def test_12bit_jpeg_extended_series_becomes_a_volume(jpeg12: tuple[Path, Path]) -> None:
    folder, _ = jpeg12
    volume = volume_from_datasets(sorted(folder.glob("jpeg*.dcm")))
    expected = volume_from_datasets(sorted(folder.glob("dcmtk*.dcm")))
    np.testing.assert_array_equal(volume.array, expected.array)


def test_signed_jpeg_extended_is_refused_in_one_line(jpeg12: tuple[Path, Path]) -> None:
    _, path = jpeg12
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = 1  # no encoder here writes signed 12-bit JPEG; say so, not guess
    other = pydicom.dcmread(path)
    other.SOPInstanceUID, other.ImagePositionPatient = generate_uid(), [-80.0, -80.0, -5.0]
    with pytest.raises(PreprocessError, match="signed JPEG samples") as caught:
        volume_from_datasets([ds, other])
    assert "\n" not in str(caught.value)


def test_the_node_offers_every_syntax_pacs_commonly_send() -> None:
    offered = set(decodable_transfer_syntaxes())
    assert {
        ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, RLELossless,
        JPEGLosslessSV1, JPEGLossless, JPEGBaseline8Bit, JPEGExtended12Bit,
        JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
    } <= offered  # fmt: skip


def test_lossless_syntaxes_are_preferred_to_lossy_ones() -> None:
    """pynetdicom accepts the first of the node's syntaxes a presentation context proposes."""
    offered = decodable_transfer_syntaxes()
    lossy = {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000}
    first_lossy = min(offered.index(ts) for ts in lossy)
    assert all(ts in lossy for ts in offered[first_lossy:])
    assert offered[0] == ImplicitVRLittleEndian and offered.index(JPEGLosslessSV1) < first_lossy


def test_jpeg_extended_is_offered_only_with_the_12bit_plugin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoder = pydicom.pixels.get_decoder(JPEGExtended12Bit)
    assert decoders.can_decode(JPEGExtended12Bit)
    monkeypatch.setattr(decoders, "HAVE_GDCM", False)  # as if python-gdcm were missing
    decoder.remove_plugin(decoders.PLUGIN)
    try:
        # Pillow's pydicom plugin is still there, but decodes 8-bit samples only.
        assert decoder.is_available
        assert not decoders.can_decode(JPEGExtended12Bit)
        assert JPEGExtended12Bit not in decodable_transfer_syntaxes()
    finally:
        monkeypatch.undo()
        decoders.register()
    assert decoders.can_decode(JPEGExtended12Bit)


def test_unknown_syntaxes_are_not_decodable() -> None:
    assert not decoders.can_decode("1.2.840.10008.1.2.4.100")  # MPEG2: video, no decoder
    assert not decoders.can_decode("1.2.3.4")
