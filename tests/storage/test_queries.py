"""status_counts and audit on both backends."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from storage_records import RecordFactory

from storage.audit import audit
from storage.ingest import record_instance
from storage.models import AuditEvent, Job, JobState, Report, ReportState
from storage.queries import status_counts


def test_status_counts_on_an_empty_database(session: Session) -> None:
    counts = status_counts(session)
    assert counts == {
        "studies": 0,
        "series": 0,
        "instances": 0,
        "jobs": {state.value: 0 for state in JobState},
        "reports": {state.value: 0 for state in ReportState},
    }
    json.dumps(counts)  # the CLI prints it as JSON


def test_status_counts_by_state(session: Session, record: RecordFactory) -> None:
    for n in (1, 2, 3):
        record_instance(session, record(n))
    record_instance(session, record(1, series_instance_uid="1.2.3.9", sop_instance_uid="1.2.3.9.1"))
    session.commit()
    jobs = session.scalars(select(Job).order_by(Job.id)).all()
    jobs[1].state = JobState.DONE
    for i, state in enumerate((ReportState.SENT, ReportState.SENT, ReportState.DEAD)):
        session.add(
            Report(
                job_id=jobs[1].id,
                kind="sr",
                sop_instance_uid=f"2.25.{i}",
                series_instance_uid="2.25.100",
                destination="pacs",
                state=state,
            )
        )
    session.commit()

    counts = status_counts(session)
    assert (counts["studies"], counts["series"], counts["instances"]) == (1, 2, 4)
    assert counts["jobs"]["receiving"] == 1
    assert counts["jobs"]["done"] == 1
    assert sum(counts["jobs"].values()) == 2
    assert counts["reports"] == {"pending": 0, "sending": 0, "sent": 2, "failed": 0, "dead": 1}
    assert all(type(v) is int for v in (counts["studies"], counts["series"], counts["instances"]))


def test_audit_event_is_recorded(session: Session) -> None:
    audit(
        session,
        "association",
        "rejected",
        source_ae="UNKNOWN",
        detail={"reason": "calling AE not allowed", "peer": {"host": "10.0.0.9"}},
    )
    session.commit()
    event = session.scalars(select(AuditEvent)).one()
    assert (event.event_type, event.outcome, event.source_ae) == (
        "association",
        "rejected",
        "UNKNOWN",
    )
    assert event.detail == {"reason": "calling AE not allowed", "peer": {"host": "10.0.0.9"}}
    assert event.occurred_at.utcoffset() is not None


@pytest.mark.parametrize(
    "detail",
    [{"PatientName": "DOE^JOHN"}, {"patient_id": "123"}, {"peer": {"PatientBirthDate": "1970"}}],
)
def test_audit_refuses_patient_fields(session: Session, detail: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="patient data"):
        audit(session, "instance_received", "stored", detail=detail)
