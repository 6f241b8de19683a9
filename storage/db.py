"""Engines, sessions and schema migrations.

The agent runs on SQLite by default and on PostgreSQL (through psycopg 3) when
several processes share one database. Both are configured here so that every
caller gets the same guarantees:

* SQLite: WAL journal (readers never block the writer), foreign keys enforced,
  ``synchronous=FULL`` (the DICOM node answers C-STORE success only after the
  commit, so a commit must survive power loss, not only a crash), a busy
  timeout, and writer sessions whose transactions start with
  ``BEGIN IMMEDIATE`` so one that reads and then writes never fails with
  SQLITE_BUSY on lock upgrade (see :func:`make_session_factory`).
* PostgreSQL: ``postgresql://`` is taken to mean psycopg 3, with a short
  connect timeout and a pre-ping so a restarted server costs one retry, not an
  error.
* Bounded waits: sessions made with ``timeout_seconds`` (the DICOM node's)
  give up on a lock or a slow statement after that long: PostgreSQL's
  ``lock_timeout`` and ``statement_timeout`` for the transaction, SQLite's busy
  timeout. A C-STORE then fails fast instead of holding its sender.

Failures to reach the database become :class:`~storage.errors.StorageError`
with one line that names the database (password hidden) and the cause.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import SchemaOutOfDate, StorageError

SQLITE_BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 5
# Execution option naming how a SQLite transaction begins ("immediate" or "deferred").
_BEGIN_OPTION = "hyperct_sqlite_begin"
# Execution option: seconds a transaction may wait for a lock or one statement.
_TIMEOUT_OPTION = "hyperct_timeout_seconds"
# Serialises concurrent `upgrade` calls from several agents on one PostgreSQL database.
_PG_MIGRATION_LOCK_KEY = 0x48435441  # "HCTA"


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the agent's durability settings.

    ``kwargs`` pass through to :func:`sqlalchemy.create_engine`. Nothing is
    connected yet; use :func:`ping` to fail early on an unreachable server.
    """
    parsed = _parse_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, kwargs)
    if backend == "postgresql":
        return _postgresql_engine(parsed, kwargs)
    raise StorageError(
        f"unsupported database {_show(parsed)}: use sqlite:///PATH or postgresql+psycopg://..."
    )


def make_session_factory(
    engine: Engine, *, read_only: bool = False, timeout_seconds: float | None = None
) -> sessionmaker[Session]:
    """Sessions for writers (the default) or for readers (status, dashboards).

    With ``timeout_seconds``, a transaction that waits longer than that for a
    lock (or, on PostgreSQL, for one statement) fails with an
    :class:`~sqlalchemy.exc.OperationalError` instead of waiting on.

    On SQLite a writer's transaction starts with ``BEGIN IMMEDIATE``: it takes
    the write lock up front (waiting up to the busy timeout) so a transaction
    that reads and then writes cannot fail on lock upgrade. The price is that a
    writer session holding a transaction open blocks every other writer: keep
    them short (never across inference or network I/O). Readers start with a
    plain ``BEGIN`` and, under WAL, never block or wait for the writer.
    """
    options: dict[str, Any] = {_BEGIN_OPTION: "deferred" if read_only else "immediate"}
    if timeout_seconds is not None:
        options[_TIMEOUT_OPTION] = float(timeout_seconds)
    bind = engine.execution_options(**options)
    # expire_on_commit=False: the node reads back ids and outcomes after commit
    # without another round trip.
    return sessionmaker(bind, expire_on_commit=False)


def ping(engine: Engine) -> None:
    """Connect once and run ``SELECT 1``; raise StorageError if that fails."""
    with storage_errors(engine), engine.connect() as conn:
        conn.execute(text("SELECT 1"))


@contextmanager
def storage_errors(engine: Engine) -> Iterator[None]:
    """Turn SQLAlchemy/DBAPI failures into one-line StorageErrors naming the database."""
    try:
        yield
    except DBAPIError as exc:
        raise StorageError(f"database {_show(engine.url)}: {_first_line(exc.orig)}") from exc
    except SQLAlchemyError as exc:
        raise StorageError(f"database {_show(engine.url)}: {_first_line(exc)}") from exc


