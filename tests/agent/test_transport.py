"""The transport tuning keeps pynetdicom's contracts: exact reads, early return on close."""

from __future__ import annotations

import socket
import threading
import time

from pynetdicom.transport import AssociationSocket

from agent.node.transport import ReactorClock, _recv_exact, install_transport_tuning


class _Holder:
    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


def test_recv_reads_exactly_across_many_segments() -> None:
    a, b = socket.socketpair()
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one kernel buffer
    sender = threading.Thread(target=lambda: (a.sendall(payload + b"tail"), None))
    sender.start()
    got = _recv_exact(_Holder(b), len(payload))  # type: ignore[arg-type]
    sender.join()
    assert bytes(got) == payload
    assert b.recv(4) == b"tail"  # nothing beyond the requested length was consumed
    a.close()
    b.close()


def test_recv_returns_what_arrived_when_the_peer_closes() -> None:
    a, b = socket.socketpair()
    a.sendall(b"half a PDU")
    a.close()
    got = _recv_exact(_Holder(b), 1000)  # type: ignore[arg-type]
    assert bytes(got) == b"half a PDU"
    b.close()


def test_tuning_is_installed_once_and_keeps_plain_sleeps() -> None:
    install_transport_tuning()
    install_transport_tuning()
    assert AssociationSocket.recv is _recv_exact
    clock = ReactorClock()
    started = time.perf_counter()
    clock.sleep(0.02)  # an ordinary thread sleeps the full time
    assert time.perf_counter() - started >= 0.019
    assert clock.monotonic() > 0  # everything else passes through to time
