"""``monitor check`` and ``monitor report`` end to end on both backends; the report in Chromium."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from agent.cli import main
from hyperct_core.reference import build_reference
from storage.db import make_session_factory
from storage.models import MonitorCheck
from tests.agent.monitor_data import (
    OTHER,
    PSEUDONYM,
    TASK,
    add_outcome,
    add_referral,
    add_screened,
    stream,
    write_card,
)


class Outline(HTMLParser):
    """Section ids, the count of each tag, and every attribute value."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.tags: dict[str, int] = {}
        self.attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.attrs.extend(v or "" for _, v in attrs)
        if tag == "section":
            self.sections.append(dict(attrs).get("id") or "")


@pytest.fixture
def monitored(engine: Engine, db_url: str, tmp_path: Path) -> Path:
    """120 screened CTs over the last 60 days with echoes and referrals; a card whose
    reference the live scores of one task have drifted from."""
    start = datetime.now(UTC) - timedelta(days=60)
    y, p = stream(120, seed=21)
    _, q = stream(120, seed=22, d=0.8)
    ref_p = stream(1000, seed=23)[1]
    reference = build_reference(np.stack([ref_p - 0.2, stream(1000, seed=24, d=0.8)[1]], 1),
                                [TASK, OTHER], [], {"manifest": "synthetic"})  # fmt: skip
    with make_session_factory(engine).begin() as s:
        scores = [{TASK: float(a), OTHER: float(b)} for a, b in zip(p, q, strict=True)]
        ids = add_screened(s, scores, start=start, step=timedelta(hours=11))
        for job_id, label in zip(ids, y, strict=True):
            add_outcome(s, job_id, {TASK: int(label)}, f"{start:%Y%m%d}")
        for job_id in ids[:10]:
            add_referral(s, job_id, [TASK], start + timedelta(days=1))
    ckpt = write_card(tmp_path / "ckpt", reference, {TASK: 0.45})
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n[storage]\nroot = "{tmp_path / "storage"}"\n'
        f'[model]\ncheckpoint = "{ckpt}"\n[monitor]\nmin_samples = 50\n'
        '[logging]\nlevel = "warning"\nformat = "json"\n'
    )
    return config


