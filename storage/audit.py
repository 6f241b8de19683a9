"""Audit records: who sent or received what, and how it went.

Rows hold UIDs, AE titles and outcomes only. ``detail`` is free-form JSON, so
it is checked for keys that name patient attributes: patient data stays in
the DICOM files, never in the audit trail.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from storage.models import AuditEvent
from storage.types import utcnow


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
) -> AuditEvent:
    """Add an audit event to ``session`` (the caller's commit makes it durable)."""
    if detail:
        _refuse_patient_keys(detail)
    event = AuditEvent(
        occurred_at=occurred_at or utcnow(),
        event_type=event_type,
        outcome=outcome,
        source_ae=source_ae,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        detail=detail,
    )
    session.add(event)
    return event


def _refuse_patient_keys(detail: dict[str, Any]) -> None:
    for key, value in detail.items():
        # PatientName, patient_id, PatientBirthDate, ... (PS3.3 C.7.1.1)
        if str(key).replace("_", "").lower().startswith("patient"):
            raise ValueError(f"audit detail key {key!r} would record patient data")
        if isinstance(value, dict):
            _refuse_patient_keys(value)
