"""Delivery: the stored report file goes out as it is, under a lease like a job's.

DCMTK storescp in bit-preserving mode (``+B``) plays the PACS: the data set
it writes is the one that came over the wire, so the test compares it byte for
byte with the stored file after its File Meta Information. A storescp that
accepts Implicit VR Little Endian only (``+xi``) is the one peer that gets
the report re-encoded. pynetdicom SCPs on 127.0.0.1 play a slow PACS and a
PACS that two senders share.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from agent.config import Settings
from agent.pipeline.deliver import Deliverer
from agent.runtime import Runtime, open_runtime
from storage.files import InstanceStore
from storage.models import Job, JobState, Report, ReportState, Series, Study
from storage.queue import claim_reports
from storage.types import utcnow
from tests.agent.conftest import dcmtk
from tests.agent.pipeline_env import ROOT
from tests.support.netns import private_netns

STORESCP_PORT = 11113


def report_file(path: Path) -> str:
    """A small Comprehensive SR in Explicit VR Little Endian.

    With a sequence of undefined length and an element stored with VR UN
    (PS3.5 6.2.2, 7.5), which a receiver must get as they are on disk.
    """
    uid = generate_uid()
    ds = Dataset()
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.TextValue = "no finding"
    ds.ContentSequence = Sequence([item])
    ds.add(DataElement(0x0008103E, "UN", b"SCREENING "))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid


def data_set_bytes(path: Path) -> bytes:
    """The file's bytes after its File Meta Information."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def config(folder: Path, port: int, lease: float = 120.0, renew: float = 30.0) -> Path:
    path = folder / "agent.toml"
    path.write_text(
        f'[storage]\nroot = "{folder / "storage"}"\nmin_free_bytes = 0\n'
        f'[database]\nurl = "sqlite:///{folder / "agent.db"}"\n'
        f"[pipeline]\nlease_seconds = {lease}\nlease_renew_seconds = {renew}\n"
        f"[reports]\ndelivery_retry_seconds = 0.5\n"
        f'[logging]\nlevel = "debug"\nformat = "json"\n'
        f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {port}\n'
    )
    return path


@dataclass
class Agent:
    runtime: Runtime
    store: InstanceStore

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.runtime.sessions

    def pending_report(self) -> tuple[int, Path, str]:
        """A report waiting for delivery to ``pacs``: its id, file and SOP Instance UID."""
        rel_path = f"reports/{generate_uid()}.dcm"
        path = self.store.path_of(rel_path)
        uid = report_file(path)
        with self.sessions.begin() as s:
            job = s.scalar(select(Job))
            if job is None:
                series = Series(study=Study(study_instance_uid=generate_uid()),
                                series_instance_uid=generate_uid())  # fmt: skip
                job = Job(series=series, state=JobState.DONE)
                s.add(job)
                s.flush()
            report = Report(job_id=job.id, kind="sr", sop_instance_uid=uid,
                            series_instance_uid=generate_uid(), destination="pacs",
                            rel_path=rel_path)  # fmt: skip
            s.add(report)
            s.flush()
            return report.id, path, uid

    def report(self, report_id: int) -> Report:
        with self.sessions() as s:
            report = s.get(Report, report_id)
            assert report is not None
            s.expunge(report)
            return report

    def deliverer(self, worker: str) -> Deliverer:
        return Deliverer(self.settings, self.sessions, self.store, worker)


@contextmanager
def make_agent(folder: Path, port: int, **lease: float) -> Iterator[Agent]:
    runtime = open_runtime(config(folder, port, **lease), migrate=True)
    try:
        yield Agent(runtime, runtime.instance_store())
    finally:
        runtime.close()


# -- the stored file, as it is, to DCMTK storescp -----------------------------------


def deliver_to_storescp(tmp_path: Path, *options: str) -> tuple[Path, Path, Report, str]:
    """Deliver one report to a storescp started with ``options``; returns both files."""
    storescp, echoscu = dcmtk("storescp"), dcmtk("echoscu")
    received = tmp_path / "received"
    received.mkdir()
    with make_agent(tmp_path, STORESCP_PORT) as agent:
        report_id, stored, _ = agent.pending_report()
        cfg = tmp_path / "agent.toml"
        with private_netns() as ns:
            ns.popen([storescp, "-aet", "PACS", "+B", *options, "-od", str(received),
                      str(STORESCP_PORT)])  # fmt: skip
            deadline = time.monotonic() + 30
            while ns.run([echoscu, "-aec", "PACS", "127.0.0.1", str(STORESCP_PORT)],
                         capture_output=True).returncode != 0:  # fmt: skip
                assert time.monotonic() < deadline, "storescp did not start"
                time.sleep(0.2)
            run = ns.run(
                [sys.executable, "-m", "tests.agent.deliver_once", str(cfg)],
                capture_output=True, text=True, cwd=ROOT, timeout=120,
            )  # fmt: skip
        assert run.returncode == 0 and run.stdout.strip() == "1", run.stdout + run.stderr
        [got] = sorted(received.iterdir())
        return stored, got, agent.report(report_id), run.stderr


def test_the_stored_file_is_sent_as_it_is(tmp_path: Path) -> None:
    stored, got, report, log = deliver_to_storescp(tmp_path)
    assert data_set_bytes(got) == data_set_bytes(stored)
    assert dcmread(got).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (report.state, report.attempts, report.sent_at is not None) == (
        ReportState.SENT, 1, True,
    )  # fmt: skip
    assert "re-encoded" not in log


