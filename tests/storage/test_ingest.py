"""record_instance on SQLite and PostgreSQL: outcomes, bookkeeping, jobs, concurrency."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session
from storage_records import AXIAL, T0, RecordFactory, make_record

from storage.db import make_session_factory
from storage.errors import InvalidRecord
from storage.ingest import IngestOutcome, record_instance
from storage.models import AuditEvent, Instance, Job, JobState, Series, Study


def _series(session: Session) -> Series:
    session.expire_all()
    return session.scalars(select(Series)).one()


def _count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_new_instances_are_stored_and_grouped(session: Session, record: RecordFactory) -> None:
    results = [record_instance(session, record(n)) for n in (1, 2, 3)]
    session.commit()

    assert [r.outcome for r in results] == [IngestOutcome.STORED] * 3
    assert len({r.instance_id for r in results}) == 3
    assert len({r.series_id for r in results}) == 1
    assert results[0].stored_rel_path == record(1).rel_path
    assert results[0].replaced_rel_path is None
    assert (_count(session, Study), _count(session, Series), _count(session, Instance)) == (1, 1, 3)

    series = _series(session)
    assert series.instance_count == 3
    assert (series.modality, series.series_number, series.body_part_examined) == ("CT", 2, "CHEST")
    inst = session.get(Instance, results[1].instance_id)
    assert inst is not None
    assert inst.sop_instance_uid == record(2).sop_instance_uid
    assert inst.image_position == [-200.0, -200.0, -5.0]
    assert inst.slice_position == -5.0
    assert inst.sha256 == record(2).sha256
    assert inst.received_at == record(2).received_at


def test_identical_resend_is_a_duplicate_with_no_change(
    session: Session, record: RecordFactory
) -> None:
    first = record_instance(session, record(1))
    session.commit()
    again = record_instance(session, replace(record(1), received_at=T0 + timedelta(hours=1)))
    session.commit()

    assert again.outcome is IngestOutcome.DUPLICATE
    assert again.instance_id == first.instance_id
    assert again.stored_rel_path == record(1).rel_path
    series = _series(session)
    assert series.instance_count == 1
    assert series.last_received_at == record(1).received_at
    assert _count(session, Instance) == 1
    assert _count(session, AuditEvent) == 0


def test_conflict_keep_first_leaves_the_row_and_audits(
    session: Session, record: RecordFactory
) -> None:
    first = record_instance(session, record(1))
    session.commit()
    other = record(1, payload=b"different bytes, same SOP Instance UID")
    result = record_instance(session, other, on_conflict="keep_first")
    session.commit()

    assert result.outcome is IngestOutcome.CONFLICT_KEPT
    assert result.instance_id == first.instance_id
    assert result.stored_rel_path == record(1).rel_path != other.rel_path
    assert result.replaced_rel_path is None
    session.expire_all()
    inst = session.get(Instance, first.instance_id)
    assert inst is not None
    assert (inst.sha256, inst.rel_path) == (record(1).sha256, record(1).rel_path)
    assert _series(session).instance_count == 1

    event = session.scalars(select(AuditEvent)).one()
    assert (event.event_type, event.outcome) == ("instance_conflict", "conflict_kept")
    assert event.sop_instance_uid == other.sop_instance_uid
    assert event.source_ae == "STORESCU"
    assert event.detail == {
        "policy": "keep_first",
        "recorded_sha256": record(1).sha256,
        "received_sha256": other.sha256,
        "received_size_bytes": other.size_bytes,
        "received_transfer_syntax_uid": other.transfer_syntax_uid,
    }


def test_conflict_replace_points_the_row_at_the_new_file(
    session: Session, record: RecordFactory
) -> None:
    first = record_instance(session, record(1))
    session.commit()
    other = record(1, payload=b"recompressed by PACS", transfer_syntax_uid="1.2.840.10008.1.2.4.80")
    result = record_instance(session, other, on_conflict="replace")
    session.commit()

    assert result.outcome is IngestOutcome.CONFLICT_REPLACED
    assert result.instance_id == first.instance_id
    assert result.replaced_rel_path == record(1).rel_path
    assert result.stored_rel_path == other.rel_path
    session.expire_all()
    inst = session.get(Instance, first.instance_id)
    assert inst is not None
    assert (inst.sha256, inst.rel_path, inst.size_bytes) == (
        other.sha256,
        other.rel_path,
        other.size_bytes,
    )
    assert inst.transfer_syntax_uid == "1.2.840.10008.1.2.4.80"
    assert _series(session).instance_count == 1
    event = session.scalars(select(AuditEvent)).one()
    assert (event.event_type, event.outcome) == ("instance_conflict", "conflict_replaced")
    # Sending the replacement again is now a plain duplicate.
    assert record_instance(session, other, "replace").outcome is IngestOutcome.DUPLICATE


def test_series_geometry_and_receive_times(session: Session, record: RecordFactory) -> None:
    # Out of order in position and in time: extent and receive window are min/max.
    for n, dt in ((3, 10), (1, 0), (7, 20), (5, 5)):
        record_instance(session, record(n, received_at=T0 + timedelta(seconds=dt)))
    session.commit()

    s = _series(session)
    assert s.instance_count == 4
    assert (s.min_slice_position, s.max_slice_position) == (-17.5, -2.5)
    assert s.first_received_at == T0
    assert s.last_received_at == T0 + timedelta(seconds=20)
    assert s.first_received_at.tzinfo is not None
    assert s.image_orientation == list(AXIAL)
    assert s.orientation_consistent is True
    assert s.pixel_spacing == [0.75, 0.75]
    assert s.slice_thickness == 2.5


def test_orientation_consistency_uses_a_tolerance(session: Session, record: RecordFactory) -> None:
    record_instance(session, record(1))
    nearly = tuple(v + 5e-5 for v in AXIAL)
    record_instance(session, record(2, image_orientation=nearly))
    session.commit()
    assert _series(session).orientation_consistent is True

    tilted = (1.0, 0.0, 0.0, 0.0, 0.9998, -0.0175)  # about 1 degree of gantry tilt
    record_instance(session, record(3, image_orientation=tilted))
    record_instance(session, record(4))  # back to axial: the series stays inconsistent
    session.commit()
    s = _series(session)
    assert s.orientation_consistent is False
    assert s.image_orientation == list(AXIAL)  # from the first instance


def test_geometry_from_first_instance_that_has_it(session: Session, record: RecordFactory) -> None:
    record_instance(
        session,
        record(
            1,
            image_orientation=None,
            pixel_spacing=None,
            slice_thickness=None,
            slice_position=None,
            image_position=None,
        ),
    )
    session.commit()
    s = _series(session)
    assert (s.image_orientation, s.pixel_spacing, s.slice_thickness) == (None, None, None)
    assert (s.min_slice_position, s.max_slice_position) == (None, None)

    record_instance(session, record(2, pixel_spacing=(0.6, 0.7), slice_thickness=1.25))
    record_instance(session, record(3, pixel_spacing=(0.9, 0.9), slice_thickness=5.0))
    session.commit()
    s = _series(session)
    assert s.pixel_spacing == [0.6, 0.7]
    assert s.slice_thickness == 1.25
    assert (s.min_slice_position, s.max_slice_position) == (-7.5, -5.0)


def test_job_created_once_and_later_states_left_alone(
    session: Session, record: RecordFactory
) -> None:
    record_instance(session, record(1))
    record_instance(session, record(2))
    session.commit()
    job = session.scalars(select(Job)).one()
    assert job.state is JobState.RECEIVING
    assert job.attempts == 0
    assert job.series_id == _series(session).id

    job.state = JobState.DONE
    session.commit()
    record_instance(session, record(3))  # a late instance
    session.commit()
    session.expire_all()
    job = session.scalars(select(Job)).one()
    assert job.state is JobState.DONE
    assert _series(session).instance_count == 3


def test_two_series_in_one_study(session: Session, record: RecordFactory) -> None:
    record_instance(session, record(1))
    record_instance(
        session,
        record(1, series_instance_uid="1.2.3.9", sop_instance_uid="1.2.3.9.1", series_number=3),
    )
    session.commit()
    assert _count(session, Study) == 1
    assert _count(session, Series) == 2
    assert _count(session, Job) == 2


def test_long_descriptive_values_are_cut_to_fit(session: Session, record: RecordFactory) -> None:
    record_instance(session, record(1, series_description="X" * 200, body_part_examined="Y" * 40))
    session.commit()
    s = _series(session)
    assert s.series_description == "X" * 64
    assert s.body_part_examined == "Y" * 16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_orientation": (1.0, 0.0, 0.0)}, "image_orientation"),
        ({"slice_position": float("nan")}, "slice_position"),
        ({"sha256": "abc"}, "sha256"),
        ({"rel_path": "../outside.dcm"}, "rel_path"),
        ({"received_at": datetime(2026, 1, 1)}, "timezone-aware"),
    ],
)
def test_invalid_records_are_refused(overrides: dict[str, object], message: str) -> None:
    # What the columns and the file store cannot hold; UIDs are the agent's to check.
    with pytest.raises(InvalidRecord, match=message):
        replace(make_record(1), **overrides)


def test_record_refuses_unknown_policy(session: Session, record: RecordFactory) -> None:
    with pytest.raises(ValueError, match="on_conflict"):
        record_instance(session, record(1), on_conflict="overwrite")  # type: ignore[arg-type]


# -- concurrency -------------------------------------------------------------


def _wait_for_lock_waiter(engine: Engine, timeout: float = 10.0) -> None:
    """Block until some backend on this database waits for a lock."""
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the second session never waited for the first")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_same_instance_from_two_sessions_at_once_postgresql(engine: Engine) -> None:
    """Two associations deliver the same SOP instance at the same moment.

    Session A records it and holds its transaction open; session B records it
    too and must wait on A's uncommitted rows, then find the instance and
    report DUPLICATE once A commits. One row, counted once, one job.
    """
    factory = make_session_factory(engine)
    rec = make_record(1)
    outcome_b: list[object] = []

    def session_b() -> None:
        try:
            with factory() as b:
                outcome_b.append(record_instance(b, rec).outcome)
                b.commit()
        except BaseException as exc:  # reported by the main thread
            outcome_b.append(exc)

    with factory() as a:
        outcome_a = record_instance(a, rec).outcome
        thread = threading.Thread(target=session_b)
        thread.start()
        _wait_for_lock_waiter(engine)
        a.commit()
    thread.join(timeout=30)
    assert not thread.is_alive()

    assert outcome_a is IngestOutcome.STORED
    assert outcome_b == [IngestOutcome.DUPLICATE]
    with factory() as s:
        assert _count(s, Instance) == 1
        assert _count(s, Job) == 1
        assert _series(s).instance_count == 1


def test_many_associations_sending_overlapping_instances(engine: Engine) -> None:
    """Four writers each record the same two series in a different order.

    Every instance must be stored exactly once, counted exactly once, and each
    series' extent must cover all its slices, with no writer failing.
    """
    per_series, writers = 15, 4
    records = [make_record(n) for n in range(1, per_series + 1)] + [
        make_record(
            n,
            series_instance_uid="1.2.3.9",
            sop_instance_uid=f"1.2.3.9.{n}",
            payload=f"other series {n}".encode(),
        )
        for n in range(1, per_series + 1)
    ]
    factory = make_session_factory(engine)
    barrier = threading.Barrier(writers)
    outcomes: Counter[IngestOutcome] = Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        order = list(records)
        random.Random(seed).shuffle(order)
        try:
            barrier.wait()
            for rec in order:
                with factory() as s:
                    outcome = record_instance(s, rec).outcome
                    s.commit()
                with lock:
                    outcomes[outcome] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert outcomes == {
        IngestOutcome.STORED: len(records),
        IngestOutcome.DUPLICATE: len(records) * (writers - 1),
    }
    with factory() as s:
        assert _count(s, Study) == 1
        assert _count(s, Instance) == len(records)
        assert _count(s, Job) == 2
        for series in s.scalars(select(Series)):
            assert series.instance_count == per_series
            assert series.min_slice_position == -2.5 * per_series
            assert series.max_slice_position == -2.5
            assert series.first_received_at == T0 + timedelta(seconds=1)
            assert series.last_received_at == T0 + timedelta(seconds=per_series)


def test_received_at_in_another_timezone_is_stored_as_utc(
    session: Session, record: RecordFactory
) -> None:
    local = datetime(2026, 6, 1, 14, 0, tzinfo=UTC).astimezone()
    record_instance(session, record(1, received_at=local))
    session.commit()
    s = _series(session)
    assert s.first_received_at == local
    assert s.first_received_at.utcoffset() == timedelta(0)
