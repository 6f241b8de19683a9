"""Ingest benchmark: DCMTK storescu into the agent and into reference receivers, alternating.

Receivers, each fed the same series by ``storescu`` over loopback, round by round:

- ``agent``: ``hyperct-agent serve`` (durable: fsync, rename, SQLite commit per image);
- ``storescp``: DCMTK's receiver (the anchor the ratio is taken against);
- ``pynetdicom``: a bare pynetdicom SCP writing the raw bytes, no fsync, no database;
- ``orthanc``: Orthanc with its default fsync'd storage (skipped if not installed);
- ``transport ceiling``: the agent's tuned pynetdicom transport with a handler that
  keeps nothing: the rate the node could reach if storing were free;
- ``durable floor``: the same transport with only what the durability rule demands
  (header read, the agent's durable file write, one plain sqlite3 row and commit):
  the rate no design on this stack can beat here.

The run happens inside a private network namespace when ``unshare`` allows
(storescp and Orthanc listen on every interface), with TCP_NODELAY=1 for the
DCMTK and Orthanc processes. Figures are medians over the rounds of one run;
the ratio is agent / storescp.

With ``--concurrent N`` (default 4) a second case follows in the same run: the series is
split into N parts sent by N ``storescu`` processes at once, over N associations, to the
agent's node, to ``storescp --fork`` and to Orthanc; the rate is all images over the time
until the last association ends.

The agent runs as ``serve --role node`` (the DICOM node alone: no model in the process),
which is how a deployment that separates receiving from screening runs it.

    .venv/bin/python bench/bench_ingest.py [--images 200] [--rounds 3] [--size 512] [--concurrent 4]
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


def _storescu_cmd(port: int, aec: str, folder: Path) -> list[str]:
    return [
        "/usr/bin/storescu",
        "-aet",
        "BENCH",
        "-aec",
        aec,
        "+sd",
        "127.0.0.1",
        str(port),
        str(folder),
    ]


def storescu(port: int, aec: str, folder: Path) -> float:
    """Send every file under ``folder`` (one association, or one per part folder at once)."""
    parts = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    started = time.perf_counter()
    if not parts:
        subprocess.run(
            _storescu_cmd(port, aec, folder), check=True, env=NODELAY, capture_output=True
        )
        return time.perf_counter() - started
    procs = [
        subprocess.Popen(
            _storescu_cmd(port, aec, part),
            env=NODELAY,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for part in parts
    ]
    codes = [proc.wait() for proc in procs]
    if any(codes):
        raise RuntimeError(f"storescu failed: exit codes {codes}")
    return time.perf_counter() - started


def run_agent(work: Path, images: Path, profile: Path | None) -> float:
    work.mkdir(parents=True)
    config = work / "agent.toml"
    config.write_text(
        '[node]\nport = 0\n[storage]\nroot = "storage"\nmin_free_bytes = 0\n'
        '[database]\nurl = "sqlite:///agent.db"\n[logging]\nformat = "json"\n'
    )
    cmd = [sys.executable, "-m", "agent", "serve", "--role", "node", "--config", str(config)]
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
    # The node role loads no model: it is in steady state once it listens.
    port = None
    for line in proc.stderr:
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") == "node listening":
            port = int(event["port"])
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
    # --fork: one process per association, so concurrent senders are served at once.
    proc = subprocess.Popen(
        ["/usr/bin/storescp", "--fork", "-od", str(work), str(port)], env=NODELAY
    )
    try:
        wait_listening(port)
        return storescu(port, "ANY-SCP", images)
    finally:
        proc.terminate()
        proc.wait(10)


# The listening end shared by the tuned receivers below: the script before it defines
# ``on_store``; no PDU limit, the agent's wake-up hooks.
_TUNED_SERVER = """
ae = AE("BARE")
ae.maximum_pdu_size = 0
ae.add_supported_context(
    "1.2.840.10008.5.1.4.1.1.2", [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
)
handlers = [
    (evt.EVT_C_STORE, on_store),
    (evt.EVT_CONN_OPEN, on_connection_open),
    (evt.EVT_DIMSE_RECV, on_dimse_received),
]
server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
print(server.server_address[1], flush=True)
sys.stdin.read()
server.shutdown()
"""

# The agent's receive path without its handler: pynetdicom with the agent's transport
# tuning (agent/node/transport.py) and no PDU limit, answering success without keeping
# anything. What the node could reach if storing cost nothing.
CEILING_SCP = (
    f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from pynetdicom import AE, evt, _config
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from agent.node.transport import install_transport_tuning, on_connection_open, on_dimse_received
_config.LOG_HANDLER_LEVEL = "none"
install_transport_tuning()
def on_store(event):
    return 0
"""
    + _TUNED_SERVER
)


