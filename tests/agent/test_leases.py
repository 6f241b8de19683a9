"""Reliability row 27: job and delivery claims are leases, renewed while work runs.

Real ``serve`` processes share one database (SQLite and PostgreSQL) and one
storage root, with leases of a few seconds: a worker killed with SIGKILL
mid-job loses its job to another agent once the lease runs out, and a worker
whose inference outlasts several leases keeps its job and screens it once.
Deliveries likewise: a sender killed mid C-STORE has its reports sent by
another agent once their leases lapse, and a PACS slower than several leases
still gets each report once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from storage.models import Job, JobState, Report, ReportState, Result
from tests.agent.pipeline_env import Serve, agent_config, chest_series, tiny_checkpoint, wait_for
from tests.agent.test_pipeline_faults import send

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def config(folder: Path, checkpoint: Path, db_url: str, lease: float, renew: float) -> Path:
    """A config of an agent sharing ``db_url`` and ``folder``'s storage root."""
    text = agent_config(
        folder, checkpoint, database=db_url, storage_root=folder / "storage"
    ).read_text()
    text = text.replace(
        "[pipeline]\n", f"[pipeline]\nlease_seconds = {lease}\nlease_renew_seconds = {renew}\n"
    )
    path = folder / "agent.toml"
    path.write_text(text)
    return path


def slow(seconds: float) -> tuple[str, ...]:
    return ("-m", "tests.agent.slow_serve", str(seconds))


def the_job(db: Engine) -> Job | None:
    with db.connect() as conn:
        row = conn.execute(select(Job)).first()
    return None if row is None else Job(**row._asdict())


def held_by(db: Engine, serve: Serve) -> bool:
    """The job is running, claimed by ``serve`` (its screen worker, a child process)."""
    job = the_job(db)
    pids = {serve.proc.pid} | {int(e["pid"]) for e in serve.events("child started")}
    return (
        job is not None
        and job.state == JobState.RUNNING
        and any(f":{pid}:" in (job.claimed_by or "") for pid in pids)
    )


def results(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Result)) or 0)


@pytest.fixture
def shared(tmp_path: Path, db_url: str) -> tuple[str, Engine]:
    (tmp_path / "db").mkdir(exist_ok=True)
    return db_url, create_engine(db_url)


def test_a_killed_workers_job_is_taken_over_once_its_lease_lapses(
    tmp_path: Path, checkpoint: Path, shared: tuple[str, Engine]
) -> None:
    url, db = shared
    cfg = config(tmp_path, checkpoint, url, lease=3.0, renew=1.0)
    first = Serve(cfg, launcher=slow(600))  # never finishes inference on its own
    try:
        threading.Thread(
            target=send, args=(first.port, chest_series(tmp_path / "s")), daemon=True
        ).start()
        wait_for(lambda: held_by(db, first), 120, "the job claimed by the first agent", first)
    finally:
        first.proc.kill()
        first.proc.wait(30)
    second = Serve(cfg)
    try:
        job = wait_for(
            lambda: (j := the_job(db)) is not None and j.state == JobState.DONE and j,
            120,
            "the job taken over and screened",
            second,
        )
    finally:
        assert second.stop() == 0
    assert job.attempts == 2  # the dead worker's attempt counts
    assert second.events("jobs taken over: their worker stopped renewing its lease")
    assert len(second.events("series screened")) == 1
    assert results(db) == 25
    db.dispose()


def test_a_slow_worker_keeps_its_job_past_many_leases(
    tmp_path: Path, checkpoint: Path, shared: tuple[str, Engine]
) -> None:
    url, db = shared
    cfg = config(tmp_path, checkpoint, url, lease=2.0, renew=0.5)
    slow_agent = Serve(cfg, launcher=slow(8))  # inference lasts four leases
    other = None
    try:
        threading.Thread(
            target=send, args=(slow_agent.port, chest_series(tmp_path / "s")), daemon=True
        ).start()
        wait_for(lambda: held_by(db, slow_agent), 120, "the job claimed", slow_agent)
        # An idle agent on the same database, ready to take over any lapsed lease.
        other = Serve(cfg)
        job = wait_for(
            lambda: (j := the_job(db)) is not None and j.state == JobState.DONE and j,
            120,
            "the slow agent to finish",
            slow_agent,
        )
    finally:
        assert slow_agent.stop() == 0
        if other is not None:
            assert other.stop() == 0
    assert job is not None and job.attempts == 1 and job.revision == 1
    assert len(slow_agent.events("series screened")) == 1
    assert slow_agent.events("leases renewed")
    assert not slow_agent.events("screening result dropped: claim taken back")
    assert other is not None and not other.events("series screened")
    assert not other.events("jobs taken over: their worker stopped renewing its lease")
    assert results(db) == 25
    db.dispose()


