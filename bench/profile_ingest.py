"""Where the time per image goes when DCMTK storescu streams a series into the node.

Runs the node in this process (SQLite, durable writes) and times, per image:
the transport segments (from pynetdicom's PDU and DIMSE events) and the
stages of the C-STORE handler (by wrapping them). Prints medians in ms.

    .venv/bin/python bench/profile_ingest.py [--images 200] [--size 512]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pynetdicom import evt  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

import agent.node.handlers as handlers  # noqa: E402
from agent.config import NodeSettings  # noqa: E402
from agent.logs import configure_logging  # noqa: E402
from agent.node.server import start_node  # noqa: E402
from agent.resources import alembic_dir  # noqa: E402
from storage.db import make_engine, make_session_factory, upgrade  # noqa: E402
from storage.files import InstanceStore, StagedFile  # noqa: E402
from tests.support.ct_series import ct_series, write_series  # noqa: E402

STAGES = collections.defaultdict(list)
EVENTS: list[tuple[str, float]] = []


def timed(owner: Any, name: str, label: str) -> None:
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            STAGES[label].append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def mark(name: str) -> Callable[[Any], None]:
    return lambda _event: EVENTS.append((name, time.perf_counter()))


def transport_segments() -> dict[str, list[float]]:
    seg: dict[str, list[float]] = collections.defaultdict(list)
    first_in = dimse = h0 = h1 = last_out = None
    for name, ts in EVENTS:
        if name == "pdu_in" and first_in is None:
            first_in = ts
            if last_out is not None:
                seg["between images (peer + wake-up)"].append(ts - last_out)
        elif name == "dimse_in":
            dimse = ts
        elif name == "handler_start":
            h0 = ts
        elif name == "handler_end":
            h1 = ts
        elif name == "pdu_out" and None not in (first_in, dimse, h0, h1):
            seg["receive PDUs until DIMSE complete"].append(dimse - first_in)  # type: ignore[operator]
            seg["DIMSE complete -> handler"].append(h0 - dimse)  # type: ignore[operator]
            seg["handler"].append(h1 - h0)  # type: ignore[operator]
            seg["handler -> response sent"].append(ts - h1)  # type: ignore[operator]
            first_in = h1 = None
            last_out = ts
    return seg


def _p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    configure_logging("info", "json", stream=open(os.devnull, "w"))  # noqa: SIM115

    timed(handlers, "read_header", "read header")
    timed(handlers, "record_instance", "record row (flush)")
    timed(InstanceStore, "stage", "stage (queue write+fsync+hash)")
    timed(StagedFile, "wait_durable", "wait for write+fsync")
    timed(InstanceStore, "publish", "publish (rename, dir fsync)")
    timed(Session, "commit", "commit")
    original = handlers.NodeHandlers.on_store

    def on_store(self: Any, event: Any) -> int:
        EVENTS.append(("handler_start", time.perf_counter()))
        try:
            return original(self, event)
        finally:
            EVENTS.append(("handler_end", time.perf_counter()))

    handlers.NodeHandlers.on_store = on_store  # type: ignore[method-assign]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = work / "images"
        write_series(ct_series(args.images, rows=args.size, columns=args.size), images)
        engine = make_engine(f"sqlite:///{work / 'agent.db'}")
        upgrade(engine, alembic_dir())
        store = InstanceStore(work / "storage", 0)
        store.prepare()
        node_handlers = handlers.NodeHandlers(store, make_session_factory(engine))
        bindings = node_handlers.bindings()
        node_handlers.bindings = lambda: [  # type: ignore[method-assign]
            *bindings,
            (evt.EVT_PDU_RECV, mark("pdu_in")),
            (evt.EVT_PDU_SENT, mark("pdu_out")),
            (evt.EVT_DIMSE_RECV, mark("dimse_in")),
        ]
        node = start_node(NodeSettings(host="127.0.0.1", port=0), node_handlers)
        started = time.perf_counter()
        subprocess.run(
            [
                "/usr/bin/storescu",
                "-aec",
                "HYPERCT",
                "+sd",
                "127.0.0.1",
                str(node.port),
                str(images),
            ],
            check=True,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        elapsed = time.perf_counter() - started
        node.stop()
        store.close()
    segments = {
        **transport_segments(),
        **{f"  {k}": v for k, v in STAGES.items()},
    }
    print(f"images/s (instrumented): {args.images / elapsed:.1f}")
    print(f"{'per image, ms':45s} {'median':>8s} {'mean':>8s} {'p95':>8s}")
    for name, values in segments.items():
        row = (statistics.median(values), statistics.fmean(values), _p95(values))
        print(f"{name:45s} " + " ".join(f"{1e3 * x:8.3f}" for x in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
