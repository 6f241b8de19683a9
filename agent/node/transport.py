r"""Latency fixes for pynetdicom's transport: event-driven wake-ups, bulk reads.

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
Beyond :data:`_PREALLOCATE` bytes the buffer grows as data arrives, so a
declared length costs memory only once the peer has actually sent it.

A connection's A-ASSOCIATE-RQ is read before its association exists
(:mod:`agent.node.pending`); :func:`set_prefetched` leaves those bytes on the
new association's socket, where ``recv`` returns them first and ``ready``
reports them as data waiting.

Guards (reliability rows 4 and 5): pynetdicom's ``_read_pdu_data`` reads the
6-byte PDU header and then ``recv``\ s whatever length it declares, without
comparing it to any maximum. :func:`_read_pdu_data_guarded` replaces it and
refuses, before reading the body, a PDU longer than the AE's
:class:`PduLimits` allow, and a run of P-DATA-TF PDUs whose total exceeds the
dataset cap. Either raises Evt19 (invalid PDU, PS3.8 9.2), so the state
machine sends an A-ABORT and closes the connection.

Two exceptions in pynetdicom's DUL thread kill it and leave the association
hanging: decoding a DIMSE command set that lacks Command Field (found by
``tests/agent/test_security_fuzz.py``) and, generally, any error inside a
state-machine action. The first becomes Evt19 like pynetdicom's own invalid
messages; the second aborts the association the way pynetdicom does when its
reactor loop fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import struct
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import pynetdicom
from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.fsm import StateMachine
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket

from agent.errors import AgentError

_WAKE_ATTR = "_hyperct_wake"
_PIPE_ATTR = "_hyperct_pipe"
_LIMITS_ATTR = "_hyperct_pdu_limits"
_PDATA_ATTR = "_hyperct_pdata_bytes"
_PREFETCH_ATTR = "_hyperct_prefetched"
# Buffers up to this size are allocated at once; larger ones grow with the data.
_PREALLOCATE = 16 << 20
# PDU types of PS3.8 9.3 (A-ASSOCIATE-RQ ... A-ABORT).
_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
_P_DATA_TF = 0x04

_log = logging.getLogger("agent.node.transport")


@dataclass(frozen=True)
class PduLimits:
    """What one association may make this process buffer.

    ``max_pdu_length`` bounds the length field of any received PDU;
    ``max_data_bytes`` bounds the P-DATA-TF bytes of one DIMSE message
    (command and dataset), counted as they arrive.
    """

    max_pdu_length: int
    max_data_bytes: int | None = None


#: For an AE the node did not configure (an SCU): responses are small.
DEFAULT_LIMITS = PduLimits(max_pdu_length=64 << 20)
#: Room for command PDVs and PDV headers beside the dataset itself.
_MESSAGE_OVERHEAD = 1 << 16


def node_limits(max_pdu: int, max_dataset_bytes: int) -> PduLimits:
    """Limits of a listening node that advertises ``max_pdu`` (0: unlimited).

    A peer may not send a P-DATA-TF longer than the maximum length this node
    advertised (PS3.8 D.1); association PDUs are allowed 1 MiB (hundreds of
    presentation contexts). Advertising no maximum lets a peer put a whole
    dataset in one PDU, so the dataset cap bounds it then.
    """
    per_message = max_dataset_bytes + _MESSAGE_OVERHEAD
    pdu = max(max_pdu, 1 << 20) if max_pdu else per_message
    return PduLimits(max_pdu_length=pdu, max_data_bytes=per_message)


def set_limits(ae: Any, limits: PduLimits) -> None:
    ae.__dict__[_LIMITS_ATTR] = limits


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
    return event


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
        if transport is not None and transport.__dict__.get(_PREFETCH_ATTR):
            return
        raw = getattr(transport, "socket", None) if transport is not None else None
        if raw is None or raw.fileno() < 0:
            time.sleep(seconds)
            return
        # TLS may hold decrypted bytes that select() cannot see.
        pending = getattr(raw, "pending", None)
        if pending is not None and pending():
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


def set_prefetched(transport: AssociationSocket, data: bytes) -> None:
    """Bytes read from ``transport`` before its association existed, to be read first."""
    transport.__dict__[_PREFETCH_ATTR] = bytearray(data)


def _take_prefetched(self: AssociationSocket, nr_bytes: int) -> bytearray | None:
    prefetched: bytearray | None = self.__dict__.get(_PREFETCH_ATTR)
    if not prefetched:
        return None
    head = prefetched[:nr_bytes]
    del prefetched[:nr_bytes]
    return head


_original_ready = AssociationSocket.ready


def _ready_or_prefetched(self: AssociationSocket) -> bool:
    """``AssociationSocket.ready``, also true while bytes read before association remain."""
    if self.__dict__.get(_PREFETCH_ATTR):
        return True
    return bool(_original_ready.fget(self))  # type: ignore[attr-defined]


def _recv_exact(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` from the socket, or fewer if the peer closes the connection."""
    head = _take_prefetched(self, nr_bytes)
    if head is not None:
        if len(head) == nr_bytes:
            return head
        return head + _recv_exact(self, nr_bytes - len(head))
    sock = self.socket
    assert sock is not None
    if nr_bytes > _PREALLOCATE:
        return _recv_growing(sock, nr_bytes)
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


