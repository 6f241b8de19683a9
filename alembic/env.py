"""Alembic environment for the agent's database.

Two ways in:

* programmatically (``storage.db.upgrade``, used by ``hyperct-agent db upgrade``
  and ``serve``): the caller passes an open connection in
  ``config.attributes["connection"]``; its transaction is the migration's.
* from a checkout, ``alembic revision --autogenerate -m "..."``: the URL comes
  from ``HYPERCT_DATABASE_URL`` or ``sqlalchemy.url`` in alembic.ini.

SQLite cannot ALTER most things in place, so migrations run in batch mode
there (copy-and-move of the table); the naming convention on the metadata gives
every constraint a name batch mode can find.
"""

from __future__ import annotations

import logging.config
import os
from typing import Any, Literal

from alembic import context
from sqlalchemy.engine import Connection

from storage.db import make_engine
from storage.models import Base
from storage.types import UTCDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # Migrations must not import application types (they would change under
    # old revisions): UTCDateTime is stored as a plain timezone-aware DateTime.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=_render_item,
        compare_type=True,
        compare_server_default=True,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=os.environ.get("HYPERCT_DATABASE_URL") or config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # The caller owns the connection and its transaction (and logging).
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    if config.config_file_name is not None and config.file_config.has_section("loggers"):
        logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = os.environ.get("HYPERCT_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: set HYPERCT_DATABASE_URL or sqlalchemy.url")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
