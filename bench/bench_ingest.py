"""Ingest benchmark: DCMTK storescu into the agent and into DCMTK storescp, alternating.

Both receivers run on this machine over loopback, inside a private network
namespace when ``unshare`` allows (storescp listens on every interface), with
TCP_NODELAY=1 for the DCMTK processes. The figure of merit is the ratio of
images per second, agent / storescp, medians over the rounds of one run.

    .venv/bin/python bench/bench_ingest.py [--images 200] [--rounds 3] [--size 512]
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ct_series import ct_series, write_series  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def storescu(port: int, aec: str, folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            "/usr/bin/storescu",
            "-aet",
            "BENCH",
            "-aec",
            aec,
            "+sd",
            "127.0.0.1",
            str(port),
            str(folder),
        ],
        check=True,
        env=DCMTK_ENV,
        capture_output=True,
    )
    return time.perf_counter() - started


class Agent:
    def __init__(self, workdir: Path, profile: bool) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "agent.toml"
        config.write_text(
            '[node]\nport = 0\n[storage]\nroot = "storage"\nmin_free_bytes = 0\n'
            '[database]\nurl = "sqlite:///agent.db"\n[logging]\nformat = "json"\n'
        )
        cmd = [sys.executable, "-m", "agent", "serve", "--config", str(config)]
        if profile:
            cmd = [
                shutil.which("py-spy") or "py-spy",
                "record",
                "-o",
                str(ROOT / "bench" / "out" / "ingest-profile.txt"),
                "-f",
                "raw",
                "-r",
                "200",
                "--",
                *cmd,
            ]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.port = self._wait_port()
        self.workdir = workdir
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()  # type: ignore[union-attr]

    def _wait_port(self) -> int:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "node listening":
                return int(event["port"])
        raise RuntimeError("agent exited before listening")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each image")
    parser.add_argument(
        "--profile", action="store_true", help="record a py-spy profile of the agent"
    )
    parser.add_argument("--no-unshare", action="store_true")
    args = parser.parse_args()

    if (
        not args.no_unshare
        and os.environ.get("HYPERCT_BENCH_NS") != "1"
        and shutil.which("unshare")
    ):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            env = {**os.environ, "HYPERCT_BENCH_NS": "1"}
            script = (
                f"ip link set lo up 2>/dev/null || true; exec {sys.executable} {' '.join(sys.argv)}"
            )
            return subprocess.call(["unshare", "-n", "sh", "-c", script], env=env)

    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "out") as tmp:
        tmpdir = Path(tmp)
        images = tmpdir / "images"
        write_series(ct_series(args.images, rows=args.size, columns=args.size), images)
        size = sum(p.stat().st_size for p in images.iterdir()) / args.images
        agent_rates, scp_rates = [], []
        for r in range(args.rounds):
            agent = Agent(tmpdir / f"agent{r}", args.profile and r == 0)
            try:
                agent_rates.append(args.images / storescu(agent.port, "HYPERCT", images))
            finally:
                agent.stop()
            out = tmpdir / f"scp{r}"
            out.mkdir()
            port = free_port()
            scp = subprocess.Popen(["/usr/bin/storescp", "-od", str(out), str(port)], env=DCMTK_ENV)
            try:
                time.sleep(0.5)
                scp_rates.append(args.images / storescu(port, "ANY-SCP", images))
            finally:
                scp.terminate()
                scp.wait(10)
            print(
                f"round {r + 1}: agent {agent_rates[-1]:.0f} img/s, "
                f"storescp {scp_rates[-1]:.0f} img/s",
                flush=True,
            )
        a, s = statistics.median(agent_rates), statistics.median(scp_rates)
        print(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "machine": f"{platform.machine()} {os.cpu_count()} cores",
                    "images": args.images,
                    "bytes_per_image": round(size),
                    "agent_images_per_s": round(a, 1),
                    "storescp_images_per_s": round(s, 1),
                    "ratio": round(a / s, 3),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
