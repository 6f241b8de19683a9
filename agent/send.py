"""Outgoing associations (SCU) to configured destinations."""

from __future__ import annotations

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from agent.config import Destination, NodeSettings
from agent.logs import quiet_pynetdicom


def scu(node: NodeSettings) -> AE:
    """An SCU Application Entity with the node's AE title and timeouts."""
    quiet_pynetdicom()
    ae = AE(ae_title=node.ae_title)
    ae.acse_timeout = node.timeouts.acse
    ae.dimse_timeout = node.timeouts.dimse
    ae.network_timeout = node.timeouts.network
    ae.connection_timeout = node.timeouts.connection
    return ae


def echo(node: NodeSettings, dest: Destination) -> str | int:
    """C-ECHO ``dest``; 0 on success, else the status or a short reason."""
    ae = scu(node)
    ae.add_requested_context(Verification)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if assoc.is_rejected and assoc.acceptor.primitive is not None:
        return f"association rejected: {assoc.acceptor.primitive.reason_str}"
    if not assoc.is_established:
        return "no association (peer unreachable or aborted)"
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if "Status" in rsp else "no response"
    finally:
        assoc.release()
