"""Reliability row 11: the database fails after the file is written; nothing is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.agent.conftest import start_test_node
from tests.agent.test_node import scu_send
from tests.support.ct_series import ct_series


@pytest.mark.postgres
def test_commit_failure_after_rename_rolls_the_file_back(tmp_path: Path, pg_engine: Engine) -> None:
    # A deferred constraint trigger fails at COMMIT, after the file has been
    # renamed into place: the exact window the node must undo.
    with pg_engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE CONSTRAINT TRIGGER refuse_instances AFTER INSERT ON instances "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()"
            )
        )
    running = start_test_node(tmp_path, pg_engine)
    try:
        datasets = ct_series(2)
        assert scu_send(running.port, datasets) == [0xC211, 0xC211]
        assert running.counts() == (0, 0)
        assert running.files() == [] and running.temp_files() == []
        with pg_engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_instances ON instances"))
        assert scu_send(running.port, datasets) == [0x0000, 0x0000]
        assert running.counts() == (2, 1)
        assert len(running.files()) == 2
    finally:
        running.node.stop()


def test_insert_failure_on_sqlite_keeps_nothing(tmp_path: Path, sqlite_engine: Engine) -> None:
    with sqlite_engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse_instances BEFORE INSERT ON instances "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    running = start_test_node(tmp_path, sqlite_engine)
    try:
        assert scu_send(running.port, ct_series(2)) == [0xC211, 0xC211]
        assert running.files() == [] and running.temp_files() == []
        with sqlite_engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM instances")) == 0
    finally:
        running.node.stop()
