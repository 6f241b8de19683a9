"""A running DICOM node on loopback, port 0, with a migrated database."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from agent.config import NodeSettings
from agent.node.handlers import NodeHandlers, receive_limits
from agent.node.server import RunningNode, start_node
from agent.pseudonym import Pseudonymizer
from agent.resources import alembic_dir
from storage.db import make_engine, make_session_factory, upgrade
from storage.files import InstanceStore
from storage.models import Instance, Series

NODE_AET = "HYPERCT"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(tool: str) -> str:
    # pynetdicom installs its own storescu/echoscu into the venv; call DCMTK's by path.
    path = f"/usr/bin/{tool}"
    if not Path(path).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"DCMTK {tool} is not installed (CI must install dcmtk)")
        pytest.skip(f"DCMTK {tool} is not installed (apt-get install dcmtk)")
    return path


@dataclass
class NodeUnderTest:
    node: RunningNode
    store: InstanceStore
    sessions: sessionmaker[Session]
    engine: Engine
    handlers: NodeHandlers

    @property
    def port(self) -> int:
        return self.node.port

    def counts(self) -> tuple[int, int]:
        with self.sessions() as s:
            return (
                s.scalar(select(func.count()).select_from(Instance)) or 0,
                s.scalar(select(func.count()).select_from(Series)) or 0,
            )

    def files(self) -> list[Path]:
        return sorted(p for p in (self.store.root / "instances").rglob("*") if p.is_file())

    def temp_files(self) -> list[Path]:
        return sorted((self.store.root / ".tmp").iterdir())

    def storescu(
        self,
        *files: Path,
        calling: str = "PACS",
        called: str = NODE_AET,
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                dcmtk("storescu"),
                "-v",
                "-aet",
                calling,
                "-aec",
                called,
                *extra,
                "127.0.0.1",
                str(self.port),
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=DCMTK_ENV,
        )


def start_test_node(
    tmp_path: Path,
    engine: Engine,
    *,
    min_free_bytes: int = 0,
    on_conflict: Literal["keep_first", "replace"] = "keep_first",
    database_timeout: float | None = None,
    commit_timeout: float | None = None,
    pseudonymizer: Pseudonymizer | None = None,
    **node: object,
) -> NodeUnderTest:
    store = InstanceStore(tmp_path / "storage", min_free_bytes)
    store.prepare()
    sessions = make_session_factory(engine, timeout_seconds=database_timeout)
    settings = NodeSettings.model_validate(
        {"ae_title": NODE_AET, "host": "127.0.0.1", "port": 0, **node}
    )
    handlers = NodeHandlers(
        store,
        sessions,
        on_conflict,
        receive_limits(settings),
        commit_timeout=commit_timeout,
        pseudonymizer=pseudonymizer,
    )
    return NodeUnderTest(start_node(settings, handlers), store, sessions, engine, handlers)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    upgrade(engine, alembic_dir())
    yield engine
    engine.dispose()


@pytest.fixture
def node(tmp_path: Path, engine: Engine) -> Iterator[NodeUnderTest]:
    """A node on each database backend (the shared ``engine`` fixture is parametrised)."""
    running = start_test_node(tmp_path, engine)
    yield running
    running.node.stop()
    running.store.close()


@pytest.fixture(scope="session")
def have_dcmtk() -> None:
    for tool in ("storescu", "echoscu"):
        dcmtk(tool)
    assert shutil.which("/usr/bin/storescu")
