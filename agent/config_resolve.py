"""What ``load_settings`` does after validation: paths, the database URL, TLS files."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from agent.config_base import DATABASE_URL_ENV
from agent.errors import ConfigError
from agent.resources import default_config_path

if TYPE_CHECKING:
    from agent.config import Destination, Settings
    from agent.config_backfill import Archive

#: Database URL schemes the agent runs on (``storage.db``), and their drivers.
SUPPORTED_DATABASES = {"sqlite": ("", "pysqlite"), "postgresql": ("", "psycopg")}


def check_database_url(url: str, where: str) -> None:
    """SQLite or PostgreSQL (psycopg 3) only; the URL is not shown: it may hold a password."""
    match = re.match(r"([A-Za-z][A-Za-z0-9.+-]*)://", url)
    scheme = match.group(1).lower() if match else ""
    backend, _, driver = scheme.partition("+")
    supported = "sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME"
    if not match:
        raise ConfigError(f"{where}: not a database URL: use {supported}")
    if backend not in SUPPORTED_DATABASES:
        raise ConfigError(f"{where}: unsupported database {scheme!r}: use {supported}")
    if driver not in SUPPORTED_DATABASES[backend]:
        raise ConfigError(
            f"{where}: unsupported driver {scheme!r}: use {backend}:// "
            f"or {backend}+{SUPPORTED_DATABASES[backend][1]}://"
        )


def check_tls_files(settings: Settings, cfg_path: Path) -> None:
    """Load every TLS certificate, key and CA file named, as the node and senders will."""
    from agent.node.tls import client_context, server_context

    try:
        if settings.node.tls.enabled:
            server_context(settings.node.tls)
        for dest in settings.destinations:
            if dest.tls is not None:
                client_context(dest.tls, f"[[destinations]] {dest.name!r}.tls")
        for archive in settings.archives:
            if archive.tls is not None:
                client_context(archive.tls, f"[[archives]] {archive.name!r}.tls")
    except ConfigError as exc:
        raise ConfigError(f"{cfg_path}: {exc}") from None


def resolve_settings(settings: Settings, cfg_path: Path) -> Settings:
    """Paths made absolute, the database URL chosen and checked, the checkpoint found."""
    base = cfg_path.resolve().parent
    user_config = cfg_path.resolve() != default_config_path().resolve()
    # The packaged default keeps its data in the working directory, not the install prefix.
    anchor = base if user_config else Path.cwd()
    storage = settings.storage.model_copy(update={"root": _abs(settings.storage.root, anchor)})
    url = os.environ.get(DATABASE_URL_ENV) or settings.database.url
    from_env = bool(os.environ.get(DATABASE_URL_ENV))
    check_database_url(url, DATABASE_URL_ENV if from_env else f"{cfg_path}: [database].url")
    url = _resolve_sqlite(url, anchor)
    model = settings.model
    if model.checkpoint is not None:
        ckpt = _abs(model.checkpoint, anchor)
        if not ckpt.exists():
            raise ConfigError(f"{cfg_path}: [model].checkpoint: {ckpt} does not exist")
        if not os.access(ckpt, os.R_OK):
            raise ConfigError(f"{cfg_path}: [model].checkpoint: {ckpt} is not readable")
        model = model.model_copy(update={"checkpoint": ckpt})
    node = settings.node
    tls = node.tls
    node = node.model_copy(
        update={
            "tls": tls.model_copy(
                update={
                    k: _abs(v, anchor)
                    for k in ("certificate", "private_key", "ca_certificates")
                    if (v := getattr(tls, k)) is not None
                }
            )
        }
    )
    destinations = [_tls_abs(d, anchor) for d in settings.destinations]
    archives = [_tls_abs(a, anchor) for a in settings.archives]
    return settings.model_copy(
        update={
            "node": node,
            "destinations": destinations,
            "archives": archives,
            "storage": storage,
            "database": settings.database.model_copy(update={"url": url}),
            "model": model,
            "source": cfg_path,
        }
    )


_Peer = TypeVar("_Peer", "Destination", "Archive")


def _tls_abs(peer: _Peer, anchor: Path) -> _Peer:
    """A destination or archive with its TLS file paths made absolute."""
    if peer.tls is None:
        return peer
    files = {
        k: _abs(v, anchor)
        for k in ("certificate", "private_key", "ca_certificates")
        if (v := getattr(peer.tls, k)) is not None
    }
    return peer.model_copy(update={"tls": peer.tls.model_copy(update=files)})


def _abs(p: Path, anchor: Path) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else (anchor / p)


def _resolve_sqlite(url: str, anchor: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
        rel = url[len(prefix) :]
        if rel and rel != ":memory:":
            return prefix + str(anchor / rel)
    return url
