"""Outcome storage and matching, on SQLite and PostgreSQL (the ``session`` fixture)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from storage.models import EchoOutcome, JobState
from storage.outcomes import (
    OutcomeRecord,
    OutcomeWrite,
    closest_outcomes,
    match_pending,
    record_outcome,
)
from tests.support.outcome_cts import screened_ct

P1, P2, A1 = "a" * 64, "b" * 64, "c" * 64


def outcome(key: str, exam_date: str, patient: str | None = P1, **kw: object) -> OutcomeRecord:
    fields: dict = {
        "source": "csv",
        "source_key": key,
        "patient_pseudonym": patient,
        "accession_pseudonym": None,
        "exam_date": exam_date,
        "measurements": {"lvef_percent": 40.0},
        "labels": {"reduced_lv_systolic_function": 1},
    }
    fields.update(kw)
    return OutcomeRecord(**fields)


def test_closest_screened_ct_within_the_window(session: Session) -> None:
    screened_ct(session, "20250101", P1)  # 374 days before: outside
    before = screened_ct(session, "20251001", P1)  # 101 days before
    after = screened_ct(session, "20260201", P1)  # 22 days after: the closest
    screened_ct(session, "20260115", P1, state=JobState.FAILED)  # not screened
    screened_ct(session, "20260112", P1, with_results=False)  # done but no results
    screened_ct(session, "20260110", P2)  # another patient, same day
    result = record_outcome(session, outcome("k1", "20260110"), 180)
    assert result.write is OutcomeWrite.IMPORTED and result.job_id == after
    row = session.get(EchoOutcome, result.outcome_id)
    assert row is not None and row.match_days == -22
    # with a narrower window the closest is out and so is every other
    assert record_outcome(session, outcome("k2", "20260110"), 21).job_id is None
    assert record_outcome(session, outcome("k3", "20251003"), 180).job_id == before


def test_ties_go_to_the_ct_before_the_echo(session: Session) -> None:
    screened_ct(session, "20260120", P1)
    before = screened_ct(session, "20251231", P1)
    assert record_outcome(session, outcome("k", "20260110"), 180).job_id == before


def test_nothing_beyond_the_window_and_the_edge_counts(session: Session) -> None:
    screened_ct(session, "20250712", P1)  # 182 days before 2026-01-10
    assert record_outcome(session, outcome("k1", "20260110"), 180).job_id is None
    edge = screened_ct(session, "20250714", P1)  # exactly 180 days
    assert record_outcome(session, outcome("k2", "20260110"), 180).job_id == edge


def test_accession_first_then_patient(session: Session) -> None:
    closer = screened_ct(session, "20260109", P1)
    ordered = screened_ct(session, "20251201", P1, accession=A1)
    with_accession = outcome("k1", "20260110", accession_pseudonym=A1)
    assert record_outcome(session, with_accession, 180).job_id == ordered
    # an accession no screened CT has: the patient's closest
    other = outcome("k2", "20260110", accession_pseudonym="d" * 64)
    assert record_outcome(session, other, 180).job_id == closer


def test_accession_alone_matches_and_names_the_patient(session: Session) -> None:
    job = screened_ct(session, "20260101", P2, accession=A1)
    result = record_outcome(session, outcome("k", "20260110", None, accession_pseudonym=A1), 180)
    assert result.job_id == job
    row = session.get(EchoOutcome, result.outcome_id)
    assert row is not None and row.patient_pseudonym == P2


def test_match_pending_after_the_ct_is_screened(session: Session) -> None:
    result = record_outcome(session, outcome("k", "20260110"), 180)
    assert result.job_id is None
    assert match_pending(session, 180) == 0
    late = screened_ct(session, "20260301", P1)  # screened after the echo came in
    assert match_pending(session, 180) == 1
    assert session.scalar(select(EchoOutcome.job_id)) == late
    assert match_pending(session, 180) == 0  # matched ones are left alone
    closer = screened_ct(session, "20260111", P1)
    assert match_pending(session, 180) == 0
    assert match_pending(session, 180, rematch_all=True) == 1
    assert session.scalar(select(EchoOutcome.job_id)) == closer


def test_same_key_is_a_duplicate_and_a_corrected_row_an_update(session: Session) -> None:
    job = screened_ct(session, "20260101", P1)
    first = record_outcome(session, outcome("k", "20260110"), 180)
    again = record_outcome(session, outcome("k", "20260110"), 180)
    assert (first.write, again.write) == (OutcomeWrite.IMPORTED, OutcomeWrite.DUPLICATE)
    corrected = outcome(
        "k",
        "20260110",
        measurements={"lvef_percent": 60.0},
        labels={"reduced_lv_systolic_function": 0},
    )
    updated = record_outcome(session, corrected, 180)
    assert updated.write is OutcomeWrite.UPDATED and updated.job_id == job
    rows = session.scalars(select(EchoOutcome)).all()
    assert len(rows) == 1 and rows[0].labels == {"reduced_lv_systolic_function": 0}
    # a received SR is kept as first received
    sr = outcome("sr:1.2.3", "20260110", source="sr", rel_path="outcomes/x.dcm")
    assert record_outcome(session, sr, 180).write is OutcomeWrite.IMPORTED
    changed = outcome("sr:1.2.3", "20260110", source="sr", measurements={"lvef_percent": 1.0})
    kept = record_outcome(session, changed, 180)
    assert kept.write is OutcomeWrite.DUPLICATE and kept.rel_path == "outcomes/x.dcm"


def test_closest_outcome_per_ct(session: Session) -> None:
    job = screened_ct(session, "20260101", P1)
    far = record_outcome(session, outcome("k1", "20260301"), 180)
    near = record_outcome(session, outcome("k2", "20260105"), 180)
    assert far.job_id == near.job_id == job
    best = closest_outcomes(session)
    assert list(best) == [job] and best[job].id == near.outcome_id


def test_the_documented_query_gives_each_ct_its_closest_outcome(session: Session) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "admin-database.md").read_text()
    part = doc.split("### Echo outcomes and their labels", 1)[1]
    query = part.split("```sql", 1)[1].split("```", 1)[0]
    job = screened_ct(session, "20260101", P1)
    record_outcome(session, outcome("k1", "20260301"), 180)
    near = record_outcome(session, outcome("k2", "20251230"), 180)
    record_outcome(session, outcome("k3", "20260103"), 180)  # as close, but later in the table
    session.flush()
    rows = session.execute(text(query)).all()
    assert [(r.job_id, r.exam_date, r.task_name) for r in rows] == [
        (job, "20251230", "reduced_lv_systolic_function")
    ]
    assert near.job_id == job


def test_the_node_pipeline_matches_waiting_outcomes(engine: Engine, tmp_path: Path) -> None:
    from agent.config import Settings
    from agent.pipeline.scheduler import NODE_STAGES, Pipeline
    from storage.db import make_session_factory
    from storage.files import InstanceStore

    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        record_outcome(session, outcome("k", "20260110"), 180)
        job = screened_ct(session, "20260301", P1)  # screened after the echo came in
    pipeline = Pipeline(Settings(), sessions, InstanceStore(tmp_path), stages=NODE_STAGES)
    assert pipeline.match_outcomes() == 1
    with sessions() as session:
        assert session.scalar(select(EchoOutcome.job_id)) == job
