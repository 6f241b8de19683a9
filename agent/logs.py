"""Logging: structlog over the standard library, free of patient data.

Console output on a terminal, JSON lines otherwise. Patient data must never
reach a log line: the code never logs it, pynetdicom's identifier logging is
switched off, and a last processor drops any event key that names a patient
attribute, as a guard against future mistakes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, WrappedLogger

_PHI_KEYS = ("patient", "birth", "accession", "other_patient")


def _drop_patient_keys(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in list(event_dict):
        if any(mark in key.lower() for mark in _PHI_KEYS):
            event_dict[key] = "[removed]"
    return event_dict


def quiet_pynetdicom() -> None:
    """Keep pynetdicom from logging identifiers (it logs Patient ID by default)."""
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # Its standard handlers dump DIMSE and dataset summaries at debug level.
    _config.LOG_HANDLER_LEVEL = "none"


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "console", "json"] = "auto",
    stream: Any = None,
) -> None:
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_patient_keys,
    ]
    structlog.configure(
        # filter_by_level first: a debug call on the receive path costs nothing at info.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pynetdicom is chatty at INFO (one line per PDU event); keep it at warning
    # unless the operator asks for debug.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    quiet_pynetdicom()


def _identity(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]
