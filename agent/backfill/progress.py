"""Campaign progress as people read it: durations and one line per campaign.

The numbers come from :func:`storage.backfill_queue.campaign_progress`; the
dashboard, ``status`` and ``backfill show`` format them here.
"""

from __future__ import annotations

from storage.backfill_queue import CampaignProgress


def duration(seconds: float | None) -> str:
    """``2 h 05 min``, ``40 min``, ``30 s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    minutes, _ = divmod(s, 60)
    hours, minutes = divmod(minutes, 60)
    if hours >= 48:
        return f"{hours // 24} d {hours % 24:02d} h"
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def progress_line(p: CampaignProgress) -> str:
    """One campaign in one line: done, dead, remaining, rate and ETA."""
    rate = "-" if p.rate_per_hour is None else f"{p.rate_per_hour:g}/h"
    return (
        f"{p.name} ({p.archive}, {p.state}): {p.done} retrieved, {p.failed} dead, "
        f"{p.remaining} remaining, {rate}, ETA {duration(p.eta_seconds)}"
    )
