"""The listening Application Entity (pynetdicom) configured from ``[node]``."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.pixels import get_decoder
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
from agent.node.handlers import NodeHandlers
from agent.node.transport import install_transport_tuning

_UNCOMPRESSED = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]
_COMPRESSED = [
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
]


def decodable_transfer_syntaxes() -> list[UID]:
    """Transfer syntaxes whose pixel data this installation can decode.

    Offering one it cannot decode would accept instances it can never screen;
    a PACS will fall back to another syntax it proposed instead.
    """
    accepted = list(_UNCOMPRESSED)
    for ts in _COMPRESSED:
        if ts == DeflatedExplicitVRLittleEndian:
            accepted.append(ts)
            continue
        try:
            if get_decoder(ts).is_available:
                accepted.append(ts)
        except Exception:
            continue
    return accepted


def build_ae(settings: NodeSettings) -> AE:
    quiet_pynetdicom()
    install_transport_tuning()
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
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


@dataclass
class RunningNode:
    ae: AE
    server: ThreadedAssociationServer

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()


def start_node(settings: NodeSettings, handlers: NodeHandlers) -> RunningNode:
    """Bind and start serving in background threads; port 0 picks a free port."""
    ae = build_ae(settings)
    server = ae.start_server(
        (settings.host, settings.port),
        block=False,
        evt_handlers=handlers.bindings(),  # type: ignore[arg-type]
    )
    return RunningNode(ae, server)
