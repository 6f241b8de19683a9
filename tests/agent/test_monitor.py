"""Monitoring on SQLite and PostgreSQL: live performance against echo outcomes, referral
yield, drift against the card's reference, the stored check, /metrics, the dashboard."""

from __future__ import annotations

import io
import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from agent.config import load_settings
from agent.config_followup import MonitorSettings
from agent.logs import configure_logging
from agent.monitor.card import read_card_view
from agent.monitor.drift import ALERT, NOT_AVAILABLE, TOO_FEW, check_drift, run_check
from agent.monitor.performance import live_performance, referral_yield, window_of
from agent.web.metrics import build_registry
from hyperct_core.metrics import rates
from hyperct_core.reference import build_reference
from storage.db import make_session_factory
from storage.models import MonitorCheck
from storage.monitoring import matched_outcomes, referral_outcomes, screened_series
from tests.agent.monitor_data import (
    OTHER,
    PSEUDONYM,
    T0,
    TASK,
    VERSION,
    add_outcome,
    add_referral,
    add_screened,
    stream,
    true_auc,
    write_card,
)

SETTINGS = MonitorSettings(min_samples=100, psi_alert=0.25, ks_alert=0.2, window_days=90)
INPUTS = {"manufacturer": ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips"],
          "convolution_kernel": ["B30f", "STANDARD", "B"], "kvp": [100.0, 120.0, 120.0, 140.0],
          "slice_thickness": [1.0, 1.25, 2.5, 2.5]}  # fmt: skip


def _inputs(n: int, seed: int, manufacturers: list[str] | None = None) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    makers = manufacturers or INPUTS["manufacturer"]
    return [{"manufacturer": makers[rng.integers(len(makers))],
             "convolution_kernel": INPUTS["convolution_kernel"][rng.integers(3)],
             "kvp": INPUTS["kvp"][rng.integers(4)],
             "slice_thickness": INPUTS["slice_thickness"][rng.integers(4)]}
            for _ in range(n)]  # fmt: skip


def _reference(seed: int = 100, n: int = 2000) -> dict[str, object]:
    _, p = stream(n, seed)
    _, q = stream(n, seed + 1, d=0.8)
    return build_reference(np.stack([p, q], axis=1), [TASK, OTHER], _inputs(n, seed),
                           {"manifest": "synthetic"})  # fmt: skip


def _live(session: Session, n: int, seed: int, shift: float = 0.0, **kw: object) -> list[int]:
    _, p = stream(n, seed)
    _, q = stream(n, seed + 1, d=0.8)
    scores = [
        {TASK: float(np.clip(a + shift, 0, 1)), OTHER: float(b)} for a, b in zip(p, q, strict=True)
    ]
    inputs = kw.pop("inputs", None) or _inputs(n, seed)
    return add_screened(session, scores, start=T0, inputs=inputs, **kw)  # type: ignore[arg-type]


# -- live performance ---------------------------------------------------------------------


def test_a_known_auc_is_measured_within_its_ci(session: Session) -> None:
    y, p = stream(900, seed=7)
    ids = add_screened(session, [{TASK: float(s)} for s in p], start=T0,
                       step=timedelta(hours=2))  # fmt: skip
    for job_id, label in zip(ids, y, strict=True):
        add_outcome(session, job_id, {TASK: int(label)}, "20260301")
    session.commit()
    outcomes = matched_outcomes(session, VERSION)
    assert len(outcomes) == 900 and outcomes[0].labels == {TASK: int(y[0])}
    perf = live_performance(outcomes, {TASK: 0.4}, min_samples=50, n_boot=500)
    f = perf.overall[TASK]
    assert (f.n, f.positives) == (900, int(y.sum()))
    assert f.ci_low < f.auc < f.ci_high and f.ci_low < true_auc(1.2) < f.ci_high
    assert f.ci_high - f.ci_low < 0.1
    at = rates(y, p, 0.4)
    assert (f.sensitivity, f.specificity, f.ppv) == pytest.approx(
        (at["sensitivity"], at["specificity"], at["ppv"]))  # fmt: skip
    assert f.calibration is not None and 0 <= f.calibration["ece"] <= 1
    # 900 CTs two hours apart from 5 January: January, February, March 2026.
    windows = perf.windows[TASK]
    assert [w.window for w in windows] == ["2026-01", "2026-02", "2026-03"]
    assert sum(w.n for w in windows) == 900
    short = [w for w in windows if w.n < 50]
    assert all("indicative only" in w.note for w in short)
    # --from/--to on the CT's day.
    january = live_performance(outcomes, {}, start=date(2026, 1, 1), end=date(2026, 1, 31),
                               n_boot=50)  # fmt: skip
    assert january.overall[TASK].n == windows[0].n
    # The query narrows by Study Date already; the day rule decides the rest.
    assert len(matched_outcomes(session, VERSION, date(2026, 2, 1))) == 900 - windows[0].n
    assert "not assessed" in january.overall[TASK].note


