"""``hyperct-agent serve``: run the DICOM node and the screening until SIGTERM or SIGINT.

``--role node`` receives, sweeps and delivers and never loads the model;
``--role screen`` loads the model and screens what the nodes queued; the
default ``all`` runs one of each as child processes (:mod:`agent.supervise`).
They share only the database and the storage root, so a site may run several
nodes and several screen workers on one PostgreSQL database.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from agent import __version__
from agent.commands.args import number as args_number
from agent.errors import AgentError

# Seconds beyond --grace that stopping the node, the pipeline and the database may take.
_SHUTDOWN_MARGIN = 30.0


def _give_up(log: Any) -> None:
    log.error("shutdown did not finish in time; exiting without it")
    os._exit(1)


#: Seconds beyond [database] receive_timeout_seconds a C-STORE waits for a database that
#: does not answer at all (a frozen server never fires its own statement timeout).
_FROZEN_DATABASE_MARGIN = 5.0
#: In-flight screening may finish within this long at shutdown (0: requeue at once).
grace_seconds = args_number(0.0, 3600.0)


#: ``--role``: node (DICOM receive, sweep, delivery, dashboard), screen (the model),
#: all (both, as two supervised child processes).
ROLES = ("all", "node", "screen")


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the DICOM node and the screening pipeline")
    p.add_argument("--config", type=Path, help="agent.toml (default: the embedded defaults)")
    p.add_argument(
        "--grace",
        type=grace_seconds,
        default=10.0,
        help="seconds to let in-flight screening finish at shutdown before requeueing it",
    )
    p.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="node: receive, sweep and deliver (never loads the model); screen: load the model "
        "and screen queued series; all (default): both, as two supervised processes",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.role == "all":
        from agent.supervise import supervise

        return supervise(args)
    return serve_role(args)


def serve_role(args: argparse.Namespace) -> int:
    """One role in this process: ``node`` or ``screen``."""
    from agent.logs import get_logger
    from agent.pipeline.scheduler import NODE_STAGES, SCREEN_STAGES, Pipeline
    from agent.runtime import open_runtime
    from agent.supervise import follow_supervisor, tell_supervisor_ready
    from storage.audit import audit

    is_node = args.role == "node"
    runtime = open_runtime(args.config, migrate=True)
    log = get_logger("agent.serve")
    settings = runtime.settings
    # Handlers first: a SIGTERM that arrives while starting up still stops cleanly.
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    follow_supervisor(stop, log)
    store = runtime.instance_store()
    try:
        swept = store.prepare()
    except OSError as exc:
        raise AgentError(f"storage root {settings.storage.root}: {exc.strerror or exc}") from None
    if swept:
        log.warning("removed unfinished temporary files from a previous run", count=swept)
    log.info("storage ready", direct_io=store.direct_io)

    node = None
    if is_node:
        node = _start_node(runtime, store)
        with runtime.sessions.begin() as session:
            audit(session, "application", "started", detail={"version": __version__})
        _record_earlier_stops(runtime.sessions, settings.storage.root, log)
        log.info(
            "node listening",
            ae_title=settings.node.ae_title,
            host=settings.node.host,
            port=node.port,
            tls_port=node.tls_port,
            storage=str(settings.storage.root),
            version=__version__,
        )
        pipeline = Pipeline(
            settings, runtime.sessions, store, stages=NODE_STAGES, handlers=node.handlers
        )
    else:
        from agent.pipeline.reporting import ReportFiles

        reports = ReportFiles(store, settings.reports)
        pipeline = Pipeline(settings, runtime.sessions, store, reports, stages=SCREEN_STAGES)
    pipeline.start()
    if not is_node:
        log.info("screen worker started", worker=pipeline.worker, version=__version__)
    elif not settings.destinations:
        log.warning("no [[destinations]] configured: reports are kept but not sent")

    web = None
    try:
        if is_node and settings.web.enabled:
            from agent.pipeline.workers import WorkerBoard
            from agent.web import start_dashboard

            board = WorkerBoard(settings.storage.root, settings.pipeline.lease_seconds)
            web = start_dashboard(settings, runtime.engine, node=node, workers=board)
            log.info("web dashboard listening", host=settings.web.host, port=web.port)
        if is_node:
            tell_supervisor_ready()
        stop.wait()
    finally:
        # Whatever step below might hang (a peer that never lets go, a lock),
        # a service manager's SIGTERM must end the process.
        watchdog = threading.Timer(args.grace + _SHUTDOWN_MARGIN, _give_up, args=(log,))
        watchdog.daemon = True
        watchdog.start()
        if web is not None:
            web.stop()
        # Stop receiving first (an instance not yet acknowledged is resent by
        # its sender), then let in-flight pipeline work finish or give it back.
        if node is not None:
            node.stop()
        idle = pipeline.stop(grace_seconds=args.grace)
        store.close()
        unrecorded, error = [], pipeline.release_error
        if error:
            lease = settings.pipeline.lease_seconds
            unrecorded.append(f"work still claimed (taken over once its {lease:g} s lease lapses)")
        if is_node:
            try:
                with runtime.sessions.begin() as session:
                    audit(session, "application", "stopped")
            except SQLAlchemyError as exc:
                error = type(exc).__name__
                _remember_stop(settings.storage.root)
                unrecorded.append("the stop's audit record (written at the next start)")
        if unrecorded:
            # One "database unavailable at stop" per agent: the node's (a screen worker's
            # jobs are only ever "work still claimed").
            event = "database unavailable at stop" if is_node else "screen work not given back"
            log.error(event, not_recorded="; ".join(unrecorded), error=error)
        runtime.close()
        log.info("stopped", in_flight_abandoned=not idle)
    # Everything durable is committed and closed by now. Leave without the
    # interpreter's finalization: library daemon threads (pynetdicom
    # associations, the scheduler, a batch still in inference whose jobs are
    # back in the queue) may still be inside C code or logging, and finalizing
    # around them can hang or abort the process (one SIGABRT at stop was seen
    # under the full test suite). An exception above still propagates.
    _leave(0)
    return 0


def _start_node(runtime: Any, store: Any) -> Any:
    """The DICOM listener, with its receive path bounded in how long it waits for the database."""
    from agent.node.handlers import NodeHandlers, receive_limits
    from agent.node.server import start_node
    from agent.pseudonym import load_pseudonymizer
    from agent.send import check_destinations
    from storage.db import make_session_factory

    settings = runtime.settings
    # One key for the node's life: a damaged key file stops the start (ConfigError).
    pseudonymizer = load_pseudonymizer(settings.patients.pseudonym_key, settings.storage.root)
    # The receive path waits a bounded time for the database: a C-STORE is refused, not held.
    receive_sessions = make_session_factory(
        runtime.engine, timeout_seconds=settings.database.receive_timeout_seconds
    )
    handlers = NodeHandlers(
        store,
        receive_sessions,
        settings.node.on_conflict,
        receive_limits(settings.node),
        # The server-side timeouts answer first; this bounds a server that answers nothing.
        commit_timeout=settings.database.receive_timeout_seconds + _FROZEN_DATABASE_MARGIN,
        echo_reports=_echo_report_intake(settings, store, pseudonymizer),
        pseudonymizer=pseudonymizer,
    )
    check_destinations(settings.destinations)
    try:
        return start_node(settings.node, handlers)
    except OSError as exc:
        raise AgentError(
            f"cannot listen on {settings.node.host}:{settings.node.port}: {exc.strerror or exc}"
        ) from None


def _echo_report_intake(settings: Any, store: Any, pseudonyms: Any) -> Any:
    """The intake of echo SRs when ``[outcomes] accept_echo_sr`` (else None: not accepted)."""
    if not settings.outcomes.accept_echo_sr:
        return None
    from agent.outcomes.intake import EchoReportIntake

    return EchoReportIntake(store, pseudonyms, settings.outcomes.match_days)


def _unrecorded_stops(storage_root: Path) -> Path:
    return storage_root / ".unrecorded-stops"


def _remember_stop(storage_root: Path) -> None:
    """Leave a note that this stop is missing from the audit trail (the database was gone)."""
    folder = _unrecorded_stops(storage_root)
    note = {"stopped_at": datetime.now(UTC).isoformat(), "host": socket.gethostname()}
    try:
        folder.mkdir(exist_ok=True)
        (folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json").write_text(json.dumps(note))
    except OSError:
        pass  # the storage root is gone too: the log line is all that is left


def _record_earlier_stops(sessions: Any, storage_root: Path, log: Any) -> None:
    """Audit the stops that earlier runs could not record, at the time they happened."""
    from storage.audit import audit

    folder = _unrecorded_stops(storage_root)
    for note in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        claimed = note.with_suffix(f".{os.getpid()}")
        try:
            os.rename(note, claimed)  # agents sharing the storage root record it once
            stopped_at = datetime.fromisoformat(json.loads(claimed.read_text())["stopped_at"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        try:
            with sessions.begin() as session:
                audit(
                    session,
                    "application",
                    "stopped",
                    detail={"recorded_at_start": True},
                    occurred_at=stopped_at,
                )
        except SQLAlchemyError:
            os.rename(claimed, note)
            return
        claimed.unlink(missing_ok=True)
        log.warning("an earlier stop recorded now: the database was unavailable then")


def _leave(code: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
