"""Audit records: who sent or received what, and how it went.

Rows hold UIDs, AE titles and outcomes only. ``detail`` is free-form JSON, so
it is checked for keys that name patient attributes: patient data stays in
the DICOM files, never in the audit trail.

Besides the database an audit sink (syslog, :mod:`agent.audit_output`) may
receive each record, after the transaction that holds it commits: a record
rolled back never leaves the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from storage.models import AuditEvent
from storage.types import utcnow


@dataclass(frozen=True)
class AuditRecord:
    """A committed audit event as a sink sees it (no database session attached)."""

    occurred_at: datetime
    event_type: str
    outcome: str
    source_ae: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    detail: dict[str, Any] | None


AuditSink = Callable[[AuditRecord], None]
_PENDING = "hyperct_audit_pending"
_sink: AuditSink | None = None
_listening = False
_lock = threading.Lock()


def set_audit_sink(sink: AuditSink | None) -> None:
    """Send every committed audit record to ``sink`` as well (None: database only)."""
    global _sink, _listening
    with _lock:
        _sink = sink
        if sink is not None and not _listening:
            sa_event.listen(Session, "after_commit", _after_commit)
            sa_event.listen(Session, "after_rollback", _after_rollback)
            _listening = True


def _after_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    sink = _sink
    if pending and sink is not None:
        for record in pending:
            sink(record)


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


def audit(
    session: Session,
    event_type: str,
    outcome: str,
    *,
    source_ae: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    detail: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> None:
    """Insert an audit event in ``session``'s transaction (the caller's commit makes it durable).

    A Core INSERT on the session's connection, not an ORM object: the node
    writes one per received instance, and the unit of work cost more than
    the rest of the row's bookkeeping.
    """
    if detail:
        _refuse_patient_keys(detail)
    record = AuditRecord(
        occurred_at or utcnow(),
        event_type,
        outcome,
        source_ae,
        study_instance_uid,
        series_instance_uid,
        sop_instance_uid,
        detail,
    )
    session.connection().execute(_INSERT, record.__dict__)
    if _sink is not None:
        session.info.setdefault(_PENDING, []).append(record)


_INSERT = insert(cast(Table, AuditEvent.__table__))


def _refuse_patient_keys(detail: dict[str, Any]) -> None:
    for key, value in detail.items():
        # PatientName, patient_id, PatientBirthDate, ... (PS3.3 C.7.1.1)
        if str(key).replace("_", "").lower().startswith("patient"):
            raise ValueError(f"audit detail key {key!r} would record patient data")
        if isinstance(value, dict):
            _refuse_patient_keys(value)
