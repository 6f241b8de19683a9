"""A series over `[pipeline] max_series_bytes` fails once, with its reason, undecoded (row 19)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from storage.models import Job, JobState, Result
from tests.agent.pipeline_env import Serve, agent_config, chest_series, tiny_checkpoint, wait_for

pytestmark = pytest.mark.slow


def test_series_over_the_memory_budget_fails_without_retry(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "model")
    series = chest_series(tmp_path / "series")
    config = agent_config(tmp_path, checkpoint)
    # 1 MiB cannot hold even the resized cube: the series is refused from its headers.
    config.write_text(
        config.read_text().replace("[pipeline]\n", "[pipeline]\nmax_series_bytes = 1048576\n")
    )
    serve = Serve(config)
    try:
        ae = AE("PACS")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", serve.port, ae_title="HYPERCT")
        assert assoc.is_established
        try:
            assert {int(assoc.send_c_store(dcmread(p)).Status) for p in series} == {0}
        finally:
            assoc.release()
        engine = create_engine(f"sqlite:///{tmp_path / 'agent.db'}")

        def finished() -> Job | None:
            with Session(engine) as s:
                job = s.scalars(select(Job)).one_or_none()
                return job if job is not None and job.state == JobState.DEAD else None

        job = wait_for(finished, 120, "the job to fail", serve)
        assert job.attempts == 1  # not retried: no attempt could succeed
        assert "reading the series needs about" in (job.last_error or "")
        assert "MiB allowed" in (job.last_error or "")
        with Session(engine) as s:
            assert s.scalars(select(Result)).all() == []
    finally:
        assert serve.stop() == 0
