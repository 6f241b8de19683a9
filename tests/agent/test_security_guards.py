"""Association and PDU guards over real loopback sockets (reliability rows 2, 4 and 5).

Each hostile peer is followed by a normal C-ECHO and C-STORE, which must succeed.
"""

from __future__ import annotations

import resource
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select
from sqlalchemy.engine import Engine

from storage.models import AuditEvent
from tests.agent.conftest import NODE_AET, NodeUnderTest, start_test_node
from tests.agent.security_support import (
    associate_rq,
    closed_by_peer,
    echo,
    pdu_header,
    raw_connect,
    store_one,
    wait_for_no_associations,
)
from tests.support.ct_series import ct_series

NETWORK_TIMEOUT = 1.5
A_ASSOCIATE_AC = 0x02
A_ABORT = 0x07


@pytest.fixture
def guarded(tmp_path: Path, sqlite_engine: Engine) -> Iterator[NodeUnderTest]:
    running = start_test_node(
        tmp_path,
        sqlite_engine,
        max_associations=3,
        max_associations_per_ae=2,
        max_dataset_bytes=64 * 1024,
        timeouts={"network": NETWORK_TIMEOUT, "acse": NETWORK_TIMEOUT, "dimse": NETWORK_TIMEOUT},
    )
    yield running
    running.node.stop()
    running.store.close()


_seed = iter(range(100, 10_000))


def _still_serving(node: NodeUnderTest) -> None:
    assert wait_for_no_associations(node.node.ae), "an association leaked"
    assert echo(node.port) == 0x0000
    before = node.counts()[0]
    assert store_one(node.port, seed=next(_seed)) == 0x0000
    assert node.counts()[0] == before + 1


def _read_pdu(sock: socket.socket, within: float = 5.0) -> tuple[int, bytes] | None:
    """The next PDU from the node (type, body), or None if it closed the connection."""
    sock.settimeout(within)
    header = b""
    try:
        while len(header) < 6:
            chunk = sock.recv(6 - len(header))
            if not chunk:
                return None
            header += chunk
        pdu_type, _, length = struct.unpack(">BBL", header)
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                return None
            body += chunk
    except ConnectionError:
        return None
    return pdu_type, body


def _associated(port: int) -> socket.socket:
    sock = raw_connect(port)
    sock.sendall(associate_rq())
    reply = _read_pdu(sock)
    assert reply is not None and reply[0] == A_ASSOCIATE_AC
    return sock


def _hold(port: int, calling: str, n: int) -> list:
    held = []
    for _ in range(n):
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        held.append(ae.associate("127.0.0.1", port, ae_title=NODE_AET))
    return held


def _rejections(node: NodeUnderTest, expected: int) -> list[tuple[str | None, str]]:
    """Rejected-association audit rows, waiting a little for ``expected`` of them."""
    deadline = time.monotonic() + 5
    while True:
        with node.sessions() as s:
            rows = s.scalars(
                select(AuditEvent).where(
                    AuditEvent.event_type == "association", AuditEvent.outcome == "rejected"
                )
            ).all()
            found = [(r.source_ae, str((r.detail or {}).get("reason"))) for r in rows]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# -- row 2: association limits ------------------------------------------------------


def test_more_associations_than_the_limit_are_rejected(guarded: NodeUnderTest) -> None:
    held = _hold(guarded.port, "PACS_A", 2) + _hold(guarded.port, "PACS_B", 1)
    try:
        assert all(a.is_established for a in held)
        [extra] = _hold(guarded.port, "PACS_C", 1)
        assert extra.is_rejected
        [(source, reason)] = _rejections(guarded, 1)
        assert source == "PACS_C"
        assert "limit" in reason.lower()
        assert all(a.send_c_echo().Status == 0 for a in held)  # the held ones still work
    finally:
        for a in held:
            a.release()
    _still_serving(guarded)


def test_one_calling_ae_cannot_take_every_association(guarded: NodeUnderTest) -> None:
    held = _hold(guarded.port, "BUSY", 2)
    try:
        [third] = _hold(guarded.port, "BUSY", 1)
        assert third.is_rejected
        # pynetdicom's overall limit counts the rejected one until its thread ends
        deadline = time.monotonic() + 5
        while len(guarded.node.ae.active_associations) > 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        [other] = _hold(guarded.port, "QUIET", 1)
        assert other.is_established
        other.release()
        [(source, reason)] = _rejections(guarded, 1)
        assert source == "BUSY" and "limit 2" in reason
    finally:
        for a in held:
            a.release()
    _still_serving(guarded)


