"""C-GET retrieve: the series comes back on the query association (PS3.4 C.4.3).

For archives that cannot open an association back to the agent. The agent
proposes the storage SOP classes the node accepts with the SCP role
(SCP/SCU Role Selection, PS3.7 D.3.3.4), so the archive's C-STORE
sub-operations arrive on this association; each goes through the node's own
receive path (:meth:`agent.node.handlers.NodeHandlers.receive`): the same
checks, the same durable store, the same row.
"""

from __future__ import annotations

from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    StudyRootQueryRetrieveInformationModelGet,
)

from agent.backfill.dimse import associate, outcome, refused, series_identifier
from agent.backfill.types import RetrieveOutcome, SeriesRef
from agent.config import NodeSettings
from agent.config_backfill import Archive
from agent.node.handlers import NodeHandlers
from agent.node.server import decodable_transfer_syntaxes
from agent.send import scu


class GetRetriever:
    """A C-GET SCU that stores what it receives through the node's handlers."""

    def __init__(self, node: NodeSettings, archive: Archive, handlers: NodeHandlers) -> None:
        self.node = node
        self.archive = archive
        self.handlers = handlers

    def _ae(self) -> AE:
        ae = scu(self.node)
        ae.maximum_pdu_size = self.node.max_pdu
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for sop_class in self.node.accepted_sop_classes:
            ae.add_requested_context(sop_class, decodable_transfer_syntaxes())
        return ae

    def retrieve(self, series: SeriesRef) -> RetrieveOutcome:
        roles = [build_role(c, scp_role=True) for c in self.node.accepted_sop_classes]
        assoc = associate(
            self._ae(),
            self.archive,
            ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, self.handlers.on_retrieved_store)],
        )
        if not assoc.is_established:
            return refused(assoc)
        try:
            model = StudyRootQueryRetrieveInformationModelGet
            return outcome(assoc.send_c_get(series_identifier(series), model))
        finally:
            assoc.release()