def test_an_uninformative_stream_has_a_ci_around_one_half(session: Session) -> None:
    y, p = stream(600, seed=3, d=0.0)
    ids = add_screened(session, [{TASK: float(s)} for s in p], start=T0)
    for job_id, label in zip(ids, y, strict=True):
        add_outcome(session, job_id, {TASK: int(label)}, "20260201")
    session.commit()
    f = live_performance(matched_outcomes(session), {}, n_boot=300).overall[TASK]
    assert f.ci_low < 0.5 < f.ci_high


def test_referral_yield_counts_echoes_positive_for_a_referral_task(session: Session) -> None:
    ids = add_screened(session, [{TASK: 0.9, OTHER: 0.8}] * 4, start=T0)
    add_outcome(session, ids[0], {TASK: 1, OTHER: 0}, "20260110")  # positive
    add_outcome(session, ids[1], {TASK: 0, OTHER: 1}, "20260110")  # positive only elsewhere
    add_outcome(session, ids[2], {TASK: 0}, "20260110")
    for job_id in ids:
        add_referral(session, job_id, [TASK], T0 + timedelta(days=1))
    add_referral(session, ids[0], [TASK], T0 + timedelta(days=40))  # February: no echo yet
    session.commit()
    refs = referral_outcomes(session, T0, T0 + timedelta(days=60))
    rows = referral_yield(refs)
    assert rows[0] == {"window": "2026-01", "referrals": 4, "with_echo": 3, "positive": 1,
                       "yield": pytest.approx(1 / 3)}  # fmt: skip
    assert rows[1]["window"] == "2026-02" and rows[1]["referrals"] == 1


def test_windows_are_calendar_months_quarters_or_weeks() -> None:
    assert window_of(date(2026, 3, 31)) == "2026-03"
    assert window_of(date(2026, 3, 31), "quarter") == "2026-Q1"
    assert window_of(date(2026, 1, 1), "week") == "2026-W01"


# -- drift ----------------------------------------------------------------------------------


def test_clean_stream_raises_no_alert(session: Session) -> None:
    _live(session, 600, seed=11)
    session.commit()
    series = screened_series(session, T0, T0 + timedelta(days=60), VERSION)
    assert len(series) == 600 and series[0].inputs["kvp"] in INPUTS["kvp"]
    from agent.monitor.drift import compare

    checks = compare(_reference(), series, SETTINGS)
    names = {(c.kind, c.name) for c in checks}
    assert names == {("score", TASK), ("score", OTHER), ("input", "manufacturer"),
                     ("input", "convolution_kernel"), ("input", "kvp"),
                     ("input", "slice_thickness")}  # fmt: skip
    assert not [c.sentence() for c in checks if c.alert]
    assert all(c.value is not None and c.value < 0.1 for c in checks)
    assert {c.statistic for c in checks if c.name in ("kvp", "slice_thickness")} == {"ks"}


def test_shifted_scores_and_a_new_manufacturer_raise_alerts(session: Session) -> None:
    _live(session, 600, seed=12, shift=0.2, inputs=_inputs(600, 12, ["SIEMENS", "CANON"]))
    session.commit()
    from agent.monitor.drift import compare

    checks = {c.name: c for c in compare(_reference(), screened_series(
        session, T0, T0 + timedelta(days=60)), SETTINGS)}  # fmt: skip
    assert checks[TASK].status == ALERT and checks[TASK].value > SETTINGS.psi_alert
    assert checks[OTHER].status != ALERT  # the other task did not move
    maker = checks["manufacturer"]
    assert maker.status == ALERT and "CANON" in maker.detail["live"]
    assert "ALERT" in maker.sentence()


def test_a_kvp_shift_is_caught_by_the_ks_distance(session: Session) -> None:
    inputs = _inputs(300, 13)
    for row in inputs:
        row["kvp"] = 80.0
    _live(session, 300, seed=13, inputs=inputs)
    session.commit()
    from agent.monitor.drift import compare

    checks = {c.name: c for c in compare(_reference(), screened_series(
        session, T0, T0 + timedelta(days=60)), SETTINGS)}  # fmt: skip
    assert checks["kvp"].statistic == "ks" and checks["kvp"].value == pytest.approx(1.0)
    assert checks["kvp"].status == ALERT and checks["slice_thickness"].status != ALERT


def test_too_few_samples_is_said_and_never_alerts(session: Session) -> None:
    _live(session, 40, seed=14, shift=0.5, inputs=_inputs(40, 14, ["CANON"]))
    session.commit()
    from agent.monitor.drift import compare

    checks = compare(_reference(), screened_series(session, T0, T0 + timedelta(days=60)),
                     SETTINGS)  # fmt: skip
    assert checks and all(c.status == TOO_FEW and not c.alert and c.value is None for c in checks)
    assert "too few samples (40 < 100)" in checks[0].sentence()


