"""``/healthz``: is each part of the agent able to do its job right now?"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from agent.config import StorageSettings
from storage.db import ping
from storage.errors import StorageError

#: A check that returns (healthy, detail).
Probe = Callable[[], tuple[bool, str]]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def database_probe(engine: Engine) -> Probe:
    def probe() -> tuple[bool, str]:
        try:
            ping(engine)
        except StorageError as exc:
            return False, str(exc)
        return True, engine.dialect.name

    return probe


def storage_probe(storage: StorageSettings) -> Probe:
    def probe() -> tuple[bool, str]:
        root = storage.root
        if not root.is_dir():
            return False, f"{root} is not a directory"
        if not os.access(root, os.W_OK | os.X_OK):
            return False, f"{root} is not writable"
        free = shutil.disk_usage(root).free
        if free < storage.min_free_bytes:
            return False, f"{free} bytes free, below min_free_bytes {storage.min_free_bytes}"
        return True, f"{free} bytes free"

    return probe


def model_probe(holder: Any) -> Probe:
    def probe() -> tuple[bool, str]:
        if holder.loaded:
            identity = getattr(holder, "identity", None)
            version = getattr(identity, "version", None)
            return True, f"loaded{f' (version {version})' if version else ''}"
        if holder.error:
            return False, f"failed: {holder.error}"
        return False, "loading"

    return probe


def workers_probe(board: Any) -> Probe:
    """The model as the screen workers last recorded it (a node loads none itself)."""
    return board.model_state


def listener_probe(node: Any) -> Probe:
    """The DICOM node's listening socket is open (``RunningNode`` from agent.node.server)."""

    def probe() -> tuple[bool, str]:
        try:
            fileno = node.server.socket.fileno()
        except (AttributeError, OSError):
            fileno = -1
        if fileno < 0:
            return False, "not listening"
        host, port = node.server.server_address[:2]
        return True, f"listening on {host}:{port}"

    return probe


def run_checks(probes: dict[str, Probe]) -> list[Check]:
    checks = []
    for name, probe in probes.items():
        try:
            ok, detail = probe()
        except Exception as exc:  # a probe that breaks reports unhealthy, not a 500
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks.append(Check(name, ok, detail))
    return checks
