"""Fuzzing the receive path with Hypothesis: malformed PDUs and malformed datasets.

Both harnesses talk to a real node over loopback. A crash is any exception
that escapes a pynetdicom thread, a handler's last-resort catch ("store failed
unexpectedly"), a leaked association, a stray file, or a stored row for a
refused instance. Examples are derandomised (the same ones every run, so CI
is stable and bounded); ``HYPERCT_FUZZ_EXAMPLES`` raises the count for a
longer local run. Every crash found is kept below as an explicit regression case.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import resource
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from sqlalchemy.engine import Engine

from agent.dicom.errors import UnreadableHeader
from agent.dicom.header import read_header
from tests.agent.conftest import NODE_AET, NodeUnderTest, start_test_node
from tests.agent.security_support import associate_rq, echo, pdu_header, raw_connect, store_one
from tests.agent.test_node import encoded_body, explicit_le, part10_file, uid_value
from tests.support.ct_series import ct_series

# Malformed input is the point: pydicom's warnings about it are expected.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXAMPLES = int(os.environ.get("HYPERCT_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class CrashWatch:
    """Exceptions escaping threads, and the node's own last-resort error lines."""

    def __init__(self) -> None:
        self.crashes: list[str] = []

    def __enter__(self) -> CrashWatch:
        self._hook = threading.excepthook
        threading.excepthook = lambda args: self.crashes.append(repr(args.exc_value))
        self._logs = structlog.testing.capture_logs()
        self._captured = self._logs.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._logs.__exit__(None, None, None)
        threading.excepthook = self._hook
        self.crashes += [
            str(e) for e in self._captured if e.get("event") == "store failed unexpectedly"
        ]


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeUnderTest]:
    from agent.resources import alembic_dir
    from storage.db import make_engine, upgrade

    folder = tmp_path_factory.mktemp("fuzz")
    engine: Engine = make_engine(f"sqlite:///{folder / 'agent.db'}")
    upgrade(engine, alembic_dir())
    running = start_test_node(
        folder,
        engine,
        max_dataset_bytes=1 << 20,
        max_associations=20,
        timeouts={"network": 2, "acse": 2, "dimse": 2},
    )
    yield running
    running.node.stop()
    running.store.close()
    engine.dispose()


def _wait_closed(sock: socket.socket, within: float = 5.0) -> bool:
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (TimeoutError, ConnectionError):
        return time.monotonic() < deadline
    return False


def _healthy(node: NodeUnderTest) -> None:
    deadline = time.monotonic() + 10
    while node.node.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.02)
    assert node.node.ae.active_associations == [], "an association leaked"
    assert echo(node.port) == 0x0000
    assert node.temp_files() == []


# -- PDUs ---------------------------------------------------------------------------------

_any_type = st.integers(0, 255)
_known_type = st.integers(1, 7)
_length = st.one_of(
    st.integers(0, 512), st.sampled_from([0x7FFFFFFF, 0xFFFFFFFF, 1 << 20, (1 << 20) + 1])
)


@st.composite
def pdu_streams(draw: st.DrawFn) -> tuple[bool, bytes]:
    """(associate first?, bytes): random, framed, or mutated valid PDUs."""
    kind = draw(st.sampled_from(["raw", "framed", "mutated-rq", "pdata"]))
    if kind == "raw":
        return draw(st.booleans()), draw(st.binary(max_size=300))
    if kind == "framed":
        body = draw(st.binary(max_size=300))
        pdu_type = draw(st.one_of(_known_type, _any_type))
        declared = draw(st.one_of(st.just(len(body)), _length))
        return draw(st.booleans()), pdu_header(pdu_type, declared) + body
    if kind == "mutated-rq":
        rq = bytearray(associate_rq())
        for _ in range(draw(st.integers(1, 8))):
            rq[draw(st.integers(0, len(rq) - 1))] = draw(st.integers(0, 255))
        cut = draw(st.integers(6, len(rq)))
        return False, bytes(rq[:cut])
    # P-DATA-TF items (PS3.8 9.3.5.1) whose lengths, context IDs and headers lie
    items = b""
    for _ in range(draw(st.integers(1, 4))):
        value = draw(st.binary(max_size=120))
        length = draw(st.one_of(st.just(len(value) + 2), st.integers(0, 0xFFFFFFFF)))
        context = draw(st.sampled_from([1, 3, 255]))
        control = draw(st.integers(0, 255))
        items += struct.pack(">LBB", length, context, control) + value
    return True, pdu_header(0x04, len(items)) + items


