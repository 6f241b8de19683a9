"""Reliability row 26: a locked or stalled database costs a C-STORE a bounded wait.

The node's sessions give up on a lock after ``[database]
receive_timeout_seconds`` (PostgreSQL ``lock_timeout``/``statement_timeout``,
SQLite's busy timeout): the instance is refused with 0xC211 while the lock is
still held, nothing is kept, and the resend after the lock goes succeeds. A
commit whose connection breaks midway is an unknown outcome: it is audited
and its file kept, so a row that did commit never names a missing file.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from storage.db import make_engine
from storage.models import AuditEvent
from tests.agent.conftest import NodeUnderTest, start_test_node
from tests.agent.pipeline_env import Serve, agent_config, tiny_checkpoint
from tests.agent.test_node import scu_send
from tests.support.ct_series import ct_series, write_series


@contextmanager
def locked(engine: Engine) -> Iterator[None]:
    """Another client holds the lock that receiving an instance needs."""
    raw = engine.raw_connection()
    cur = raw.cursor()
    try:
        if engine.dialect.name == "sqlite":
            cur.execute("BEGIN IMMEDIATE")  # the single writer's lock
        else:
            cur.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        if engine.dialect.name == "sqlite":
            cur.execute("ROLLBACK")
        else:
            raw.rollback()
        raw.close()


@pytest.fixture
def timed_node(tmp_path: Path, engine: Engine) -> Iterator[NodeUnderTest]:
    running = start_test_node(tmp_path, engine, database_timeout=1.0)
    yield running
    running.node.stop()
    running.store.close()


def test_a_held_lock_costs_a_c211_not_a_held_c_store(
    tmp_path: Path, engine: Engine, timed_node: NodeUnderTest
) -> None:
    [path] = write_series(ct_series(1), tmp_path / "in")
    with locked(engine):
        # storescu has no DIMSE timeout here: it returns only once the node answers,
        # and the lock is still held when it does.
        refused = timed_node.storescu(path, extra=("-d",))  # -d prints the status code
        assert timed_node.temp_files() == []
        assert timed_node.files() == []
    assert "0xc211" in refused.stdout.lower() + refused.stderr.lower(), refused.stderr
    assert timed_node.counts() == (0, 0)
    resent = timed_node.storescu(path)
    assert resent.returncode == 0 and "Success" in resent.stderr, resent.stderr
    assert timed_node.counts() == (1, 1)
    assert len(timed_node.files()) == 1


@pytest.mark.postgres
def test_a_commit_cut_off_midway_is_audited_and_its_file_kept(
    tmp_path: Path, pg_engine: Engine
) -> None:
    # A deferred trigger ends its own server process at COMMIT: the client loses the
    # connection without learning whether the transaction committed.
    with pg_engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION die_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); "
                "PERFORM pg_sleep(5); RETURN NULL; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON instances "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION die_at_commit()"
            )
        )
    running = start_test_node(tmp_path, pg_engine, database_timeout=10.0)
    try:
        dataset = ct_series(1)
        assert scu_send(running.port, dataset) == [0xC211]
        assert running.temp_files() == []
        assert len(running.files()) == 1  # kept: a committed row could have named it
        with running.sessions() as s:
            outcomes = s.scalars(
                select(AuditEvent.outcome).where(AuditEvent.event_type == "instance_received")
            ).all()
        assert outcomes == ["commit_outcome_unknown"]
        with pg_engine.begin() as conn:
            conn.execute(text("DROP TRIGGER die_at_commit ON instances"))
        assert scu_send(running.port, dataset) == [0x0000]
        assert running.counts() == (1, 1)
        assert len(running.files()) == 1
    finally:
        running.node.stop()
        running.store.close()


@pytest.mark.slow
def test_serve_applies_the_configured_receive_timeout(tmp_path: Path) -> None:
    config = agent_config(tmp_path, tiny_checkpoint(tmp_path))
    config.write_text(
        config.read_text().replace(
            'url = "sqlite:///agent.db"\n',
            'url = "sqlite:///agent.db"\nreceive_timeout_seconds = 1.0\n',
        )
    )
    serve = Serve(config)
    engine = make_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    try:
        with locked(engine):
            assert scu_send(serve.port, ct_series(1)) == [0xC211]
        assert scu_send(serve.port, ct_series(1)) == [0x0000]
    finally:
        assert serve.stop() == 0
        engine.dispose()
    assert serve.events("instance not recorded")


@contextmanager
def frozen(engine: Engine) -> Iterator[None]:
    """Every server process of this database stopped (SIGSTOP): nothing answers, no timer fires."""
    database = engine.url.database
    admin = make_engine(engine.url.set(database="postgres").render_as_string(hide_password=False))
    with admin.connect() as conn:
        pids = conn.scalars(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": database}
        ).all()
    admin.dispose()
    assert pids, "the node holds no connection to freeze"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@pytest.mark.postgres
def test_a_frozen_database_costs_a_c211_within_the_bound(tmp_path: Path, pg_engine: Engine) -> None:
    # A stopped server answers nothing, so its lock and statement timeouts never fire;
    # the node stops waiting on its own after commit_timeout. The node's engine has one
    # connection, so freezing its server process freezes all the node can reach.
    engine = make_engine(pg_engine.url, pool_size=1, max_overflow=0, pool_timeout=20)
    running = start_test_node(tmp_path, engine, database_timeout=30.0, commit_timeout=2.0)
    try:
        first, second = ct_series(2)
        assert scu_send(running.port, [first]) == [0x0000]  # the node's connection is open
        with frozen(engine):
            started = time.monotonic()
            assert scu_send(running.port, [second]) == [0xC211]
            waited = time.monotonic() - started
            assert running.temp_files() == []
        assert waited < 20.0  # neither the pool's 20 s nor the database's 30 s answered
        # Thawed, the abandoned recording ends: kept and audited, or nothing kept.
        busy = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')"
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with pg_engine.connect() as conn:
                if conn.scalar(busy) == 0:
                    break
            time.sleep(0.2)
        time.sleep(0.5)  # the recording's last step after its transaction
        with running.sessions() as s:
            late = s.scalars(
                select(AuditEvent.outcome).where(AuditEvent.outcome == "recorded_after_refusal")
            ).all()
        assert running.counts() == ((2, 1) if late else (1, 1))
        assert len(running.files()) == running.counts()[0]
        assert scu_send(running.port, [second]) == [0x0000]  # the sender's resend
        assert running.counts() == (2, 1) and len(running.files()) == 2
    finally:
        running.node.stop()
        running.store.close()
        engine.dispose()
