"""How fast a campaign may pull from a production archive: windows, concurrency, rate.

A window is ``DAYS HH:MM-HH:MM`` in local time: ``mon-fri 20:00-06:00``,
``sat,sun 00:00-24:00``, ``daily 22:00-05:00``. A window that ends before it
starts runs past midnight and belongs to the day it starts on (``fri
20:00-06:00`` is Friday night into Saturday morning). No windows: any time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FORM = re.compile(
    r"^\s*(?P<days>[a-z,\-*]+)\s+(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})\s*$"
)


class WindowError(ValueError):
    """A window that cannot be read; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class Window:
    """Days of the week (0 = Monday) and minutes after midnight [start, end)."""

    days: frozenset[int]
    start: int
    end: int

    def open_at(self, moment: datetime) -> bool:
        minute = moment.hour * 60 + moment.minute
        day = moment.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # Past midnight: the evening of a listed day, or the morning after one.
        yesterday = (day - 1) % 7
        return (day in self.days and minute >= self.start) or (
            yesterday in self.days and minute < self.end
        )


def _minutes(text: str, spec: str, *, end: bool) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise WindowError(f"window {spec!r}: {text} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _days(text: str, spec: str) -> frozenset[int]:
    if text in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        try:
            a = DAYS.index(first)
            b = DAYS.index(last) if last else a
        except ValueError:
            raise WindowError(
                f"window {spec!r}: {part!r} is not a day or range of days (mon..sun, daily)"
            ) from None
        # mon-fri, and also fri-mon across the weekend
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def parse_window(spec: str) -> Window:
    """One window from its text, or :class:`WindowError` saying why not."""
    match = _FORM.match(spec.lower())
    if match is None:
        raise WindowError(f"window {spec!r}: expected DAYS HH:MM-HH:MM, e.g. 'mon-fri 20:00-06:00'")
    start = _minutes(match["start"], spec, end=False)
    end = _minutes(match["end"], spec, end=True)
    if start == end:
        raise WindowError(f"window {spec!r}: starts and ends at the same time")
    return Window(_days(match["days"], spec), start, end)


@dataclass(frozen=True)
class Pacing:
    """What ``[backfill]`` allows at one moment (PS3.4 C.4.2: each retrieve is one C-MOVE)."""

    windows: tuple[Window, ...]
    max_concurrent: int
    series_per_hour: int

    @classmethod
    def from_settings(cls, windows: Sequence[str], max_concurrent: int, per_hour: int) -> Pacing:
        return cls(tuple(parse_window(w) for w in windows), max_concurrent, per_hour)

    def open_at(self, moment: datetime) -> bool:
        """Whether retrieves may start at ``moment`` (local time)."""
        return not self.windows or any(w.open_at(moment) for w in self.windows)

    def allowed(self, held: int, started_last_hour: int) -> int:
        """How many more retrieves may start now, given those in progress and started."""
        return max(0, min(self.max_concurrent - held, self.series_per_hour - started_last_hour))


def local_now() -> datetime:
    return datetime.now().astimezone()


def last_hour(now: datetime) -> datetime:
    return now - timedelta(hours=1)
