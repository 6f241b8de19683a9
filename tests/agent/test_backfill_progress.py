"""Campaign progress where operators look: ``status --json``, the dashboard and /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from agent.backfill.progress import duration
from agent.config import Settings
from agent.web import Dashboard, start_dashboard
from storage.models import BackfillCampaign, BackfillSeries, BackfillState, CampaignState
from storage.types import utcnow
from tests.agent.test_dashboard import http_get, scrape

ROOT = Path(__file__).resolve().parents[2]


def fill(engine: Engine) -> None:
    """One running campaign, two hours in: 3 retrieved, 1 dead, 1 retrying, 5 planned."""
    now = utcnow()
    with Session(engine) as s, s.begin():
        c = BackfillCampaign(
            name="chest-2019", archive="pacs", date_from="20190101", date_to="20191231",
            state=CampaignState.RUNNING, started_at=now - timedelta(hours=2),
        )  # fmt: skip
        s.add(c)
        s.flush()
        states = [BackfillState.RETRIEVED] * 3 + [BackfillState.DEAD, BackfillState.FAILED]
        states += [BackfillState.PLANNED] * 5
        for i, state in enumerate(states):
            s.add(
                BackfillSeries(
                    campaign_id=c.id,
                    study_instance_uid=f"1.2.3.{i}",
                    series_instance_uid=f"1.2.3.{i}.1",
                    state=state,
                    retrieved_at=now - timedelta(minutes=5) if state == "retrieved" else None,
                )  # fmt: skip
            )


@pytest.fixture
def dashboard(engine: Engine, tmp_path: Path) -> Iterator[Dashboard]:
    fill(engine)
    settings = Settings.model_validate(
        {"storage": {"root": str(tmp_path)}, "web": {"enabled": True, "port": 0}}
    )
    d = start_dashboard(settings, engine)
    yield d
    d.stop()


def test_status_json_dashboard_and_metrics_show_progress(
    dashboard: Dashboard, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n')
    out = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--json", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    [c] = json.loads(out.stdout)["backfill"]
    assert (c["name"], c["done"], c["failed"], c["remaining"]) == ("chest-2019", 3, 1, 6)
    assert c["rate_per_hour"] == 3.0 and c["eta_seconds"] == 7200  # 6 left at 3 an hour
    text = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    ).stdout  # fmt: skip
    line = "chest-2019 (pacs, running): 3 retrieved, 1 dead, 6 remaining, 3/h, ETA 2 h 00 min"
    assert line in text

    base = f"http://127.0.0.1:{dashboard.port}"
    code, page, _ = http_get(f"{base}/backfill")
    assert code == 200 and "chest-2019" in page and "2 h 00 min" in page
    samples = scrape(base)
    key = ("hyperct_backfill_series", (("campaign", "chest-2019"), ("state", "planned")))
    assert samples[key] == 5
    assert samples[("hyperct_backfill_eta_seconds", (("campaign", "chest-2019"),))] == 7200


def test_durations_read_like_people_write_them() -> None:
    assert [duration(s) for s in (None, 30, 2400, 7500, 3 * 86400 + 3600)] == [
        "-", "30 s", "40 min", "2 h 05 min", "3 d 01 h",
    ]  # fmt: skip
