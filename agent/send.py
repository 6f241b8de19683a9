"""Outgoing associations (SCU) to configured destinations."""

from __future__ import annotations

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import

from agent.config import Destination, NodeSettings
from agent.logs import quiet_pynetdicom
from agent.node.tls import client_context


def scu(node: NodeSettings) -> AE:
    """An SCU Application Entity with the node's AE title and timeouts."""
    quiet_pynetdicom()
    ae = AE(ae_title=node.ae_title)
    ae.acse_timeout = node.timeouts.acse
    ae.dimse_timeout = node.timeouts.dimse
    ae.network_timeout = node.timeouts.network
    ae.connection_timeout = node.timeouts.connection
    return ae


def associate(ae: AE, dest: Destination) -> Association:
    """Request an association with ``dest``, over TLS when it has a ``tls`` table."""
    tls_args = None
    if dest.tls is not None:
        context = client_context(dest.tls, f"[[destinations]] {dest.name!r}.tls")
        tls_args = (context, dest.host)
    return ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)


def check_destinations(destinations: list[Destination]) -> None:
    """Load every destination's TLS files now: a bad one is a ConfigError at start."""
    for dest in destinations:
        if dest.tls is not None:
            client_context(dest.tls, f"[[destinations]] {dest.name!r}.tls")


def echo(node: NodeSettings, dest: Destination) -> str | int:
    """C-ECHO ``dest``; 0 on success, else the status or a short reason."""
    ae = scu(node)
    ae.add_requested_context(Verification)
    assoc = associate(ae, dest)
    if assoc.is_rejected and assoc.acceptor.primitive is not None:
        return f"association rejected: {assoc.acceptor.primitive.reason_str}"
    if not assoc.is_established:
        return "no association (peer unreachable or aborted)"
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if "Status" in rsp else "no response"
    finally:
        assoc.release()
