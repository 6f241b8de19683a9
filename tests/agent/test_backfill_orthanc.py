"""Archive backfill against Orthanc by C-MOVE to the agent's own AE title, with ``serve``.

Orthanc holds chest CTs (some planned, one not) and a head CT; the campaign
retrieves exactly the planned series, the agent screens them as backfill
(results only, no deliveries), a live series pushed meanwhile is screened
within one batch and delivered, an archive that is down fails with backoff
until dead, and a node killed mid-campaign resumes without retrieving or
screening anything twice.
"""

from __future__ import annotations

import json
import signal
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from storage.models import AuditEvent, Report, Result
from tests.agent.backfill_env import (
    ORTHANC_AET,
    ORTHANC_DICOM,
    Orthanc,
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
from tests.agent.report_tools import tool
from tests.support.ct_series import CANARY_ID, CANARY_NAME, ct_series, write_series
from tests.support.netns import private_netns

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def _config(tmp_path: Path, checkpoint: Path, backfill: str = "") -> Path:
    extra = (
        archive_toml("orthanc", ORTHANC_AET, ORTHANC_DICOM)
        + archive_toml("down", "NOBODY", 9)  # nothing listens there
        + f"[backfill]\nretry_seconds = 0.5\nmax_attempts = 2\n{backfill}"
    )
    return agent_config(
        tmp_path, checkpoint, [("orthanc", ORTHANC_AET, "127.0.0.1", ORTHANC_DICOM)], extra=extra
    )


def _decided_at(serve: Serve, job_id: int) -> datetime:
    [event] = [
        e for e in serve.events("series decided") if e.get("job") == job_id
        and e.get("state") == "queued"
    ]  # fmt: skip
    return datetime.fromisoformat(event["timestamp"])


def test_orthanc_campaign_retrieves_the_planned_series_after_live(
    tmp_path: Path, checkpoint: Path
) -> None:
    canaries = {"patient_name": CANARY_NAME, "patient_id": CANARY_ID}
    planned = [describe(chest_series(tmp_path / f"chest{i}", seed=i, **canaries)) for i in range(6)]
    unplanned = describe(chest_series(tmp_path / "unplanned", seed=7))
    head = describe(
        write_series(
            ct_series(12, attrs={"SeriesDescription": "HEAD", "BodyPartExamined": "HEAD"}),
            tmp_path / "head",
        )
    )
    live = chest_series(tmp_path / "live", seed=9)
    config = _config(tmp_path, checkpoint)
    with private_netns() as ns:
        # A slow model (5 s a batch of 2) so that backfill jobs wait in the queue.
        serve = Serve(config, ns, launcher=("-m", "tests.agent.slow_serve", "5"))
        try:
            orthanc = Orthanc(ns, tmp_path, serve.port)
            orthanc.load([*planned, unplanned, head])
            start_campaign(tmp_path, "orthanc-2020", "orthanc", planned)
            start_campaign(tmp_path, "down-2020", "down", [unplanned])

            def queued_behind_a_batch() -> bool:
                jobs = jobs_by_series(tmp_path)
                return len(jobs) == len(planned) and any(
                    j.state == "running" for j in jobs.values()
                )

            wait_for(queued_behind_a_batch, 180, "backfill series queued behind a batch", serve)
            sent = ns.run(
                [tool("/usr/bin/storescu", "dcmtk"), "-aet", "PACS", "-aec", "HYPERCT",
                 "127.0.0.1", str(serve.port), *map(str, live)],
                capture_output=True, text=True,
            )  # fmt: skip
            assert sent.returncode == 0, sent.stderr

            def all_screened() -> bool:
                jobs = jobs_by_series(tmp_path)
                return len(jobs) == 7 and all(j.state == "done" for j in jobs.values())

            wait_for(all_screened, 300, "the six backfill and the live series screened", serve)
            wait_for(lambda: campaign_state(tmp_path, "orthanc-2020") == "done", 30, "done", serve)
            wait_for(lambda: campaign_state(tmp_path, "down-2020") == "done", 30, "dead", serve)
            live_uid = describe(live).series_uid
            wait_for(
                lambda: len(orthanc.rest("GET", "/series") or []) >= 8 + 2, 120,
                "the live series' reports in Orthanc", serve,
            )  # fmt: skip
        finally:
            assert serve.stop() == 0

    jobs = jobs_by_series(tmp_path)
    # Exactly the planned series and the live one: the unplanned chest and the head never came.
    assert set(jobs) == {a.series_uid for a in planned} | {live_uid}
    counts = instance_counts(tmp_path)
    assert all(counts[a.series_uid] == len(a.files) for a in planned)
    rows = backfill_rows(tmp_path)
    for a in planned:
        row = rows[a.series_uid]
        assert row.state == "retrieved" and row.attempts == 1
        assert row.completed_suboperations == len(a.files) and row.failed_suboperations == 0
        assert row.received_instances == len(a.files)
        assert (jobs[a.series_uid].origin, jobs[a.series_uid].priority) == ("backfill", 10)
    down = rows[unplanned.series_uid]
    assert down.state == "dead" and down.attempts == 2
    assert "archive unreachable" in (down.last_error or "")
    assert jobs[live_uid].origin == "live"
    with db(tmp_path) as s:
        # Results for all seven, reports delivered only for the live one (reports = "results").
        assert s.scalar(select(func.count(func.distinct(Result.job_id)))) == 7
        delivered = {r.job_id for r in s.scalars(select(Report))}
        assert delivered == {jobs[live_uid].id}
        # Nothing arrived twice.
        received = select(AuditEvent.outcome).where(AuditEvent.event_type == "instance_received")
        assert "duplicate" not in set(s.scalars(received))
    # Live first: once the live series was queued, at most one batch of backfill
    # series finished before it.
    queued = _decided_at(serve, jobs[live_uid].id)
    screened = jobs[live_uid].screened_at
    assert screened is not None
    ahead = [
        j for uid, j in jobs.items()
        if uid != live_uid and j.screened_at and queued < j.screened_at < screened
    ]  # fmt: skip
    assert len(ahead) <= 2, [(j.id, j.screened_at) for j in ahead]
    assert any(j.screened_at and j.screened_at > screened for j in jobs.values())
    log = "".join(serve.lines)
    assert CANARY_NAME not in log and CANARY_ID not in log


def test_a_node_killed_mid_campaign_resumes_without_duplicates(
    tmp_path: Path, checkpoint: Path
) -> None:
    planned = [describe(chest_series(tmp_path / f"chest{i}", seed=i)) for i in range(4)]
    # One retrieve at a time, leases short enough to lapse within the test.
    config = _config(tmp_path, checkpoint, "max_concurrent = 1\n")
    text = config.read_text().replace(
        "[pipeline]\n", "[pipeline]\nlease_seconds = 4.0\nlease_renew_seconds = 1.0\n"
    )
    config.write_text(text)
    with private_netns() as ns:
        node = Serve(config, ns, args=("--role", "node"))
        orthanc = Orthanc(ns, tmp_path, node.port)
        orthanc.load(planned)
        start_campaign(tmp_path, "resume", "orthanc", planned)

        def some_retrieved() -> bool:
            return any(r.state == "retrieved" for r in backfill_rows(tmp_path).values())

        wait_for(some_retrieved, 120, "a first series retrieved", node)
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(30)
        before = {u: r.retrieved_at for u, r in backfill_rows(tmp_path).items() if r.retrieved_at}
        assert 0 < len(before) < len(planned)
        # Orthanc knows the agent at its old port: the new node listens elsewhere.
        serve = Serve(config, ns)
        try:
            orthanc.rest("DELETE", "/modalities/hyperct")
            body = json.dumps({"AET": "HYPERCT", "Host": "127.0.0.1", "Port": serve.port})
            ns.run(
                ["curl", "-sf", "-X", "PUT", "http://127.0.0.1:8042/modalities/hyperct",
                 "--data-binary", body], capture_output=True, check=True,
            )  # fmt: skip

            def all_screened() -> bool:
                jobs = jobs_by_series(tmp_path)
                return len(jobs) == 4 and all(j.state == "done" for j in jobs.values())

            wait_for(all_screened, 300, "the campaign finished after the restart", serve)
            wait_for(lambda: campaign_state(tmp_path, "resume") == "done", 30, "done", serve)
        finally:
            assert serve.stop() == 0
    rows = backfill_rows(tmp_path)
    for uid, at in before.items():  # retrieved before the kill: never again
        assert rows[uid].retrieved_at == at and rows[uid].attempts == 1
    assert all(r.state == "retrieved" for r in rows.values())
    counts = instance_counts(tmp_path)
    assert all(counts[a.series_uid] == len(a.files) for a in planned)
    jobs = jobs_by_series(tmp_path)
    assert all(j.revision == 1 for j in jobs.values())  # each screened once
