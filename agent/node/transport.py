"""Latency fixes for pynetdicom's transport: event-driven wake-ups, bulk reads.

pynetdicom runs two polling loops per association: the association thread
sleeps 1 ms between checks for a decoded DIMSE message, and the DUL thread
sleeps ``_run_loop_delay`` (1 ms) whenever it found nothing to do. On a
C-STORE stream those sleeps, not computation, dominate the time per image.

pynetdicom has no setting for this, so the reactor modules' ``time`` global is
replaced by :class:`ReactorClock`, whose ``sleep`` keeps every timeout but
returns as soon as there is work:

- an association thread waits on an event set by ``EVT_DIMSE_RECV`` (a
  complete message was decoded for it);
- a DUL thread waits in ``select`` on its socket, so incoming PDUs wake it at
  once; while the association is busy it rechecks its outgoing queue every
  0.1 ms instead of every 1 ms, so responses leave promptly; once idle it
  falls back to pynetdicom's own delay and costs no extra CPU.

Everything else on ``time`` is passed through unchanged.

``AssociationSocket.recv`` reads a PDU in 4 KiB ``recv`` calls appended to a
bytearray (128 calls for a 512 KiB image); :func:`_recv_exact` fills one
preallocated buffer with ``recv_into`` and takes whatever the kernel holds
per call, with the same contract (return early only when the peer closed).
"""

from __future__ import annotations

import select
import threading
import time
from typing import Any

from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.transport import AssociationSocket

_BUSY_WINDOW = 0.05  # seconds after the last activity that count as "busy"
_BUSY_POLL = 0.0001  # outgoing-queue recheck interval while busy
_WAKE_ATTR = "_hyperct_wake"
_ACTIVE_ATTR = "_hyperct_active"


def _wake_event(assoc: Association) -> threading.Event:
    event = assoc.__dict__.get(_WAKE_ATTR)
    if event is None:
        event = assoc.__dict__.setdefault(_WAKE_ATTR, threading.Event())
    return event  # type: ignore[no-any-return]


class ReactorClock:
    """A stand-in for :mod:`time` inside pynetdicom's reactor modules."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, DULServiceProvider):
            self._dul_wait(thread, seconds)
        elif isinstance(thread, Association) and seconds <= 0.01:
            event = _wake_event(thread)
            event.wait(seconds)
            event.clear()
        else:
            time.sleep(seconds)

    @staticmethod
    def _dul_wait(dul: DULServiceProvider, seconds: float) -> None:
        transport = dul.socket
        raw = getattr(transport, "socket", None) if transport is not None else None
        if raw is None or raw.fileno() < 0:
            time.sleep(seconds)
            return
        now = time.monotonic()
        busy = now - dul.__dict__.get(_ACTIVE_ATTR, 0.0) < _BUSY_WINDOW
        timeout = min(seconds, _BUSY_POLL) if busy else seconds
        try:
            readable, _, _ = select.select([raw], [], [], timeout)
        except (OSError, ValueError):
            return
        if readable or not dul.to_provider_queue.empty():
            dul.__dict__[_ACTIVE_ATTR] = now


def _recv_exact(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` from the socket, or fewer if the peer closes the connection."""
    sock = self.socket
    assert sock is not None
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    received = 0
    while received < nr_bytes:
        n = sock.recv_into(view[received:])
        if n == 0:
            del view
            return buffer[:received]
        received += n
    return buffer


_installed = False
_lock = threading.Lock()


def install_transport_tuning() -> None:
    """Swap the reactor modules' clock and the socket's bulk read (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        clock = ReactorClock()
        _association.time = clock  # type: ignore[attr-defined]
        _dul.time = clock  # type: ignore[attr-defined]
        AssociationSocket.recv = _recv_exact  # type: ignore[method-assign]
        _installed = True


def on_dimse_received(event: Event) -> None:
    """``EVT_DIMSE_RECV`` handler: wake the association thread for the new message."""
    _wake_event(event.assoc).set()
    dul = event.assoc.dul
    dul.__dict__[_ACTIVE_ATTR] = time.monotonic()
