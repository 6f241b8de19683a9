"""Logging: structlog over the standard library, free of patient data.

Console output on a terminal, JSON lines otherwise. Patient data must never
reach a log line: the code never logs it, pynetdicom's identifier logging is
switched off, and a last processor drops any event key that names a patient
attribute, as a guard against future mistakes.

UIDs are not patient data by themselves but link log lines to studies, so
they are replaced by a keyed hash (HMAC-SHA-256, 16 hex digits): the same UID
gives the same token within an installation, so lines still correlate, but
the UID cannot be read back or recomputed without the key. ``[logging]
raw_uids = true`` turns this off for debugging.

Libraries (pydicom, pynetdicom) log and raise Python warnings about the data
they parse, quoting its values, invalid UIDs included. Their warnings are
routed into this log as structured lines (never raw text on stderr, which
would break the JSON lines), and their text is scrubbed harder than ours: a
value quoted by "Invalid value for VR XX" is hashed (UI) or removed (any
other VR: it may be a name or a date), and anything UID-shaped, valid or not,
is hashed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, WrappedLogger

_PHI_KEYS = ("patient", "birth", "accession", "other_patient")


def _drop_patient_keys(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in list(event_dict):
        if any(mark in key.lower() for mark in _PHI_KEYS):
            event_dict[key] = "[removed]"
    return event_dict


# A UID (PS3.5 9.1) of at least five components inside any text: IPv4
# addresses and version numbers have fewer.
_UID_IN_TEXT = re.compile(r"(?<![\w.])[0-2](?:\.(?:0|[1-9]\d*)){4,}(?!\w|\.\d)")
_UID_KEY_FILE = ".uid-hash-key"
# UIDs the standard itself defines (PS3.6 Annex A) identify nothing about a patient.
_DICOM_ROOT = "1.2.840.10008."
_NOT_HASHED = frozenset({"timestamp", "level", "logger", "version"})


# Loggers of this project; text from any other logger is a library's and is scrubbed harder.
_OWN_LOGGERS = ("agent", "storage", "hyperct_core")
# pydicom's validation message (PS3.5 6.2), quoting the offending value.
_INVALID_VALUE = re.compile(r"(Invalid value for VR ([A-Z]{2}): )'(.*?)'(?=\.(?:\s|$)|$)", re.S)
# Anything UID-shaped in a library's text, invalid UIDs included: a token that starts
# with a digit and has at least five dot-separated parts (IPv4 addresses have four).
_UID_SHAPED = re.compile(r"(?<![\w.])\d[\w-]*(?:\.[\w-]*){4,}")


def _is_library(event_dict: EventDict) -> bool:
    name = str(event_dict.get("logger") or "")
    return not (name in _OWN_LOGGERS or name.startswith(tuple(f"{o}." for o in _OWN_LOGGERS)))


def _scrub_library_values(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Remove the values a library quotes in its messages unless they are UIDs (hashed later)."""
    if not _is_library(event_dict):
        return event_dict

    def removed(match: re.Match[str]) -> str:
        return match.group(0) if match.group(2) == "UI" else f"{match.group(1)}'[removed]'"

    for key, value in event_dict.items():
        if isinstance(value, str) and "Invalid value" in value:
            event_dict[key] = _INVALID_VALUE.sub(removed, value)
    return event_dict


class UidHasher:
    """A structlog processor that replaces UIDs in every string value by a keyed hash."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _library_text(self, value: str) -> str:
        def quoted_uid(match: re.Match[str]) -> str:
            if match.group(2) != "UI":
                return match.group(0)
            return f"{match.group(1)}'{self.token(match.group(3))}'"

        value = _INVALID_VALUE.sub(quoted_uid, value)
        return _UID_SHAPED.sub(self._in_text, value)

    def token(self, uid: str) -> str:
        if uid.startswith(_DICOM_ROOT):
            return uid  # a SOP Class or Transfer Syntax of the standard, not an instance
        digest = hmac.new(self._key, uid.encode("ascii", "replace"), hashlib.sha256)
        return "uid#" + digest.hexdigest()[:16]

    def _in_text(self, match: re.Match[str]) -> str:
        return self.token(match.group(0))

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        library = _is_library(event_dict)
        for key, value in event_dict.items():
            if not isinstance(value, str) or key in _NOT_HASHED:
                continue
            if "uid" in key.lower() and value:
                event_dict[key] = self.token(value)
            elif library:
                event_dict[key] = self._library_text(value)
            elif "." in value:
                event_dict[key] = _UID_IN_TEXT.sub(self._in_text, value)
        return event_dict


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning``: a warning becomes one structured line of the library's log."""
    module = Path(filename).stem
    library = "py.warnings" if module in ("", "__init__") else f"py.warnings.{module}"
    structlog.stdlib.get_logger(library).warning(
        str(message), category=category.__name__, source=f"{Path(filename).name}:{lineno}"
    )


def installation_uid_key(storage_root: Path) -> bytes:
    """The installation's hashing key, created (0600) under the storage root on first use."""
    path = storage_root / _UID_KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    storage_root.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


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
    *,
    raw_uids: bool = False,
    uid_key: bytes | None = None,
) -> None:
    """Route structlog and the standard library through one renderer.

    Unless ``raw_uids``, UIDs are hashed with ``uid_key`` (a random key for
    this process when None: tokens then correlate within one run only).
    """
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
        _scrub_library_values,
    ]
    if not raw_uids:
        shared.append(UidHasher(uid_key or secrets.token_bytes(32)))
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
    # APScheduler logs every run of every interval job at INFO, Alembic its
    # set-up on every command that opens the database, highdicom every module
    # it copies into a report.
    for chatty in ("apscheduler", "alembic", "highdicom"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    quiet_pynetdicom()
    # Python warnings (pydicom's about invalid values, among others) join the log.
    warnings.showwarning = _log_warning


def _identity(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return event_dict


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