# -- migrations --------------------------------------------------------------


def alembic_config(script_location: Path) -> Config:
    """An Alembic configuration for ``script_location`` without an ini file."""
    script_location = Path(script_location)
    if not (script_location / "env.py").is_file():
        raise StorageError(f"no Alembic environment at {script_location} (env.py missing)")
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    return cfg


def head_revision(script_location: Path) -> str:
    head = ScriptDirectory.from_config(alembic_config(script_location)).get_current_head()
    if head is None:
        raise StorageError(f"no migrations found under {script_location}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty (never migrated) database."""
    with storage_errors(engine), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, script_location: Path, revision: str = "head") -> str | None:
    """Migrate the database to ``revision`` in one transaction; return the new revision.

    The connection travels to ``alembic/env.py`` through ``config.attributes``,
    so the engine's settings (pragmas, driver) apply to the migration too.
    """
    cfg = alembic_config(script_location)
    with storage_errors(engine):
        with engine.execution_options(**{_BEGIN_OPTION: "immediate"}).begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two agents starting at once against one database: the second
                # waits here and then finds nothing left to do.
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK_KEY}
                )
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, revision)
            except CommandError as exc:
                raise StorageError(
                    f"cannot upgrade database {_show(engine.url)}: {_first_line(exc)}"
                    " (is it from a newer agent version?)"
                ) from exc
        return current_revision(engine)


def check_at_head(engine: Engine, script_location: Path) -> None:
    """Raise SchemaOutOfDate unless the database is at the newest migration."""
    head = head_revision(script_location)
    current = current_revision(engine)
    if current != head:
        raise SchemaOutOfDate(
            f"database {_show(engine.url)} is at revision {current or 'none (empty)'},"
            f" this agent needs {head}: run `hyperct-agent db upgrade`"
        )


# -- backends ----------------------------------------------------------------


def _sqlite_engine(url: URL, kwargs: dict[str, Any]) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file:")
    if not in_memory:
        parent = Path(database).expanduser().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"database {_show(url)}: cannot create directory {parent}: {exc.strerror}"
            ) from exc
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S, **kwargs.pop("connect_args", {})}
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    busy_ms = int(float(connect_args["timeout"]) * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module (which would
        # only BEGIN before DML) so SQLAlchemy's begin event decides.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        # Pooled connections serve every session: set the wait for this one each time.
        timeout = options.get(_TIMEOUT_OPTION)
        wait_ms = busy_ms if timeout is None else max(1, int(timeout * 1000))
        conn.exec_driver_sql(f"PRAGMA busy_timeout={wait_ms}")
        immediate = options.get(_BEGIN_OPTION) == "immediate"
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgresql_engine(url: URL, kwargs: dict[str, Any]) -> Engine:
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    connect_args = dict(kwargs.pop("connect_args", {}))
    if "connect_timeout" not in url.query:
        connect_args.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
    connect_args.setdefault("application_name", "hyperct-agent")
    kwargs.setdefault("pool_pre_ping", True)
    try:
        engine = create_engine(url, connect_args=connect_args, **kwargs)
    except NoSuchModuleError as exc:
        raise StorageError(f"database {_show(url)}: driver not installed ({exc})") from exc

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        timeout = conn.get_execution_options().get(_TIMEOUT_OPTION)
        if timeout is not None:
            # LOCAL: for this transaction only; the pooled connection keeps its defaults.
            wait_ms = max(1, int(timeout * 1000))
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {wait_ms}")

    return engine


def _parse_url(url: str | URL) -> URL:
    if isinstance(url, URL):
        return url
    try:
        return make_url(url)
    except ArgumentError as exc:
        # Don't echo the string: it may hold a password.
        raise StorageError(
            "invalid database URL: expected sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DBNAME"
        ) from exc


def _show(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _first_line(exc: BaseException | None) -> str:
    msg = str(exc).strip() if exc is not None else ""
    return msg.splitlines()[0] if msg else type(exc).__name__
