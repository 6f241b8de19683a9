"""Connections before association (reliability row 22), over real loopback sockets.

Dozens of connections that never send a byte, plain or TLS, must neither take
association slots nor keep a real sender out; they are dropped after their
short deadline and reported in bounded number. Idle peers connect from
127.0.0.2 and up (all loopback), so that the per-address bound applies to them
and not to the real sender on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from agent.node.pending import DropReport
from agent.node.server import NodeServer
from storage.models import AuditEvent
from tests.agent.conftest import DCMTK_ENV, NODE_AET, NodeUnderTest, dcmtk, start_test_node
from tests.agent.security_support import (
    Pki,
    associate_rq,
    client_context,
    closed_by_peer,
    echo,
    make_pki,
    store_one,
    tls_settings,
)
from tests.support.ct_series import ct_series, write_series

IDLE_SOURCES = [f"127.0.0.{n}" for n in range(2, 7)]  # five addresses
PER_ADDRESS = 8
IDLE = PER_ADDRESS * len(IDLE_SOURCES)  # 40 idle sockets
LONG = 60.0  # a deadline no test run reaches: idle sockets stay open throughout


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextlib.contextmanager
def running(tmp_path: Path, engine: Engine, **node: Any) -> Iterator[NodeUnderTest]:
    settings: dict[str, Any] = {
        "max_associations": 3,
        "max_pending_per_address": PER_ADDRESS,
        **node,
    }
    started = start_test_node(tmp_path, engine, **settings)
    try:
        yield started
    finally:
        started.node.stop()
        started.store.close()


def idle(port: int, source: str) -> socket.socket:
    """A connection from ``source`` that sends nothing (not even a TLS ClientHello)."""
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def idle_crowd(port: int, per_source: int = PER_ADDRESS) -> list[socket.socket]:
    return [idle(port, source) for source in IDLE_SOURCES for _ in range(per_source)]


def wait_pending(server: NodeServer, expected: int, peer: str | None = None) -> int:
    """The listener's pending count, waiting a little for it to reach ``expected``."""
    deadline = time.monotonic() + 10
    while server.gate.count(peer) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.gate.count(peer)


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(10)


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def alerts(node: NodeUnderTest, outcome: str, expected: int = 0) -> list[dict[str, Any]]:
    """Security-alert details, waiting a little for ``expected`` (written by another thread)."""
    deadline = time.monotonic() + 5
    while True:
        with node.sessions() as s:
            rows = s.scalars(
                select(AuditEvent).where(
                    AuditEvent.event_type == "security_alert", AuditEvent.outcome == outcome
                )
            ).all()
            found = [dict(r.detail or {}) for r in rows]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def dcmtk_echo(port: int, calling: str = "PACS", extra: tuple[str, ...] = ()) -> int:
    proc = subprocess.run(
        [dcmtk("echoscu"), *extra, "-aet", calling, "-aec", NODE_AET, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=DCMTK_ENV,
    )
    return proc.returncode


# -- plain listener ------------------------------------------------------------------


def test_idle_sockets_take_no_association_and_a_real_sender_gets_through(
    tmp_path: Path, sqlite_engine: Engine
) -> None:
    with running(tmp_path, sqlite_engine, timeouts={"association_request": LONG}) as node:
        crowd = idle_crowd(node.port)
        try:
            assert wait_pending(node.node.server, IDLE) == IDLE
            # Forty silent peers, three association slots: none of them is taken.
            assert node.node.ae.active_associations == []
            assert dcmtk_echo(node.port) == 0
            files = write_series(ct_series(3, seed=21), tmp_path / "in")
            proc = node.storescu(*files)
            assert proc.returncode == 0, proc.stderr
            assert node.counts() == (3, 1)
            assert store_one(node.port, seed=22) == 0x0000  # pynetdicom as well
            assert all(still_open(sock) for sock in crowd)  # all that while, still waiting
            assert node.node.server.gate.count() == IDLE
        finally:
            close_all(crowd)


def test_idle_sockets_are_dropped_after_the_deadline(tmp_path: Path, sqlite_engine: Engine) -> None:
    with running(tmp_path, sqlite_engine, timeouts={"association_request": 1}) as node:
        crowd = idle_crowd(node.port, per_source=2)
        half = idle(node.port, "127.0.0.7")
        half.sendall(associate_rq()[:40])  # a request that never completes
        try:
            for sock in [*crowd, half]:
                assert closed_by_peer(sock, within=10) is not None
            assert wait_pending(node.node.server, 0) == 0
            assert echo(node.port) == 0x0000
        finally:
            close_all([*crowd, half])
    # Reported sparingly: a few one by one, the rest as one summary (flushed at stop).
    one_by_one = alerts(node, "connection_dropped")
    [summary] = alerts(node, "connections_dropped")
    assert 1 <= len(one_by_one) <= 5
    assert len(one_by_one) + summary["count"] == len(crowd) + 1
    assert all("A-ASSOCIATE-RQ" in str(a["reason"]) for a in one_by_one)


def test_ten_idle_sockets_from_the_senders_own_address_keep_no_one_out(
    tmp_path: Path, sqlite_engine: Engine
) -> None:
    # Every default setting: ten associations, eight pending per address, 5 s deadline.
    node = start_test_node(tmp_path, sqlite_engine)
    crowd = [idle(node.port, "127.0.0.1") for _ in range(10)]
    try:
        assert wait_pending(node.node.server, 8, "127.0.0.1") == 8  # two displaced at once
        assert dcmtk_echo(node.port) == 0
        files = write_series(ct_series(2, seed=41), tmp_path / "in")
        proc = node.storescu(*files)
        assert proc.returncode == 0, proc.stderr
        assert node.counts() == (2, 1)
    finally:
        close_all(crowd)
        node.node.stop()
        node.store.close()


def test_per_address_bound_displaces_the_oldest_from_that_address(
    tmp_path: Path, sqlite_engine: Engine
) -> None:
    with running(
        tmp_path, sqlite_engine, max_pending_per_address=4, timeouts={"association_request": LONG}
    ) as node:
        server = node.node.server
        socks = [idle(node.port, "127.0.0.2") for _ in range(4)]
        try:
            assert wait_pending(server, 4, "127.0.0.2") == 4
            other = idle(node.port, "127.0.0.3")
            socks.append(other)
            assert wait_pending(server, 1, "127.0.0.3") == 1
            newest = idle(node.port, "127.0.0.2")
            socks.append(newest)
            assert closed_by_peer(socks[0], within=5) is not None  # the oldest of .2
            assert all(still_open(sock) for sock in [*socks[1:4], other, newest])
            assert server.gate.count("127.0.0.2") == 4
            assert server.gate.count("127.0.0.3") == 1
            [dropped] = alerts(node, "connection_dropped", 1)
            assert dropped["peer"] == "127.0.0.2"
            assert "from this address" in dropped["reason"]
            assert echo(node.port) == 0x0000
        finally:
            close_all(socks)


def test_a_full_pending_list_gives_way_to_a_new_connection(
    tmp_path: Path, sqlite_engine: Engine
) -> None:
    with running(
        tmp_path, sqlite_engine, max_pending_connections=8, timeouts={"association_request": LONG}
    ) as node:
        crowd = [idle(node.port, "127.0.0.2") for _ in range(8)]
        try:
            assert wait_pending(node.node.server, 8) == 8
            assert dcmtk_echo(node.port) == 0  # displaces the oldest silent one
            assert closed_by_peer(crowd[0], within=5) is not None
            assert still_open(crowd[-1])
        finally:
            close_all(crowd)


def test_the_allow_list_still_applies_while_idle_sockets_wait(
    tmp_path: Path, sqlite_engine: Engine
) -> None:
    with running(
        tmp_path,
        sqlite_engine,
        allowed_calling_aets=["PACS"],
        timeouts={"association_request": LONG},
    ) as node:
        crowd = idle_crowd(node.port)
        try:
            assert wait_pending(node.node.server, IDLE) == IDLE
            assert dcmtk_echo(node.port, calling="STRANGER") != 0
            assert echo(node.port, calling="STRANGER") is None
            assert dcmtk_echo(node.port, calling="PACS") == 0
        finally:
            close_all(crowd)


def test_a_first_pdu_of_another_type_is_aborted_before_association(
    tmp_path: Path, sqlite_engine: Engine
) -> None:
    with running(tmp_path, sqlite_engine) as node:
        sock = idle(node.port, "127.0.0.2")
        try:
            sock.sendall(bytes([0x04, 0, 0, 0, 0, 4]) + b"junk")  # a P-DATA-TF
            assert sock.recv(1) == b"\x07"  # A-ABORT
            assert closed_by_peer(sock, within=5) is not None
        finally:
            sock.close()
        [dropped] = alerts(node, "connection_dropped", 1)
        assert "0x04" in dropped["reason"]
        assert echo(node.port) == 0x0000


# -- TLS listener --------------------------------------------------------------------


def test_idle_tls_sockets_do_not_lock_out_a_real_sender(
    tmp_path: Path, sqlite_engine: Engine, pki: Pki
) -> None:
    with running(
        tmp_path, sqlite_engine, tls=tls_settings(pki), timeouts={"tls_handshake": LONG}
    ) as node:
        tls_server = node.node.tls_server
        assert tls_server is not None
        port = node.node.tls_port
        assert port is not None
        crowd = idle_crowd(port)
        try:
            assert wait_pending(tls_server, IDLE) == IDLE
            assert node.node.ae.active_associations == []
            assert echo(port, client_context(pki)) == 0x0000
            assert store_one(port, client_context(pki), seed=31) == 0x0000
            tls = ("+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca))
            assert dcmtk_echo(port, extra=tls) == 0
            assert echo(node.port) == 0x0000  # the plain listener beside it
            assert all(still_open(sock) for sock in crowd)
        finally:
            close_all(crowd)


def test_idle_tls_sockets_are_dropped_after_the_handshake_deadline(
    tmp_path: Path, sqlite_engine: Engine, pki: Pki
) -> None:
    with running(
        tmp_path, sqlite_engine, tls=tls_settings(pki), timeouts={"tls_handshake": 1}
    ) as node:
        port = node.node.tls_port
        assert port is not None
        crowd = idle_crowd(port, per_source=2)
        try:
            for sock in crowd:
                assert closed_by_peer(sock, within=10) is not None
            assert echo(port, client_context(pki)) == 0x0000
        finally:
            close_all(crowd)
    one_by_one = alerts(node, "tls_handshake_failed")
    [summary] = alerts(node, "connections_dropped")
    assert 1 <= len(one_by_one) <= 5
    assert len(one_by_one) + summary["count"] == len(crowd)
    assert all("TLS handshake" in str(a["reason"]) for a in one_by_one)


# -- the report ----------------------------------------------------------------------


def test_drop_report_passes_a_burst_then_counts() -> None:
    each: list[tuple[str, str, bool]] = []
    summaries: list[tuple[dict[str, int], int]] = []
    report = DropReport(
        lambda peer, reason, tls: each.append((peer, reason, tls)),
        lambda reasons, peers: summaries.append((reasons, peers)),
        burst=3,
        interval=3600,
    )
    for n in range(10):
        report.note(f"10.0.0.{n % 4}", "idle" if n % 2 else "slow", tls=n == 0)
    # The reports run on the reporter's own thread: wait (bounded) for the burst to arrive.
    deadline = time.monotonic() + 10
    while len(each) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert each == [
        ("10.0.0.0", "slow", True),
        ("10.0.0.1", "idle", False),
        ("10.0.0.2", "slow", False),
    ]
    assert summaries == []
    report.close()
    assert summaries == [({"idle": 4, "slow": 3}, 4)]
