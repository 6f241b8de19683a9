"""What C-MOVE and C-GET share: the association to an archive and reading the responses."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from agent.backfill.types import RetrieveOutcome, SeriesRef
from agent.config_backfill import Archive
from agent.node.tls import client_context

# Statuses that carry sub-operation counts (PS3.4 C.4.2.1.6, C.4.3.1.3): pending,
# success, warning (0xB000) and the failures that end a retrieve early.
_COUNTS = (
    ("NumberOfCompletedSuboperations", "completed"),
    ("NumberOfFailedSuboperations", "failed"),
    ("NumberOfWarningSuboperations", "warning"),
)


def associate(ae: AE, archive: Archive, **kwargs: Any) -> Association:
    """Request an association with ``archive``, over TLS when it has a ``tls`` table."""
    tls_args = None
    if archive.tls is not None:
        context = client_context(archive.tls, f"[[archives]] {archive.name!r}.tls")
        tls_args = (context, archive.host)
    return ae.associate(
        archive.host, archive.port, ae_title=archive.ae_title, tls_args=tls_args, **kwargs
    )


def series_identifier(series: SeriesRef) -> Dataset:
    """The SERIES level Identifier of a Study Root retrieve (PS3.4 C.4.2.2.1)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = series.study_instance_uid
    ds.SeriesInstanceUID = series.series_instance_uid
    return ds


def refused(assoc: Association) -> RetrieveOutcome:
    """Why no association came up, as an outcome with no status."""
    if assoc.is_rejected:
        return RetrieveOutcome(None, error="association rejected by the archive")
    if assoc.is_aborted:  # pynetdicom also says so of a connection refused
        return RetrieveOutcome(None, error="archive unreachable or association aborted")
    return RetrieveOutcome(None, error="archive unreachable (no association)")


def outcome(responses: Iterable[tuple[Dataset, Dataset | None]]) -> RetrieveOutcome:
    """The final response's status and counts; None status when the exchange broke off."""
    final: Dataset | None = None
    counts = {"completed": 0, "failed": 0, "warning": 0}
    for status, _identifier in responses:
        if "Status" not in status:  # no answer: timeout, abort or a dropped connection
            lost = "no response from the archive (lost or timed out)"
            return RetrieveOutcome(None, error=lost, **counts)
        final = status
        for keyword, name in _COUNTS:
            value = status.get(keyword)
            if value is not None:
                counts[name] = int(value)
    if final is None:
        return RetrieveOutcome(None, error="the archive sent no response")
    code = int(final.Status)
    error = None
    if code not in (0x0000,):
        comment = str(final.get("ErrorComment", "") or "").strip()
        error = f"archive answered 0x{code:04X}" + (f": {comment}" if comment else "")
    return RetrieveOutcome(code, error=error, **counts)
