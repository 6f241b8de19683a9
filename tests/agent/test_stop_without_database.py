"""Reliability row 25: SIGTERM while PostgreSQL is unreachable or read-only.

A real ``serve`` loses its database (connections refused, or every new
transaction read-only, with its open connections cut), then gets SIGTERM: it
stops with exit status 0, one line naming what could not be recorded, its
"stopped" line, JSON lines only and no traceback. The next start writes the
missing stop into the audit trail at the time it happened.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from storage.models import AuditEvent
from tests.agent.pipeline_env import Serve, agent_config, tiny_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

_LOSE = {
    "unreachable": 'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false',
    "read_only": 'ALTER DATABASE "{db}" SET default_transaction_read_only = on',
}
_RESTORE = {
    "unreachable": 'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true',
    "read_only": 'ALTER DATABASE "{db}" RESET default_transaction_read_only',
}


@pytest.mark.parametrize("loss", sorted(_LOSE))
def test_sigterm_without_the_database_stops_cleanly(
    tmp_path: Path, pg_server: object, loss: str
) -> None:
    url = pg_server.create_database()  # type: ignore[attr-defined]
    db = url.database
    config = agent_config(
        tmp_path, tiny_checkpoint(tmp_path), database=url.render_as_string(hide_password=False)
    )
    admin = pg_server._admin  # type: ignore[attr-defined]
    serve = Serve(config)
    with admin.connect() as conn:
        conn.execute(text(_LOSE[loss].format(db=db)))
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": db},
        )
    assert serve.stop() == 0
    lines = list(serve.lines)
    events = [json.loads(line) for line in lines]  # every line is JSON: no traceback
    assert not any("Traceback" in line for line in lines)
    [unavailable] = [e for e in events if e["event"] == "database unavailable at stop"]
    assert "the stop's audit record" in unavailable["not_recorded"]
    assert events[-1]["event"] == "stopped"

    with admin.connect() as conn:
        conn.execute(text(_RESTORE[loss].format(db=db)))
    again = Serve(config)
    assert again.stop() == 0
    assert again.events("an earlier stop recorded now: the database was unavailable then")
    engine = create_engine(url)
    with engine.connect() as conn:
        trail = conn.execute(
            select(AuditEvent.outcome, AuditEvent.detail)
            .where(AuditEvent.event_type == "application")
            .order_by(AuditEvent.occurred_at)
        ).all()
    engine.dispose()
    assert [outcome for outcome, _ in trail] == ["started", "stopped", "started", "stopped"]
    assert "recorded_at_start" in str(trail[1][1])
    assert not list((tmp_path / "storage" / ".unrecorded-stops").iterdir())
    pg_server.drop_database(db)  # type: ignore[attr-defined]