def test_check_then_report(
    monitored: Path, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["monitor", "check", "--config", str(monitored)]) == 0
    out = capsys.readouterr().out
    assert f"score {TASK}: PSI" in out and "ALERT" in out and "3 checks, 1 alert" in out
    # The same check measures the live AUC against the 120 matched echoes: a figure.
    assert f"performance {TASK}: AUC 0." in out and "positives=" in out
    with make_session_factory(engine)() as s:
        rows = {r.kind: r for r in s.scalars(select(MonitorCheck))}
    assert set(rows) == {"score", "performance"} and len(rows) == 2
    perf = rows["performance"]
    assert perf.n == 120 and not perf.alert and perf.threshold is None and perf.detail
    assert perf.detail["ci_low"] < perf.value < perf.detail["ci_high"]
    assert perf.detail["held_out_auc"] == 0.79
    from prometheus_client import generate_latest

    from agent.web.metrics import build_registry

    metrics = generate_latest(build_registry(make_session_factory(engine), None, None)).decode()
    assert f'hyperct_live_auc{{task="{TASK}"}} {perf.value}' in metrics
    from agent.config import load_settings
    from agent.web.server import Dashboard

    sessions = make_session_factory(engine)
    web = load_settings(monitored, check_files=False).web
    _, _, body = Dashboard(web, sessions, build_registry(sessions, None, None), {}).page(
        "/monitor", {}
    )
    assert f"live AUC, 95 % CI {perf.detail['ci_low']:.3f}" in body.decode()
    assert "held-out 0.790" in body.decode() and "1 drift alert:" in body.decode()

    folder = tmp_path / "report"
    today = datetime.now(UTC).date()
    code = main(["monitor", "report", "--out", str(folder), "--config", str(monitored),
                 "--from", f"{today - timedelta(days=70)}", "--to", f"{today}",
                 "--bootstrap", "100"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{TASK}: n=120" in captured.out and "referral yield:" in captured.out
    assert f"live performance: {TASK} (1/1)" in captured.err
    html = (folder / "report.html").read_text()
    outline = Outline()
    outline.feed(html)
    assert outline.sections == ["performance", "referral-yield", "drift"]
    assert "script" not in outline.tags and "link" not in outline.tags and "img" not in outline.tags
    # ROC, calibration and AUC per window for the one task; yield; two drift bar charts;
    # the stored check's history (two series).
    assert outline.tags["svg"] == 3 + 1 + 2 + 2
    assert not [a for a in outline.attrs if a.startswith(("http:", "https:"))
                and a != "http://www.w3.org/2000/svg"]  # fmt: skip
    assert PSEUDONYM not in html and "1.2.826.0.1.3680043.10.9" not in html
    assert "card's held-out AUC" in html and "alert" in html
    csv_text = (folder / "performance.csv").read_text()
    assert csv_text.splitlines()[1].startswith(f"{TASK},all,120,")
    # An empty period says so plainly.
    assert main(["monitor", "report", "--out", str(tmp_path / "empty"), "--config",
                 str(monitored), "--from", "2020-01-01", "--to", "2020-02-01"]) == 0  # fmt: skip
    assert "no echo outcomes matched" in capsys.readouterr().out
    empty = (tmp_path / "empty" / "report.html").read_text()
    assert "No referrals in this period" in empty and "too few samples" in empty


def test_bad_dates_are_one_line(monitored: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["monitor", "report", "--out", "x", "--from", "2026-13-01"])
    assert exit_.value.code == 2
    assert main(["monitor", "report", "--out", "x", "--config", str(monitored),
                 "--from", "2026-03-01", "--to", "2026-02-01"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "not a date" in err and "is after --to" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    chromium, driver = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (chromium.exists() and driver.exists()):
        reason = "Debian chromium and chromium-driver are not installed"
        if sys.platform == "linux" and os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    profile = tmp_path_factory.mktemp("chromium")
    flags = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--window-size=1200,3200", f"--user-data-dir={profile}")  # fmt: skip
    for flag in flags:
        options.add_argument(flag)
    drv = webdriver.Chrome(options=options, service=Service(executable_path=str(driver)))
    try:
        yield drv
    finally:
        drv.quit()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_report_renders_in_chromium(
    monitored: Path, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By

    assert main(["monitor", "report", "--out", str(tmp_path / "r"), "--config", str(monitored),
                 "--bootstrap", "50"]) == 0  # fmt: skip
    browser.get((tmp_path / "r" / "report.html").as_uri())
    charts = browser.find_elements(By.CSS_SELECTOR, "#performance svg")
    assert len(charts) == 3 and all(c.size["width"] > 200 for c in charts)
    curve = browser.find_elements(By.CSS_SELECTOR, "#performance svg polyline")
    assert curve, "the ROC curve is drawn"
    rows = browser.find_elements(By.CSS_SELECTOR, "#drift table tr")
    assert len(rows) == 1 + 2 and "alert" in rows[1].text + rows[2].text
    shot = tmp_path / "monitor-report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_the_node_role_runs_the_check_on_its_clock(monitored: Path, engine: Engine) -> None:
    import time

    from agent.config import load_settings
    from agent.pipeline.scheduler import NODE_STAGES, Pipeline
    from storage.files import InstanceStore

    settings = load_settings(monitored, check_files=False)
    sessions = make_session_factory(engine)
    store = InstanceStore(settings.storage.root)
    node = Pipeline(settings, sessions, store, stages=NODE_STAGES)
    assert node.monitor is not None
    node.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with sessions() as s:
                if s.scalar(select(func.count()).select_from(MonitorCheck)):
                    break
            time.sleep(0.1)
    finally:
        node.stop(grace_seconds=5)
    with sessions() as s:
        alerts = {c.name for c in s.scalars(select(MonitorCheck).where(MonitorCheck.alert))}
    assert alerts == {TASK}
    off = settings.model_copy(update={"monitor": settings.monitor.model_copy(
        update={"enabled": False})})  # fmt: skip
    assert Pipeline(off, sessions, store, stages=NODE_STAGES).monitor is None