# -- deliveries hold leases too ---------------------------------------------------------


class Pacs:
    """A PACS stand-in on 127.0.0.1: each C-STORE takes ``delay`` seconds; with
    ``hang_first``, the first one never answers until :meth:`stop`."""

    def __init__(self, delay: float = 0.0, hang_first: bool = False) -> None:
        self.delay = delay
        self.received: list[str] = []
        self.hanging = threading.Event()
        self._hang = hang_first
        self._release = threading.Event()
        self._lock = threading.Lock()
        ae = AE("PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        assert server is not None
        self.server = server
        self.port = int(server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            hang, self._hang = self._hang, False
        if hang:
            self.hanging.set()
            self._release.wait(120)
            return 0xA700  # its sender is gone by now
        time.sleep(self.delay)
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()


def reports(db: Engine) -> list[Report]:
    with db.connect() as conn:
        return [Report(**row._asdict()) for row in conn.execute(select(Report))]


def with_destination(cfg: Path, port: int) -> Path:
    text = cfg.read_text()
    cfg.write_text(
        text + f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
        f'host = "127.0.0.1"\nport = {port}\n'
    )
    return cfg


@pytest.fixture
def sqlite_shared(tmp_path: Path) -> tuple[str, Engine]:
    """One SQLite database (the queue's claims on PostgreSQL are tested in storage)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    return url, create_engine(url)


def test_a_killed_senders_deliveries_are_taken_over_once_their_leases_lapse(
    tmp_path: Path, checkpoint: Path, sqlite_shared: tuple[str, Engine]
) -> None:
    url, db = sqlite_shared
    pacs = Pacs(hang_first=True)
    cfg = with_destination(config(tmp_path, checkpoint, url, lease=3.0, renew=1.0), pacs.port)
    first = Serve(cfg)
    second = None
    try:
        send(first.port, chest_series(tmp_path / "s"))
        wait_for(pacs.hanging.is_set, 180, "the first report in the PACS's hands", first)
        sending = [r for r in reports(db) if r.state == ReportState.SENDING]
        # The sender is the agent's node, a child process of the command.
        pids = {first.proc.pid} | {int(e["pid"]) for e in first.events("child started")}
        assert sending and all(
            any(f":{pid}:" in (r.claimed_by or "") for pid in pids) for r in sending
        )
        first.proc.kill()
        first.proc.wait(30)
        second = Serve(cfg)
        wait_for(
            lambda: (rs := reports(db)) and {r.state for r in rs} == {ReportState.SENT},
            120,
            "the deliveries taken over and sent",
            second,
        )
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
        if second is not None:
            assert second.stop() == 0
        pacs.stop()
    rows = reports(db)
    assert len(rows) == 3 and sorted(pacs.received) == sorted(r.sop_instance_uid for r in rows)
    assert {r.attempts for r in rows if r.id in {s.id for s in sending}} == {2}
    assert second.events("deliveries taken over: their sender stopped renewing its lease")
    db.dispose()


def test_a_slow_pacs_gets_each_report_once_from_agents_sharing_the_queue(
    tmp_path: Path, checkpoint: Path, sqlite_shared: tuple[str, Engine]
) -> None:
    url, db = sqlite_shared
    pacs = Pacs(delay=2.5)  # three reports: several leases of 2 s each
    cfg = with_destination(config(tmp_path, checkpoint, url, lease=2.0, renew=0.5), pacs.port)
    agents = [Serve(cfg)]
    try:
        agents.append(Serve(cfg))  # idle, ready to take over any lapsed lease
        send(agents[0].port, chest_series(tmp_path / "s"))
        wait_for(
            lambda: (rs := reports(db)) and {r.state for r in rs} == {ReportState.SENT},
            180,
            "three reports sent through the slow PACS",
            agents[0],
        )
    finally:
        for agent in agents:
            assert agent.stop() == 0
        pacs.stop()
    assert len(pacs.received) == 3 and len(set(pacs.received)) == 3
    assert all(r.attempts == 1 for r in reports(db))
    events = [e for a in agents for e in a.events("delivery leases renewed")]
    assert events
    for agent in agents:
        assert not agent.events("deliveries taken over: their sender stopped renewing its lease")
        assert not agent.events("delivery lease lost: reports taken back")
    db.dispose()
