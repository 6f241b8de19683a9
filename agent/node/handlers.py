"""Event handlers of the DICOM node: the only place with domain logic on the receive path.

Every outcome becomes a DIMSE status; no exception crosses the wire. An
instance is acknowledged only after its bytes are fsync'd under their final
name and its row is committed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

from pynetdicom import evt
from pynetdicom.events import Event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agent.logs import get_logger
from agent.node import status
from agent.node.guards import rejection_reason
from agent.node.header import (
    InvalidIdentifier,
    UnreadableHeader,
    is_valid_uid,
    part10_prefix,
    read_header,
)
from agent.node.transport import on_connection_open, on_dimse_received
from storage.audit import audit
from storage.errors import StorageError
from storage.files import InstanceStore, OutOfSpace, StagedFile, derived_rel_path
from storage.ingest import IngestOutcome, InstanceRecord, record_instance

log = get_logger("agent.node")


class NodeHandlers:
    """Handlers bound to one store and one database."""

    def __init__(
        self,
        store: InstanceStore,
        sessions: sessionmaker[Session],
        on_conflict: Literal["keep_first", "replace"] = "keep_first",
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.on_conflict = on_conflict

    def bindings(self) -> list[tuple[evt.InterventionEvent | evt.NotificationEvent, object]]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_CONN_OPEN, on_connection_open),
            (evt.EVT_DIMSE_RECV, on_dimse_received),
        ]

    # -- associations -------------------------------------------------------

    def on_echo(self, event: Event) -> int:
        return status.SUCCESS

    def on_accepted(self, event: Event) -> None:
        assoc = event.assoc
        log.info(
            "association accepted",
            calling_ae=assoc.requestor.ae_title,
            peer=assoc.requestor.address,
        )
        self._audit_safely("association", "accepted", source_ae=assoc.requestor.ae_title)

    def on_rejected(self, event: Event) -> None:
        assoc = event.assoc
        reason = rejection_reason(assoc)
        primitive = assoc.requestor.primitive
        called = str(primitive.called_ae_title) if primitive is not None else None
        log.warning(
            "association rejected",
            calling_ae=assoc.requestor.ae_title,
            called_ae=called,
            peer=assoc.requestor.address,
            reason=reason,
        )
        self._audit_safely(
            "association",
            "rejected",
            source_ae=assoc.requestor.ae_title,
            detail={"reason": reason, "peer": assoc.requestor.address, "called_ae": called},
        )

    def on_aborted(self, event: Event) -> None:
        log.warning("association aborted", calling_ae=event.assoc.requestor.ae_title)

    def on_tls_failure(self, peer: str, reason: str) -> None:
        """A TLS handshake failed: no association exists; a security alert (PS3.15 A.5.3.11)."""
        log.warning("TLS handshake failed", peer=peer, reason=reason)
        self._audit_safely(
            "security_alert", "tls_handshake_failed", detail={"peer": peer, "reason": reason}
        )

    def _audit_safely(self, event_type: str, outcome: str, **fields: object) -> None:
        try:
            with self.sessions.begin() as session:
                audit(session, event_type, outcome, **fields)
        except SQLAlchemyError as exc:
            log.error("audit record not written", error=type(exc).__name__)

    # -- C-STORE --------------------------------------------------------------

    def on_store(self, event: Event) -> int:
        started = time.perf_counter()
        calling_ae = event.assoc.requestor.ae_title
        try:
            code = self._store(event, calling_ae)
        except Exception as exc:  # last line of defence: never let an exception out
            log.error("store failed unexpectedly", error=type(exc).__name__, calling_ae=calling_ae)
            code = status.PROCESSING_FAILURE
        log.debug(
            "store answered",
            status=f"0x{code:04X}",
            ms=round(1e3 * (time.perf_counter() - started), 2),
        )
        return code

    def _store(self, event: Event, calling_ae: str) -> int:
        request = event.request
        dataset = request.DataSet.getvalue()  # type: ignore[union-attr]
        transfer_syntax = event.context.transfer_syntax
        if not is_valid_uid(str(request.AffectedSOPInstanceUID)):
            log.warning("instance refused", reason="Affected SOP Instance UID is not a valid UID")
            return status.INVALID_IDENTIFIER
        try:
            # Written now; hashed and fsync'd on worker threads while the header is read.
            prefix = part10_prefix(
                request.AffectedSOPClassUID, request.AffectedSOPInstanceUID, transfer_syntax
            )
            staged = self.store.stage([prefix, dataset], dataset)
        except OutOfSpace:
            log.warning("instance refused", reason="storage below free-space watermark")
            return status.OUT_OF_RESOURCES
        except OSError as exc:
            log.error("instance not written", error=exc.strerror or type(exc).__name__)
            return status.OUT_OF_RESOURCES
        try:
            header = read_header(dataset, transfer_syntax)
        except (InvalidIdentifier, UnreadableHeader) as exc:
            self.store.discard(staged)
            log.warning("instance refused", reason=str(exc), calling_ae=calling_ae)
            if isinstance(exc, InvalidIdentifier):
                return status.INVALID_IDENTIFIER
            return status.CANNOT_UNDERSTAND
        if header.sop_instance_uid != request.AffectedSOPInstanceUID:
            self.store.discard(staged)
            log.warning(
                "instance refused",
                reason="SOP Instance UID differs from the command's Affected SOP Instance UID",
                calling_ae=calling_ae,
            )
            self._audit_safely(
                "instance_rejected",
                "uid_mismatch",
                source_ae=calling_ae,
                study_instance_uid=header.study_instance_uid,
            )
            return status.INVALID_IDENTIFIER

        rel_path = derived_rel_path(
            header.study_instance_uid,
            header.series_instance_uid,
            header.sop_instance_uid,
            staged.sha256,
        )
        record = InstanceRecord(
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=str(transfer_syntax),
            modality=header.modality,
            series_number=header.series_number,
            series_description=header.series_description,
            body_part_examined=header.body_part_examined,
            study_date=header.study_date,
            instance_number=header.instance_number,
            image_position=header.image_position,
            image_orientation=header.image_orientation,
            pixel_spacing=header.pixel_spacing,
            slice_thickness=header.slice_thickness,
            slice_position=header.slice_position,
            rel_path=rel_path,
            size_bytes=staged.size,
            sha256=staged.sha256,
            calling_ae=calling_ae,
            received_at=datetime.now(UTC),
            study_description=header.study_description,
            image_type=header.image_type,
            protocol_name=header.protocol_name,
            contrast_agent=header.contrast_agent,
            requested_procedure=header.requested_procedure,
            number_of_frames=header.number_of_frames,
        )
        return self._commit(staged, record)

    def _commit(self, staged: StagedFile, record: InstanceRecord) -> int:
        """Record the row and publish the file so that both happen or neither does."""
        with self.store.lock_for(record.rel_path):
            session = self.sessions()
            published = False
            try:
                result = record_instance(session, record, on_conflict=self.on_conflict)
                if result.outcome in (IngestOutcome.STORED, IngestOutcome.CONFLICT_REPLACED):
                    self.store.publish(staged, record.rel_path)
                    published = True
                else:
                    self.store.discard(staged)
                # Same transaction as the row: no second commit on the receive path.
                audit(
                    session,
                    "instance_received",
                    str(result.outcome),
                    source_ae=record.calling_ae,
                    study_instance_uid=record.study_instance_uid,
                    series_instance_uid=record.series_instance_uid,
                    sop_instance_uid=record.sop_instance_uid,
                )
                session.commit()
            except OSError as exc:
                session.rollback()
                self.store.discard(staged)
                log.error("instance not written", error=exc.strerror or type(exc).__name__)
                return status.OUT_OF_RESOURCES
            except (SQLAlchemyError, StorageError) as exc:
                session.rollback()
                if published:
                    self.store.remove(record.rel_path)
                self.store.discard(staged)
                log.error("instance not recorded", error=type(exc).__name__)
                return status.PROCESSING_FAILURE
            finally:
                session.close()

        if result.outcome is IngestOutcome.CONFLICT_REPLACED and result.replaced_rel_path:
            self.store.remove(result.replaced_rel_path)
        if result.outcome in (IngestOutcome.CONFLICT_KEPT, IngestOutcome.CONFLICT_REPLACED):
            log.warning(
                "instance resent with different content",
                policy=self.on_conflict,
                outcome=str(result.outcome),
                calling_ae=record.calling_ae,
            )
        return status.SUCCESS
