"""Argument types shared by every command: each value is checked before it is used.

argparse calls these as ``type=`` functions; a bad value becomes one line
(``argument --limit: ...``) and exit status 2 before any database is opened.
Numbers take ASCII digits only: Python's ``int()`` and ``float()`` also accept
other scripts' digits ("٣", "３") and underscores, which no operator means.
Every bound is what the database columns hold, so nothing reaches SQL that
the driver would refuse with a traceback.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

# Job ids are INTEGER columns: 32-bit signed on PostgreSQL.
MAX_ID = 2**31 - 1
# Dates the agent accepts for --since/--until (UTC). Python's datetime stops at year
# 9999; converting an offset time near either end to UTC would overflow.
FIRST_DATE = datetime(1900, 1, 1, tzinfo=UTC)
LAST_DATE = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
DATE_RANGE = f"{FIRST_DATE:%Y-%m-%d} to {LAST_DATE:%Y-%m-%d} (UTC)"

_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
# What the node records as a UID (storage.ingest): visible ASCII, at most 64 characters.
_UID = re.compile(r"[\x21-\x7e]{1,64}")


def integer(low: int, high: int) -> Callable[[str], int]:
    """An ASCII decimal integer in ``low..high`` (a leading minus sign allowed)."""

    def parse(text: str) -> int:
        body = text[1:] if text.startswith("-") else text
        if not _DIGITS.fullmatch(body):
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
        # A bound on length before int(): a 10,000-digit string costs nothing to refuse.
        value = int(text) if len(body) <= 20 else (high + 1 if text[0] != "-" else low - 1)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{_short(text)} is outside {low}-{high}")
        return value

    parse.__name__ = "integer"
    return parse


def number(low: float, high: float) -> Callable[[str], float]:
    """A finite ASCII decimal number in ``low..high``."""

    def parse(text: str) -> float:
        if not _DECIMAL.fullmatch(text):
            raise argparse.ArgumentTypeError(f"not a number: {_short(text)!r}")
        value = float(text)
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{_short(text)} is outside {low:g}-{high:g}")
        return value

    parse.__name__ = "number"
    return parse


#: A row limit: at least one row, at most what a 32-bit LIMIT holds.
limit = integer(1, MAX_ID)
#: A probability threshold.
probability = number(0.0, 1.0)
#: Seconds to wait, between a tenth of a second and a day.
seconds = number(0.1, 86400.0)
#: CPU threads.
threads = integer(1, 1024)
#: A random seed.
seed = integer(0, 2**32 - 1)


def uid(text: str) -> str:
    """A UID as the node stores it: visible ASCII, 1-64 characters (PS3.5 9.1 allows
    digits and dots only, but a sloppy sender's UIDs are recorded too)."""
    if not _UID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"not a UID: {_short(text)!r} (visible ASCII characters, at most 64)"
        )
    return text


def job_ref(text: str) -> int | str:
    """A job id (ASCII digits) or the Series Instance UID of its series."""
    if _DIGITS.fullmatch(text):
        try:
            return integer(1, MAX_ID)(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"job id {_short(text)} is outside 1-{MAX_ID}"
            ) from None
    try:
        return uid(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"not a job id or series UID: {_short(text)!r} (job ids are ASCII digits)"
        ) from None


def name(text: str) -> str:
    """A configured name (destination, task): printable, no control characters."""
    if not text or len(text) > 200 or not text.isprintable():
        raise argparse.ArgumentTypeError(f"not a name: {_short(text)!r}")
    return text


def task(text: str) -> str:
    """One of the model's task names."""
    from hyperct_core.tasks import TASK_NAMES

    if text not in TASK_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown task {_short(text)!r} (known: {', '.join(TASK_NAMES)})"
        )
    return text


def job_state(text: str) -> Any:
    """A job state (``queued``, ``done``, ...)."""
    from storage.models import JobState

    try:
        return JobState(text)
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise argparse.ArgumentTypeError(
            f"unknown job state {_short(text)!r} (one of: {known})"
        ) from None


def path(text: str) -> Path:
    """A file system path: not empty, no NUL character (the OS cannot take one)."""
    if not text or "\x00" in text:
        raise argparse.ArgumentTypeError(f"not a path: {_short(text)!r}")
    return Path(text)


def since(text: str) -> datetime:
    """A date or ISO 8601 time (UTC unless it carries an offset), within :data:`DATE_RANGE`."""
    return _moment(text)


def until(text: str) -> datetime:
    """Like :func:`since`; a bare date means through the end of that day."""
    value = _moment(text)
    if _is_date(text):
        # The day after, exclusive; the last supported day ends at LAST_DATE.
        value = value + timedelta(days=1) if value < LAST_DATE - timedelta(days=1) else LAST_DATE
    return value


def _moment(text: str) -> datetime:
    if not text.isascii():
        raise argparse.ArgumentTypeError(f"not a date or ISO time: {_short(text)!r}")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or ISO time: {_short(text)!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # an offset time at the very ends of year 1 or 9999
        raise argparse.ArgumentTypeError(f"{_short(text)} is outside {DATE_RANGE}") from None
    if not FIRST_DATE <= value <= LAST_DATE:
        raise argparse.ArgumentTypeError(f"{_short(text)} is outside {DATE_RANGE}")
    return value


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) <= 10


def _short(text: str, keep: int = 40) -> str:
    return text if len(text) <= keep else text[:keep] + "..."
