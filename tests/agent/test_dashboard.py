"""Results, dashboard, metrics and health over a database the real pipeline filled.

One ``serve`` process (tiny checkpoint, fast timers, dashboard on) receives two
synthetic studies from DCMTK storescu: a non-contrast chest CT that is
screened, and a contrast chest CT that is skipped. Its one destination does not
listen, so deliveries fail and are retried. An association with a wrong
called AE title is rejected. Everything below reads what that run left.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, insert, select, text, update
from sqlalchemy.orm import Session

from storage.db import make_session_factory
from storage.models import Base, Job, JobState, Report, Result, Study
from storage.results import ResultFilter, list_results, read_csv
from tests.agent.conftest import dcmtk
from tests.agent.pipeline_env import (
    ROOT,
    Serve,
    agent_config,
    chest_series,
    tiny_checkpoint,
    wait_for,
)

pytestmark = pytest.mark.slow

PATIENT = "DOE^JANE^Q"
PATIENT_ID = "PID-4711"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as rsp:
            return rsp.status, rsp.read().decode(), dict(rsp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's own parser."""
    code, body, headers = http_get(f"{base}/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


@dataclass
class AgentRun:
    folder: Path
    config: Path
    base: str  # dashboard URL
    screened_uid: str  # study with a screened series
    skipped_uid: str  # study whose only series was skipped
    before: dict[Any, float]  # /metrics before anything was sent
    after: dict[Any, float]  # /metrics once all was settled
    sent_instances: int

    def session(self) -> Session:
        return Session(create_engine(f"sqlite:///{self.folder / 'agent.db'}"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentRun]:
    folder = tmp_path_factory.mktemp("dashboard")
    checkpoint = tiny_checkpoint(folder)
    chest = chest_series(folder / "chest", patient_name=PATIENT, patient_id=PATIENT_ID)
    contrast = chest_series(
        folder / "contrast", seed=1, description="CHEST WITH CONTRAST", patient_name=PATIENT
    )
    # Nothing listens on the destination: every delivery fails and is retried.
    dest = ("pacs", "NOPACS", "127.0.0.1", _free_port())
    config = agent_config(folder, checkpoint, [dest], extra="[web]\nenabled = true\nport = 0\n")
    serve = Serve(config)
    try:
        [web] = wait_for(lambda: serve.events("web dashboard listening"), 30, "dashboard", serve)
        base = f"http://127.0.0.1:{web['port']}"
        before = scrape(base)
        storescu = dcmtk("storescu")
        for files in (chest, contrast):
            sent = subprocess.run(
                [storescu, "-aet", "PACS", "-aec", "HYPERCT", "127.0.0.1", str(serve.port),
                 *map(str, files)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert sent.returncode == 0, sent.stderr
        rejected = subprocess.run(
            [dcmtk("echoscu"), "-aet", "PACS", "-aec", "WRONGAE", "127.0.0.1", str(serve.port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert rejected.returncode != 0
        db = create_engine(f"sqlite:///{folder / 'agent.db'}")

        def settled() -> bool:
            with Session(db) as s:
                states = sorted(str(j.state) for j in s.scalars(select(Job)))
                failed_reports = s.scalar(
                    select(Report.id).where(Report.attempts >= 1, Report.last_error.is_not(None))
                )
            return states == ["done", "skipped"] and failed_reports is not None

        wait_for(settled, 180, "one series screened, one skipped, a delivery failed", serve)
        with Session(db) as s:
            uids = {str(j.state): j.series.study.study_instance_uid for j in s.scalars(select(Job))}
        db.dispose()
        after = scrape(base)
        yield AgentRun(
            folder, config, base, uids["done"], uids["skipped"], before, after,
            len(chest) + len(contrast),
        )  # fmt: skip
    finally:
        assert serve.stop() == 0


# -- /metrics and /healthz ----------------------------------------------------------------


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_counters_move_when_a_study_is_sent(run: AgentRun) -> None:
    b, a = run.before, run.after
    delta = {
        name: _value(a, name) - _value(b, name)
        for name in (
            "hyperct_instances_received_total",
            "hyperct_series_screened_total",
            "hyperct_associations_rejected_total",
            "hyperct_associations_accepted_total",
            "hyperct_inference_seconds_count",
        )
    }
    assert delta["hyperct_instances_received_total"] == run.sent_instances
    assert delta["hyperct_series_screened_total"] == 1
    assert delta["hyperct_associations_rejected_total"] == 1
    assert delta["hyperct_associations_accepted_total"] == 2
    assert delta["hyperct_inference_seconds_count"] >= 1
    assert _value(a, "hyperct_inference_seconds_sum") > 0
    # The contrast series is skipped by its first failed eligibility check.
    skipped = "hyperct_series_skipped_total"
    assert (
        _value(a, skipped, reason="non_contrast") - _value(b, skipped, reason="non_contrast") == 1
    )
    assert _value(a, "hyperct_deliveries_failed_total") >= 1
    assert _value(b, "hyperct_deliveries_failed_total") == 0
    assert _value(a, "hyperct_queue_depth", queue="screening") == 0
    assert _value(a, "hyperct_queue_depth", queue="delivery") >= 1  # waiting for a retry
    assert _value(a, "hyperct_model_loaded") == 1
    assert _value(a, "hyperct_database_up") == 1


def test_healthz_reports_every_part_healthy(run: AgentRun) -> None:
    code, body, headers = http_get(f"{run.base}/healthz")
    assert code == 200, body
    health = json.loads(body)
    checks = {c["name"]: c for c in health["checks"]}
    assert set(checks) == {"database", "storage", "model", "listener"}
    assert all(c["ok"] for c in checks.values()) and health["status"] == "ok"
    assert "listening on" in checks["listener"]["detail"]


# -- the dashboard in a browser ------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, driver = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (chromium.exists() and driver.exists()):
        reason = "Debian chromium and chromium-driver are not installed"
        if sys.platform == "linux" and __import__("os").environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--window-size=1400,1800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    drv = webdriver.Chrome(options=options, service=Service(executable_path=str(driver)))
    try:
        yield drv
    finally:
        drv.quit()


def test_dashboard_in_chromium(run: AgentRun, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(run.base + "/")
    rows = {
        r.get_attribute("data-uid"): r for r in browser.find_elements(By.CSS_SELECTOR, "tr.study")
    }
    assert set(rows) == {run.screened_uid, run.skipped_uid}
    with run.session() as s:
        echo = s.scalars(select(Job.echo_referral).where(Job.state == JobState.DONE)).one()
    assert "done" in rows[run.screened_uid].text
    assert ("ECHO" in rows[run.screened_uid].text) == echo
    assert "skipped" in rows[run.skipped_uid].text
    assert PATIENT.split("^")[0] not in browser.page_source  # no patient data on the page

    rows[run.screened_uid].find_element(By.CSS_SELECTOR, "a.study-link").click()
    assert browser.find_element(By.ID, "study-uid").text == run.screened_uid
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.prob-chart g.bar")
    assert len(bars) == 25
    with run.session() as s:
        stored = {r.task_name: (r.probability, r.flagged) for r in s.scalars(select(Result))}
    for bar in bars:
        p, flagged = stored[bar.get_attribute("data-task")]
        assert float(bar.get_attribute("data-probability")) == pytest.approx(p, abs=1e-6)
        assert (bar.get_attribute("data-flagged") == "true") == flagged
        # Rendered: each bar's width is its probability of the 360 px scale.
        rect = bar.find_element(By.TAG_NAME, "rect")
        assert rect.size["width"] == pytest.approx(p * 360, abs=1.5)
    reports = browser.find_elements(By.CSS_SELECTOR, "table.reports tr td:nth-child(3)")
    assert reports and {td.text for td in reports} <= {"failed", "pending", "sending"}
    shot = tmp_path / "dashboard-study.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"\ndashboard screenshot: {shot}")

    browser.get(run.base + "/failures")
    failed = browser.find_elements(By.CSS_SELECTOR, "#failed-deliveries tr td:nth-child(3)")
    assert {td.text for td in failed} == {"pacs"}
    browser.get(run.base + "/throughput")
    assert browser.find_elements(By.CSS_SELECTOR, "svg.throughput-chart rect.screened")
    cells = browser.find_elements(By.CSS_SELECTOR, "#throughput td")
    assert str(run.sent_instances) in [c.text for c in cells]


# -- results and studies commands -------------------------------------------------------------


def copy_database(src: Path, dst: Engine) -> None:
    """Every row of the pipeline's SQLite database into ``dst`` (migrated, empty)."""
    source = create_engine(f"sqlite:///{src}")
    jobs = Base.metadata.tables["jobs"]
    with source.connect() as conn, dst.begin() as out:
        # jobs.referral_id and referrals.job_id point at each other: jobs go in first
        # without their referral, linked once the referrals are in.
        links = []
        for table in Base.metadata.sorted_tables:
            rows = [
                dict(r._mapping) for r in conn.execute(select(Base.metadata.tables[table.name]))
            ]
            if table is jobs:
                links = [(r["id"], r["referral_id"]) for r in rows if r["referral_id"] is not None]
                for r in rows:
                    r["referral_id"] = None
            if rows:
                out.execute(insert(table), rows)
            if rows and dst.dialect.name == "postgresql":
                # Ids were copied, not drawn: move the sequence past them for later inserts.
                out.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), :n)"),
                    {"n": max(r["id"] for r in rows)},
                )
        for job_id, referral_id in links:
            out.execute(update(jobs).where(jobs.c.id == job_id).values(referral_id=referral_id))
    source.dispose()


@pytest.fixture
def filled(run: AgentRun, engine: Engine, db_url: str, tmp_path: Path) -> tuple[Engine, Path]:
    """The run's rows on the parametrised backend, and a config pointing at them."""
    copy_database(run.folder / "agent.db", engine)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n[storage]\nroot = "{run.folder / "storage"}"\n'
        '[logging]\nlevel = "warning"\nformat = "json"\n'
    )
    return engine, config


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_results_csv_round_trips_into_the_same_rows(filled: tuple[Engine, Path]) -> None:
    engine, config = filled
    with make_session_factory(engine, read_only=True)() as s:
        everything = list_results(s)
    assert len(everything) == 2
    [screened] = [r for r in everything if r.state == "done"]
    assert len(screened.probabilities) == 25
    out = cli("results", "--config", str(config), "--format", "csv")
    assert out.returncode == 0, out.stderr
    assert read_csv(out.stdout) == everything
    as_json = json.loads(cli("results", "--config", str(config), "--format", "json").stdout)
    assert [r["job_id"] for r in as_json] == [r.job_id for r in everything]
    assert as_json[[r.job_id for r in everything].index(screened.job_id)][
        "p_cardiomegaly"
    ] == pytest.approx(screened.probabilities["cardiomegaly"])

    # Each filter gives what the definition picks from the full list.
    task = max(screened.probabilities, key=screened.probabilities.__getitem__)
    top = screened.probabilities[task]
    cases: list[tuple[list[str], list[Any]]] = [
        (["--state", "skipped"], [r for r in everything if r.state == "skipped"]),
        (["--echo"], [r for r in everything if r.echo_referral]),
        (["--no-echo"], [r for r in everything if r.echo_referral is False]),
        (["--task", task, "--above", f"{top - 1e-4}"], [screened]),
        (["--task", task, "--above", f"{min(top + 1e-4, 1.0)}"], []),
        (["--above", "0.0"], [screened]),
        (["--since", "2000-01-01", "--until", "2000-01-02"], []),
        (["--since", "2000-01-01"], everything),
    ]
    for args, expected in cases:
        got = cli("results", "--config", str(config), "--format", "csv", *args)
        assert got.returncode == 0, got.stderr
        assert read_csv(got.stdout) == expected, args
    table = cli("results", "--config", str(config), "--task", task)
    assert f"{top:.3f}" in table.stdout and screened.study_instance_uid in table.stdout


def test_studies_show_the_whole_trail_without_patient_data(
    run: AgentRun, filled: tuple[Engine, Path]
) -> None:
    _engine, config = filled
    out = cli("studies", "show", run.screened_uid, "--config", str(config))
    assert out.returncode == 0, out.stderr
    text_out = out.stdout
    received = f"received {run.sent_instances // 2} instance(s)"
    for expected in (received, "decision: complete and eligible", "screened ",
                     "probabilities:", "echo referral: "):  # fmt: skip
        assert expected in text_out, expected
    # The agent is still retrying the delivery while this runs.
    assert re.search(r"report sr -> pacs: (failed|sending), attempts \d+", text_out)
    assert len(re.findall(r"^\s+\d+ \w+\s+\d\.\d{3}", text_out, re.M)) == 25
    assert "DOE" not in text_out and PATIENT_ID not in text_out
    # Per-instance audit events are folded into one line per run.
    assert text_out.count("instance_received") <= 1

    skipped = cli("studies", "show", run.skipped_uid, "--config", str(config))
    assert "decision: not eligible; non_contrast: " in skipped.stdout

    shown = cli("studies", "show", run.screened_uid, "--config", str(config), "--show-patient")
    assert f"patient: {PATIENT}  id {PATIENT_ID}" in shown.stdout
    again = cli("studies", "show", run.screened_uid, "--config", str(config)).stdout
    assert "admin patient_data_shown" in again and PATIENT_ID not in again
    as_json = json.loads(cli("studies", "show", run.screened_uid, "--config", str(config),
                             "--json").stdout)  # fmt: skip
    assert "patient" not in as_json and len(as_json["series"][0]["results"]) == 25

    missing = cli("studies", "show", "1.2.3.4", "--config", str(config))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1


# -- the admin guide's SQL ------------------------------------------------------------------------

DOC = ROOT / "docs" / "admin-database.md"


def doc_queries() -> dict[str, str]:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)
    queries = {}
    for block in blocks:
        name = re.match(r"-- name: (\w+)\n", block)
        assert name, block
        queries[name.group(1)] = block
    return queries


def _plain(rows: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [tuple(round(v, 9) if isinstance(v, float) else v for v in r) for r in rows]


def test_admin_guide_queries_run_on_this_backend(filled: tuple[Engine, Path]) -> None:
    engine, _config = filled
    queries = doc_queries()
    assert len(queries) >= 6
    with engine.connect() as conn:
        got = {name: _plain(conn.execute(text(q)).all()) for name, q in queries.items()}
    with make_session_factory(engine, read_only=True)() as s:
        jobs = s.scalars(select(Job)).all()
        results = s.scalars(select(Result)).all()
        studies = {st.id: st.study_instance_uid for st in s.scalars(select(Study))}
        echo = sorted(
            (studies[j.series.study_id], j.series.series_instance_uid, j.series.series_description)
            for j in jobs
            if j.echo_referral
        )
        assert got["echo_referrals"] == echo
        assert got["jobs_by_state"] == sorted((str(j.state), 1) for j in jobs)
        by_task = {r.task_name: r for r in results}
        assert [row[0] for row in got["flag_rate_by_task"]] == sorted(by_task)
        for name, screened, flagged, mean in got["flag_rate_by_task"]:
            assert (screened, flagged) == (1, int(by_task[name].flagged))
            assert mean == pytest.approx(by_task[name].probability)
        cardio = by_task["cardiomegaly"].probability
        assert len(got["task_above"]) == int(cardio > 0.3)
        [skipped] = [j for j in jobs if j.state == JobState.SKIPPED]
        assert got["skipped_reasons"] == [
            (skipped.series.series_instance_uid, "CHEST WITH CONTRAST", "skipped", skipped.reason)
        ]
        failed = s.scalars(select(Report).where(Report.state.in_(["failed", "dead"]))).all()
        assert len(got["failed_deliveries"]) == len(failed) >= 1
    assert got["rejected_associations"] == [("PACS", 1)]


def test_query_functions_agree_on_both_backends(filled: tuple[Engine, Path], run: AgentRun) -> None:
    engine, _config = filled
    with make_session_factory(engine, read_only=True)() as s:
        here = list_results(s, ResultFilter())
    with run.session() as s:
        there = list_results(s, ResultFilter())
    assert here == there
