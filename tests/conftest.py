"""Shared database fixtures: every storage-backed test runs on SQLite and PostgreSQL.

``db_url`` gives an empty database per test: a fresh SQLite file under
``tmp_path``, or a fresh PostgreSQL database named ``hyperct_t_<session>_<n>``
created through the ``test`` (or ``postgres``) maintenance database. All
PostgreSQL databases of a run share the session prefix and are dropped at the
end. Without a reachable server the PostgreSQL cases skip with the reason,
except under ``CI=true``, where they fail: CI must not pass by skipping.

``engine`` is ``db_url`` migrated to head with Alembic; ``session`` is a
session on it. The server is taken from ``HYPERCT_TEST_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.orm import Session

from storage.db import make_engine, make_session_factory, upgrade

REPO_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_DIR = REPO_ROOT / "alembic"
PG_SERVER_ENV = "HYPERCT_TEST_PG_URL"
DEFAULT_PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


class _PgServer:
    """A PostgreSQL server reached through a maintenance database, in autocommit."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.prefix = f"hyperct_t_{secrets.token_hex(4)}"
        self._n = itertools.count()
        self._admin = create_engine(url, isolation_level="AUTOCOMMIT")

    def create_database(self) -> URL:
        name = f"{self.prefix}_{next(self._n)}"
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        return self.url.set(database=name)

    def drop_database(self, name: str) -> None:
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def drop_all(self) -> None:
        with self._admin.connect() as conn:
            names = conn.scalars(
                text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                {"p": f"{self.prefix}\\_%"},
            ).all()
        for name in names:
            self.drop_database(name)
        self._admin.dispose()


def _connect_server() -> tuple[_PgServer | None, str]:
    base = make_url(os.environ.get(PG_SERVER_ENV, DEFAULT_PG_SERVER))
    if base.drivername in ("postgresql", "postgres"):
        base = base.set(drivername="postgresql+psycopg")
    errors = []
    # `test` is the documented database; `postgres` exists on every server.
    for maintenance in dict.fromkeys([base.database or "test", "postgres"]):
        url = base.set(database=maintenance)
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to connect means "no server"
            errors.append(f"{maintenance}: {str(exc).strip().splitlines()[0]}")
            continue
        finally:
            engine.dispose()
        return _PgServer(url), ""
    shown = base.render_as_string(hide_password=True)
    return None, f"no PostgreSQL server at {shown} ({'; '.join(errors)})"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[_PgServer]:
    server, reason = _connect_server()
    if server is None:
        if _in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.drop_all()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database on the parametrised backend, fresh for each test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'hyperct.db'}"
        return
    server: _PgServer = request.getfixturevalue("pg_server")
    url = server.create_database()
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        server.drop_database(url.database or "")


@pytest.fixture
def alembic_dir() -> Path:
    return ALEMBIC_DIR


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on ``db_url``, migrated to head."""
    eng = make_engine(db_url)
    upgrade(eng, ALEMBIC_DIR)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_session_factory(engine)() as s:
        yield s


@pytest.fixture
def pg_engine(pg_server: _PgServer) -> Iterator[Engine]:
    """An engine on a fresh PostgreSQL database, migrated to head (PostgreSQL-only tests)."""
    url = pg_server.create_database()
    eng = make_engine(url.render_as_string(hide_password=False))
    upgrade(eng, ALEMBIC_DIR)
    try:
        yield eng
    finally:
        eng.dispose()
        pg_server.drop_database(url.database or "")
