"""Latency from the last image received to the SR accepted by the destination, by stage.

Runs ``hyperct-agent serve`` (SQLite, local storage) with a local receiving
node as the destination, sends synthetic chest CT phantoms with pynetdicom,
and splits each study's latency using the database and the agent's JSON log:

- completeness wait: last image received -> series decided (the idle timer);
- queue: decided -> its batch started (claim, waiting for a previous batch);
- read + preprocess, inference: per batch, from the log;
- report building: per series, from the log;
- sending: series screened -> last report accepted by the destination.

    .venv/bin/python bench/bench_pipeline.py [--studies 1 4] [--checkpoint PATH]

Without ``--checkpoint`` a small random model (64 wide, 2 blocks) is used, so
the non-model stages are measured against a fast inference; pass a full-size
checkpoint to see the real proportions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom import dcmread  # noqa: E402
from pynetdicom import AE, AllStoragePresentationContexts, evt  # noqa: E402
from sqlalchemy import create_engine, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from storage.models import Job, Series  # noqa: E402
from tests.agent.pipeline_env import Serve, agent_config, chest_series, tiny_checkpoint  # noqa: E402

#: What each study sends back: TID 1500 SR, text SR and the summary image.
OBJECTS_PER_STUDY = 3


def ts(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def run_burst(n: int, checkpoint: Path, work: Path, idle: float) -> list[dict[str, float]]:
    accepted: dict[str, float] = {}
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        with lock:
            accepted[str(event.request.AffectedSOPInstanceUID)] = time.time()
        return 0

    pacs = AE("BENCHPACS")
    pacs.supported_contexts = AllStoragePresentationContexts
    server = pacs.start_server(("127.0.0.1", 0), block=False,
                               evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    config = agent_config(
        work, checkpoint, [("pacs", "BENCHPACS", "127.0.0.1", server.server_address[1])],
        extra=f"[completeness]\nidle_seconds = {idle}\nforce_seconds = 30.0\n",
    )  # fmt: skip
    config.write_text(config.read_text().replace(
        "[completeness]\nidle_seconds = 1.0\nforce_seconds = 4.0\n", "", 1))  # fmt: skip
    config.write_text(config.read_text().replace('level = "debug"', 'level = "info"'))
    studies = [chest_series(work / f"study{i}", seed=100 + i) for i in range(n)]
    serve = Serve(config)
    try:
        # Let the model load first: its start-up is not part of a study's latency.
        deadline = time.monotonic() + 600
        while not serve.events("model loaded") and time.monotonic() < deadline:
            time.sleep(0.2)
        scu = AE("MODALITY")
        scu.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
        datasets = [[dcmread(p) for p in files] for files in studies]
        for series in datasets:
            assoc = scu.associate("127.0.0.1", serve.port, ae_title="HYPERCT")
            for ds in series:
                assoc.send_c_store(ds)
            assoc.release()
        deadline = time.monotonic() + 1800
        while len(accepted) < OBJECTS_PER_STUDY * n and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        serve.stop()
        server.shutdown()
    if len(accepted) < OBJECTS_PER_STUDY * n:
        raise SystemExit("timed out waiting for the reports:\n" + "".join(serve.lines[-30:]))

    engine = create_engine(f"sqlite:///{work / 'agent.db'}")
    with Session(engine) as s:
        rows = s.execute(select(Job.id, Series.last_received_at).join(Series)).all()
    engine.dispose()
    decided = {e["job"]: ts(e) for e in serve.events("series decided")}
    screened = {e["job"]: e for e in serve.events("series screened")}
    batches = serve.events("batch screened")
    delivered = [e for e in serve.events("report delivered")]
    out = []
    for job_id, last_received in rows:
        s_evt = screened[job_id]
        # the batch that screened this job ended at or after its "series screened" line
        batch = min((b for b in batches if ts(b) >= ts(s_evt) - 1e-3), key=ts)
        batch_end = ts(batch)
        batch_start = batch_end - batch["read_seconds"] - batch["inference_seconds"] - sum(
            e.get("report_seconds", 0) for e in screened.values() if abs(ts(e) - batch_end) < 60
            and ts(e) <= batch_end)  # fmt: skip
        reports_done = max(ts(d) for d in delivered if d["report"] in _report_ids(work, job_id))
        total = reports_done - last_received.timestamp()
        out.append({
            "total": total,
            "completeness wait": decided[job_id] - last_received.timestamp(),
            "queue": max(0.0, batch_start - decided[job_id]),
            "read + preprocess": batch["read_seconds"] / batch["jobs"],
            "inference": batch["inference_seconds"] / batch["jobs"],
            "report building": s_evt.get("report_seconds", 0.0),
            "sending": reports_done - ts(s_evt),
        })  # fmt: skip
    return out


def _report_ids(work: Path, job_id: int) -> set[int]:
    from storage.models import Report

    engine = create_engine(f"sqlite:///{work / 'agent.db'}")
    with Session(engine) as s:
        ids = set(s.scalars(select(Report.id).where(Report.job_id == job_id)))
    engine.dispose()
    return ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, nargs="+", default=[1, 4],
                        help="burst sizes to run (each a fresh agent)")  # fmt: skip
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--idle", type=float, default=2.0, help="[completeness] idle_seconds")
    args = parser.parse_args()
    report: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "idle_seconds": args.idle,
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or tiny_checkpoint(Path(tmp))
        report["checkpoint"] = "small random (64 wide, 2 blocks)" if not args.checkpoint else str(
            args.checkpoint)  # fmt: skip
        for n in args.studies:
            work = Path(tmp) / f"burst{n}"
            work.mkdir()
            rows = run_burst(n, checkpoint, work, args.idle)
            stages = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
            other = sum(v for k, v in stages.items()
                        if k not in ("total", "completeness wait", "inference"))  # fmt: skip
            report[f"{n} studies (median per study, s)"] = stages
            report[f"{n} studies: share of total outside completeness wait and inference"] = round(
                other / stages["total"], 3)  # fmt: skip
            print(json.dumps({f"{n} studies": stages}), flush=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