def _recv_growing(sock: Any, nr_bytes: int) -> bytearray:
    """Like :func:`_recv_exact`, holding only what has arrived (plus one chunk)."""
    buffer = bytearray()
    chunk = bytearray(_PREALLOCATE)
    view = memoryview(chunk)
    while len(buffer) < nr_bytes:
        n = sock.recv_into(view[: min(_PREALLOCATE, nr_bytes - len(buffer))])
        if n == 0:
            break
        buffer += view[:n]
    del view
    return buffer


def _read_pdu_data_guarded(self: DULServiceProvider) -> None:
    """``DULServiceProvider._read_pdu_data`` that checks the declared length first.

    Same events as pynetdicom's (PS3.8 9.2 state machine): Evt17 when the
    connection closes or times out mid-PDU, Evt19 for an unknown type, an
    over-long PDU or an undecodable one.
    """
    sock = self.socket
    assert sock is not None
    if not self.event_queue.empty():
        # pynetdicom reads before it handles queued events; an abort decided on
        # the last PDU (or the connection's Evt5) goes first, or the read below
        # could wait a full network timeout on a peer that sent a fragment.
        return
    if self.state_machine.current_state == "Sta13":
        # Awaiting the close after an abort: whatever still arrives is ignored
        # (PS3.8 9.2, AA-6), not parsed as PDUs of absurd types and lengths.
        _drain(sock)
        return
    try:
        header = sock.recv(6)
    except OSError:  # includes TimeoutError and ssl.SSLError
        self.event_queue.put("Evt17")
        return
    if len(header) != 6:
        self.event_queue.put("Evt17")
        return
    pdu_type, _, pdu_length = struct.unpack(">BBL", header)
    if pdu_type not in _KNOWN_PDU_TYPES:
        _log.warning("unknown PDU type 0x%02X received; aborting", pdu_type)
        self.event_queue.put("Evt19")
        return
    limits: PduLimits = self.assoc.ae.__dict__.get(_LIMITS_ATTR, DEFAULT_LIMITS)
    if pdu_length > limits.max_pdu_length:
        _log.warning(
            "PDU of %d bytes declared, over the %d accepted; aborting",
            pdu_length,
            limits.max_pdu_length,
        )
        self.event_queue.put("Evt19")
        return
    if pdu_type == _P_DATA_TF and limits.max_data_bytes is not None:
        total = self.__dict__.get(_PDATA_ATTR, 0) + pdu_length
        if total > limits.max_data_bytes:
            _log.warning("DIMSE message over %d bytes; aborting", limits.max_data_bytes)
            self.event_queue.put("Evt19")
            return
        self.__dict__[_PDATA_ATTR] = total
    try:
        body = sock.recv(pdu_length)
    except OSError:
        self.event_queue.put("Evt17")
        return
    if len(body) != pdu_length:
        self.event_queue.put("Evt17")
        return
    try:
        pdu, event = self._decode_pdu(header + body)
    except Exception:  # any decoding failure is an invalid PDU (Evt19), never a crash
        _log.warning("undecodable PDU of type 0x%02X; aborting", pdu_type)
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


