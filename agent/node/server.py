"""The listening Application Entity (pynetdicom) configured from ``[node]``."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
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
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from agent.config import NodeSettings
from agent.logs import quiet_pynetdicom
from agent.node.guards import install_association_guards, set_max_per_ae
from agent.node.handlers import NodeHandlers
from agent.node.tls import server_context
from agent.node.transport import install_transport_tuning, node_limits, set_limits
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


def build_ae(settings: NodeSettings) -> AE:
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
    return ae


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved off the accept loop.

    pynetdicom wraps an accepted socket and completes the handshake in the one
    thread that accepts connections, so a client that connects and sends
    nothing stalls every other client. Here the handshake runs in the
    connection's own thread under the network timeout, at most
    ``max_associations`` at once; a failed one closes the connection before
    any association exists and is reported to ``on_handshake_failure``.
    """

    on_handshake_failure: Callable[[str, str], None] | None = None

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

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            return
        super().process_request_thread(request, client_address)

    def _handshake(self, request: ssl.SSLSocket, client_address: Any) -> bool:
        peer = str(client_address[0]) if isinstance(client_address, tuple) else "?"
        slots = self.__dict__.setdefault(
            "_handshakes", threading.BoundedSemaphore(self.ae.maximum_associations)
        )
        if not slots.acquire(blocking=False):
            self._refuse(request, peer, "too many TLS handshakes in progress")
            return False
        try:
            request.settimeout(self.ae.network_timeout)
            request.do_handshake()
            return True
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self._refuse(request, peer, str(reason))
            return False
        finally:
            slots.release()

    def _refuse(self, request: socket.socket, peer: str, reason: str) -> None:
        self.shutdown_request(request)
        if self.on_handshake_failure is not None:
            self.on_handshake_failure(peer, reason)


@dataclass
class RunningNode:
    ae: AE
    server: ThreadedAssociationServer
    tls_server: ThreadedAssociationServer | None = None

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
    server.on_handshake_failure = handlers.on_tls_failure
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
    ae = build_ae(settings)
    server = _serve(ae, (settings.host, settings.port), handlers)
    tls_server = None
    if context is not None:
        try:
            tls_server = _serve(ae, (settings.host, settings.tls.port), handlers, context)
        except OSError:
            server.shutdown()
            ae.shutdown()
            raise
    return RunningNode(ae, server, tls_server)
