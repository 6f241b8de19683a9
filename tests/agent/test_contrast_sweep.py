"""After the image check skips the chosen series, the study's next eligible series is screened.

Also: the Requested Procedure Description is read at receive, top level or in
the Request Attributes Sequence, and reaches the decision.
"""

from __future__ import annotations

from datetime import timedelta

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.engine import Engine

from agent.dicom.header import read_header
from agent.intake.stored import facts_from_db
from agent.pipeline.screen import ClaimedJob, Screener
from agent.pipeline.sweep import Sweeper
from agent.series.eligibility import contrast_by_tags
from storage.db import make_session_factory
from storage.models import Job, JobState
from storage.queue import claim_jobs
from tests.agent.test_node import encoded_body
from tests.agent.test_sweep import add_series, job_of, settings
from tests.storage.storage_records import T0


def test_an_enhanced_choice_gives_way_to_the_next_series(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    thin = add_series(engine, 2, 60, thickness=1.25)
    thick = add_series(engine, 3, 40, thickness=2.5)
    ineligible = add_series(engine, 9, 20, thickness=5.0)  # 5 mm slices: not eligible
    sweeper = Sweeper(settings(), sessions)
    sweeper.run_once(now=T0 + timedelta(seconds=300))
    assert job_of(engine, thin).state == JobState.QUEUED
    assert (job_of(engine, thick).reason or "").startswith("not chosen")

    # The screener claims the thin series and its image check finds it enhanced.
    screener = Screener(settings(), sessions, None, None, "w1", None)  # type: ignore[arg-type]
    with sessions.begin() as s:
        [job] = claim_jobs(s, "w1", 5)
        claimed = ClaimedJob(job.id, job.series_id, thin, job.revision,
                             study_id=job.series.study_id)  # fmt: skip
    claimed.blood_pool_hu = 260.0
    screener._skip(claimed, "contrast by image: blood pool 260 HU (threshold 120 HU)")

    skipped = job_of(engine, thin)
    assert skipped.state == JobState.SKIPPED and skipped.blood_pool_hu == 260.0
    assert job_of(engine, thick).state == JobState.RECEIVING
    assert job_of(engine, ineligible).state == JobState.SKIPPED  # not a "not chosen"

    assert sweeper.run_once(now=T0 + timedelta(seconds=400)) == 1
    assert job_of(engine, thick).state == JobState.QUEUED
    assert job_of(engine, thin).state == JobState.SKIPPED  # never chosen again


def test_requested_procedure_is_read_and_decides_at_study_level(engine: Engine) -> None:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.SOPInstanceUID, ds.SOPClassUID = "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2"
    item = Dataset()
    item.RequestedProcedureDescription = "CT CHEST W/O IV CONTRAST"
    ds.RequestAttributesSequence = [item]
    header = read_header(encoded_body(ds), ExplicitVRLittleEndian)
    assert header.requested_procedure == "CT CHEST W/O IV CONTRAST"
    ds.RequestedProcedureDescription = "CTA CHEST"  # the top-level attribute comes first
    assert read_header(encoded_body(ds), ExplicitVRLittleEndian).requested_procedure == "CTA CHEST"

    uid = add_series(engine, 4, 40, series_description="AX 1.25 STND",
                     requested_procedure="CT ANGIO CHEST PE")  # fmt: skip
    with make_session_factory(engine)() as s:
        facts = facts_from_db(s, uid)
        assert facts.requested_procedure == "CT ANGIO CHEST PE"
        tags = contrast_by_tags(facts, settings().eligibility)
        assert tags.verdict == "contrast" and "requested procedure" in tags.detail
        assert s.scalars(select(Job)).one().state == JobState.RECEIVING