def _drain(sock: AssociationSocket) -> None:
    raw = sock.socket
    try:
        data = raw.recv(1 << 16) if raw is not None else b""
    except OSError:
        data = b""
    if not data:
        sock.event_queue.put("Evt17")


_original_receive_primitive = DIMSEServiceProvider.receive_primitive
_original_do_action = StateMachine.do_action


def _receive_primitive_guarded(self: DIMSEServiceProvider, primitive: Any) -> None:
    try:
        _original_receive_primitive(self, primitive)
    except Exception as exc:  # a P-DATA that does not decode as a DIMSE message
        _log.warning("undecodable DIMSE message (%s); aborting", type(exc).__name__)
        self.message = None
        self.dul.event_queue.put("Evt19")


def _do_action_guarded(self: StateMachine, event: str) -> None:
    try:
        _original_do_action(self, event)
    except Exception as exc:
        dul = self.dul
        _log.warning(
            "DUL failed on %s in %s (%s); aborting", event, self.current_state, type(exc).__name__
        )
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        with contextlib.suppress(Exception):
            dul.socket.send(abort.encode())  # type: ignore[union-attr]
        with contextlib.suppress(Exception):
            dul.socket.close()  # type: ignore[union-attr]
        assoc = dul.assoc
        assoc.is_aborted = True
        assoc.is_established = False
        assoc._kill = True
        dul._kill_thread = True


#: The pynetdicom series whose internals the functions above replace; setup.cfg pins
#: the same series. Another release may have moved or changed them.
PYNETDICOM_SERIES = "3.0"


def check_pynetdicom_version() -> None:
    """Refuse a pynetdicom release the replaced internals were not written for."""
    version = pynetdicom.__version__
    if version != PYNETDICOM_SERIES and not version.startswith(PYNETDICOM_SERIES + "."):
        raise AgentError(
            f"pynetdicom {version} is installed but the node supports only "
            f"{PYNETDICOM_SERIES}.* (it replaces pynetdicom internals); "
            "install with -c constraints.txt"
        )


_installed = False
_lock = threading.Lock()


def install_transport_tuning() -> None:
    """Swap the reactor modules' clock and the socket's bulk read (idempotent).

    Raises :class:`AgentError` instead, changing nothing, on an unsupported pynetdicom.
    """
    global _installed
    check_pynetdicom_version()
    with _lock:
        if _installed:
            return
        clock = ReactorClock()
        _association.time = clock  # type: ignore[assignment]
        _dul.time = clock  # type: ignore[assignment]
        AssociationSocket.recv = _recv_exact  # type: ignore[method-assign]
        AssociationSocket.ready = property(_ready_or_prefetched)  # type: ignore[method-assign,assignment]
        DULServiceProvider._read_pdu_data = _read_pdu_data_guarded  # type: ignore[method-assign]
        DIMSEServiceProvider.receive_primitive = _receive_primitive_guarded  # type: ignore[method-assign]
        StateMachine.do_action = _do_action_guarded  # type: ignore[method-assign]
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
    """``EVT_DIMSE_RECV`` handler: wake the association thread for the new message.

    A complete message also restarts the count of P-DATA bytes for the next one.
    """
    event.assoc.dul.__dict__[_PDATA_ATTR] = 0
    _wake_event(event.assoc).set()