# The least any receiver meeting the durability rule must do per image, on the
# agent's own transport and file store: read the header (pydicom, the fields the node
# records), write the bytes durably (temp file, fsync, rename, directory fsync, as the
# agent does) and commit one row per instance with the plain sqlite3 module (WAL,
# synchronous=FULL). No ORM, no series bookkeeping, no audit row: the agent minus
# everything it adds. Its ratio bounds what any design on this stack reaches here.
FLOOR_SCP = (
    f"""
import sqlite3, sys, threading
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from pynetdicom import AE, evt, _config
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from agent.dicom.header import read_header
from agent.dicom.part10 import part10_prefix
from agent.node.transport import install_transport_tuning, on_connection_open, on_dimse_received
from storage.files import InstanceStore, derived_rel_path
_config.LOG_HANDLER_LEVEL = "none"
install_transport_tuning()
work = Path(sys.argv[1])
store = InstanceStore(work / "storage")
store.prepare()
db = sqlite3.connect(work / "floor.db", isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE instances (sop TEXT UNIQUE, series TEXT, path TEXT, sha256 TEXT)")
writer = threading.Lock()  # one connection, one writer, as SQLite has anyway
def on_store(event):
    request = event.request
    data = request.DataSet.getvalue()
    syntax = event.context.transfer_syntax
    prefix = part10_prefix(request.AffectedSOPClassUID, request.AffectedSOPInstanceUID, syntax)
    staged = store.stage([prefix, data], data)
    header = read_header(data, syntax)
    rel = derived_rel_path(
        header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid,
        staged.sha256,
    )
    store.publish(staged, rel)
    with writer:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO instances VALUES (?, ?, ?, ?)",
            (header.sop_instance_uid, header.series_instance_uid, rel, staged.sha256),
        )
        db.execute("COMMIT")
    return 0
"""
    + _TUNED_SERVER
    + """
store.close()
"""
)


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


def split_parts(images: Path, parts: Path, n: int) -> None:
    """Hard-link the series into ``n`` folders of (nearly) equal size, one per association."""
    files = sorted(images.iterdir())
    for i in range(n):
        folder = parts / f"part{i}"
        folder.mkdir(parents=True)
        for f in files[i::n]:
            os.link(f, folder / f.name)


def run_rounds(
    receivers: dict[str, Callable[[Path, Path], float]],
    images: Path,
    count: int,
    rounds: int,
    work: Path,
    label: str,
    profile: bool = False,
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in receivers}
    for r in range(rounds):
        for name, run in receivers.items():
            # Receivers that do not fsync leave ~100 MB dirty per round; written back
            # during the next receiver's run, it would slow that one's fsyncs.
            os.sync()
            folder = work / f"{label}-{name}{r}".replace(" ", "_")
            if name == "agent" and profile and r == 0:
                elapsed = run_agent(folder, images, ROOT / "bench" / "out" / "ingest-profile.txt")
            else:
                elapsed = run(folder, images)
            rates[name].append(count / elapsed)
        line = ", ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items())
        print(f"{label} round {r + 1} (images/s): {line}", flush=True)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each image")
    parser.add_argument(
        "--concurrent",
        type=int,
        default=4,
        help="associations at once in the second case (0: skip it)",
    )
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
        "durable floor": lambda w, i: run_bare(w, i, FLOOR_SCP),
    }
    if shutil.which("Orthanc"):
        receivers["orthanc"] = run_orthanc
    concurrent = {
        name: run
        for name, run in receivers.items()
        if name in ("agent", "storescp", "durable floor", "orthanc")
    }
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmpdir = Path(tmp)
        images = tmpdir / "images"
        write_series(ct_series(args.images, rows=args.size, columns=args.size), images)
        size = sum(p.stat().st_size for p in images.iterdir()) / args.images
        rates = run_rounds(
            receivers, images, args.images, args.rounds, tmpdir, "one", profile=args.profile
        )
        together: dict[str, list[float]] = {}
        if args.concurrent > 0:
            parts = tmpdir / "parts"
            split_parts(images, parts, args.concurrent)
            together = run_rounds(
                concurrent, parts, args.images, args.rounds, tmpdir, f"x{args.concurrent}"
            )
        medians = {name: statistics.median(v) for name, v in rates.items()}
        result: dict[str, object] = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "images": args.images,
            "bytes_per_image": round(size),
            "images_per_s": {n: round(v, 1) for n, v in medians.items()},
            "ratio_to_storescp": {n: round(v / medians["storescp"], 3) for n, v in medians.items()},
            "agent_to_durable_floor": round(medians["agent"] / medians["durable floor"], 3),
        }
        if together:
            both = {name: statistics.median(v) for name, v in together.items()}
            result[f"concurrent_{args.concurrent}_images_per_s"] = {
                n: round(v, 1) for n, v in both.items()
            }
            result[f"concurrent_{args.concurrent}_ratio_to_storescp"] = {
                n: round(v / both["storescp"], 3) for n, v in both.items()
            }
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