def test_a_peer_that_accepts_implicit_vr_only_gets_it_re_encoded(tmp_path: Path) -> None:
    stored, got, report, log = deliver_to_storescp(tmp_path, "+xi")
    received = dcmread(got)
    assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert received == dcmread(stored)  # the same elements and values
    assert report.state == ReportState.SENT
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    [event] = [e for e in events if e["event"].startswith("report re-encoded")]
    assert (event["level"], event["stored"], event["sent"]) == (
        "debug", ExplicitVRLittleEndian, ImplicitVRLittleEndian,
    )  # fmt: skip


# -- leases ---------------------------------------------------------------------------


class SlowPacs:
    """A pynetdicom SCP on 127.0.0.1 that takes ``delay`` seconds over each C-STORE."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.received: list[str] = []
        ae = AE("PACS")
        ae.add_supported_context(ComprehensiveSRStorage, [ExplicitVRLittleEndian])
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        assert server is not None
        self.server = server
        self.port = int(self.server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        time.sleep(self.delay)
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def pacs() -> Iterator[SlowPacs]:
    server = SlowPacs()
    try:
        yield server
    finally:
        server.stop()


def race(agent: Agent, heartbeat: bool) -> tuple[int, int, int]:
    """Worker ``a`` sends one report slowly while ``b`` polls; returns (a's, b's, report id)."""
    report_id, _, _ = agent.pending_report()
    a, b = agent.deliverer("a"), agent.deliverer("b")
    done = threading.Event()
    b_sent = 0

    def beat() -> None:
        while not done.wait(agent.settings.pipeline.lease_renew_seconds):
            a.renew_leases()

    def poll() -> None:
        nonlocal b_sent
        while not done.wait(0.1):
            b_sent += b.run_once()

    threads = [threading.Thread(target=poll)]
    if heartbeat:
        threads.append(threading.Thread(target=beat))
    for t in threads:
        t.start()
    try:
        a_sent = a.run_once()
    finally:
        done.set()
        for t in threads:
            t.join(30)
    return a_sent, b_sent, report_id


def test_a_slow_pacs_does_not_let_another_worker_send_it_again(
    tmp_path: Path, pacs: SlowPacs
) -> None:
    pacs.delay = 2.5  # five leases
    with make_agent(tmp_path, pacs.port, lease=0.5, renew=0.2) as agent:
        a_sent, b_sent, report_id = race(agent, heartbeat=True)
        report = agent.report(report_id)
    assert (a_sent, b_sent, len(pacs.received)) == (1, 0, 1)
    assert (report.state, report.attempts, report.last_error) == (ReportState.SENT, 1, None)


def test_unrenewed_leases_are_taken_over_and_the_late_sender_is_refused(
    tmp_path: Path, pacs: SlowPacs
) -> None:
    # The control for the test above: the same race with no heartbeat.
    pacs.delay = 1.5
    with make_agent(tmp_path, pacs.port, lease=0.5, renew=0.2) as agent:
        a_sent, b_sent, report_id = race(agent, heartbeat=False)
        report = agent.report(report_id)
    assert len(pacs.received) == 2  # b took it over and sent it too
    assert (a_sent, b_sent) == (0, 1)  # a's late "sent" does not overwrite b's claim
    assert (report.state, report.attempts, report.claimed_by) == (ReportState.SENT, 2, None)


def test_a_dead_senders_delivery_is_taken_over_once_its_lease_lapses(
    tmp_path: Path, pacs: SlowPacs
) -> None:
    with make_agent(tmp_path, pacs.port, lease=2.0, renew=1.0) as agent:
        report_id, _, uid = agent.pending_report()
        with agent.sessions.begin() as s:  # a sender claimed it and died
            claim_reports(s, "dead", limit=5, now=utcnow() - timedelta(seconds=1))
        assert agent.deliverer("b").run_once() == 0  # its lease still runs
        time.sleep(1.2)
        assert agent.deliverer("b").run_once() == 1
        report = agent.report(report_id)
    assert pacs.received == [uid]
    assert (report.state, report.attempts) == (ReportState.SENT, 2)


def test_resend_refuses_a_live_delivery_and_requeues_a_lapsed_one(tmp_path: Path) -> None:
    with make_agent(tmp_path, 104, lease=60.0, renew=20.0) as agent:
        report_id, _, uid = agent.pending_report()
        cfg = str(tmp_path / "agent.toml")

        def resend() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "agent", "reports", "resend", uid, "--config", cfg],
                capture_output=True, text=True, cwd=ROOT, timeout=60,
            )  # fmt: skip

        with agent.sessions.begin() as s:  # a live sender holds it
            claim_reports(s, "alive", limit=5)
        live = resend()
        assert live.returncode != 0
        assert "being sent right now" in live.stderr and "Traceback" not in live.stderr
        assert agent.report(report_id).claimed_by == "alive"
        with agent.sessions.begin() as s:  # its sender stopped renewing a minute ago
            s.execute(
                update(Report)
                .where(Report.id == report_id)
                .values(claimed_at=utcnow() - timedelta(seconds=61))
            )
        lapsed = resend()
        assert lapsed.returncode == 0, lapsed.stderr
        report = agent.report(report_id)
    assert (report.state, report.claimed_by, report.attempts) == (ReportState.PENDING, None, 0)
