"""Wiring shared by commands: settings -> logging, database, instance store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from agent.config import Settings, load_settings
from agent.errors import AgentError
from agent.logs import configure_logging
from agent.resources import alembic_dir
from storage.db import check_at_head, make_engine, make_session_factory, upgrade
from storage.errors import StorageError
from storage.files import InstanceStore


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]

    def instance_store(self) -> InstanceStore:
        storage = self.settings.storage
        return InstanceStore(storage.root, storage.min_free_bytes)

    def close(self) -> None:
        self.engine.dispose()


def open_runtime(config: Path | None, *, migrate: bool) -> Runtime:
    settings = load_settings(config)
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        engine = make_engine(settings.database.url)
        if migrate:
            upgrade(engine, alembic_dir())
        else:
            check_at_head(engine, alembic_dir())
    except StorageError as exc:
        raise AgentError(str(exc)) from None
    return Runtime(settings, engine, make_session_factory(engine))