# -- row 4: idle sockets and half-sent PDUs --------------------------------------------


def test_idle_socket_is_closed_after_the_network_timeout(guarded: NodeUnderTest) -> None:
    sock = raw_connect(guarded.port)
    try:
        waited = closed_by_peer(sock, within=NETWORK_TIMEOUT + 8)
        assert waited is not None, "an idle connection was kept open"
    finally:
        sock.close()
    _still_serving(guarded)


def test_idle_association_is_closed_after_the_network_timeout(guarded: NodeUnderTest) -> None:
    sock = _associated(guarded.port)
    try:
        reply = _read_pdu(sock, within=NETWORK_TIMEOUT + 8)  # an A-ABORT, then the close
        assert reply is None or reply[0] == A_ABORT
        assert closed_by_peer(sock, within=NETWORK_TIMEOUT + 8) is not None
    finally:
        sock.close()
    _still_serving(guarded)


@pytest.mark.parametrize("associated", [False, True], ids=["before", "during"])
def test_half_sent_pdu_is_closed_after_the_network_timeout(
    guarded: NodeUnderTest, associated: bool
) -> None:
    sock = _associated(guarded.port) if associated else raw_connect(guarded.port)
    try:
        if associated:
            sock.sendall(pdu_header(0x04, 1000) + b"\x00" * 10)  # P-DATA-TF, 10 of 1000 bytes
        else:
            sock.sendall(associate_rq()[:40])
        assert closed_by_peer(sock, within=NETWORK_TIMEOUT + 8) is not None
    finally:
        sock.close()
    _still_serving(guarded)


def test_truncated_pdu_then_close(guarded: NodeUnderTest) -> None:
    sock = _associated(guarded.port)
    sock.sendall(pdu_header(0x04, 5000) + b"\x00" * 100)
    sock.shutdown(socket.SHUT_WR)
    assert closed_by_peer(sock, within=5) is not None
    sock.close()
    _still_serving(guarded)


# -- row 5: unknown type, absurd length, memory bounded ------------------------------------


@pytest.mark.parametrize("associated", [False, True], ids=["before", "during"])
def test_unknown_pdu_type_is_aborted(guarded: NodeUnderTest, associated: bool) -> None:
    sock = _associated(guarded.port) if associated else raw_connect(guarded.port)
    try:
        sock.sendall(pdu_header(0x09, 4) + b"junk")
        started = time.monotonic()
        reply = _read_pdu(sock)
        assert reply is None or reply[0] == A_ABORT
        assert time.monotonic() - started < NETWORK_TIMEOUT  # at once, not by a timeout
    finally:
        sock.close()
    _still_serving(guarded)


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@pytest.mark.parametrize("pdu_type", [0x01, 0x04], ids=["associate-rq", "p-data-tf"])
def test_absurd_pdu_length_aborts_without_buffering(guarded: NodeUnderTest, pdu_type: int) -> None:
    rss_before = _max_rss_bytes()
    associated = pdu_type == 0x04
    sock = _associated(guarded.port) if associated else raw_connect(guarded.port)
    try:
        sock.sendall(pdu_header(pdu_type, 0xFFFFFFFF) + b"\x00" * 4096)
        started = time.monotonic()
        reply = _read_pdu(sock)
        assert reply is None or reply[0] == A_ABORT
        assert time.monotonic() - started < NETWORK_TIMEOUT
    finally:
        sock.close()
    # pynetdicom alone would allocate (and zero) 4 GiB for this PDU.
    assert _max_rss_bytes() - rss_before < 64 << 20
    _still_serving(guarded)


@pytest.mark.parametrize(
    "max_pdu",
    [0, 16384],
    ids=["one-pdu", "many-pdus"],  # caught by the PDU length / by the running count
)
def test_dataset_over_the_cap_is_aborted_while_it_arrives(
    tmp_path: Path, sqlite_engine: Engine, max_pdu: int
) -> None:
    node = start_test_node(tmp_path, sqlite_engine, max_pdu=max_pdu, max_dataset_bytes=64 * 1024)
    try:
        big = ct_series(1, rows=256, columns=256, seed=3)[0]  # 128 KiB of pixels
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        assert assoc.is_established
        rsp = assoc.send_c_store(big)
        assert "Status" not in rsp  # no response: the association was aborted
        deadline = time.monotonic() + 5
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not assoc.is_established
        assert node.counts() == (0, 0)
        assert node.files() == [] and node.temp_files() == []
        _still_serving(node)
    finally:
        node.node.stop()
        node.store.close()
