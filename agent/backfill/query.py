"""C-FIND SCU on an archive's Study Root Query/Retrieve Information Model (PS3.4 C.6.2.1).

One association serves the whole plan; it is requested again once when the
archive drops it, and an archive that cannot be reached or stops answering
is an :class:`~agent.backfill.find.ArchiveError` in one line. Only the keys
of :data:`~agent.backfill.find.STUDY_KEYS` and ``SERIES_KEYS`` are asked:
no patient attribute is requested, so none comes back to be logged.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    StudyRootQueryRetrieveInformationModelFind,
)

from agent.backfill.find import (
    SERIES_KEYS,
    STUDY_KEYS,
    ArchiveError,
    FindResult,
    TimeRange,
    keep_only,
)
from agent.config import NodeSettings
from agent.config_backfill import Archive
from agent.node.tls import client_context
from agent.send import scu

_PENDING = (0xFF00, 0xFF01)
# The archive stopped matching before the end (PS3.4 C.4.1.1.4): Cancel, or
# Refused: Out of Resources, which archives send for "too many matches".
_CUT_SHORT = (0xFE00, 0xA700)


class StudyRootFind:
    """C-FIND SCU (PS3.4 C.4.1) at STUDY and SERIES level of the study root model."""

    def __init__(self, archive: Archive, node: NodeSettings) -> None:
        self.archive = archive
        self._ae: AE = scu(node)
        self._ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self._assoc: Association | None = None

    # -- the Finder protocol ----------------------------------------------------------

    def studies(self, day: str, times: TimeRange | None) -> FindResult:
        ds = _identifier("STUDY", STUDY_KEYS)
        ds.StudyDate = day
        if times is not None:
            ds.StudyTime = times.dicom()
        return self._find(ds, STUDY_KEYS)

    def series(self, study_instance_uid: str) -> FindResult:
        ds = _identifier("SERIES", SERIES_KEYS)
        ds.StudyInstanceUID = study_instance_uid
        return self._find(ds, SERIES_KEYS)

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    # -- the association ---------------------------------------------------------------

    def _where(self) -> str:
        a = self.archive
        return f"archive {a.name!r} ({a.ae_title}@{a.host}:{a.port})"

    def _association(self) -> Association:
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        a = self.archive
        tls_args = None
        if a.tls is not None:
            tls_args = (client_context(a.tls, f"[[archives]] {a.name!r}.tls"), a.host)
        assoc = self._ae.associate(a.host, a.port, ae_title=a.ae_title, tls_args=tls_args)
        if assoc.is_established:
            self._assoc = assoc
            return assoc
        if assoc.is_rejected and assoc.acceptor.primitive is not None:
            why = f"association rejected: {assoc.acceptor.primitive.reason_str}"
        else:  # pynetdicom reports a refused connection as an abort too
            why = (
                "no association: connection refused or aborted"
                " (archive down, or it does not accept this AE title)"
            )
        raise ArchiveError(f"{self._where()}: {why}")

    def _find(self, identifier: Dataset, keys: Sequence[str]) -> FindResult:
        for attempt in (1, 2):
            assoc = self._association()
            result = self._responses(assoc, identifier, keys)
            if result is not None:
                return result
            self._assoc = None
            if assoc.is_established:
                assoc.abort()
            if attempt == 2:
                break
        raise ArchiveError(f"{self._where()}: stopped answering C-FIND (timeout or abort)")

    def _responses(
        self, assoc: Association, identifier: Dataset, keys: Sequence[str]
    ) -> FindResult | None:
        """The answers, or None when the archive stopped answering mid-query."""
        result = FindResult()
        model = StudyRootQueryRetrieveInformationModelFind
        for status, answer in assoc.send_c_find(identifier, model):
            if "Status" not in status:
                return None
            code = int(status.Status)
            if code in _PENDING:
                if answer is None:
                    result.malformed += 1
                else:
                    result.answers.append(keep_only(answer, keys))
                continue
            if code == 0x0000:
                return result
            if code in _CUT_SHORT:
                result.complete = False
                return result
            comment = str(status.get("ErrorComment", "") or "").strip()
            raise ArchiveError(
                f"{self._where()} refused C-FIND at {identifier.QueryRetrieveLevel} level:"
                f" status 0x{code:04X}" + (f" ({comment[:120]})" if comment else "")
            )
        return None


def _identifier(level: str, keys: Sequence[str]) -> Dataset:
    """A request identifier asking for ``keys`` (universal matching, PS3.4 C.2.2.2.3)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key in keys:
        setattr(ds, key, None)
    return ds