def test_another_model_versions_scores_are_not_compared(session: Session) -> None:
    _live(session, 200, seed=15, shift=0.4, version="1.0.0")
    session.commit()
    assert screened_series(session, T0, T0 + timedelta(days=60), VERSION) == []


# -- the stored check, metrics and dashboard -------------------------------------------------


def _settings(tmp_path: Path, db_url: str, reference: dict[str, object] | None) -> object:
    ckpt = write_card(tmp_path / "ckpt", reference, {TASK: 0.4})
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n[storage]\nroot = "{tmp_path / "storage"}"\n'
        f'[model]\ncheckpoint = "{ckpt}"\n[monitor]\nmin_samples = 100\n'
        '[logging]\nlevel = "info"\nformat = "json"\n'
    )
    return config


def test_the_check_stores_alerts_logs_them_and_shows_them(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        ids = _live(s, 500, seed=16, shift=0.25, inputs=_inputs(500, 16, ["SIEMENS", "CANON"]))
    config = _settings(tmp_path, db_url, _reference())
    settings = load_settings(config, check_files=False)  # type: ignore[arg-type]
    stream_ = io.StringIO()
    configure_logging("info", "json", stream=stream_)
    now = T0 + timedelta(days=30)
    checks = run_check(sessions, settings, now=now)
    assert {c.name for c in checks if c.alert} == {TASK, "manufacturer"}
    with sessions() as s:
        rows = list(s.scalars(select(MonitorCheck)))
    assert len(rows) == len(checks) and {r.name for r in rows if r.alert} == {TASK, "manufacturer"}
    row = next(r for r in rows if r.name == TASK)
    assert row.window_end == now and row.window_start == now - timedelta(days=90)
    assert row.detail and row.detail["status"] == "alert" and row.n == 500
    logged = [json.loads(line) for line in stream_.getvalue().splitlines()]
    warnings = [e for e in logged if e.get("event") == "drift alert"]
    assert {e["name"] for e in warnings} == {TASK, "manufacturer"}
    text = stream_.getvalue()
    assert PSEUDONYM not in text and "1.2.826.0.1.3680043.10.9" not in text  # no patient data
    # /metrics: the newest run's statistics and alerts.
    metrics = generate_latest(build_registry(sessions, None, None)).decode()
    assert f'hyperct_drift_alert{{kind="score",name="{TASK}"}} 1.0' in metrics
    assert 'hyperct_drift_alert{kind="input",name="manufacturer"} 1.0' in metrics
    assert f'hyperct_drift_alert{{kind="score",name="{OTHER}"}} 0.0' in metrics
    assert 'hyperct_drift_ks{kind="input",name="kvp"}' in metrics
    assert "hyperct_drift_available 1.0" in metrics
    # The dashboard's monitoring page.
    from agent.web.server import Dashboard

    board = Dashboard(settings.web, sessions, build_registry(sessions, None, None), {})
    code, _, body = board.page("/monitor", {})
    page = body.decode()
    assert code == 200 and "2 drift alerts" in page and "CANON" not in page.split("<table")[0]
    assert PSEUDONYM not in page
    _, _, worklist = board.page("/", {})  # every page's header points at the alerts
    assert (
        'id="drift-alert-count"' in worklist.decode() and "2 drift alerts</a>" in worklist.decode()
    )
    assert len(ids) == 500


def test_a_card_without_reference_says_drift_is_not_available(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    sessions = make_session_factory(engine)
    settings = load_settings(_settings(tmp_path, db_url, None), check_files=False)  # type: ignore[arg-type]
    card = read_card_view(settings.model)
    assert card.reference is None
    with sessions() as s:
        (check,) = check_drift(s, card, settings.monitor)
    assert check.status == NOT_AVAILABLE and "drift is not available" in check.sentence()
    run_check(sessions, settings)
    metrics = generate_latest(build_registry(sessions, None, None)).decode()
    assert "hyperct_drift_available 0.0" in metrics and "hyperct_drift_alert{" not in metrics
    from agent.monitor.report import gather, render, summary_lines

    with sessions() as s:
        data = gather(s, settings, card, date(2026, 1, 1), date(2026, 3, 31), n_boot=10)
    assert data.drift == [] and "drift is not available" in render(data, settings)
    assert any("drift is not available" in line for line in summary_lines(data))


def test_a_malformed_reference_is_one_line(tmp_path: Path) -> None:
    from agent.config import ModelSettings
    from agent.errors import AgentError

    reference = _reference()
    reference["scores"][TASK]["edges"] = [0.5]  # type: ignore[index]
    ckpt = write_card(tmp_path / "ckpt", reference, {})
    with pytest.raises(AgentError, match="malformed"):
        read_card_view(ModelSettings(checkpoint=ckpt))
    (ckpt / "card.json").write_text("{")
    with pytest.raises(AgentError, match="cannot read the model card"):
        read_card_view(ModelSettings(checkpoint=ckpt))
