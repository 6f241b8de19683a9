"""The sweep on a real database: decisions, one series per study, late instances."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from agent.config import Settings
from agent.pipeline.sweep import Sweeper
from storage.db import make_session_factory
from storage.ingest import record_instance
from storage.models import Job, JobState, Series
from tests.storage.storage_records import T0, make_record

STUDY = "1.2.826.0.1.3680043.10.9.1"


def settings(**completeness: object) -> Settings:
    return Settings.model_validate({
        "completeness": {"idle_seconds": 30, "force_seconds": 600, "min_coverage_mm": 20,
                         **completeness},
        "eligibility": {"min_slices": 10},
    })  # fmt: skip


def add_series(engine: Engine, number: int, n: int, thickness: float = 2.5, skip: int | None = None,
               **attrs: object) -> str:  # fmt: skip
    uid = f"{STUDY}.{number}"
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        for i in range(1, n + 1):
            if i == skip:
                continue
            z = -thickness * i
            rec = make_record(
                i, study_instance_uid=STUDY, series_instance_uid=uid,
                sop_instance_uid=f"{uid}.{i}", series_number=number, slice_thickness=thickness,
                image_position=(-200.0, -200.0, z), slice_position=z,
                image_type="ORIGINAL\\PRIMARY\\AXIAL", **attrs,
            )  # fmt: skip
            record_instance(s, rec)
    return uid


def job_of(engine: Engine, uid: str) -> Job:
    with make_session_factory(engine)() as s:
        return s.scalars(select(Job).join(Series).where(Series.series_instance_uid == uid)).one()


def test_complete_eligible_series_is_queued_after_the_idle_timer(engine: Engine) -> None:
    uid = add_series(engine, 2, 40)
    sweeper = Sweeper(settings(), make_session_factory(engine))
    assert sweeper.run_once(now=T0 + timedelta(seconds=50)) == 0  # 50 s after T0: still arriving
    assert job_of(engine, uid).state == JobState.RECEIVING
    assert sweeper.run_once(now=T0 + timedelta(seconds=200)) == 1
    job = job_of(engine, uid)
    assert job.state == JobState.QUEUED and "eligible" in (job.reason or "")


def test_a_gap_waits_then_is_recorded_incomplete(engine: Engine) -> None:
    uid = add_series(engine, 3, 40, skip=20)
    sweeper = Sweeper(settings(), make_session_factory(engine))
    sweeper.run_once(now=T0 + timedelta(seconds=200))
    job = job_of(engine, uid)
    assert job.state == JobState.RECEIVING and job.reason  # waiting, with the reason
    sweeper.run_once(now=T0 + timedelta(seconds=2000))
    job = job_of(engine, uid)
    assert job.state == JobState.INCOMPLETE and "missing" in (job.reason or "")
    # The missing slice arrives after all (a resumed transfer): decided again, now complete.
    late = make_record(20, study_instance_uid=STUDY, series_instance_uid=uid,
                   sop_instance_uid=f"{uid}.20", series_number=3,
                   image_type="ORIGINAL\\PRIMARY\\AXIAL",
                   received_at=T0 + timedelta(seconds=3000))  # fmt: skip
    with make_session_factory(engine).begin() as s:
        record_instance(s, late)
    sweeper.run_once(now=T0 + timedelta(seconds=3100))
    assert job_of(engine, uid).state == JobState.QUEUED


def test_one_series_per_study_and_ineligible_ones_skipped(engine: Engine) -> None:
    thick = add_series(engine, 4, 20, thickness=5.0)
    thin = add_series(engine, 5, 60, thickness=1.25)
    mid = add_series(engine, 6, 40, thickness=2.5)
    contrast = add_series(engine, 7, 40, contrast_agent="IOHEXOL")
    Sweeper(settings(), make_session_factory(engine)).run_once(now=T0 + timedelta(seconds=300))
    assert job_of(engine, thin).state == JobState.QUEUED
    assert job_of(engine, thick).state == JobState.SKIPPED  # 5 mm: outside the range
    assert job_of(engine, contrast).state == JobState.SKIPPED
    assert "contrast" in (job_of(engine, contrast).reason or "").lower()
    loser = job_of(engine, mid)
    assert loser.state == JobState.SKIPPED and "not chosen" in (loser.reason or "")


@pytest.mark.parametrize(("policy", "expected"), [("record", JobState.DONE),
                                                  ("rescreen", JobState.RECEIVING)])  # fmt: skip
def test_late_instances_follow_the_policy(engine: Engine, policy: str, expected: JobState) -> None:
    uid = add_series(engine, 8, 30)
    sessions = make_session_factory(engine)
    sweeper = Sweeper(settings(late_instances=policy), sessions)
    sweeper.run_once(now=T0 + timedelta(seconds=300))
    with sessions.begin() as s:
        job = s.scalars(select(Job)).one()
        job.state = JobState.DONE  # screened meanwhile
    late = make_record(31, study_instance_uid=STUDY, series_instance_uid=uid,
                   sop_instance_uid=f"{uid}.31", image_type="ORIGINAL\\PRIMARY\\AXIAL",
                   received_at=T0 + timedelta(days=3650))  # fmt: skip
    with sessions.begin() as s:
        record_instance(s, late)
    sweeper.run_once(now=T0 + timedelta(days=3650, seconds=1))
    job = job_of(engine, uid)
    assert job.state == expected
    if policy == "record":
        assert "late instances" in (job.reason or "")
    else:  # back through the sweep: waiting for the idle timer again
        assert "still receiving" in (job.reason or "")
