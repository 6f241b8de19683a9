"""Event handlers of the DICOM node: the only place with domain logic on the receive path.

Every outcome becomes a DIMSE status; no exception crosses the wire. An
instance is acknowledged only after its bytes are fsync'd under their final
name and its row is committed. A refusal says why in the response's Error
Comment (PS3.7 Annex C) and leaves nothing behind: the temp file a refused
instance was staged in is removed before the answer goes out, whatever the
path that refused it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agent.config import NodeSettings
from agent.dicom.errors import BeyondLimits, InvalidIdentifier, UnreadableHeader
from agent.dicom.header import read_header
from agent.dicom.limits import DEFAULT_LIMITS, ReceiveLimits
from agent.dicom.part10 import part10_prefix
from agent.dicom.uid import is_valid_uid
from agent.intake.record import instance_record
from agent.logs import get_logger
from agent.node import status
from agent.node.guards import rejection_reason
from agent.node.transport import on_connection_open, on_dimse_received
from agent.pseudonym import Pseudonymizer
from storage.audit import audit
from storage.errors import InvalidRecord, StorageError
from storage.files import InstanceStore, OutOfSpace, StagedFile, derived_rel_path
from storage.ingest import IngestOutcome, InstanceRecord, record_instance

if TYPE_CHECKING:
    from agent.outcomes.intake import EchoReportIntake

log = get_logger("agent.node")


def receive_limits(settings: NodeSettings) -> ReceiveLimits:
    """What ``[node]`` allows one received instance to hold."""
    return ReceiveLimits(
        max_dataset_bytes=settings.max_dataset_bytes,
        max_frame_pixels=settings.max_frame_pixels,
        max_frames=settings.max_frames,
    )


def _refusal(code: int, reason: str) -> Dataset:
    """A failure status with its reason as Error Comment (PS3.7 Annex C; LO: 64 characters)."""
    answer = Dataset()
    answer.Status = code
    answer.ErrorComment = reason.encode("ascii", "replace").decode()[:64]
    return answer


class NodeHandlers:
    """Handlers bound to one store and one database."""

    def __init__(
        self,
        store: InstanceStore,
        sessions: sessionmaker[Session],
        on_conflict: Literal["keep_first", "replace"] = "keep_first",
        limits: ReceiveLimits = DEFAULT_LIMITS,
        commit_timeout: float | None = None,
        echo_reports: EchoReportIntake | None = None,
        pseudonymizer: Pseudonymizer | None = None,
    ) -> None:
        self.store = store
        # Built once at start from the installation key; None records no pseudonyms.
        self.pseudonymizer = pseudonymizer
        # Echo SRs (TID 5200) go to the outcome intake instead of the instance store.
        self.echo_reports = echo_reports
        self._echo_sop_classes: tuple[str, ...] = ()
        if echo_reports is not None:
            from agent.outcomes.echo_sr import ECHO_SR_SOP_CLASSES

            self._echo_sop_classes = ECHO_SR_SOP_CLASSES
        self.sessions = sessions
        self.on_conflict = on_conflict
        self.limits = limits
        # The database's own timeouts (lock_timeout, statement_timeout, SQLite's busy
        # timeout) need a server that answers; a frozen one never does. Recording runs
        # on a worker the C-STORE waits for at most this long (None: inline).
        self.commit_timeout = commit_timeout
        # More workers than the default association limit: a live database never queues.
        self._recorders = ThreadPoolExecutor(max_workers=16, thread_name_prefix="record")

    def extra_sop_classes(self) -> tuple[str, ...]:
        """Storage SOP classes accepted besides [node]'s: the echo SRs, with an intake."""
        return self._echo_sop_classes

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

    def on_connection_dropped(self, peer: str, reason: str, tls: bool) -> None:
        """A connection dropped before association (TLS handshake or A-ASSOCIATE-RQ)."""
        if tls:
            self.on_tls_failure(peer, reason)
            return
        log.warning("connection dropped before association", peer=peer, reason=reason)
        self._audit_safely(
            "security_alert", "connection_dropped", detail={"peer": peer, "reason": reason}
        )

    def on_connections_dropped(self, reasons: dict[str, int], peers: int) -> None:
        """Drops beyond those reported one by one, counted over an interval."""
        total = sum(reasons.values())
        log.warning(
            "connections dropped before association",
            count=total,
            addresses=peers,
            reasons=reasons,
        )
        self._audit_safely(
            "security_alert",
            "connections_dropped",
            detail={"count": total, "addresses": peers, "reasons": reasons},
        )

    def _audit_safely(self, event_type: str, outcome: str, **fields: object) -> None:
        """Write an audit record; on the association's thread it waits at most commit_timeout.

        Association events are audited on the thread that serves the association: a
        database that answers nothing must not hold the association (and its C-STOREs).
        """
        if self.commit_timeout is None:
            self._write_audit(event_type, outcome, fields)
            return
        writing = self._recorders.submit(self._write_audit, event_type, outcome, fields)
        try:
            writing.result(timeout=self.commit_timeout)
        except FutureTimeout:
            log.error("audit record not written in time", audit_event=event_type, outcome=outcome)

    def _write_audit(self, event_type: str, outcome: str, fields: dict[str, Any]) -> None:
        try:
            with self.sessions.begin() as session:
                audit(session, event_type, outcome, **fields)
        except SQLAlchemyError as exc:
            log.error("audit record not written", error=type(exc).__name__)

    # -- C-STORE --------------------------------------------------------------

    def on_store(self, event: Event) -> int | Dataset:
        return self.receive(event, event.assoc.requestor.ae_title)

    def on_retrieved_store(self, event: Event) -> int | Dataset:
        """A C-STORE sub-operation of our own C-GET (PS3.4 C.4.3): the archive sends."""
        return self.receive(event, event.assoc.acceptor.ae_title)

    def receive(self, event: Event, calling_ae: str) -> int | Dataset:
        """Stage, record and publish one instance from ``calling_ae``; the answer's status."""
        return self._answer(lambda: self._store(event, calling_ae), calling_ae)

    def receive_encoded(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: UID,
        dataset: bytes,
        calling_ae: str,
    ) -> int | Dataset:
        """The same for an instance that came another way (WADO-RS): its UIDs and data set."""

        def store() -> int | Dataset:
            return self._store_encoded(
                sop_class_uid, sop_instance_uid, transfer_syntax, dataset, calling_ae
            )

        return self._answer(store, calling_ae)

    def _answer(self, store: Callable[[], int | Dataset], calling_ae: str) -> int | Dataset:
        started = time.perf_counter()
        try:
            answer = store()
        except Exception as exc:  # last line of defence: never let an exception out
            log.error("store failed unexpectedly", error=type(exc).__name__, calling_ae=calling_ae)
            answer = status.PROCESSING_FAILURE
        log.debug(
            "store answered",
            status=f"0x{int(answer if isinstance(answer, int) else answer.Status):04X}",
            ms=round(1e3 * (time.perf_counter() - started), 2),
        )
        return answer

    def _store(self, event: Event, calling_ae: str) -> int | Dataset:
        request = cast(C_STORE, event.request)  # EVT_C_STORE's request is a C-STORE
        # A C-STORE-RQ carries both UIDs (PS3.7 9.3.1.1).
        return self._store_encoded(
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            event.context.transfer_syntax,
            request.DataSet.getvalue(),  # type: ignore[union-attr]
            calling_ae,
        )

    def _store_encoded(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: UID,
        dataset: bytes,
        calling_ae: str,
    ) -> int | Dataset:
        if not is_valid_uid(sop_instance_uid):
            log.warning("instance refused", reason="Affected SOP Instance UID is not a valid UID")
            return status.INVALID_IDENTIFIER
        try:
            # Written now; hashed and fsync'd on worker threads while the header is read.
            # The instance UID was checked above.
            prefix = part10_prefix(UID(sop_class_uid), UID(sop_instance_uid), transfer_syntax)
            staged = self.store.stage([prefix, dataset], dataset)
        except OutOfSpace:
            log.warning("instance refused", reason="storage below free-space watermark")
            return status.OUT_OF_RESOURCES
        except OSError as exc:
            log.error("instance not written", error=exc.strerror or type(exc).__name__)
            return status.OUT_OF_RESOURCES
        try:
            if sop_class_uid in self._echo_sop_classes:
                return self._receive_echo_report(
                    staged, prefix + dataset, sop_class_uid, sop_instance_uid, calling_ae
                )
            return self._record(staged, sop_instance_uid, dataset, transfer_syntax, calling_ae)
        finally:
            # Whatever the outcome, the temp file goes now: published, it is already
            # gone; refused or failed, nothing may stay in .tmp until the next start
            # (repeated refusals would fill the disk up to the watermark).
            self.store.discard(staged)

    def _record(
        self,
        staged: StagedFile,
        sop_instance_uid: str,
        dataset: bytes,
        transfer_syntax: UID,
        calling_ae: str,
    ) -> int | Dataset:
        try:
            header = read_header(dataset, transfer_syntax, self.limits)
        except (InvalidIdentifier, UnreadableHeader) as exc:
            log.warning("instance refused", reason=str(exc), calling_ae=calling_ae)
            if isinstance(exc, InvalidIdentifier):
                return _refusal(status.INVALID_IDENTIFIER, str(exc))
            if isinstance(exc, BeyondLimits):
                return _refusal(status.BEYOND_LIMITS, str(exc))
            return _refusal(status.CANNOT_UNDERSTAND, str(exc))
        if header.sop_instance_uid != sop_instance_uid:
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
        try:
            record = instance_record(
                header,
                transfer_syntax_uid=str(transfer_syntax),
                rel_path=rel_path,
                size_bytes=staged.size,
                sha256=staged.sha256,
                calling_ae=calling_ae,
                received_at=datetime.now(UTC),
                pseudonymizer=self.pseudonymizer,
            )
        except InvalidIdentifier as exc:
            log.warning("instance refused", reason=str(exc), calling_ae=calling_ae)
            return _refusal(status.INVALID_IDENTIFIER, str(exc))
        except InvalidRecord:
            # e.g. positions so large that their projection on the slice normal overflows
            log.warning("instance refused", reason="attributes cannot be recorded")
            return _refusal(status.CANNOT_UNDERSTAND, "attributes cannot be recorded")
        if self.commit_timeout is None:
            return self._commit(staged, record)
        recording = self._recorders.submit(self._commit, staged, record)
        try:
            return recording.result(timeout=self.commit_timeout)
        except FutureTimeout:
            # Answered now; the recording goes on. The caller removes the temp file, so a
            # row not yet written can no longer publish one; a commit already under way
            # may still land, and is then logged and audited (_recorded_late).
            recording.add_done_callback(lambda done: self._recorded_late(done, record))
            log.error(
                "instance not recorded in time",
                seconds=self.commit_timeout,
                sop_instance_uid=record.sop_instance_uid,
            )
            return status.PROCESSING_FAILURE

    def _receive_echo_report(
        self,
        staged: StagedFile,
        part10: bytes,
        sop_class: str,
        sop_instance_uid: str,
        calling_ae: str,
    ) -> int | Dataset:
        """An SR of an echo SOP class: an outcome if it is TID 5200, else ignored."""
        from agent.outcomes.echo_sr import MalformedEchoReport, NotEchoReport

        assert self.echo_reports is not None
        try:
            received = self.echo_reports.read(part10)
        except NotEchoReport:
            log.info("structured report ignored: not an echo report", sop_class=sop_class)
            return status.SUCCESS
        except MalformedEchoReport as exc:
            log.warning("echo report refused", reason=str(exc), calling_ae=calling_ae)
            return _refusal(status.CANNOT_UNDERSTAND, f"echo report: {exc}")
        if received.sop_instance_uid != sop_instance_uid:
            log.warning("echo report refused", reason="SOP Instance UID differs from the command's")
            return status.INVALID_IDENTIFIER
        commit = self.echo_reports.commit
        try:
            if self.commit_timeout is None:
                result = commit(self.sessions, staged, received, calling_ae)
            else:
                result = self._recorders.submit(
                    commit, self.sessions, staged, received, calling_ae
                ).result(timeout=self.commit_timeout)
        except FutureTimeout:
            log.error("echo report not recorded in time", seconds=self.commit_timeout)
            return status.PROCESSING_FAILURE
        except OSError as exc:
            log.error("echo report not written", error=exc.strerror or type(exc).__name__)
            return status.OUT_OF_RESOURCES
        except (SQLAlchemyError, StorageError) as exc:
            log.error("echo report not recorded", error=type(exc).__name__)
            return status.PROCESSING_FAILURE
        log.info(
            "echo report received",
            outcome=str(result.write),
            matched=result.job_id is not None,
            calling_ae=calling_ae,
        )
        return status.SUCCESS

    def _recorded_late(self, recording: Future[int], record: InstanceRecord) -> None:
        """A recording the sender was told had failed has ended: say so if it was kept."""
        if recording.cancelled() or recording.exception() is not None:
            return
        if recording.result() != status.SUCCESS:
            return
        log.warning(
            "instance recorded after its C-STORE was refused",
            sop_instance_uid=record.sop_instance_uid,
        )
        self._write_audit(  # on a recorder thread already: no second wait on the pool
            "instance_received",
            "recorded_after_refusal",
            {
                "source_ae": record.calling_ae,
                "study_instance_uid": record.study_instance_uid,
                "series_instance_uid": record.series_instance_uid,
                "sop_instance_uid": record.sop_instance_uid,
            },
        )

    def _commit(self, staged: StagedFile, record: InstanceRecord) -> int:
        """Record the row and publish the file so that both happen or neither does.

        The caller removes the temp file afterwards, whatever happens here.
        """
        with self.store.lock_for(record.rel_path):
            session = self.sessions()
            publishing = committing = False
            try:
                result = record_instance(session, record, on_conflict=self.on_conflict)
                if result.outcome in (IngestOutcome.STORED, IngestOutcome.CONFLICT_REPLACED):
                    publishing = True  # from here a failure may leave the final name behind
                    self.store.publish(staged, record.rel_path)
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
                committing = True
                session.commit()
            except BaseException as exc:
                # A broken connection cannot roll back; the server does so on its own.
                with contextlib.suppress(SQLAlchemyError):
                    session.rollback()
                if committing and isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    # The connection broke during COMMIT: the database may have
                    # committed before it did, and such a row names the published
                    # file, so the file stays and the unknown outcome is logged and
                    # audited. The sender resends; an identical resend finds the row
                    # and its file, or records both. (A commit the database refused
                    # is known to be rolled back and handled below.)
                    log.error(
                        "instance commit outcome unknown",
                        error=type(exc).__name__,
                        sop_instance_uid=record.sop_instance_uid,
                    )
                    self._write_audit(  # may run on a recorder thread: no wait on the pool
                        "instance_received",
                        "commit_outcome_unknown",
                        {
                            "source_ae": record.calling_ae,
                            "study_instance_uid": record.study_instance_uid,
                            "series_instance_uid": record.series_instance_uid,
                            "sop_instance_uid": record.sop_instance_uid,
                        },
                    )
                    return status.PROCESSING_FAILURE
                if publishing:
                    # No committed row names this file (its name holds the content
                    # hash, and the lock keeps other writers of it out).
                    self.store.remove(record.rel_path)
                if isinstance(exc, OSError):
                    log.error("instance not written", error=exc.strerror or type(exc).__name__)
                    return status.OUT_OF_RESOURCES
                if isinstance(exc, (SQLAlchemyError, StorageError)):
                    log.error("instance not recorded", error=type(exc).__name__)
                    return status.PROCESSING_FAILURE
                raise
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
