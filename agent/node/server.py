"""The listening Application Entity (pynetdicom) configured from ``[node]``."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, cast

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from agent.config import NodeSettings
from agent.logs import quiet_pynetdicom
from agent.node.guards import install_association_guards, set_max_per_ae
from agent.node.handlers import NodeHandlers
from agent.node.pending import DropReport, Pending, PendingGate, read_associate_rq
from agent.node.tls import server_context
from agent.node.transport import (
    install_transport_tuning,
    node_limits,
    set_limits,
    set_prefetched,
)
from hyperct_core.decoders import can_decode

# In order of preference: pynetdicom accepts, of the syntaxes one presentation context
# proposes, the first in this list. Pixels as sent first, then lossless, then lossy.
_UNCOMPRESSED = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]
_COMPRESSED = [
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
    JPEGLSNearLossless,
    JPEG2000,
    JPEGExtended12Bit,
    JPEGBaseline8Bit,
]


def decodable_transfer_syntaxes() -> list[UID]:
    """Transfer syntaxes whose pixel data this installation can decode.

    Offering one it cannot decode would accept instances it can never screen;
    a PACS will fall back to another syntax it proposed instead. The decoders
    (python-gdcm, Pillow, pyjpegls, pydicom's own) are dependencies, so a
    normal installation offers every syntax listed here.
    """
    return [ts for ts in (*_UNCOMPRESSED, *_COMPRESSED) if can_decode(ts)]


def build_ae(settings: NodeSettings, extra_sop_classes: tuple[str, ...] = ()) -> AE:
    """The AE: Verification, [node]'s storage classes, and ``extra_sop_classes``
    (the echo SRs the outcome intake takes, in any uncompressed or deflated syntax)."""
    quiet_pynetdicom()
    install_transport_tuning()
    install_association_guards()
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    set_max_per_ae(ae, settings.max_associations_per_ae)
    set_limits(ae, node_limits(settings.max_pdu, settings.max_dataset_bytes))
    ae.maximum_pdu_size = settings.max_pdu
    ae.acse_timeout = settings.timeouts.acse
    ae.dimse_timeout = settings.timeouts.dimse
    ae.network_timeout = settings.timeouts.network
    ae.connection_timeout = settings.timeouts.connection
    ae.require_called_aet = True
    if settings.allowed_calling_aets:
        ae.require_calling_aet = list(settings.allowed_calling_aets)
    syntaxes = decodable_transfer_syntaxes()
    ae.add_supported_context(Verification)
    for sop_class in settings.accepted_sop_classes:
        ae.add_supported_context(sop_class, syntaxes)
    for sop_class in extra_sop_classes:
        if sop_class not in settings.accepted_sop_classes:
            ae.add_supported_context(sop_class, [*_UNCOMPRESSED, DeflatedExplicitVRLittleEndian])
    return ae


class _GatedRequestHandler(RequestHandler):
    """pynetdicom's handler, giving the new association the PDU the gate already read."""

    server: NodeServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        prefetched = getattr(self.server._handoff, "pdu", None)
        if prefetched and assoc.dul.socket is not None:
            set_prefetched(assoc.dul.socket, prefetched)
        return assoc


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with a gate before association.

    pynetdicom wraps an accepted socket and completes the TLS handshake in the
    one thread that accepts connections, so a client that connects and sends
    nothing stalls every other client; and it counts a connection as an
    association before the peer has said anything. Here each connection's own
    thread first completes the TLS handshake and reads the whole
    A-ASSOCIATE-RQ, each under its short deadline, while the connection counts
    only against the pending bounds of :class:`~agent.node.pending.PendingGate`;
    then pynetdicom takes it over with that PDU already read. Drops go to
    :attr:`report`.
    """

    # socketserver listens with a backlog of 5: a burst of connections beyond it has
    # the kernel drop SYNs, and a real sender's connect then waits for a retransmission.
    request_queue_size = 128
    gate: PendingGate
    report: DropReport | None = None
    association_request_timeout: float = 5.0
    tls_handshake_timeout: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["request_handler"] = _GatedRequestHandler
        self._handoff = threading.local()
        self._admitted: Pending | None = None
        self.gate = PendingGate(64, 8)
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        client, address = self.socket.accept()
        # pynetdicom leaves an accepted socket blocking, so a peer that stops
        # mid-PDU holds its association forever (row 4): bound every read.
        client.settimeout(self.ae.network_timeout)
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # In the accept loop, so that bounds are applied in the order of arrival.
        self._admitted = self.gate.admit(request, _peer(client_address))
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        # Called right after verify_request, in the same (accept) thread.
        entry, self._admitted = self._admitted, None
        thread = threading.Thread(
            target=self._gated_request_thread,
            args=(request, client_address, entry),
            name="PendingConnection",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: drop, never crash the accept loop
            if entry is not None:
                self.gate.release(entry)
            self.shutdown_request(request)

    def _gated_request_thread(
        self, request: Any, client_address: Any, entry: Pending | None
    ) -> None:
        peer = _peer(client_address)
        try:
            pdu, reason, tls = self._await_associate_rq(request)
        finally:
            if entry is not None:
                self.gate.release(entry)
        if pdu is None:
            if entry is not None and entry.displaced:
                reason = entry.displaced
            self.shutdown_request(request)
            if reason is not None:
                self._drop(peer, reason, tls=tls)
            return
        with contextlib.suppress(OSError):
            request.settimeout(self.ae.network_timeout)
        self._handoff.pdu = pdu
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._handoff.pdu = None

    def _await_associate_rq(self, request: Any) -> tuple[bytes | None, str | None, bool]:
        """The A-ASSOCIATE-RQ, or None, why, and whether the TLS handshake failed."""
        if isinstance(request, ssl.SSLSocket):
            seconds = self.tls_handshake_timeout
            try:
                request.settimeout(seconds)
                request.do_handshake()
            except TimeoutError:
                return None, f"no TLS handshake within {seconds:g} s", True
            except (ssl.SSLError, OSError) as exc:
                return None, str(getattr(exc, "reason", None) or type(exc).__name__), True
        try:
            pdu, reason = read_associate_rq(request, self.association_request_timeout)
        except (ssl.SSLError, OSError) as exc:
            return None, str(getattr(exc, "reason", None) or type(exc).__name__), False
        return pdu, reason, False

    def _drop(self, peer: str, reason: str, *, tls: bool = False) -> None:
        if self.report is not None:
            self.report.note(peer, reason, tls=tls)

    def shutdown(self) -> None:
        super().shutdown()
        self.gate.close_all()
        if self.report is not None:
            self.report.close()


def _peer(client_address: Any) -> str:
    return str(client_address[0]) if isinstance(client_address, tuple) else "?"


@dataclass
class RunningNode:
    ae: AE
    server: NodeServer
    tls_server: NodeServer | None = None
    #: What the node stores through (archive backfill's C-GET and WADO-RS use it too).
    handlers: NodeHandlers | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        return None if self.tls_server is None else int(self.tls_server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        if self.tls_server is not None:
            self.tls_server.shutdown()
        self.ae.shutdown()


def _serve(
    ae: AE,
    settings: NodeSettings,
    address: tuple[str, int],
    handlers: NodeHandlers,
    context: ssl.SSLContext | None = None,
) -> NodeServer:
    server = cast(
        NodeServer,
        ae.make_server(
            address,
            ssl_context=context,
            evt_handlers=handlers.bindings(),  # type: ignore[arg-type]
            server_class=NodeServer,
        ),
    )
    server.gate = PendingGate(settings.max_pending_connections, settings.max_pending_per_address)
    server.association_request_timeout = settings.timeouts.association_request
    server.tls_handshake_timeout = settings.timeouts.tls_handshake
    server.report = DropReport(handlers.on_connection_dropped, handlers.on_connections_dropped)
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


def start_node(settings: NodeSettings, handlers: NodeHandlers) -> RunningNode:
    """Bind and start serving in background threads; port 0 picks a free port.

    With ``[node.tls] enabled`` a TLS listener runs beside the plain one; both
    share one AE, so the association limits count both. A TLS file problem is
    a :class:`~agent.errors.ConfigError`, raised before anything listens.
    """
    context = server_context(settings.tls) if settings.tls.enabled else None
    ae = build_ae(settings, handlers.extra_sop_classes())
    server = _serve(ae, settings, (settings.host, settings.port), handlers)
    tls_server = None
    if context is not None:
        try:
            tls_server = _serve(ae, settings, (settings.host, settings.tls.port), handlers, context)
        except OSError:
            server.shutdown()
            ae.shutdown()
            raise
    return RunningNode(ae, server, tls_server, handlers)
