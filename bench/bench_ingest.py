"""Ingest benchmark: DCMTK storescu into the agent and into reference receivers, alternating.

Receivers, each fed the same series by ``storescu`` over loopback, round by round:

- ``agent``: ``hyperct-agent serve`` (durable: fsync, rename, SQLite commit per image);
- ``storescp``: DCMTK's receiver (the anchor the ratio is taken against);
- ``pynetdicom``: a bare pynetdicom SCP writing the raw bytes, no fsync, no database;
- ``orthanc``: Orthanc with its default fsync'd storage (skipped if not installed);
- ``transport ceiling``: the agent's tuned pynetdicom transport with a handler that
  keeps nothing: the rate the node could reach if storing were free.

The run happens inside a private network namespace when ``unshare`` allows
(storescp and Orthanc listen on every interface), with TCP_NODELAY=1 for the
DCMTK and Orthanc processes. Figures are medians over the rounds of one run;
the ratio is agent / storescp.

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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ct_series import ct_series, write_series  # noqa: E402

NODELAY = {**os.environ, "TCP_NODELAY": "1"}

BARE_SCP = """
import sys
from pathlib import Path
from pynetdicom import AE, evt, _config
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
_config.LOG_HANDLER_LEVEL = "none"
out = Path(sys.argv[1])
def on_store(event):
    (out / event.request.AffectedSOPInstanceUID).write_bytes(event.encoded_dataset())
    return 0
ae = AE("BARE")
ae.add_supported_context(
    "1.2.840.10008.5.1.4.1.1.2", [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
)
server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
print(server.server_address[1], flush=True)
sys.stdin.read()
server.shutdown()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


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
        env=NODELAY,
        capture_output=True,
    )
    return time.perf_counter() - started


def run_agent(work: Path, images: Path, profile: Path | None) -> float:
    work.mkdir(parents=True)
    config = work / "agent.toml"
    config.write_text(
        '[node]\nport = 0\n[storage]\nroot = "storage"\nmin_free_bytes = 0\n'
        '[database]\nurl = "sqlite:///agent.db"\n[logging]\nformat = "json"\n'
    )
    cmd = [sys.executable, "-m", "agent", "serve", "--config", str(config)]
    if profile is not None:
        cmd = [
            "py-spy",
            "record",
            "--idle",
            "-f",
            "raw",
            "-r",
            "500",
            "-o",
            str(profile),
            "--",
            *cmd,
        ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stderr is not None
    # Steady state: the node listens before the model has loaded, and loading it
    # (seconds of Python on both cores) would share the CPU with the first images.
    port = None
    for line in proc.stderr:
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") == "node listening":
            port = int(event["port"])
        elif event.get("event") == "model loaded":
            break
    if port is None:
        raise RuntimeError("agent exited before listening")
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    try:
        return storescu(port, "HYPERCT", images)
    finally:
        proc.terminate()
        proc.wait(60)


def run_storescp(work: Path, images: Path) -> float:
    work.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(["/usr/bin/storescp", "-od", str(work), str(port)], env=NODELAY)
    try:
        wait_listening(port)
        return storescu(port, "ANY-SCP", images)
    finally:
        proc.terminate()
        proc.wait(10)


# The agent's receive path without its handler: pynetdicom with the agent's transport
# tuning (agent/node/transport.py) and no PDU limit, answering success without keeping
# anything. What the node could reach if storing cost nothing.
CEILING_SCP = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from pynetdicom import AE, evt, _config
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from agent.node.transport import install_transport_tuning, on_connection_open, on_dimse_received
_config.LOG_HANDLER_LEVEL = "none"
install_transport_tuning()
ae = AE("BARE")
ae.maximum_pdu_size = 0
ae.add_supported_context(
    "1.2.840.10008.5.1.4.1.1.2", [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
)
handlers = [
    (evt.EVT_C_STORE, lambda event: 0),
    (evt.EVT_CONN_OPEN, on_connection_open),
    (evt.EVT_DIMSE_RECV, on_dimse_received),
]
server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
print(server.server_address[1], flush=True)
sys.stdin.read()
server.shutdown()
"""


def run_bare(work: Path, images: Path, script: str = BARE_SCP) -> float:
    work.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(work)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        return storescu(int(proc.stdout.readline()), "BARE", images)
    finally:
        proc.stdin.close()
        proc.wait(30)


def run_orthanc(work: Path, images: Path) -> float:
    work.mkdir(parents=True)
    port, http = free_port(), free_port()
    (work / "orthanc.json").write_text(
        json.dumps(
            {
                "Name": "bench",
                "StorageDirectory": str(work / "db"),
                "IndexDirectory": str(work / "db"),
                "DicomAet": "ORTHANC",
                "DicomPort": port,
                "HttpPort": http,
                "RemoteAccessAllowed": False,
                "DicomCheckCalledAet": False,
                "Plugins": [],
                "SyncStorageArea": True,
            }
        )
    )
    proc = subprocess.Popen(
        ["Orthanc", str(work / "orthanc.json")],
        env=NODELAY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        return storescu(port, "ORTHANC", images)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each image")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy profile of the agent, first round"
    )
    parser.add_argument("--no-unshare", action="store_true")
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
    receivers: dict[str, Callable[[Path, Path], float]] = {
        "agent": lambda w, i: run_agent(w, i, None),
        "storescp": run_storescp,
        "pynetdicom": run_bare,
        "transport ceiling": lambda w, i: run_bare(w, i, CEILING_SCP),
    }
    if shutil.which("Orthanc"):
        receivers["orthanc"] = run_orthanc
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmpdir = Path(tmp)
        images = tmpdir / "images"
        write_series(ct_series(args.images, rows=args.size, columns=args.size), images)
        size = sum(p.stat().st_size for p in images.iterdir()) / args.images
        rates: dict[str, list[float]] = {name: [] for name in receivers}
        for r in range(args.rounds):
            for name, run in receivers.items():
                # Receivers that do not fsync leave ~100 MB dirty per round; written back
                # during the next receiver's run, it would slow that one's fsyncs.
                os.sync()
                if name == "agent" and args.profile and r == 0:
                    elapsed = run_agent(tmpdir / f"{name}{r}", images, out / "ingest-profile.txt")
                else:
                    elapsed = run(tmpdir / f"{name}{r}", images)
                rates[name].append(args.images / elapsed)
            line = ", ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items())
            print(f"round {r + 1} (images/s): {line}", flush=True)
        medians = {name: statistics.median(v) for name, v in rates.items()}
        print(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "machine": f"{platform.machine()} {os.cpu_count()} cores",
                    "images": args.images,
                    "bytes_per_image": round(size),
                    "images_per_s": {n: round(v, 1) for n, v in medians.items()},
                    "ratio_to_storescp": {
                        n: round(v / medians["storescp"], 3) for n, v in medians.items()
                    },
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
