"""Refused at receive, and nothing left behind (reliability rows 18-20).

What can never be screened (Pixel Data that does not match the Image Pixel
Module, lengths past the end of the data, broken encapsulation, an image or an
inflated dataset beyond the configured limits) is refused with a failure status
and an Error Comment the sender sees; every refusal removes its temp file at once.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config
from sqlalchemy.engine import Engine

import agent.node.handlers as node_handlers
from tests.agent.conftest import NODE_AET, NodeUnderTest, start_test_node
from tests.agent.test_node import encoded_body
from tests.support.ct_series import ct_series, write_series

PIXEL_TAG = struct.pack("<HH", 0x7FE0, 0x0010)


@pytest.fixture
def node(tmp_path: Path, sqlite_engine: Engine):
    running = start_test_node(tmp_path, sqlite_engine)
    yield running
    running.node.stop()
    running.store.close()


def send(port: int, datasets: list[Dataset], syntax: str = ExplicitVRLittleEndian) -> list:
    """C-STORE each dataset in ``syntax``; the response status datasets."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def send_raw(
    port: int,
    folder: Path,
    sop_instance: str,
    body: bytes,
    syntax: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Dataset:
    """Put ``body`` on the wire verbatim (pynetdicom's chunked sending of a Part 10 file)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = generate_uid()
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)  # type: ignore[arg-type]
    path = folder / f"{generate_uid()}.dcm"
    path.write_bytes(buf.getvalue() + body)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def assert_refused(node: NodeUnderTest, answer: Dataset, code: int, comment: str) -> None:
    assert int(answer.Status) == code
    assert comment in str(answer.get("ErrorComment", ""))
    assert node.counts() == (0, 0)
    assert node.files() == [] and node.temp_files() == []


def one_slice(rows: int = 64, columns: int = 64) -> Dataset:
    return ct_series(1, rows=rows, columns=columns)[0]


# -- native Pixel Data (row 18) ---------------------------------------------------------


@pytest.mark.parametrize("delta", [-2, 2, -(64 * 64 * 2)], ids=["short", "long", "empty"])
def test_pixel_data_of_the_wrong_length_is_refused(node: NodeUnderTest, delta: int) -> None:
    ds = one_slice()
    ds.PixelData = bytes(64 * 64 * 2 + delta)
    [answer] = send(node.port, [ds])
    assert_refused(node, answer, 0xC210, "Pixel Data holds")
    assert [int(a.Status) for a in send(node.port, [one_slice()])] == [0x0000]


def test_implicit_vr_length_is_checked_too(node: NodeUnderTest) -> None:
    ds = one_slice()
    ds.PixelData = bytes(64 * 64 * 2 - 64)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    [answer] = send(node.port, [ds], ImplicitVRLittleEndian)
    assert_refused(node, answer, 0xC210, "Pixel Data holds")


def test_odd_pixel_data_with_its_padding_byte_is_stored(node: NodeUnderTest) -> None:
    ds = one_slice()
    ds.Rows = ds.Columns = 3  # 9 bytes of 8-bit pixels, padded to 10 (PS3.5 8.1.1)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(9))
    assert [int(a.Status) for a in send(node.port, [ds])] == [0x0000]
    assert node.counts() == (1, 1)


def test_multi_frame_length_counts_every_frame(node: NodeUnderTest) -> None:
    ds = one_slice()
    ds.NumberOfFrames = 3
    ds.PixelData = bytes(64 * 64 * 2 * 2)  # two frames' worth for three
    [answer] = send(node.port, [ds])
    assert_refused(node, answer, 0xC210, "Pixel Data holds")
    ds.PixelData = bytes(64 * 64 * 2 * 3)
    assert int(send(node.port, [ds])[0].Status) == 0x0000


def test_pixel_data_length_beyond_the_data_is_refused(
    node: NodeUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = one_slice()
    header = encoded_body(ds).split(PIXEL_TAG)[0]
    # declared as a whole 64 x 64 x 16-bit image, but only half of it follows
    body = header + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 8192) + bytes(4096)
    answer = send_raw(
        node.port, tmp_path, ds.SOPInstanceUID, body, ExplicitVRLittleEndian, monkeypatch
    )
    assert_refused(node, answer, 0xC210, "beyond the end of the data")


def test_skipped_element_length_beyond_the_data_is_refused(
    node: NodeUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = one_slice()
    ds.PixelData = b""
    del ds.PixelData
    header = encoded_body(ds)
    # a private element the header reader skips, claiming 1 MiB where 16 bytes follow
    body = header + struct.pack("<HH2sHI", 0x0029, 0x1010, b"OB", 0, 1 << 20) + bytes(16)
    answer = send_raw(
        node.port, tmp_path, ds.SOPInstanceUID, body, ExplicitVRLittleEndian, monkeypatch
    )
    assert_refused(node, answer, 0xC210, "beyond the end of the data")


def test_element_after_pixel_data_beyond_the_data_is_refused(
    node: NodeUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = one_slice()
    padding = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 1024) + bytes(10)
    body = encoded_body(ds) + padding  # Data Set Trailing Padding, declared too long
    answer = send_raw(
        node.port, tmp_path, ds.SOPInstanceUID, body, ExplicitVRLittleEndian, monkeypatch
    )
    assert_refused(node, answer, 0xC210, "beyond the end of the data")


# -- encapsulated Pixel Data (row 18) ---------------------------------------------------


def rle_body(ds: Dataset) -> bytes:
    ds.compress(RLELossless)
    return encoded_body(ds)


def test_encapsulated_pixel_data_structure(
    node: NodeUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = one_slice()
    body = rle_body(ds)
    assert body.endswith(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))

    def sent(data: bytes) -> Dataset:
        return send_raw(node.port, tmp_path, ds.SOPInstanceUID, data, RLELossless, monkeypatch)

    # the Sequence Delimiter is missing
    assert_refused(node, sent(body[:-8]), 0xC210, "lacks its Sequence Delimiter")
    # the fragment claims more bytes than follow
    at = body.index(struct.pack("<HH", 0xFFFE, 0xE000), body.index(PIXEL_TAG) + 12 + 8)
    (length,) = struct.unpack("<I", body[at + 4 : at + 8])
    longer = body[: at + 4] + struct.pack("<I", length + 4096) + body[at + 8 :]
    assert_refused(node, sent(longer), 0xC210, "fragment runs beyond")
    # no fragment at all: only the (empty) Basic Offset Table
    pixel = body.index(PIXEL_TAG)
    empty = body[: pixel + 12] + struct.pack("<HHI", 0xFFFE, 0xE000, 0) + body[-8:]
    assert_refused(node, sent(empty), 0xC210, "holds no fragment")
    # and the intact instance is stored
    assert int(sent(body).Status) == 0x0000
    assert node.counts() == (1, 1) and node.temp_files() == []


# -- limits (row 19) --------------------------------------------------------------------


def test_matrix_beyond_the_limit_is_refused(tmp_path: Path, sqlite_engine: Engine) -> None:
    running = start_test_node(tmp_path, sqlite_engine, max_frame_pixels=64 * 64 - 1, max_frames=2)
    try:
        [answer] = send(running.port, [one_slice()])
        assert_refused(running, answer, 0xC213, "64 x 64 pixels per frame exceed")
        small = one_slice(rows=32, columns=32)
        small.NumberOfFrames = 3
        small.PixelData = bytes(32 * 32 * 2 * 3)
        [answer] = send(running.port, [small])
        assert_refused(running, answer, 0xC213, "3 frames exceed")
        assert [int(a.Status) for a in send(running.port, [one_slice(32, 32)])] == [0]
    finally:
        running.node.stop()


def test_default_limit_refuses_an_absurd_matrix_from_its_header(
    node: NodeUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 65535 x 65535 declared: refused from the header, before any length is trusted
    ds = one_slice()
    ds.Rows = ds.Columns = 65535
    answer = send_raw(
        node.port,
        tmp_path,
        ds.SOPInstanceUID,
        encoded_body(ds),
        ExplicitVRLittleEndian,
        monkeypatch,
    )
    assert_refused(node, answer, 0xC213, "65535 x 65535 pixels per frame exceed")


def deflated(ds: Dataset) -> Dataset:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


def test_deflated_dataset_is_inflated_under_the_cap(tmp_path: Path, sqlite_engine: Engine) -> None:
    running = start_test_node(tmp_path, sqlite_engine, max_dataset_bytes=1 << 20)
    try:
        bomb = one_slice(rows=1024, columns=1024)  # 2 MiB of pixels, a few KiB deflated
        bomb.PixelData = bytes(1024 * 1024 * 2)
        [answer] = send(running.port, [deflated(bomb)], DeflatedExplicitVRLittleEndian)
        assert_refused(running, answer, 0xC213, "inflates beyond the maximum dataset size")
        short = one_slice()
        short.PixelData = bytes(64 * 64 * 2 - 64)
        [answer] = send(running.port, [deflated(short)], DeflatedExplicitVRLittleEndian)
        assert_refused(running, answer, 0xC210, "Pixel Data holds")
        fine = deflated(one_slice(rows=512, columns=512))  # 512 KiB inflated: within the cap
        [answer] = send(running.port, [fine], DeflatedExplicitVRLittleEndian)
        assert int(answer.Status) == 0x0000
        assert running.counts() == (1, 1) and running.temp_files() == []
    finally:
        running.node.stop()


# -- identifiers ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_uids_outside_the_one_rule_are_refused(node: NodeUnderTest) -> None:
    # Each was visible ASCII within 64 characters: recordable by storage's own former
    # rule, never a UID (PS3.5 9.1). The header's check refuses them with 0xC212.
    cases = [
        ("StudyInstanceUID", "1.2.03"),
        ("SeriesInstanceUID", "1.2.3."),
        ("StudyInstanceUID", ".1.2"),
        ("SeriesInstanceUID", "1.2.a"),
        ("StudyInstanceUID", "1.2 3"),
    ]
    datasets = []
    for keyword, uid in cases:
        ds = one_slice()
        setattr(ds, keyword, uid)
        datasets.append(ds)
    answers = send(node.port, datasets)
    for (keyword, _), answer in zip(cases, answers, strict=True):
        assert_refused(node, answer, 0xC212, f"{keyword} is not a valid UID")
    assert [int(a.Status) for a in send(node.port, [one_slice()])] == [0x0000]


# -- every refusal cleans up at once (row 20) -------------------------------------------


def test_record_that_fails_validation_after_staging_leaves_nothing(node: NodeUnderTest) -> None:
    # Finite positions whose projection on the slice normal overflows to infinity:
    # the instance record refuses it after the file was staged.
    ds = one_slice()
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.6, 0.8]
    ds.ImagePositionPatient = [0.0, -1.5e308, 1.5e308]
    for _ in range(3):  # repeated, nothing accumulates
        [answer] = send(node.port, [ds])
        assert_refused(node, answer, 0xC210, "cannot be recorded")


def test_out_of_range_numbers_are_dropped_not_fatal(node: NodeUnderTest) -> None:
    # Instance Number beyond IS's 32-bit range (PS3.5 6.2) is not recorded; the image is.
    ds = one_slice()
    ds.InstanceNumber = "99999999999999999999"
    assert [int(a.Status) for a in send(node.port, [ds])] == [0x0000]
    assert node.counts() == (1, 1) and node.temp_files() == []


def test_unexpected_exception_answers_c211_and_leaves_nothing(
    node: NodeUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an error no handler expects")

    monkeypatch.setattr(node_handlers, "record_instance", broken)
    datasets = ct_series(3)
    assert [int(a.Status) for a in send(node.port, datasets)] == [0xC211] * 3
    assert node.counts() == (0, 0)
    assert node.files() == [] and node.temp_files() == []
    monkeypatch.undo()
    assert [int(a.Status) for a in send(node.port, datasets)] == [0x0000] * 3


def test_storescu_sees_the_status_and_the_reason(node: NodeUnderTest, tmp_path: Path) -> None:
    ds = one_slice()
    ds.PixelData = bytes(64 * 64 * 2 - 2)
    [path] = write_series([ds], tmp_path / "in")
    proc = node.storescu(path, extra=("-d",))
    output = proc.stdout + proc.stderr
    assert "0xc210" in output.lower()
    assert "Pixel Data holds 8190 bytes, the image needs 8192" in output
    assert node.counts() == (0, 0) and node.temp_files() == []
