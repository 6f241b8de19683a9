"""Archive backfill against DCMTK dcmqrscp by C-GET, with ``serve``.

The archive sends on the agent's own association (SCP role selection); the
instances go through the node's receive path. A file missing from the
archive's storage makes a partial retrieve: detected from the sub-operation
counts and from the instances recorded, never screened incomplete, retried
after a backoff and complete once the file is back. A C-MOVE the archive cannot
carry out (it has no way to reach the agent) fails and is retried.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from storage.models import Report, Result
from tests.agent.backfill_env import (
    QR_AET,
    QR_PORT,
    QueryRetrieveSCP,
    archive_toml,
    backfill_rows,
    campaign_state,
    db,
    describe,
    instance_counts,
    jobs_by_series,
    start_campaign,
)
from tests.agent.pipeline_env import Serve, agent_config, chest_series, tiny_checkpoint, wait_for
from tests.support.ct_series import ct_series, write_series
from tests.support.netns import private_netns

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def test_dcmqrscp_campaign_by_c_get_retries_a_partial_retrieve(
    tmp_path: Path, checkpoint: Path
) -> None:
    planned = [describe(chest_series(tmp_path / f"chest{i}", seed=i)) for i in range(2)]
    head = describe(
        write_series(
            ct_series(12, attrs={"SeriesDescription": "HEAD", "BodyPartExamined": "HEAD"}),
            tmp_path / "head",
        )
    )
    # The same archive asked to C-MOVE: it cannot reach the agent (no port in its table).
    extra = (
        archive_toml("qr", QR_AET, QR_PORT, retrieve="get")
        + archive_toml("qr-move", QR_AET, QR_PORT, retrieve="move")
        + ("[backfill]\nretry_seconds = 1.0\nmax_attempts = 10\n")
    )
    config = agent_config(tmp_path, checkpoint, extra=extra)
    with private_netns() as ns:
        archive = QueryRetrieveSCP(ns, tmp_path, [*planned, head])
        # One file of the first series is gone from the archive's storage.
        missing = archive.files[planned[0].series_uid][40]
        aside = tmp_path / "aside.dcm"
        shutil.move(missing, aside)
        serve = Serve(config, ns)
        try:
            start_campaign(tmp_path, "qr-2020", "qr", planned)
            start_campaign(tmp_path, "qr-move", "qr-move", [head])

            def refused() -> bool:
                row = backfill_rows(tmp_path)[head.series_uid]
                return row.state == "failed" and row.attempts >= 1

            wait_for(refused, 120, "the C-MOVE the archive could not carry out", serve)
            head_row = backfill_rows(tmp_path)[head.series_uid]
            assert head_row.last_error and head_row.received_instances == 0

            def partial_seen() -> bool:
                row = backfill_rows(tmp_path)[planned[0].series_uid]
                return row.state == "failed" and "partial" in (row.last_error or "")

            wait_for(partial_seen, 120, "the partial retrieve detected", serve)
            row = backfill_rows(tmp_path)[planned[0].series_uid]
            assert row.received_instances == len(planned[0].files) - 1
            # Never decided while incomplete: its job waits for the retry.
            assert jobs_by_series(tmp_path)[planned[0].series_uid].state == "receiving"
            shutil.move(aside, missing)

            def all_screened() -> bool:
                jobs = jobs_by_series(tmp_path)
                return len(jobs) == 2 and all(j.state == "done" for j in jobs.values())

            wait_for(all_screened, 300, "both planned series screened", serve)
            wait_for(lambda: campaign_state(tmp_path, "qr-2020") == "done", 30, "done", serve)
        finally:
            assert serve.stop() == 0
    jobs = jobs_by_series(tmp_path)
    assert set(jobs) == {a.series_uid for a in planned}  # not the head CT
    assert campaign_state(tmp_path, "qr-move") == "running"  # still retrying it
    counts = instance_counts(tmp_path)
    rows = backfill_rows(tmp_path)
    for a in planned:
        assert counts[a.series_uid] == len(a.files)
        assert rows[a.series_uid].state == "retrieved"
        assert jobs[a.series_uid].origin == "backfill" and jobs[a.series_uid].revision == 1
    first = rows[planned[0].series_uid]
    assert first.attempts >= 2 and first.failed_suboperations == 0
    assert rows[planned[1].series_uid].attempts == 1
    with db(tmp_path) as s:
        assert s.scalar(select(func.count(func.distinct(Result.job_id)))) == 2
        assert s.scalar(select(func.count()).select_from(Report)) == 0
