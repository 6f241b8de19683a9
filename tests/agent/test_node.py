"""The DICOM node against real peers (DCMTK) and hostile input (reliability rows 1, 6-9, 12-14)."""

from __future__ import annotations

import copy
import io
import struct
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, _config
from sqlalchemy import func, select

from agent.logs import configure_logging
from storage.models import AuditEvent, Instance, Job, Series
from tests.agent.conftest import DCMTK_ENV, NODE_AET, NodeUnderTest, dcmtk, start_test_node
from tests.support.ct_series import CANARY_BIRTH, CANARY_ID, CANARY_NAME, ct_series, write_series


def scu_send(
    port: int, datasets: list, calling: str = "PACS", sop_class: str = CTImageStorage
) -> list[int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def part10_file(path: Path, sop_instance: str, dataset_bytes: bytes) -> Path:
    """A file whose meta names ``sop_instance`` and whose dataset is ``dataset_bytes`` verbatim."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid()
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)  # type: ignore[arg-type]
    path.write_bytes(buf.getvalue() + dataset_bytes)
    return path


def send_raw_file(port: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    # Chunked sending streams the bytes after the meta verbatim: the only way to
    # put a malformed dataset on the wire with pynetdicom.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def explicit_le(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def encoded_body(ds) -> bytes:
    """The dataset encoded in Explicit VR Little Endian, without file meta."""
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_dataset(buf, ds)
    return buf.getvalue()


def uid_value(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\x00" * (len(raw) % 2)


# -- real peers ---------------------------------------------------------------


def test_echoscu_succeeds(node: NodeUnderTest) -> None:
    import subprocess

    proc = subprocess.run(
        [dcmtk("echoscu"), "-aet", "PACS", "-aec", NODE_AET, "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        timeout=30,
        env=DCMTK_ENV,
    )
    assert proc.returncode == 0, proc.stderr


def test_storescu_series_is_stored_once(node: NodeUnderTest, tmp_path: Path) -> None:
    datasets = ct_series(24)
    files = write_series(datasets, tmp_path / "in")
    proc = node.storescu(*files)
    assert proc.returncode == 0, proc.stderr
    assert node.counts() == (24, 1)
    stored = node.files()
    assert len(stored) == 24
    assert {dcmread(p).SOPInstanceUID for p in stored} == {ds.SOPInstanceUID for ds in datasets}
    # bytes on disk are what was sent: pixel data identical
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    for p in stored[:3]:
        got = dcmread(p)
        assert got.PixelData == by_uid[got.SOPInstanceUID].PixelData
    assert node.temp_files() == []

    proc = node.storescu(*files)  # an identical resend changes nothing
    assert proc.returncode == 0, proc.stderr
    assert node.counts() == (24, 1)
    assert len(node.files()) == 24
    with node.sessions() as s:
        series = s.scalars(select(Series)).one()
        assert series.instance_count == 24
        assert series.orientation_consistent is True
        assert series.slice_thickness == pytest.approx(2.5)
        assert series.image_type == "ORIGINAL\\PRIMARY\\AXIAL"
        assert (series.body_part_examined, series.protocol_name) == ("CHEST", "CHEST ROUTINE")
        assert series.contrast_agent is None
        assert series.sop_class_uid == CTImageStorage
        assert series.study.study_description == "CT CHEST WITHOUT CONTRAST"
        # slices at z = 0, -2.5, ... with normal +z
        assert series.min_slice_position == pytest.approx(-23 * 2.5)
        assert series.max_slice_position == pytest.approx(0.0)
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        names = {Path(i.rel_path).name for i in s.scalars(select(Instance))}
    assert not any(ds.SOPInstanceUID in n for n in names for ds in datasets)


def test_wrong_called_ae_is_rejected(node: NodeUnderTest, tmp_path: Path) -> None:
    files = write_series(ct_series(2), tmp_path / "in")
    proc = node.storescu(*files, called="NOTME")
    assert proc.returncode != 0
    assert node.counts() == (0, 0)
    assert node.files() == []


def test_calling_ae_allow_list(tmp_path: Path, sqlite_engine) -> None:
    running = start_test_node(tmp_path, sqlite_engine, allowed_calling_aets=["PACS"])
    try:
        files = write_series(ct_series(2), tmp_path / "in")
        refused = running.storescu(*files, calling="INTRUDER")
        assert refused.returncode != 0
        assert running.counts() == (0, 0)
        with running.sessions() as s:
            outcomes = s.scalars(
                select(AuditEvent.outcome).where(AuditEvent.source_ae == "INTRUDER")
            ).all()
        assert outcomes == ["rejected"]
        allowed = running.storescu(*files, calling="PACS")
        assert allowed.returncode == 0, allowed.stderr
        assert running.counts() == (2, 1)
    finally:
        running.node.stop()


def test_other_storage_classes_refused_unless_configured(tmp_path: Path, sqlite_engine) -> None:
    mr = ct_series(1)[0]
    mr.SOPClassUID = MRImageStorage
    mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    running = start_test_node(tmp_path / "a", sqlite_engine)
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", running.port, ae_title=NODE_AET)
        # No presentation context for MR: the association is refused or has nothing to use.
        if assoc.is_established:
            assert assoc.accepted_contexts == []
            assoc.release()
        assert running.counts() == (0, 0)
    finally:
        running.node.stop()
    running = start_test_node(tmp_path / "b", sqlite_engine, extra_sop_classes=[MRImageStorage])
    try:
        assert scu_send(running.port, [mr], sop_class=MRImageStorage) == [0x0000]
        assert running.counts() == (1, 1)
    finally:
        running.node.stop()


# -- hostile or broken input (row 6, 7, 8) -----------------------------------


def test_undecodable_dataset_is_c210(node: NodeUnderTest, tmp_path: Path, monkeypatch) -> None:
    sop = generate_uid()
    # a valid SOP Class UID element, then an element whose length runs past the end
    body = explicit_le(0x0008, 0x0016, b"UI", uid_value(CTImageStorage))
    body += struct.pack("<HH2sH", 0x0008, 0x0018, b"UI", 60) + b"1.2.3"
    path = part10_file(tmp_path / "bad.dcm", sop, body)
    assert send_raw_file(node.port, path, monkeypatch) == 0xC210
    assert node.counts() == (0, 0)
    assert node.files() == [] and node.temp_files() == []


def test_deeply_nested_dataset_is_refused(node: NodeUnderTest, tmp_path: Path, monkeypatch) -> None:
    sop = generate_uid()
    depth = 3000
    item_start = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    seq_start = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    nested = b""
    for _ in range(depth):
        nested = seq_start + item_start + nested + item_end + seq_end
    body = explicit_le(0x0008, 0x0016, b"UI", uid_value(CTImageStorage))
    body += explicit_le(0x0008, 0x0018, b"UI", uid_value(sop))
    body += nested
    body += explicit_le(0x0020, 0x000D, b"UI", uid_value(generate_uid()))
    body += explicit_le(0x0020, 0x000E, b"UI", uid_value(generate_uid()))
    path = part10_file(tmp_path / "nested.dcm", sop, body)
    assert send_raw_file(node.port, path, monkeypatch) in (0xC210, 0xC211)
    assert node.counts() == (0, 0)
    assert node.files() == [] and node.temp_files() == []
    assert scu_send(node.port, ct_series(1)) == [0x0000]  # still serving


@pytest.mark.parametrize(
    ("keyword", "uid"),
    [
        ("SOPInstanceUID", "../x"),
        ("SOPInstanceUID", "/etc/hyperct-x"),
        ("SOPInstanceUID", "1." + "2" * 70),
        ("SOPInstanceUID", "1.2.abc"),
        ("SeriesInstanceUID", "../../series"),
        ("StudyInstanceUID", "1.2.3/../../study"),
    ],
)
def test_malicious_uids_are_refused_and_nothing_escapes(
    node: NodeUnderTest, tmp_path: Path, monkeypatch, keyword: str, uid: str
) -> None:
    ds = ct_series(1)[0]
    setattr(ds, keyword, uid)
    # pynetdicom will not put a UID over 64 characters in a command: use a valid one there
    command_uid = ds.SOPInstanceUID if len(ds.SOPInstanceUID) <= 64 else generate_uid()
    path = part10_file(tmp_path / "evil.dcm", command_uid, encoded_body(ds))
    status = send_raw_file(node.port, path, monkeypatch)
    assert status == 0xC212
    assert node.counts() == (0, 0)
    assert node.files() == [] and node.temp_files() == []
    assert not Path("/etc/hyperct-x").exists()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and "storage" not in p.parts]
    assert {p.name for p in outside if ".db" not in p.name} == {"evil.dcm"}


def test_command_and_dataset_uid_mismatch_is_refused(
    node: NodeUnderTest, tmp_path: Path, monkeypatch
) -> None:
    ds = ct_series(1)[0]
    # the meta's UID becomes the command's Affected SOP Instance UID
    path = part10_file(tmp_path / "mismatch.dcm", generate_uid(), encoded_body(ds))
    assert send_raw_file(node.port, path, monkeypatch) == 0xC212
    assert node.counts() == (0, 0)
    with node.sessions() as s:
        assert (
            s.scalar(select(AuditEvent.outcome).where(AuditEvent.event_type == "instance_rejected"))
            == "uid_mismatch"
        )


# -- resources (row 9) ---------------------------------------------------------


def test_watermark_answers_a700_then_recovers(tmp_path: Path, sqlite_engine) -> None:
    running = start_test_node(tmp_path, sqlite_engine, min_free_bytes=1 << 62)
    try:
        datasets = ct_series(3)
        assert scu_send(running.port, datasets) == [0xA700] * 3
        assert running.counts() == (0, 0)
        assert running.files() == [] and running.temp_files() == []
        running.store.min_free_bytes = 0  # space returns
        assert scu_send(running.port, datasets) == [0x0000] * 3
        assert running.counts() == (3, 1)
    finally:
        running.node.stop()


# -- resends (row 12) and concurrency (row 13) ------------------------------------


def _changed_copy(ds):
    changed = copy.deepcopy(ds)
    changed.PixelData = ct_series(1, seed=99)[0].PixelData
    return changed


def test_conflicting_payload_keep_first(node: NodeUnderTest) -> None:
    first = ct_series(1)[0]
    assert scu_send(node.port, [first, first]) == [0, 0]
    assert scu_send(node.port, [_changed_copy(first)]) == [0]
    assert node.counts() == (1, 1)
    [path] = node.files()
    assert dcmread(path).PixelData == first.PixelData
    with node.sessions() as s:
        events = s.scalars(
            select(AuditEvent).where(AuditEvent.event_type == "instance_conflict")
        ).all()
        assert len(events) == 1
        assert s.scalar(select(func.count()).select_from(Job)) == 1


def test_conflicting_payload_replace(tmp_path: Path, sqlite_engine) -> None:
    running = start_test_node(tmp_path, sqlite_engine, on_conflict="replace")
    try:
        first = ct_series(1)[0]
        second = _changed_copy(first)
        assert scu_send(running.port, [first, second]) == [0, 0]
        assert running.counts() == (1, 1)
        [path] = running.files()
        assert dcmread(path).PixelData == second.PixelData
        with running.sessions() as s:
            inst = s.scalars(select(Instance)).one()
            assert running.store.path_of(inst.rel_path) == path
            assert s.scalar(select(Series.instance_count)) == 1
    finally:
        running.node.stop()


def test_same_instance_on_two_associations_at_once(node: NodeUnderTest) -> None:
    datasets = ct_series(6)
    results: list[list[int]] = []
    barrier = threading.Barrier(3)

    def sender() -> None:
        barrier.wait()
        results.append(scu_send(node.port, datasets))

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [[0] * 6] * 3
    assert node.counts() == (6, 1)
    files = node.files()
    assert len(files) == 6
    sent = {ds.SOPInstanceUID: ds.PixelData for ds in datasets}
    for p in files:
        got = dcmread(p)
        assert got.PixelData == sent[got.SOPInstanceUID]
    with node.sessions() as s:
        assert s.scalar(select(Series.instance_count)) == 6


# -- patient data never in logs (row 14) -----------------------------------------


def test_no_patient_data_in_logs_at_debug(node: NodeUnderTest, tmp_path: Path, monkeypatch) -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    datasets = ct_series(3)
    files = write_series(datasets, tmp_path / "in")
    assert node.storescu(*files).returncode == 0
    assert scu_send(node.port, [_changed_copy(datasets[0])]) == [0]  # conflict path logs too
    evil = copy.deepcopy(datasets[1])
    evil.SOPInstanceUID = "../x"
    path = part10_file(tmp_path / "evil.dcm", "../x", encoded_body(evil))
    send_raw_file(node.port, path, monkeypatch)
    text = stream.getvalue()
    assert "association accepted" in text  # the log is not empty
    assert "instance resent with different content" in text
    for canary in (CANARY_NAME, CANARY_NAME.split("^")[0], CANARY_ID, CANARY_BIRTH):
        assert canary not in text
