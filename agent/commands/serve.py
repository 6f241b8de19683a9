"""``hyperct-agent serve``: run the DICOM node until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from agent import __version__
from agent.errors import AgentError


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the DICOM node (and, later, the screening pipeline)")
    p.add_argument("--config", type=Path, help="agent.toml (default: the embedded defaults)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.logs import get_logger
    from agent.node.handlers import NodeHandlers
    from agent.node.server import start_node
    from agent.runtime import open_runtime
    from storage.audit import audit

    runtime = open_runtime(args.config, migrate=True)
    log = get_logger("agent.serve")
    settings = runtime.settings
    store = runtime.instance_store()
    try:
        swept = store.prepare()
    except OSError as exc:
        raise AgentError(f"storage root {settings.storage.root}: {exc.strerror or exc}") from None
    if swept:
        log.warning("removed unfinished temporary files from a previous run", count=swept)

    handlers = NodeHandlers(store, runtime.sessions, settings.node.on_conflict)
    try:
        node = start_node(settings.node, handlers)
    except OSError as exc:
        raise AgentError(
            f"cannot listen on {settings.node.host}:{settings.node.port}: {exc.strerror or exc}"
        ) from None
    with runtime.sessions.begin() as session:
        audit(session, "application", "started", detail={"version": __version__})
    log.info(
        "node listening",
        ae_title=settings.node.ae_title,
        host=settings.node.host,
        port=node.port,
        storage=str(settings.storage.root),
        version=__version__,
    )

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        stop.wait()
    finally:
        node.stop()
        store.close()
        with runtime.sessions.begin() as session:
            audit(session, "application", "stopped")
        runtime.close()
        log.info("stopped")
    return 0
