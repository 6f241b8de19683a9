"""Engines, pragmas, migrations and the models-versus-migrations check, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from storage.db import (
    alembic_config,
    check_at_head,
    current_revision,
    head_revision,
    make_engine,
    make_session_factory,
    ping,
    upgrade,
)
from storage.errors import SchemaOutOfDate, StorageError
from storage.ingest import record_instance
from storage.models import AuditEvent, Base, Instance, Job, Series, Study

TABLES = {"studies", "series", "instances", "jobs", "results", "reports", "audit_events"}


def _diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(ctx, Base.metadata))


def test_upgrade_from_empty_to_head(db_url: str, alembic_dir: Path) -> None:
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is None
        with pytest.raises(SchemaOutOfDate, match="hyperct-agent db upgrade"):
            check_at_head(engine, alembic_dir)

        assert upgrade(engine, alembic_dir) == head_revision(alembic_dir)
        assert set(inspect(engine).get_table_names()) >= TABLES
        check_at_head(engine, alembic_dir)
        # A second upgrade (every `serve` start runs one) changes nothing.
        assert upgrade(engine, alembic_dir) == head_revision(alembic_dir)
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(engine: Engine, alembic_dir: Path) -> None:
    cfg = alembic_config(alembic_dir)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    assert current_revision(engine) is None
    upgrade(engine, alembic_dir)
    assert _diff(engine) == []


def test_models_and_migrations_agree(engine: Engine) -> None:
    assert _diff(engine) == []


def test_model_drift_is_detected(engine: Engine) -> None:
    # The agreement check above must be able to fail: remove an index the
    # models declare and autogenerate has to notice.
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_instances_series_id"))
    diffs = _diff(engine)
    assert any(d[0] == "add_index" and d[1].name == "ix_instances_series_id" for d in diffs)


def test_sqlite_pragmas_in_effect_on_every_connection(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'a.db'}")
    try:
        assert (tmp_path / "nested" / "dir").is_dir()
        with engine.connect() as c1, engine.connect() as c2:  # two pooled DBAPI connections
            for conn in (c1, c2):
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()


def test_sqlite_writer_sessions_take_the_write_lock_at_begin(tmp_path: Path) -> None:
    # A writer session's BEGIN IMMEDIATE: a second writer waits (here: gives up
    # after 0.1 s) at BEGIN, instead of failing later on lock upgrade.
    url = f"sqlite:///{tmp_path / 'lock.db'}"
    first = make_engine(url)
    second = make_engine(url, connect_args={"timeout": 0.1})
    try:
        with make_session_factory(first)() as writer:
            writer.execute(text("SELECT 1"))
            with (
                make_session_factory(second)() as other,
                pytest.raises(OperationalError, match="locked"),
            ):
                other.execute(text("SELECT 1"))
            # Readers are not blocked by the writer (WAL, deferred BEGIN).
            with make_session_factory(second, read_only=True)() as reader:
                assert reader.execute(text("SELECT 1")).scalar() == 1
        with make_session_factory(second)() as other:  # released when the writer ends
            other.execute(text("SELECT 1"))
            other.commit()
    finally:
        first.dispose()
        second.dispose()


def test_sqlite_unwritable_directory_is_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError) as err:
        make_engine(f"sqlite:///{blocker / 'sub' / 'a.db'}")
    assert "cannot create directory" in str(err.value)
    assert "\n" not in str(err.value)


def test_unreachable_postgresql_is_one_line_error_without_password(alembic_dir: Path) -> None:
    engine = make_engine("postgresql+psycopg://agent:s3cret@127.0.0.1:1/hyperct")
    try:
        for attempt in (lambda: ping(engine), lambda: upgrade(engine, alembic_dir)):
            with pytest.raises(StorageError) as err:
                attempt()
            message = str(err.value)
            assert "127.0.0.1:1" in message
            assert "s3cret" not in message
            assert "\n" not in message
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [("not a url", "invalid database URL"), ("mysql://u@h/db", "unsupported database")],
)
def test_bad_urls_are_storage_errors(url: str, expected: str) -> None:
    with pytest.raises(StorageError, match=expected):
        make_engine(url)


def test_plain_postgresql_url_means_psycopg3() -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:5432/test")
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


def test_foreign_keys_enforced(engine: Engine) -> None:
    with make_session_factory(engine)() as s:
        s.add(
            Instance(
                series_id=987654,
                sop_instance_uid="1.2.3",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                rel_path="instances/x.dcm",
                size_bytes=1,
                sha256="0" * 64,
                received_at=datetime.now(UTC),
            )
        )
        with pytest.raises(IntegrityError):
            s.commit()


def test_deleting_a_study_cascades_but_keeps_audit(engine: Engine, record) -> None:
    factory = make_session_factory(engine)
    with factory() as s:
        for n in (1, 2):
            record_instance(s, record(n))
        s.add(AuditEvent(event_type="instance_received", outcome="stored"))
        s.commit()
    with factory() as s:
        s.delete(s.scalars(select(Study)).one())
        s.commit()
        assert s.scalars(select(Series)).all() == []
        assert s.scalars(select(Instance)).all() == []
        assert s.scalars(select(Job)).all() == []
        assert len(s.scalars(select(AuditEvent)).all()) == 1


def test_timestamps_are_utc_aware_and_naive_refused(engine: Engine) -> None:
    factory = make_session_factory(engine)
    at = datetime(2026, 3, 4, 12, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2)))
    with factory() as s:
        s.add(AuditEvent(event_type="x", outcome="ok", occurred_at=at))
        s.commit()
    with factory() as s:
        stored = s.scalars(select(AuditEvent.occurred_at)).one()
        assert stored == at
        assert stored.utcoffset() == timedelta(0)
        assert stored.hour == 10
    with factory() as s:
        s.add(AuditEvent(event_type="x", outcome="ok", occurred_at=datetime(2026, 1, 1)))
        with pytest.raises(Exception, match="naive datetime"):
            s.commit()
