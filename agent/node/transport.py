"""Latency fixes for pynetdicom's transport: event-driven wake-ups, bulk reads.

pynetdicom runs two polling loops per association: the association thread
sleeps 1 ms between checks for a decoded DIMSE message, and the DUL thread
sleeps ``_run_loop_delay`` (1 ms) whenever it found nothing to do. On a
C-STORE stream those sleeps, not computation, set the time per image.

pynetdicom has no setting for this, so the reactor modules' ``time`` global is
replaced by :class:`ReactorClock`, whose ``sleep`` keeps every timeout but
returns as soon as there is work:

- an association thread waits on an event set by ``EVT_DIMSE_RECV`` (a
  complete message was decoded for it);
- a DUL thread waits in ``select`` on its socket and on a pipe that its
  outgoing queue writes to on every ``put`` (installed at ``EVT_CONN_OPEN``,
  before the association's threads start), so both an incoming PDU and a
  response to send wake it at once, and an idle association costs no CPU.

Everything else on ``time`` is passed through unchanged; an association
without these hooks (an SCU) keeps pynetdicom's own timing.

``AssociationSocket.recv`` reads a PDU in 4 KiB ``recv`` calls appended to a
bytearray (128 calls for a 512 KiB image); :func:`_recv_exact` fills one
preallocated buffer with ``recv_into`` and takes whatever the kernel holds
per call, with the same contract (return early only when the peer closed).
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
import time
import weakref
from typing import Any

from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.transport import AssociationSocket

_WAKE_ATTR = "_hyperct_wake"
_PIPE_ATTR = "_hyperct_pipe"


class _WakingQueue(queue.Queue[Any]):
    """The DUL's outgoing queue: every ``put`` also writes a byte to a pipe."""

    def __init__(self, wake_fd: int) -> None:
        super().__init__()
        self._wake_fd = wake_fd

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        # A full pipe already holds a pending wake-up; a closed one means the
        # association is gone.
        with contextlib.suppress(OSError):
            os.write(self._wake_fd, b"\0")


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
        pipe = dul.__dict__.get(_PIPE_ATTR)
        watched = [raw] if pipe is None else [raw, pipe]
        try:
            readable, _, _ = select.select(watched, [], [], seconds)
        except (OSError, ValueError):
            return
        if pipe is not None and pipe in readable:
            with contextlib.suppress(OSError):
                os.read(pipe, 4096)


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


def on_connection_open(event: Event) -> None:
    """``EVT_CONN_OPEN`` handler: give the DUL a waking outgoing queue.

    Runs before the association's threads start, so nothing can have been
    queued yet and no thread holds the old queue.
    """
    dul = event.assoc.dul
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    old = dul.to_provider_queue
    waking = _WakingQueue(write_fd)
    while not old.empty():
        waking.put(old.get_nowait())
    dul.to_provider_queue = waking
    dul.__dict__[_PIPE_ATTR] = read_fd
    weakref.finalize(dul, _close_fds, read_fd, write_fd)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def on_dimse_received(event: Event) -> None:
    """``EVT_DIMSE_RECV`` handler: wake the association thread for the new message."""
    _wake_event(event.assoc).set()
