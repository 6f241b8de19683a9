"""Connections before association: bounded, short-lived, and counted apart.

pynetdicom starts an association thread for every accepted connection and
counts it against ``maximum_associations`` at once, before the peer has sent
a byte; a connection that stays silent holds its slot until the ARTIM timer
(the ACSE timeout) fires. A handful of silent sockets thus locks every real
sender out, before any AE title is known, so neither the allow-list nor the
per-AE limit can apply.

Here a connection is *pending* from its accept until its whole
A-ASSOCIATE-RQ (PS3.8 9.3.2) has arrived: the TLS handshake (PS3.15 B.1) and
the request must each complete within their own short deadline, and only
then does pynetdicom see the connection and count it as an association.
Pending connections are bounded per listener and per peer address; when a
bound is reached, a new connection displaces the oldest pending one (from the
same address, for the per-address bound), so a sender that speaks at once
still gets through while a crowd of silent sockets waits out its deadline.

What is dropped goes through :class:`DropReport`, which passes a few drops
per interval on one by one and counts the rest into one summary, so an attack
costs the log and the audit trail a bounded number of lines.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import struct
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from pynetdicom.pdu import A_ABORT_RQ

#: PDU type of the A-ASSOCIATE-RQ (PS3.8 9.3.2).
A_ASSOCIATE_RQ_TYPE = 0x01
#: The longest A-ASSOCIATE-RQ read before association; hundreds of presentation
#: contexts fit in a small fraction of it.
MAX_ASSOCIATE_RQ = 1 << 20
_HEADER = 6

_log = logging.getLogger("agent.node.pending")


@dataclass(eq=False)
class Pending:
    """One connection awaiting its TLS handshake or its A-ASSOCIATE-RQ."""

    sock: socket.socket
    peer: str
    #: Why it was hung up to make room for a newer connection, if it was.
    displaced: str | None = None


class PendingGate:
    """Admission of connections before association, bounded overall and per address.

    A bound reached is never a reason to refuse the new connection: the oldest
    pending one (from the same address for the per-address bound) has had the
    longest to speak and is hung up instead. A silent crowd thus keeps no one
    out, not even a sender sharing its address; it only churns.
    """

    def __init__(self, max_pending: int, max_per_address: int) -> None:
        self.max_pending = max_pending
        self.max_per_address = max_per_address
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, Pending] = OrderedDict()
        self._per_address: Counter[str] = Counter()

    def admit(self, sock: socket.socket, peer: str) -> Pending:
        """Register ``sock`` as pending, displacing the oldest where a bound is reached."""
        entry = Pending(sock, peer)
        displaced: list[Pending] = []
        with self._lock:
            if self._per_address[peer] >= self.max_per_address:
                oldest = next(e for e in self._pending.values() if e.peer == peer)
                oldest.displaced = (
                    f"displaced: {self.max_per_address} connections pending from this address"
                )
                displaced.append(self._remove(oldest))
            if len(self._pending) >= self.max_pending:
                oldest = next(iter(self._pending.values()))
                oldest.displaced = f"displaced: {self.max_pending} connections pending"
                displaced.append(self._remove(oldest))
            self._pending[id(sock)] = entry
            self._per_address[peer] += 1
        for old in displaced:
            hang_up(old.sock)
        return entry

    def _remove(self, entry: Pending) -> Pending:
        del self._pending[id(entry.sock)]
        self._forget(entry)
        return entry

    def release(self, entry: Pending) -> None:
        """``entry`` is no longer pending (handed over, dropped or displaced)."""
        with self._lock:
            if self._pending.get(id(entry.sock)) is entry:
                self._remove(entry)

    def _forget(self, entry: Pending) -> None:
        self._per_address[entry.peer] -= 1
        if self._per_address[entry.peer] <= 0:
            del self._per_address[entry.peer]

    def count(self, peer: str | None = None) -> int:
        with self._lock:
            return len(self._pending) if peer is None else self._per_address[peer]

    def close_all(self) -> None:
        """Hang up every pending connection (the listener is stopping)."""
        with self._lock:
            entries = list(self._pending.values())
        for entry in entries:
            hang_up(entry.sock)


def hang_up(sock: socket.socket) -> None:
    """Wake whichever thread reads ``sock``; its own thread closes it.

    The plain socket's ``shutdown`` is called even on a TLS socket: the TLS
    one would drop its SSL object under a thread that may be using it.
    """
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _read(sock: socket.socket, size: int, deadline: float) -> tuple[bytearray, str]:
    """Up to ``size`` bytes before ``deadline``; with fewer, why: ``"timeout"`` or ``"closed"``."""
    data = bytearray()
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, "timeout"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(size - len(data), 1 << 16))
        except TimeoutError:
            return data, "timeout"
        except OSError:
            return data, "closed"
        if not chunk:
            return data, "closed"
        data += chunk
    return data, ""


def _abort(sock: socket.socket) -> None:
    """Send an A-ABORT (PS3.8 9.3.8, service-provider source), as AA-1 in Sta2 does."""
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = 0x00
    with contextlib.suppress(OSError, ValueError):
        sock.settimeout(1.0)
        sock.sendall(pdu.encode())


def read_associate_rq(sock: socket.socket, seconds: float) -> tuple[bytes | None, str | None]:
    """Read a whole A-ASSOCIATE-RQ PDU within ``seconds``.

    Returns the PDU, or None with why it was dropped (None as well when the
    peer closed without sending anything: a port probe, not worth a report).
    A first PDU of another type, or one declaring more than
    :data:`MAX_ASSOCIATE_RQ` bytes, is answered with an A-ABORT (PS3.8 9.2,
    state Sta2) before it is read.
    """
    deadline = time.monotonic() + seconds
    header, why = _read(sock, _HEADER, deadline)
    if why:
        if why == "closed" and not header:
            return None, None
        return None, _incomplete(why, seconds)
    pdu_type, _, length = struct.unpack(">BBL", header)
    if pdu_type != A_ASSOCIATE_RQ_TYPE:
        _abort(sock)
        return None, f"first PDU of type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ"
    if length > MAX_ASSOCIATE_RQ:
        _abort(sock)
        return None, f"A-ASSOCIATE-RQ of {length} bytes declared (limit {MAX_ASSOCIATE_RQ})"
    body, why = _read(sock, length, deadline)
    if why:
        return None, _incomplete(why, seconds)
    return bytes(header + body), None


def _incomplete(why: str, seconds: float) -> str:
    if why == "timeout":
        return f"no complete A-ASSOCIATE-RQ within {seconds:g} s"
    return "connection closed during the A-ASSOCIATE-RQ"


@dataclass
class _Window:
    started: float
    shown: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    peers: set[str] = field(default_factory=set)


#: Distinct reasons a summary keeps apart; the rest are counted as "other".
_MAX_REASONS = 16
_MAX_PEERS = 1024


class DropReport:
    """Reports dropped pre-association connections without flooding.

    In each ``interval`` the first ``burst`` drops go to ``each(peer, reason,
    tls)`` one by one; the rest are counted, and ``summary(reasons, peers)``
    receives the counts (by reason) and the number of distinct addresses once
    the interval is over. Both run in a thread of their own: they log and
    write audit rows, which must not hold up the loop that accepts
    connections.
    """

    def __init__(
        self,
        each: Callable[[str, str, bool], None],
        summary: Callable[[dict[str, int], int], None],
        *,
        burst: int = 5,
        interval: float = 60.0,
    ) -> None:
        self._each = each
        self._summary = summary
        self.burst = burst
        self.interval = interval
        self._lock = threading.Lock()
        self._window = _Window(time.monotonic())
        self._timer: threading.Timer | None = None
        self._closed = False
        self._calls: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="DropReport", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                call()
            except Exception:  # a report that failed must not end the reporting
                _log.exception("reporting a dropped connection failed")

    def note(self, peer: str, reason: str, *, tls: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._window.started >= self.interval and self._timer is None:
                self._window = _Window(now)
            window = self._window
            if window.shown < self.burst:
                window.shown += 1
                show = True
            else:
                show = False
                key = (
                    reason
                    if reason in window.reasons or len(window.reasons) < _MAX_REASONS
                    else "other"
                )
                window.reasons[key] += 1
                if len(window.peers) < _MAX_PEERS:
                    window.peers.add(peer)
                if self._timer is None and not self._closed:
                    delay = max(0.0, window.started + self.interval - now)
                    self._timer = threading.Timer(delay, self.flush)
                    self._timer.daemon = True
                    self._timer.start()
        if show:
            self._calls.put(lambda: self._each(peer, reason, tls))

    def flush(self) -> None:
        """Report what is counted so far and start a new interval."""
        with self._lock:
            window = self._window
            self._window = _Window(time.monotonic())
            self._timer = None
        if window.reasons:
            reasons, peers = dict(window.reasons), len(window.peers)
            self._calls.put(lambda: self._summary(reasons, peers))

    def close(self, wait: float = 10.0) -> None:
        """Report what is counted and stop, waiting up to ``wait`` s for the reports."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            timer = self._timer
        if timer is not None:
            timer.cancel()
        self.flush()
        self._calls.put(None)
        self._worker.join(wait)
