"""Reliability rows 15 and 16, and several agents sharing one PostgreSQL database."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from storage.models import Job, JobState, Report, ReportState, Result
from tests.agent.conftest import DCMTK_ENV, dcmtk
from tests.agent.pipeline_env import Serve, agent_config, chest_series, tiny_checkpoint, wait_for
from tests.agent.test_crash import acknowledged

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


class Receiver:
    """A PACS stand-in on 127.0.0.1 that records every report it is sent."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[str] = []
        ae = AE("PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self.server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    def stop(self) -> None:
        self.server.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(port: int, files: list[Path]) -> None:
    ae = AE("MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    assoc = ae.associate("127.0.0.1", port, ae_title="HYPERCT")
    assert assoc.is_established
    try:
        assert {int(assoc.send_c_store(dcmread(p)).Status) for p in files} == {0}
    finally:
        assoc.release()


def db(url: str) -> Session:
    return Session(create_engine(url))


def test_destination_down_then_back_across_a_restart(tmp_path: Path, checkpoint: Path) -> None:
    """Row 15: reports wait and retry while PACS is down; all delivered once it is back."""
    port = free_port()  # nothing listens there yet: PACS is down
    config = agent_config(tmp_path, checkpoint, [("pacs", "PACS", "127.0.0.1", port)])
    url = f"sqlite:///{tmp_path / 'agent.db'}"
    serve = Serve(config)
    try:
        send(serve.port, chest_series(tmp_path / "series"))

        def failing_reports() -> bool:
            with db(url) as s:
                rows = s.scalars(select(Report)).all()
                return (
                    len(rows) == 3  # TID 1500 SR, text SR, summary image
                    and all(r.attempts >= 2 for r in rows)
                    and all(r.state in (ReportState.FAILED, ReportState.PENDING) for r in rows)
                )

        wait_for(failing_reports, 120, "deliveries failing and retried", serve)
    finally:
        assert serve.stop() == 0
    receiver = Receiver(port)  # PACS is back ...
    serve = Serve(config)  # ... and the agent restarted in between
    try:

        def all_sent() -> bool:
            with db(url) as s:
                return {r.state for r in s.scalars(select(Report))} == {ReportState.SENT}

        wait_for(all_sent, 120, "reports delivered after PACS came back", serve)
        time.sleep(1.0)  # a duplicate send would show up in this time
    finally:
        assert serve.stop() == 0
        receiver.stop()
    assert len(receiver.received) == 3 and len(set(receiver.received)) == 3
    with db(url) as s:
        assert all(
            r.last_error is None and r.sent_at is not None for r in s.scalars(select(Report))
        )


def test_sigterm_during_inference_and_transfer_loses_nothing(
    tmp_path: Path, checkpoint: Path
) -> None:
    """Row 16: in-flight work finishes or is requeued; nothing acknowledged is lost."""
    receiver = Receiver()
    config = agent_config(tmp_path, checkpoint, [("pacs", "PACS", "127.0.0.1", receiver.port)])
    url = f"sqlite:///{tmp_path / 'agent.db'}"
    first = chest_series(tmp_path / "a", seed=1)
    second = chest_series(tmp_path / "b", seed=2)
    serve = Serve(config)
    try:
        send(serve.port, first)

        def running() -> bool:
            with db(url) as s:
                return s.scalar(select(Job.state)) == JobState.RUNNING

        wait_for(running, 60, "the first series in inference", serve)
        # A second series is arriving while the first is being screened.
        sender = subprocess.Popen(
            [dcmtk("storescu"), "-v", "-aet", "MODALITY", "-aec", "HYPERCT", "127.0.0.1",
             str(serve.port), *map(str, second)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV,
        )  # fmt: skip
        time.sleep(0.3)
        started = time.monotonic()
        assert serve.stop(timeout=60) == 0
        assert time.monotonic() - started < 30
        output, _ = sender.communicate(timeout=60)
    finally:
        if serve.proc.poll() is None:
            serve.proc.kill()
    acked = acknowledged(output, second)
    with db(url) as s:
        states = {j.state for j in s.scalars(select(Job))}
        assert JobState.RUNNING not in states  # finished or given back, never stuck
    serve = Serve(config)
    try:
        rest = subprocess.run(
            [dcmtk("storescu"), "-aet", "MODALITY", "-aec", "HYPERCT", "127.0.0.1",
             str(serve.port), *map(str, second)],
            capture_output=True, text=True, env=DCMTK_ENV, timeout=120,
        )  # fmt: skip
        assert rest.returncode == 0, rest.stdout + rest.stderr

        def both_done() -> bool:
            with db(url) as s:
                jobs = s.scalars(select(Job)).all()
                return len(jobs) == 2 and all(j.state == JobState.DONE for j in jobs)

        wait_for(both_done, 180, "both series screened after the restart", serve)
        wait_for(lambda: len(set(receiver.received)) == 6, 60, "six objects delivered", serve)
    finally:
        assert serve.stop() == 0
        receiver.stop()
    with db(url) as s:
        from storage.models import Instance

        uids = set(s.scalars(select(Instance.sop_instance_uid)))
        for path in acked:
            assert dcmread(path, stop_before_pixels=True).SOPInstanceUID in uids
        assert s.scalar(select(func.count()).select_from(Result)) == 50


@pytest.mark.postgres
def test_two_agents_on_one_postgresql_never_screen_twice(
    tmp_path: Path, checkpoint: Path, pg_server: object
) -> None:
    url_obj = pg_server.create_database()  # type: ignore[attr-defined]
    url = url_obj.render_as_string(hide_password=False)
    receiver = Receiver()
    dest = [("pacs", "PACS", "127.0.0.1", receiver.port)]
    # Both processes share the database and the storage root (a shared volume).
    configs = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        configs.append(
            agent_config(folder, checkpoint, dest, database=url, storage_root=tmp_path / "storage")
        )
    agents = [Serve(c) for c in configs]
    try:
        series = [chest_series(tmp_path / f"s{i}", seed=10 + i) for i in range(4)]
        threads = [
            threading.Thread(target=send, args=(agents[i % 2].port, files))
            for i, files in enumerate(series)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

        states: list[str] = []

        def all_done() -> bool:
            with db(url) as s:
                jobs = s.scalars(select(Job)).all()
                states[:] = [f"{j.state}: {j.reason}" for j in jobs]
                return len(jobs) == 4 and all(j.state == JobState.DONE for j in jobs)

        wait_for(all_done, 300, "four series screened by two agents", agents[0], detail=states)
        wait_for(lambda: len(receiver.received) >= 12, 60, "12 objects delivered", agents[0])
        time.sleep(1.0)
    finally:
        for agent in agents:
            assert agent.stop() == 0
        receiver.stop()
    screened = [e for a in agents for e in a.events("series screened")]
    assert len(screened) == 4  # each series screened exactly once, by one of the two
    with db(url) as s:
        assert all(j.revision == 1 for j in s.scalars(select(Job)))
        assert s.scalar(select(func.count()).select_from(Result)) == 100
    assert sorted(receiver.received) == sorted(set(receiver.received))  # no report sent twice
    pg_server.drop_database(url_obj.database)  # type: ignore[attr-defined]