# P-DATA-TF whose PDVs end a command set without (0000,0100) Command Field.
NO_COMMAND_FIELD = (
    pdu_header(0x04, 36)
    + b"\x00\x00\x00\x08\xff-\xdb\xf7\xd7M\xba\xaa"
    + b"\x00\x00\x00\x08\x01-\xdb\xf7\xd7M\xba\xaa"
    + b"\x00\x00\x00\x08\x033\xdb\xf7\xd7M\xba\xaa"
)


def _settle(node: NodeUnderTest, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while node.node.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.01)


def test_fuzz_pdus(fuzz_node: NodeUnderTest) -> None:
    # One watch for the whole run: a thread that dies after its connection
    # closed is caught by the next example (and at the end), without waiting
    # for every association thread to wind down after each example.
    with CrashWatch() as watch:

        @FUZZ
        @given(stream=pdu_streams())
        @example(stream=(True, pdu_header(0x04, 0xFFFFFFFF)))
        @example(stream=(False, pdu_header(0x09, 4) + b"junk"))
        @example(stream=(True, pdu_header(0x04, 6) + struct.pack(">LBB", 0xFFFFFFFF, 1, 3)))
        @example(stream=(True, NO_COMMAND_FIELD))  # found by this harness: killed the DUL
        def one(stream: tuple[bool, bytes]) -> None:
            associate_first, payload = stream
            sock = raw_connect(fuzz_node.port)
            try:
                if associate_first:
                    sock.sendall(associate_rq())
                    sock.settimeout(5)
                    # A-ASSOCIATE-AC, or -RJ while earlier examples' associations wind down
                    assert sock.recv(1)[:1] in (b"\x02", b"\x03", b"")
                try:
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the node may already have aborted
                assert _wait_closed(sock), "the node kept a broken connection open"
            finally:
                sock.close()
            assert watch.crashes == []
            assert fuzz_node.counts() == (0, 0)

        one()
        _settle(fuzz_node, within=10)
    assert watch.crashes == []


def test_after_pdu_fuzzing_the_node_still_serves(fuzz_node: NodeUnderTest) -> None:
    _healthy(fuzz_node)
    assert store_one(fuzz_node.port, seed=11) == 0x0000


# -- datasets -------------------------------------------------------------------------------

_VRS = [b"UI", b"CS", b"DS", b"IS", b"LO", b"SH", b"DA", b"US", b"OB", b"OW", b"SQ", b"UN", b"XX"]
_TAGS = [
    (0x0008, 0x0016), (0x0008, 0x0018), (0x0008, 0x0060), (0x0008, 0x103E), (0x0018, 0x0050),
    (0x0020, 0x000D), (0x0020, 0x000E), (0x0020, 0x0013), (0x0020, 0x0032), (0x0020, 0x0037),
    (0x0028, 0x0030), (0x0028, 0x0008), (0x5200, 0x9229), (0x5200, 0x9230), (0x7FE0, 0x0010),
    (0xFFFE, 0xE000), (0xFFFE, 0xE0DD),
]  # fmt: skip


@st.composite
def element_bytes(draw: st.DrawFn) -> bytes:
    group, elem = draw(st.sampled_from(_TAGS))
    vr = draw(st.sampled_from(_VRS))
    value = draw(
        st.one_of(
            st.binary(max_size=80),
            st.sampled_from([b"1.2.3\x00", b"../x", b"nan\\inf\\-0", b"1e999\\2\\3", b"\xff" * 8]),
        )
    )
    lie = draw(st.one_of(st.none(), st.integers(0, 0xFFFF), st.just(0xFFFFFFFF)))
    if vr in (b"OB", b"OW", b"SQ", b"UN"):
        length = len(value) if lie is None else lie
        return struct.pack("<HH2sHI", group, elem, vr, 0, length & 0xFFFFFFFF) + value
    length = len(value) if lie is None else lie & 0xFFFF
    return struct.pack("<HH2sH", group, elem, vr, length) + value


@functools.cache
def _base(seed: int) -> tuple[bytes, bytes]:
    """A valid encoded CT dataset and its SOP Instance UID (fixed per run: Hypothesis
    needs the same draws to give the same sizes)."""
    ds = ct_series(1, rows=8, columns=8, seed=seed)[0]
    return encoded_body(ds), ds.SOPInstanceUID.encode()


_serial = itertools.count(1)


def fresh_uid(length: int) -> bytes:
    """A new valid UID of exactly ``length`` characters (so a body keeps its layout)."""
    n = next(_serial)
    return f"2.25.1{n:0{length - 6}d}".encode()


