"""Echo Structured Reports received by C-STORE, stored and turned into outcomes.

The node routes the SR storage classes here when ``[outcomes] accept_echo_sr`` is on
(:data:`~agent.outcomes.echo_sr.ECHO_SR_SOP_CLASSES`). A TID 5200 report is stored
durably under ``outcomes/`` of the storage root (never among the instances, so it
is never a series nor screened), its identifiers pseudonymised on reading, and one
``echo_outcomes`` row (source ``sr``, key its SOP Instance UID) written and matched
to a screened CT in the same transaction. Receiving it again changes nothing.

Another SR (not TID 5200, e.g. a radiology report forwarded by PACS) is answered
with success and neither stored nor recorded: the node has no use for it, and a
failure would have the sender retry it for ever. It is logged, without patient
data, as ignored. A TID 5200 report that cannot be read is refused
(:class:`~agent.outcomes.echo_sr.MalformedEchoReport`; the node answers 0xC210).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from io import BytesIO

from pydicom import dcmread
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agent.outcomes.echo_sr import MalformedEchoReport, NotEchoReport, read_echo_report
from agent.outcomes.labels import echo_labels
from agent.pseudonym import Pseudonymizer
from storage.audit import audit
from storage.files import InstanceStore, StagedFile, outcome_rel_path
from storage.outcomes import OutcomeRecord, OutcomeWrite, RecordedOutcome, record_outcome


@dataclass(frozen=True)
class ReceivedEchoReport:
    """A readable echo report, identifiers already pseudonymised (``record.rel_path`` unset)."""

    sop_instance_uid: str
    record: OutcomeRecord


class EchoReportIntake:
    """Reads, stores and records received TID 5200 reports for one store and key."""

    def __init__(self, store: InstanceStore, pseudonyms: Pseudonymizer, match_days: int) -> None:
        self.store = store
        self.pseudonyms = pseudonyms
        self.match_days = match_days

    def read(self, part10: bytes) -> ReceivedEchoReport:
        """The report in ``part10`` (a Part 10 file's bytes).

        Raises :class:`NotEchoReport` (not TID 5200) or :class:`MalformedEchoReport`.
        """
        try:
            ds = dcmread(BytesIO(part10))
            sop_uid = str(ds.SOPInstanceUID)
            report = read_echo_report(ds)
        except (NotEchoReport, MalformedEchoReport):
            raise
        except Exception as exc:  # pydicom raises many kinds on broken data
            raise MalformedEchoReport(f"not decodable ({type(exc).__name__})") from None
        record = OutcomeRecord(
            source="sr",
            source_key=f"sr:{sop_uid}",
            patient_pseudonym=self.pseudonyms.patient(report.patient_id, report.issuer),
            accession_pseudonym=self.pseudonyms.accession(report.accession),
            exam_date=report.exam_date,
            measurements=dict(report.measurements),
            labels=echo_labels(report.measurements, report.sex),
        )
        return ReceivedEchoReport(sop_uid, record)

    def commit(
        self,
        sessions: sessionmaker[Session],
        staged: StagedFile,
        received: ReceivedEchoReport,
        calling_ae: str,
    ) -> RecordedOutcome:
        """Record the outcome and publish the file so that both happen or neither does.

        Raises OSError (file) or SQLAlchemyError (database); nothing is left behind then.
        The caller removes the temp file afterwards, whatever happens here.
        """
        rel_path = outcome_rel_path(received.sop_instance_uid, staged.sha256)
        record = replace(received.record, rel_path=rel_path)
        with self.store.lock_for(rel_path):
            session = sessions()
            published = False
            try:
                result = record_outcome(session, record, self.match_days)
                if result.write is OutcomeWrite.IMPORTED:
                    self.store.publish(staged, rel_path)
                    published = True
                audit(
                    session,
                    "outcome_received",
                    str(result.write),
                    source_ae=calling_ae,
                    sop_instance_uid=received.sop_instance_uid,
                    detail={
                        "source": "sr",
                        "matched": result.job_id is not None,
                        "labels": sorted(record.labels),
                    },
                )
                session.commit()
                return result
            except BaseException:
                with contextlib.suppress(SQLAlchemyError):
                    session.rollback()
                if published:
                    self.store.remove(rel_path)
                raise
            finally:
                session.close()
