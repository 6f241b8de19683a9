"""Reliability row 10: SIGKILL while instances are arriving loses nothing acknowledged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select, text

from tests.agent.conftest import DCMTK_ENV, NODE_AET, dcmtk
from tests.support.ct_series import ct_series, write_series

ROOT = Path(__file__).resolve().parents[2]


class ServeProcess:
    """``hyperct-agent serve`` as a real subprocess; reads the bound port from its JSON log."""

    def __init__(self, config: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "serve", "--config", str(config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        self.port = self._wait_for_port()
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_for_port(self) -> int:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        for line in self.proc.stderr:
            self.lines.append(line)
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "node listening":
                return int(event["port"])
            if time.monotonic() > deadline:
                break
        raise AssertionError("serve did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[node]\nport = 0\n[storage]\nroot = "storage"\nmin_free_bytes = 0\n'
        '[database]\nurl = "sqlite:///agent.db"\n[logging]\nlevel = "debug"\nformat = "json"\n'
    )
    return path


@pytest.fixture
def serve(config: Path) -> Iterator[ServeProcess]:
    proc = ServeProcess(config)
    yield proc
    if proc.proc.poll() is None:
        proc.kill()


def acknowledged(storescu_output: str, files: list[Path]) -> list[Path]:
    """Files whose C-STORE got a Success response, in sending order."""
    responses = [line for line in storescu_output.splitlines() if "Received Store Response" in line]
    ok = [("Success" in line) for line in responses]
    return [f for f, good in zip(files, ok, strict=False) if good]


def test_sigkill_mid_transfer_loses_nothing_acknowledged(
    tmp_path: Path, config: Path, serve: ServeProcess
) -> None:
    files = write_series(ct_series(600, rows=128, columns=128), tmp_path / "in")
    db = create_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    sender = subprocess.Popen(
        [
            dcmtk("storescu"),
            "-v",
            "-aet",
            "PACS",
            "-aec",
            NODE_AET,
            "127.0.0.1",
            str(serve.port),
            *map(str, files),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=DCMTK_ENV,
    )
    # Kill once a part of the series has been committed, so transfers are in flight.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with db.connect() as conn:
            if (conn.scalar(text("SELECT count(*) FROM instances")) or 0) >= 60:
                break
        time.sleep(0.01)
    serve.kill()
    output, _ = sender.communicate(timeout=60)
    acked = acknowledged(output, files)
    # The kill comes once 60 rows are committed; the last of them may not have been
    # acknowledged yet, so only "some but not all" is certain.
    assert 0 < len(acked) < len(files), f"the kill must land mid-transfer ({len(acked)} acked)"

    restarted = ServeProcess(config)
    try:
        storage = tmp_path / "storage"
        assert list((storage / ".tmp").iterdir()) == []  # swept at start
        visible = [p for p in (storage / "instances").rglob("*") if p.is_file()]
        assert all(p.suffix == ".dcm" for p in visible)  # no partial file under a final name
        with db.connect() as conn:
            rows = dict(
                conn.execute(text("SELECT sop_instance_uid, rel_path FROM instances")).all()
            )
        for path in acked:
            uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert uid in rows, "an acknowledged instance is missing after the crash"
            stored = dcmread(storage / rows[uid])
            assert stored.SOPInstanceUID == uid
            assert stored.PixelData == dcmread(path).PixelData
        # Whatever was not acknowledged is simply sent again, and the series completes.
        proc = subprocess.run(
            [
                dcmtk("storescu"),
                "-aet",
                "PACS",
                "-aec",
                NODE_AET,
                "127.0.0.1",
                str(restarted.port),
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            env=DCMTK_ENV,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with db.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM instances")) == len(files)
            assert conn.scalar(text("SELECT instance_count FROM series")) == len(files)
    finally:
        assert restarted.stop() == 0
    db.dispose()


def test_leftover_temp_files_are_swept_at_start(tmp_path: Path, config: Path) -> None:
    tmp = tmp_path / "storage" / ".tmp"
    tmp.mkdir(parents=True)
    (tmp / "deadbeef.part").write_bytes(b"half an instance")
    proc = ServeProcess(config)
    try:
        assert list(tmp.iterdir()) == []
        assert any("unfinished temporary files" in line for line in proc.lines)
    finally:
        assert proc.stop() == 0
    events = [json.loads(line) for line in proc.lines if line.startswith("{")]
    assert [e["event"] for e in events][-1] == "stopped"
    with create_engine(f"sqlite:///{tmp_path / 'agent.db'}").connect() as conn:
        outcomes = (
            conn.execute(
                select(text("outcome"))
                .select_from(text("audit_events"))
                .where(text("event_type = 'application'"))
            )
            .scalars()
            .all()
        )
    assert outcomes == ["started", "stopped"]
    assert os.path.exists(tmp_path / "agent.db")
