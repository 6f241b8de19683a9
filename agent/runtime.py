"""Wiring shared by commands: settings -> logging, database, instance store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from agent.audit_output import configure_audit_output
from agent.config import Settings, load_settings
from agent.errors import AgentError
from agent.logs import configure_logging, installation_uid_key
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
        return InstanceStore(storage.root, storage.min_free_bytes, storage.direct_io)

    def close(self) -> None:
        self.engine.dispose()


def _uid_key(settings: Settings) -> bytes | None:
    if settings.logging.raw_uids:
        return None
    if settings.logging.uid_hash_key:
        return settings.logging.uid_hash_key.encode()
    try:
        return installation_uid_key(settings.storage.root)
    except OSError:
        return None  # a key for this process only: tokens still hide the UIDs


def open_runtime(config: Path | None, *, migrate: bool, check_files: bool = True) -> Runtime:
    """Settings, logging and the database; ``check_files`` as in :func:`load_settings`."""
    settings = load_settings(config, check_files=check_files)
    configure_logging(
        settings.logging.level,
        settings.logging.format,
        raw_uids=settings.logging.raw_uids,
        uid_key=_uid_key(settings),
    )
    configure_audit_output(settings)
    try:
        engine = make_engine(settings.database.url)
        if migrate:
            upgrade(engine, alembic_dir())
        else:
            check_at_head(engine, alembic_dir())
    except StorageError as exc:
        raise AgentError(str(exc)) from None
    return Runtime(settings, engine, make_session_factory(engine))
