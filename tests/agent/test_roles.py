"""``serve --role node|screen|all``: a node without the model, shared queues, supervision."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from agent.supervise import child_command
from storage.models import Job, JobState, Report, ReportState, Result
from tests.agent.conftest import DCMTK_ENV, NODE_AET, dcmtk
from tests.agent.pipeline_env import Serve, agent_config, chest_series, tiny_checkpoint, wait_for
from tests.agent.test_pipeline_faults import Receiver, send
from tests.support.ct_series import ct_series, write_series

#: What a node must never import: torch, and the model modules of hyperct_core.
MODEL_MODULES = (
    "torch",
    "hyperct_core.backbone",
    "hyperct_core.checkpoint",
    "hyperct_core.hypernet",
    "hyperct_core.inference",
    "hyperct_core.lora",
    "hyperct_core.model",
    "hyperct_core.preprocess",
    "hyperct_core.train",
)


DECIDED = {JobState.DONE, JobState.SKIPPED}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def imported_modules(lines: list[str]) -> set[str]:
    """Module names from ``-X importtime`` lines: ``import time: self | cumulative | name``."""
    names = set()
    for line in lines:
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    names.discard("imported package")
    return names


def storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("storescu"), "-aet", "PACS", "-aec", NODE_AET, "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, env=DCMTK_ENV, timeout=120,
    )  # fmt: skip


def jobs(url: str) -> list[Job]:
    engine = create_engine(url)
    try:
        with Session(engine) as s:
            return list(s.scalars(select(Job).order_by(Job.id)))
    finally:
        engine.dispose()


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_node_never_imports_the_model(tmp_path: Path) -> None:
    unloadable = tmp_path / "not-a-checkpoint"  # a node never opens it
    unloadable.mkdir()
    config = agent_config(tmp_path, unloadable, extra="[web]\nenabled = true\nport = 0\n")
    url = f"sqlite:///{tmp_path / 'agent.db'}"
    node = Serve(config, launcher=("-X", "importtime", "-m", "agent"), args=("--role", "node"))
    try:
        [web] = wait_for(lambda: node.events("web dashboard listening"), 30, "dashboard", node)
        sent = storescu(node.port, write_series(ct_series(24), tmp_path / "series"))
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def decided() -> bool:
            return [j.state for j in jobs(url)] not in ([], [JobState.RECEIVING])

        wait_for(decided, 60, "the sweep to decide the series", node)
        code, health = healthz(web["port"])
    finally:
        assert node.stop() == 0
    # No screen worker runs: the node says so instead of pretending a model.
    checks = {c["name"]: c for c in health["checks"]}
    assert code == 503 and not checks["model"]["ok"]
    assert "no screen worker" in checks["model"]["detail"]
    assert checks["listener"]["ok"] and checks["database"]["ok"]
    modules = imported_modules(node.lines)
    # The list is real: the node, its DICOM stack and its dashboard were imported.
    assert {
        "pynetdicom",
        "agent.node.server",
        "agent.pipeline.sweep",
        "agent.web.server",
    } <= modules
    leaked = sorted(m for m in modules if m.split(".")[0] == "torch" or m in MODEL_MODULES)
    assert leaked == []
    assert not node.events("model loaded")


@pytest.mark.slow
def test_all_restarts_a_killed_screen_worker_and_keeps_receiving(
    tmp_path: Path, checkpoint: Path
) -> None:
    config = agent_config(tmp_path, checkpoint)
    url = f"sqlite:///{tmp_path / 'agent.db'}"
    serve = Serve(config)  # --role all, the default
    try:

        def screen_child() -> int | None:
            started = [e for e in serve.events("child started") if e["role"] == "screen"]
            return int(started[-1]["pid"]) if started else None

        first = wait_for(screen_child, 30, "the screen worker", serve)
        wait_for(lambda: serve.events("screen worker started"), 60, "the worker running", serve)
        os.kill(first, signal.SIGKILL)  # an OOM kill looks like this
        # The node answers while the worker is down, and takes a whole study.
        echo = subprocess.run(
            [dcmtk("echoscu"), "-aet", "PACS", "-aec", NODE_AET, "127.0.0.1", str(serve.port)],
            capture_output=True, text=True, env=DCMTK_ENV, timeout=30,
        )  # fmt: skip
        assert echo.returncode == 0, echo.stdout + echo.stderr
        sent = storescu(serve.port, chest_series(tmp_path / "series"))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        [restart] = wait_for(
            lambda: serve.events("screen worker exited; restarting it"), 30, "a restart", serve
        )
        assert restart["exit_status"] == 128 + signal.SIGKILL
        wait_for(lambda: screen_child() != first, 30, "a new screen worker", serve)
        done = wait_for(
            lambda: [j.state for j in jobs(url)] == [JobState.DONE], 120, "screening", serve
        )
        assert done
    finally:
        assert serve.stop() == 0
    [job] = jobs(url)
    assert job.attempts == 1 and job.revision == 1
    assert not serve.events("node exited; stopping the screen worker")
    assert len(serve.events("stopped")) == 2  # the node's and the worker's clean stops


def test_all_exits_non_zero_when_its_node_dies(tmp_path: Path, checkpoint: Path) -> None:
    serve = Serve(agent_config(tmp_path, checkpoint))
    try:
        [node] = [e for e in serve.events("child started") if e["role"] == "node"]

        def worker_started() -> bool:
            return any(e["role"] == "screen" for e in serve.events("child started"))

        wait_for(worker_started, 30, "the screen worker", serve)
        os.kill(int(node["pid"]), signal.SIGKILL)
        code = serve.proc.wait(60)
    finally:
        if serve.proc.poll() is None:
            serve.proc.kill()
    assert code == 128 + signal.SIGKILL
    time.sleep(0.2)  # the drain thread takes the last lines
    assert serve.events("node exited; stopping the screen worker")
    screen = [e for e in serve.events("child started") if e["role"] == "screen"]
    for event in screen:  # the worker was stopped, not left behind
        with pytest.raises(ProcessLookupError):
            os.kill(int(event["pid"]), 0)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_nodes_and_two_screen_workers_share_one_database(
    tmp_path: Path, checkpoint: Path, pg_server: object
) -> None:
    url_obj = pg_server.create_database()  # type: ignore[attr-defined]
    url = url_obj.render_as_string(hide_password=False)
    receiver = Receiver()
    dest = [("pacs", "PACS", "127.0.0.1", receiver.port)]
    configs = []
    for name in ("a", "b", "c", "d"):
        folder = tmp_path / name
        folder.mkdir()
        shared = tmp_path / "storage"  # one storage root, as on a shared volume
        configs.append(agent_config(folder, checkpoint, dest, database=url, storage_root=shared))
    nodes = [Serve(c, args=("--role", "node")) for c in configs[:2]]
    workers = [
        Serve(c, args=("--role", "screen"), ready="screen worker started") for c in configs[2:]
    ]
    procs = nodes + workers
    try:
        # Two series of one study, at once through different nodes. Which is screened
        # depends on arrival: the better one, or both when the better one comes
        # after the other was screened already.
        study = "1.2.826.0.1.3680043.8.498.4242"
        series = [chest_series(tmp_path / f"s{i}", seed=20 + i, study_uid=study) for i in (0, 1)]
        series.append(chest_series(tmp_path / "s2", seed=22))
        threads = [
            threading.Thread(target=send, args=(nodes[i % 2].port, files))
            for i, files in enumerate(series)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

        def settled() -> list[Job] | None:
            found = jobs(url)
            states = {j.state for j in found}
            done = [j for j in found if j.state == JobState.DONE]
            return found if len(found) == 3 and len(done) >= 2 and states <= DECIDED else None

        final = wait_for(settled, 300, "every series decided and screened", workers[0])
        done_ids = sorted(j.id for j in final if j.state == JobState.DONE)
        expected = 3 * len(done_ids)  # reports per screened series
        wait_for(lambda: len(receiver.received) >= expected, 60, "reports delivered", nodes[0])
        time.sleep(1.0)  # a duplicate decision, screening or send would show by now
    finally:
        for proc in procs:
            assert proc.stop() == 0
        receiver.stop()
    screened = [e["job"] for w in workers for e in w.events("series screened")]
    assert not any(n.events("series screened") for n in nodes)
    assert sorted(screened) == done_ids  # each screened exactly once, by one worker
    # A series queued first may give way to its sibling; none is queued twice.
    decisions = [e for n in nodes for e in n.events("series decided") if e["state"] == "queued"]
    queued = [e["job"] for e in decisions]
    assert len(queued) == len(set(queued)) and set(screened) <= set(queued)
    engine = create_engine(url)
    with Session(engine) as s:
        jobs_now = s.scalars(select(Job)).all()
        in_study = {j.id for j in jobs_now if j.series.study.study_instance_uid == study}
        # Only a series decided with no sibling chosen yet has no comparison in its
        # reason: two such in one study would be two nodes choosing blind of each other.
        blind = [e for e in decisions if e["job"] in in_study and ";" not in e["reason"]]
        assert len(in_study) == 2 and len(blind) == 1, decisions
        done = [j for j in jobs_now if j.state == JobState.DONE]
        assert sorted(j.id for j in done) == done_ids
        assert all(j.attempts == 1 and j.revision == 1 for j in done)
        assert s.scalar(select(func.count()).select_from(Result)) == len(done_ids) * 25
        reports = s.scalars(select(Report)).all()
        assert len(reports) == expected and {r.state for r in reports} == {ReportState.SENT}
        assert all(r.attempts == 1 for r in reports)
    engine.dispose()
    assert sorted(receiver.received) == sorted({r.sop_instance_uid for r in reports})
    pg_server.drop_database(url_obj.database)  # type: ignore[attr-defined]


def test_children_run_the_same_program_with_its_interpreter_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    args = argparse.Namespace(grace=2.5, config=tmp_path / "agent.toml")
    launched = ["python", "-X", "importtime", "-m", "tests.agent.slow_serve", "8", "serve"]
    monkeypatch.setattr(sys, "orig_argv", [*launched, "--config", "serve"])
    assert child_command("screen", args) == [
        sys.executable, "-X", "importtime", "-m", "tests.agent.slow_serve", "8",
        "serve", "--role", "screen", "--grace", "2.5", "--config", str(tmp_path / "agent.toml"),
    ]  # fmt: skip
    monkeypatch.setattr(sys, "orig_argv", ["/venv/bin/python", "/venv/bin/hyperct-agent", "serve"])
    assert child_command("node", argparse.Namespace(grace=0.0, config=None)) == [
        sys.executable, "/venv/bin/hyperct-agent", "serve", "--role", "node", "--grace", "0.0",
    ]  # fmt: skip


def test_a_node_reports_the_model_as_its_workers_recorded_it(
    tmp_path: Path, checkpoint: Path
) -> None:
    """Status files from real ModelHolders: one that fails to load, then one that loads."""
    from agent.config import ModelSettings
    from agent.pipeline.model import ModelHolder
    from agent.pipeline.workers import WorkerBoard, WorkerStatus
    from agent.web.metrics import WorkersCollector

    board = WorkerBoard(tmp_path, max_age_seconds=60.0)
    assert board.model_state() == (
        False,
        "no screen worker running (none reported within the lease)",
    )
    broken = tmp_path / "not-a-checkpoint"
    broken.mkdir()
    failing = ModelHolder(ModelSettings(checkpoint=broken))
    failing.start()
    failing.get(timeout=120)
    first = WorkerStatus(tmp_path, "host:1:aa", failing, every_seconds=60.0)
    first.start()
    ok, detail = wait_for(
        lambda: (state := board.model_state())[1].startswith("failed: ") and state,
        30,
        "the failure recorded",
    )
    assert not ok and "model.safetensors" in detail
    first.stop()  # stopped: no longer counts as live
    assert board.live() == []

    loaded = ModelHolder(ModelSettings(checkpoint=checkpoint, dtype="float32"))
    loaded.start()
    assert loaded.get(timeout=120) is not None
    second = WorkerStatus(tmp_path, "host:2:bb", loaded, every_seconds=60.0)
    second.start()
    second.observe(0.3)
    second.observe(7.0)
    ok, detail = wait_for(lambda: board.model_state()[0] and board.model_state(), 30, "loaded")
    assert detail == "loaded (version 0.0.1) by 1 screen worker(s)"
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in WorkersCollector(board).collect()
        for s in family.samples
    }
    assert samples[("hyperct_model_loaded", None)] == 1
    assert samples[("hyperct_inference_seconds_count", None)] == 2
    assert samples[("hyperct_inference_seconds_sum", None)] == pytest.approx(7.3)
    assert samples[("hyperct_inference_seconds_bucket", "0.5")] == 1
    assert samples[("hyperct_inference_seconds_bucket", "10.0")] == 2
    second.stop()
    assert samples and board.model_state()[0] is False


def test_a_start_sweeps_only_temp_files_whose_writer_is_gone(tmp_path: Path) -> None:
    """Nodes and workers share the storage root: a start leaves a live writer's files alone."""
    from storage.files import _TMP_OWNER, InstanceStore

    tmp = tmp_path / ".tmp"
    tmp.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = [tmp / f"{_TMP_OWNER}~{live.pid}~a.part", tmp / "otherhost~7~b.part"]
        swept = [
            tmp / f"{_TMP_OWNER}~{dead.pid}~c.part",
            tmp / "otherhost~8~d.part",  # another host's, untouched for two hours
            tmp / "deadbeef.part",  # not named by a writer
        ]
        for path in kept + swept:
            path.write_bytes(b"half an instance")
        two_hours_ago = time.time() - 7200
        os.utime(swept[1], (two_hours_ago, two_hours_ago))
        assert InstanceStore(tmp_path).prepare() == len(swept)
        assert sorted(tmp.iterdir()) == sorted(kept)
    finally:
        live.kill()
        live.wait()
