"""``hyperct-agent demo``: the whole job on one machine, for a newcomer.

Starts an agent on loopback with a temporary configuration, a local node
standing in for PACS, generates a synthetic chest CT study (a phantom with an
enlarged heart and a pleural effusion), sends it as PACS would, waits for the
reports to come back, and prints the findings and where every file is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.errors import AgentError

PACS_AET = "DEMOPACS"


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="screen a synthetic chest CT end to end on this machine")
    p.add_argument("--workdir", type=Path, help="where to put everything (default: a new temp dir)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the reports")
    p.set_defaults(func=run)


def say(message: str) -> None:
    print(message, flush=True)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from pydicom import dcmread
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import CTImageStorage

    from agent.logs import quiet_pynetdicom
    from hyperct_core import phantoms

    quiet_pynetdicom()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hyperct-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    received_dir = work / "pacs-received"
    received_dir.mkdir(exist_ok=True)
    say(f"working in {work}")

    received: list[Path] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = received_dir / f"report-{len(received) + 1}.dcm"
        ds.save_as(path, enforce_file_format=True)
        received.append(path)
        return 0

    pacs = AE(PACS_AET)
    pacs.supported_contexts = AllStoragePresentationContexts
    pacs_server = pacs.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    config = work / "agent.toml"
    config.write_text(
        '[node]\nport = 0\n[storage]\nroot = "storage"\nmin_free_bytes = 0\n'
        '[database]\nurl = "sqlite:///agent.db"\n'
        "[completeness]\nidle_seconds = 2.0\nforce_seconds = 10.0\n"
        "[pipeline]\nsweep_seconds = 1.0\n"
        '[logging]\nformat = "json"\n'
        f'[[destinations]]\nname = "demo-pacs"\nae_title = "{PACS_AET}"\n'
        f'host = "127.0.0.1"\nport = {pacs_server.server_address[1]}\n'
    )
    say(f"local PACS stand-in {PACS_AET} listening on 127.0.0.1:{pacs_server.server_address[1]}")

    log_path = work / "agent.log"
    log_file = log_path.open("w")
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve", "--config", str(config)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = _agent_port(agent, log_file)
        threading.Thread(target=_copy, args=(agent.stderr, log_file), daemon=True).start()
        say(f"agent HYPERCT listening on 127.0.0.1:{port} (log: {log_path})")

        spec = phantoms.PhantomSpec(heart_scale=1.35, pleural_mm=18.0)
        say("generating a synthetic chest CT (enlarged heart, pleural effusion) ...")
        files = phantoms.write_dicom_series(
            spec, work / "study", rng=np.random.default_rng(7), spacing=(2.5, 2.5, 2.5),
            shape=(128, 128, 128), patient_name="DEMO^PHANTOM", patient_id="DEMO0001",
        )  # fmt: skip
        say(f"sending {len(files)} images to the agent as PACS would ...")
        scu = AE("PACS")
        scu.add_requested_context(CTImageStorage)
        assoc = scu.associate("127.0.0.1", port, ae_title="HYPERCT")
        if not assoc.is_established:
            raise AgentError("the agent refused the association")
        statuses = {int(assoc.send_c_store(dcmread(p)).Status) for p in files}
        assoc.release()
        if statuses != {0}:
            raise AgentError(f"the agent did not store every image (statuses {statuses})")
        say("sent; waiting for the series to complete, the screening and the reports ...")
        deadline = time.monotonic() + args.timeout
        shown = 0
        while len(received) < 2:
            if agent.poll() is not None:
                raise AgentError(f"the agent stopped (exit {agent.returncode}); see {log_path}")
            if time.monotonic() > deadline:
                raise AgentError(f"no reports after {args.timeout:.0f} s; see {log_path}")
            shown = _progress(log_path, shown)
            time.sleep(0.5)
        _progress(log_path, shown)
    finally:
        agent.terminate()
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            agent.kill()
        pacs_server.shutdown()
        log_file.close()
    _print_model(log_path)
    _print_findings(work / "agent.db", received)
    say(f"\nreports received by {PACS_AET}: " + ", ".join(str(p) for p in received))
    say(f"agent database: {work / 'agent.db'}   stored images: {work / 'storage'}")
    return 0


def _agent_port(agent: subprocess.Popen[str], log_file: Any) -> int:
    assert agent.stderr is not None
    for line in agent.stderr:
        log_file.write(line)
        if line.startswith("{") and json.loads(line).get("event") == "node listening":
            return int(json.loads(line)["port"])
    raise AgentError("the agent did not start; run 'hyperct-agent serve' to see why")


def _copy(stream: Any, sink: Any) -> None:
    for line in stream:
        sink.write(line)
        sink.flush()


_SHOWN = {
    "model loaded": "model loaded",
    "series decided": "series decided",
    "batch screened": "series screened",
    "report delivered": "report delivered",
}


_DETAILS = ("state", "reason", "inference_seconds", "name", "version", "training")


def _progress(log_path: Path, shown: int) -> int:
    lines = log_path.read_text().splitlines()
    for line in lines[shown:]:
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        name = event.get("event", "")
        if name in _SHOWN:
            extra = {k: event[k] for k in _DETAILS if k in event}
            say(f"  - {_SHOWN[name]} {json.dumps(extra) if extra else ''}".rstrip())
        elif "DEMO model" in name:
            say("  - note: screening with the bundled DEMO model (not for clinical use)")
    return len(lines)


def _print_model(log_path: Path) -> None:
    for line in log_path.read_text().splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "model loaded":
            event = json.loads(line)
            say(f"\nmodel: {event.get('name')} {event.get('version')}, DEMO (not for clinical "
                f"use); training: {event.get('training') or 'unknown'}")  # fmt: skip
            return


def _print_findings(db_path: Path, received: list[Path]) -> None:
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from hyperct_core.tasks import task_by_name
    from storage.models import Job, Result

    engine = create_engine(f"sqlite:///{db_path}")
    with Session(engine) as session:
        job = session.scalars(select(Job)).one()
        results = session.scalars(select(Result).order_by(Result.task_index)).all()
    engine.dispose()
    say("\nfindings:")
    say(f"  {'finding':<44} {'group':<14} {'probability':>11}  at threshold")
    for r in results:
        task = task_by_name(r.task_name)
        flag = "PRESENT" if r.flagged else "absent"
        say(f"  {task.display_name[:44]:<44} {task.group:<14} {r.probability:>11.3f}  {flag}")
    if job.echo_referral:
        say("\nRECOMMENDATION: transthoracic echocardiography; triggered by "
            + ", ".join(job.referral_tasks or []))  # fmt: skip
    else:
        say("\nno echocardiography referral: no echo-derived finding at its threshold")
