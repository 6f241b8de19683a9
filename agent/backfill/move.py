"""C-MOVE retrieve: the archive sends the series to the agent's own node (PS3.4 C.4.2).

The common case: the archive knows the agent's AE title, host and port, and
its C-STORE sub-operations arrive at the node like any push. The final
C-MOVE response comes after the last sub-operation, and the node acknowledges
an instance only once it is recorded, so what the database holds then is what
arrived.
"""

from __future__ import annotations

from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    StudyRootQueryRetrieveInformationModelMove,
)

from agent.backfill.dimse import associate, outcome, refused, series_identifier
from agent.backfill.types import RetrieveOutcome, SeriesRef
from agent.config import NodeSettings
from agent.config_backfill import Archive
from agent.send import scu


class MoveRetriever:
    """A C-MOVE SCU whose move destination is the node's own AE title."""

    def __init__(self, node: NodeSettings, archive: Archive) -> None:
        self.node = node
        self.archive = archive

    def _ae(self) -> AE:
        ae = scu(self.node)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        return ae

    def retrieve(self, series: SeriesRef) -> RetrieveOutcome:
        assoc = associate(self._ae(), self.archive)
        if not assoc.is_established:
            return refused(assoc)
        try:
            return outcome(
                assoc.send_c_move(
                    series_identifier(series),
                    self.node.ae_title,
                    StudyRootQueryRetrieveInformationModelMove,
                )
            )
        finally:
            assoc.release()
