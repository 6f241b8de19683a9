"""The dashboard lists referrals with their state; /metrics counts them by state (both backends)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from agent.config import WebSettings
from agent.web.metrics import build_registry
from agent.web.server import Dashboard
from storage.db import make_session_factory
from storage.models import Job, ReferralState, Series, Study
from storage.referrals import link_referral, set_referral_state


@pytest.fixture
def dashboard(engine: Engine) -> Iterator[Dashboard]:
    sessions = make_session_factory(engine, read_only=True)
    board = Dashboard(
        WebSettings(host="127.0.0.1", port=0), sessions, build_registry(sessions, None, None), {}
    )
    board.start()
    yield board
    board.stop()


def _get(board: Dashboard, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{board.port}{path}", timeout=30) as answer:
        return answer.read().decode()


def test_referrals_page_and_gauge(engine: Engine, dashboard: Dashboard) -> None:
    assert "No referrals yet." in _get(dashboard, "/referrals")
    with make_session_factory(engine).begin() as s:
        ids = []
        for n, who in enumerate(["c" * 64, "d" * 64, "e" * 64]):
            study = Study(
                study_instance_uid=f"1.2.7.{n}", study_date="20260405", patient_pseudonym=who
            )
            series = Series(study=study, series_instance_uid=f"1.2.7.{n}.1")
            job = Job(series=series)
            s.add_all([study, series, job])
            s.flush()
            ids.append(link_referral(s, job.id, ["cardiomegaly"], repeat_days=365).referral_id)
        set_referral_state(s, ids[0], ReferralState.DECLINED, actor="tester")

    page = _get(dashboard, "/referrals")
    assert page.count('class="state-new"') == 2 and page.count('class="state-declined"') == 1
    assert "2026-04-05" in page and 'href="/referrals"' in page

    families = {f.name: f for f in text_string_to_metric_families(_get(dashboard, "/metrics"))}
    gauge = {s.labels["state"]: s.value for s in families["hyperct_referrals"].samples}
    assert gauge == {
        "new": 2.0,
        "acknowledged": 0.0,
        "echo_done": 0.0,
        "declined": 1.0,
        "not_indicated": 0.0,
    }


@pytest.mark.parametrize("mode", ["annotate", "suppress"])
def test_study_page_states_the_episode(engine: Engine, dashboard: Dashboard, mode: str) -> None:
    with make_session_factory(engine).begin() as s:
        study = Study(
            study_instance_uid="1.2.8.1", study_date="20260501", patient_pseudonym="f" * 64
        )
        series = Series(study=study, series_instance_uid="1.2.8.1.1")
        job = Job(
            series=series,
            echo_referral=True,
            referral_tasks=["cardiomegaly"],
            referral_rule={
                "thresholds": {"cardiomegaly": 0.5},
                "repeat": {"of": "20260110", "mode": mode},
            },
            screened_at=datetime.now(UTC),
            model_version="1.0",
        )
        s.add_all([study, series, job])
        s.flush()
        rid = link_referral(s, job.id, ["cardiomegaly"], repeat_days=365).referral_id
    page = _get(dashboard, "/studies/1.2.8.1")
    assert f"referral {rid}" in page
    if mode == "suppress":
        assert "already recommended on 2026-01-10, not again" in page
    else:
        assert "(previously recommended on 2026-01-10)" in page