@st.composite
def dataset_bodies(draw: st.DrawFn) -> bytes:
    """A real CT dataset with elements inserted, replaced, cut or appended at random."""
    base, _ = _base(draw(st.integers(0, 3)))
    mode = draw(st.sampled_from(["append", "splice", "truncate", "flip", "raw"]))
    if mode == "append":
        return base + b"".join(draw(st.lists(element_bytes(), max_size=4)))
    if mode == "splice":
        at = draw(st.integers(0, len(base)))
        return base[:at] + b"".join(draw(st.lists(element_bytes(), min_size=1, max_size=3)))
    if mode == "truncate":
        return base[: draw(st.integers(0, len(base)))]
    if mode == "flip":
        body = bytearray(base)
        for _ in range(draw(st.integers(1, 16))):
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
        return bytes(body)
    required = explicit_le(0x0008, 0x0016, b"UI", uid_value(CTImageStorage))
    return required + b"".join(draw(st.lists(element_bytes(), max_size=6)))


class _Sender:
    """One association reused across examples, reopened when the node aborts it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.assoc = None

    def send(self, path: Path) -> int | None:
        if self.assoc is None or not self.assoc.is_established:
            ae = AE(ae_title="PACS")
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            self.assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AET)
            assert self.assoc.is_established
        rsp = self.assoc.send_c_store(path)
        return int(rsp.Status) if "Status" in rsp else None

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


def test_fuzz_datasets(
    fuzz_node: NodeUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunked sending puts the bytes after the file meta on the wire verbatim.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    sender = _Sender(fuzz_node.port)
    outcomes: dict[int | None, int] = {}

    @FUZZ
    @given(body=dataset_bodies())
    def one(body: bytes) -> None:
        # A new SOP Instance UID per example, in the command and in the body
        # (where the mutation left it), so an accepted example is a new row.
        sop = generate_uid().encode()
        for seed in range(4):
            _, old = _base(seed)
            if old in body:
                sop = fresh_uid(len(old))
                body = body.replace(old, sop)
        path = part10_file(tmp_path / "fuzz.dcm", sop.decode(), body)
        rows_before, _ = fuzz_node.counts()
        files_before = len(fuzz_node.files())
        with CrashWatch() as watch:
            status = sender.send(path)
        assert watch.crashes == []
        assert status in (0x0000, 0xC210, 0xC211, 0xC212, 0xA700, None), hex(status or 0)
        outcomes[status] = outcomes.get(status, 0) + 1
        rows, _ = fuzz_node.counts()
        assert rows == rows_before + (1 if status == 0x0000 else 0)
        assert len(fuzz_node.files()) == files_before + (1 if status == 0x0000 else 0)
        assert fuzz_node.temp_files() == []

    try:
        one()
    finally:
        sender.close()
    assert len(outcomes) >= 2  # the harness reached both refusals and acceptances
    _healthy(fuzz_node)


# -- regression cases found by fuzzing or review ---------------------------------------------


def test_command_set_without_command_field_aborts(fuzz_node: NodeUnderTest) -> None:
    with CrashWatch() as watch:
        sock = raw_connect(fuzz_node.port)
        try:
            sock.sendall(associate_rq())
            sock.settimeout(5)
            assert sock.recv(1) == b"\x02"
            sock.recv(65536)
            sock.sendall(NO_COMMAND_FIELD)  # connection stays open on our side
            started = time.monotonic()
            reply = sock.recv(1)
            assert reply in (b"\x07", b"")  # A-ABORT (or closed) at once
            assert time.monotonic() - started < 1.5
        finally:
            sock.close()
        _settle(fuzz_node)
    assert watch.crashes == []
    _healthy(fuzz_node)


def test_deflate_bomb_is_not_inflated_whole() -> None:
    # 64 MiB of zeros after a valid header deflates to ~64 KiB; the header
    # reader must not inflate all of it (only what precedes the pixels).
    ds = ct_series(1, rows=8, columns=8)[0]
    header = encoded_body(ds).split(b"\xe0\x7f\x10\x00")[0]
    bomb = header + struct.pack("<HH2sHI", 0x0011, 0x0010, b"OB", 0, 64 << 20) + bytes(64 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(bomb) + compressor.flush()
    assert len(deflated) < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with contextlib.suppress(UnreadableHeader):
        read_header(deflated, DeflatedExplicitVRLittleEndian)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 40 * 1024


def test_header_of_deflated_dataset_still_reads() -> None:
    ds = ct_series(1, rows=8, columns=8)[0]
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(encoded_body(ds)) + compressor.flush()
    assert read_header(deflated, DeflatedExplicitVRLittleEndian).sop_instance_uid == (
        ds.SOPInstanceUID
    )


def test_store_after_fuzzing(fuzz_node: NodeUnderTest) -> None:
    assert store_one(fuzz_node.port, seed=12) == 0x0000
