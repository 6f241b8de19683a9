"""Backfill benchmark: series per hour retrieved from Orthanc by C-MOVE, agent against movescu.

Orthanc on loopback holds ``--series`` CT series. In the same run, round by round:

- ``agent``: ``hyperct-agent serve --role node`` with a running campaign of those
  series; its pacing off (no windows, no hourly cap) and ``max_concurrent`` 1, so one
  C-MOVE at a time as the loop below. Each instance arrives at the node and is kept
  durably (fsync, rename, rows committed) before it is acknowledged; the rate is the
  series over the time from the first claim to the last retrieve, as the database
  recorded them (the node's start is not counted);
- ``movescu``: a plain DCMTK ``movescu`` loop, one process per series, each its own
  move destination (``--port``), writing the files without fsync: the anchor.

The ratio is agent / movescu. Everything runs in a private network namespace when
``unshare`` allows (Orthanc listens on every interface), TCP_NODELAY=1 for DCMTK and
Orthanc.

    .venv/bin/python bench/bench_backfill.py [--series 10] [--images 64] [--size 512] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ct_series import ct_series, write_series  # noqa: E402

NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Orthanc:
    def __init__(self, work: Path, modalities: dict[str, list[object]]) -> None:
        self.port, http = free_port(), free_port()
        config = work / "orthanc.json"
        config.write_text(json.dumps({
            "Name": "bench", "StorageDirectory": str(work / "orthanc"),
            "IndexDirectory": str(work / "orthanc"), "DicomAet": "ORTHANC",
            "DicomPort": self.port, "HttpPort": http, "RemoteAccessAllowed": False,
            "DicomCheckCalledAet": False, "Plugins": [], "DicomModalities": modalities,
        }))  # fmt: skip
        self.proc = subprocess.Popen(
            ["Orthanc", str(config)], env=NODELAY,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_listening(self.port)

    def load(self, folders: list[Path]) -> None:
        files = [str(f) for folder in folders for f in sorted(folder.iterdir())]
        subprocess.run(
            ["/usr/bin/storescu", "-aet", "LOADER", "-aec", "ORTHANC", "127.0.0.1",
             str(self.port), *files],
            check=True, env=NODELAY, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run_movescu(work: Path, orthanc: Orthanc, port: int, series: list[tuple[str, str]]) -> float:
    """Seconds for one movescu per series, each receiving its own sub-operations."""
    work.mkdir(parents=True)
    started = time.perf_counter()
    for study, uid in series:
        subprocess.run(
            ["/usr/bin/movescu", "-S", "-aet", "MOVESCU", "-aec", "ORTHANC", "-aem", "MOVESCU",
             "--port", str(port), "-od", str(work), "-k", "QueryRetrieveLevel=SERIES",
             "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={uid}",
             "127.0.0.1", str(orthanc.port)],
            check=True, env=NODELAY, capture_output=True,
        )  # fmt: skip
    return time.perf_counter() - started


def _keep(stream: Any, path: Path) -> None:
    with path.open("w") as log:
        for line in stream:
            log.write(line)
            log.flush()


def start_agent(work: Path, orthanc_port: int, agent_port: int) -> subprocess.Popen[str]:
    work.mkdir(parents=True)
    (work / "agent.toml").write_text(
        f'[node]\nport = {agent_port}\n[storage]\nroot = "storage"\nmin_free_bytes = 0\n'
        '[database]\nurl = "sqlite:///agent.db"\n[logging]\nformat = "json"\n'
        "[pipeline]\nsweep_seconds = 0.2\n"
        f'[[archives]]\nname = "orthanc"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc_port}\n"
        "[backfill]\nmax_concurrent = 1\nseries_per_hour = 1000000\n"
    )
    cmd = [sys.executable, "-m", "agent", "serve", "--role", "node", "--config", "agent.toml"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's agent, wherever cwd is
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=work, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("{") and json.loads(line).get("event") == "node listening":
            keep = threading.Thread(target=_keep, args=(proc.stderr, work / "agent.log"))
            keep.daemon = True
            keep.start()
            return proc
    raise RuntimeError("agent exited before listening")


def run_agent(work: Path, orthanc: Orthanc, port: int, series: list[tuple[str, str]],
              images: int) -> float:  # fmt: skip
    """Seconds from the first claim to the last retrieve of a campaign of ``series``."""
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.orm import Session

    from storage.models import BackfillCampaign, BackfillSeries, BackfillState, CampaignState

    proc = start_agent(work, orthanc.port, port)
    try:
        engine = create_engine(f"sqlite:///{work / 'agent.db'}")
        with Session(engine) as s, s.begin():
            c = BackfillCampaign(name="bench", archive="orthanc", date_from="20000101",
                                 date_to="20301231", state=CampaignState.RUNNING)  # fmt: skip
            s.add(c)
            s.flush()
            for study, uid in series:
                s.add(BackfillSeries(
                    campaign_id=c.id, study_instance_uid=study, series_instance_uid=uid,
                    expected_instances=images,
                ))  # fmt: skip
        deadline = time.monotonic() + 1800
        with Session(engine) as s:
            while time.monotonic() < deadline:
                states = dict(s.execute(  # type: ignore[arg-type]
                    select(BackfillSeries.state, func.count()).group_by(BackfillSeries.state)
                ).all())  # fmt: skip
                s.rollback()  # a fresh snapshot each poll
                if states.get(BackfillState.RETRIEVED, 0) == len(series):
                    break
                if states.get(BackfillState.DEAD) or states.get(BackfillState.FAILED):
                    raise RuntimeError(f"retrieves failed: {states}")
                time.sleep(0.05)
            else:
                raise RuntimeError("the campaign did not finish in 30 minutes")
            first, last = s.execute(
                select(func.min(BackfillSeries.claimed_at), func.max(BackfillSeries.retrieved_at))
            ).one()
        engine.dispose()
        return float((last - first).total_seconds())
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--images", type=int, default=64, help="images per series")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each image")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-unshare", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args()

    if (
        not args.no_unshare
        and os.environ.get("HYPERCT_BENCH_NS") != "1"
        and shutil.which("unshare")
    ) and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        env = {**os.environ, "HYPERCT_BENCH_NS": "1"}
        script = (
            f"ip link set lo up 2>/dev/null || true; exec {sys.executable} {' '.join(sys.argv)}"
        )
        return subprocess.call(["unshare", "-n", "sh", "-c", script], env=env)

    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    kept = contextlib.nullcontext(tempfile.mkdtemp(dir=out)) if args.keep else None
    with kept or tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        folders, series = [], []
        for i in range(args.series):
            datasets = ct_series(args.images, rows=args.size, columns=args.size, seed=i)
            folder = work / f"series{i}"
            write_series(datasets, folder)
            folders.append(folder)
            series.append((str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)))
        agent_port, movescu_port = free_port(), free_port()
        orthanc = Orthanc(work, {
            "agent": ["HYPERCT", "127.0.0.1", agent_port],
            "movescu": ["MOVESCU", "127.0.0.1", movescu_port],
        })  # fmt: skip
        try:
            orthanc.load(folders)
            rates: dict[str, list[float]] = {"agent": [], "movescu": []}
            for r in range(args.rounds):
                os.sync()
                seconds = run_agent(work / f"agent{r}", orthanc, agent_port, series, args.images)
                rates["agent"].append(args.series * 3600 / seconds)
                os.sync()
                seconds = run_movescu(work / f"movescu{r}", orthanc, movescu_port, series)
                rates["movescu"].append(args.series * 3600 / seconds)
                line = ", ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items())
                print(f"round {r + 1} (series/hour): {line}", flush=True)
        finally:
            orthanc.stop()
        size = sum(p.stat().st_size for p in folders[0].iterdir()) / args.images
    medians = {n: statistics.median(v) for n, v in rates.items()}
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "series": args.series, "images_per_series": args.images, "bytes_per_image": round(size),
        "series_per_hour": {n: round(v) for n, v in medians.items()},
        "images_per_s": {n: round(v * args.images / 3600, 1) for n, v in medians.items()},
        "ratio_agent_to_movescu": round(medians["agent"] / medians["movescu"], 3),
    }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
