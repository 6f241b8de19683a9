"""Retrieval pacing (windows read at settings load, rates), how a retrieve is judged,
and where backfill reports go."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from agent.backfill.pacing import Pacing, WindowError, parse_window
from agent.backfill.runner import judge
from agent.backfill.types import RetrieveOutcome
from agent.config import Settings
from agent.pipeline.screen import report_destinations

ROOT = Path(__file__).resolve().parents[2]


def at(day: int, hh: int, mm: int = 0) -> datetime:
    # 2026-11-30 is a Monday; day 0 = Monday.
    return datetime(2026, 11, 30 + day, hh, mm) if day < 1 else datetime(2026, 12, day, hh, mm)


def test_a_night_window_runs_past_midnight_into_the_next_morning() -> None:
    w = parse_window("mon-fri 20:00-06:00")
    assert w.open_at(at(0, 20)) and w.open_at(at(0, 23, 59))
    assert w.open_at(at(1, 5, 59))  # Tuesday morning: Monday night still
    assert not w.open_at(at(1, 6)) and not w.open_at(at(0, 19, 59)) and not w.open_at(at(1, 12))
    assert w.open_at(at(5, 5))  # Saturday 05:00 is Friday night
    assert not w.open_at(at(5, 20))  # Saturday evening is not in mon-fri
    assert not w.open_at(at(0, 5))  # Monday 05:00 would be Sunday night


def test_day_lists_ranges_and_whole_days() -> None:
    weekend = parse_window("sat,sun 00:00-24:00")
    assert weekend.open_at(at(5, 0)) and weekend.open_at(at(6, 23, 59))
    assert not weekend.open_at(at(0, 0, 1))
    assert parse_window("fri-mon 09:00-10:00").days == frozenset({4, 5, 6, 0})
    assert parse_window("daily 01:00-02:00").days == frozenset(range(7))
    pacing = Pacing.from_settings(["sat,sun 00:00-24:00", "mon 12:00-13:00"], 2, 10)
    assert pacing.open_at(at(0, 12, 30)) and not pacing.open_at(at(1, 12, 30))
    assert Pacing.from_settings([], 2, 10).open_at(at(2, 3))


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("mon-fri 20:00", "expected DAYS HH:MM-HH:MM"),
        ("mo-fr 20:00-06:00", "'mo-fr' is not a day"),
        ("mon 25:00-06:00", "25:00 is not a time of day"),
        ("mon 10:61-11:00", "10:61 is not a time of day"),
        ("mon 24:00-06:00", "24:00 is not a time of day"),
        ("mon 10:00-10:00", "starts and ends at the same time"),
    ],
)
def test_bad_windows_say_why(spec: str, says: str) -> None:
    with pytest.raises(WindowError, match=says):
        parse_window(spec)


def test_a_bad_window_is_a_one_line_error_at_settings_load(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[backfill]\nwindows = ["weekdays 20:00-06:00"]\n')
    out = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    [line] = out.stderr.strip().splitlines()
    assert "windows" in line and "'weekdays' is not a day" in line


def test_pacing_allows_at_most_the_concurrency_and_the_hourly_rate() -> None:
    pacing = Pacing.from_settings([], 3, 10)
    assert pacing.allowed(held=0, started_last_hour=0) == 3
    assert pacing.allowed(held=2, started_last_hour=0) == 1
    assert pacing.allowed(held=0, started_last_hour=9) == 1
    assert pacing.allowed(held=0, started_last_hour=12) == 0


@pytest.mark.parametrize(
    ("outcome", "received", "expected", "says"),
    [
        (RetrieveOutcome(0x0000, completed=5), 5, 5, None),
        (RetrieveOutcome(0xB000, completed=4, warning=1), 5, 5, None),  # warnings only: stored
        (RetrieveOutcome(0x0000, completed=5), 5, None, None),  # no count from the query
        (RetrieveOutcome(None, error="association rejected by the archive"), 0, 5, "rejected"),
        (RetrieveOutcome(0xA801, error="archive answered 0xA801"), 0, 5, "0xA801"),
        (RetrieveOutcome(0xA701), 0, 5, "0xA701"),
        (RetrieveOutcome(0xC000), 0, 5, "0xC000"),
        (RetrieveOutcome(0xB000, completed=4, failed=1), 4, 5, "1 of 5 sub-operations failed"),
        (RetrieveOutcome(0x0000, completed=4), 4, 5, "4 of 5 instances recorded"),
        (RetrieveOutcome(0x0000, completed=5), 3, None, "3 of 5 instances recorded"),
        (RetrieveOutcome(0x0000), 0, None, "no instances arrived"),
    ],
)
def test_a_retrieve_is_judged_on_counts_and_on_what_arrived(
    outcome: RetrieveOutcome, received: int, expected: int | None, says: str | None
) -> None:
    problem = judge(outcome, received, expected)
    if says is None:
        assert problem is None
    else:
        assert problem is not None and says in problem


@pytest.mark.parametrize(
    ("reports", "origin", "sent"),
    [("results", "backfill", False), ("pacs", "backfill", True),
     ("results", "live", True), ("pacs", "live", True)],
)  # fmt: skip
def test_backfill_reports_go_to_pacs_only_when_asked(reports: str, origin: str, sent: bool) -> None:
    settings = Settings.model_validate(
        {
            "backfill": {"reports": reports},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                              "port": 104}],
        }
    )  # fmt: skip
    names = [d.name for d in report_destinations(settings, origin)]
    assert names == (["pacs"] if sent else [])
