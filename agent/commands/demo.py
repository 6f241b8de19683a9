"""``hyperct-agent demo``: the whole job on one machine, for a newcomer.

Starts an agent on loopback with a temporary configuration, a local node
standing in for PACS, generates a synthetic chest CT study (:data:`DEMO_PHANTOM`),
sends it as PACS would, waits for the reports to come back, and prints the
findings and where every file is.

The phantom is drawn like the demo model's training phantoms (findings in the
ranges :func:`hyperct_core.phantoms.random_spec` draws, the same 320 mm extent),
at the phantoms' default geometry, which a default ``serve`` screens. Its
findings are the ones the bundled demo model reports Present for it, so what
the demo announces and what the report says agree. It carries no pacemaker: the
demo model has no validated operating point for medical material (its AUC is at
chance), so the report could only say "not assessed" for it.
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

from agent.commands import args as args_
from agent.errors import AgentError

PACS_AET = "DEMOPACS"
#: What the demo sends: an enlarged heart, bilateral pleural effusions and a
#: consolidation (anatomy seed 40, noise seed 7), at the phantoms' default geometry.
DEMO_PHANTOM_FINDINGS: dict[str, Any] = {
    "heart_scale": 1.4,
    "pleural_mm": 35.0,
    "consolidations": 1,
    "seed": 40,
}
DEMO_NOISE_SEED = 7
#: Objects each screened series sends back: TID 1500 SR, text SR, summary image.
EXPECTED_OBJECTS = 3


def demo_phantom() -> Any:
    """The demo study's :class:`~hyperct_core.phantoms.PhantomSpec`."""
    from hyperct_core.phantoms import PhantomSpec

    return PhantomSpec(**DEMO_PHANTOM_FINDINGS)


def announced_findings() -> list[str]:
    """Display names of the phantom's findings, in task order (what the demo announces)."""
    from hyperct_core.phantoms import labels
    from hyperct_core.tasks import task_by_name

    return [task_by_name(t).display_name for t, v in labels(demo_phantom()).items() if v == 1]


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="screen a synthetic chest CT end to end on this machine")
    p.add_argument(
        "--workdir", type=args_.path, help="where to put everything (default: a new temp dir)"
    )
    p.add_argument(
        "--timeout", type=args_.seconds, default=600.0, help="seconds to wait for the reports"
    )
    p.set_defaults(func=run)


def say(message: str) -> None:
    print(message, flush=True)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from pydicom import dcmread
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]  # generated at import

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
    assert pacs_server is not None  # block=False always returns the server
    config = work / "agent.toml"
    config.write_text(
        '[node]\nport = 0\n[storage]\nroot = "storage"\nmin_free_bytes = 0\n'
        '[database]\nurl = "sqlite:///agent.db"\n'
        "[completeness]\nidle_seconds = 2.0\nforce_seconds = 10.0\n"
        "[pipeline]\nsweep_seconds = 1.0\n"
        # float32 on any device: bfloat16 could move a demo probability across its threshold.
        '[model]\ndtype = "float32"\n'
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

        say("generating a synthetic chest CT phantom with these findings: "
            + ", ".join(announced_findings()) + " ...")  # fmt: skip
        files = phantoms.write_dicom_series(
            demo_phantom(), work / "study", rng=np.random.default_rng(DEMO_NOISE_SEED),
            patient_name="DEMO^PHANTOM", patient_id="DEMO0001",
        )  # fmt: skip
        thickness = phantoms.DEFAULT_SPACING[0]
        say(f"  ({len(files)} axial slices of {thickness:g} mm, non-contrast)")
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
        while len(received) < EXPECTED_OBJECTS:
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
    _print_model()
    _print_findings(work / "agent.db", received)
    say(f"\nreports received by {PACS_AET}: " + ", ".join(str(p) for p in received))
    summary = _summary_png(received, work / "summary.png")
    if summary is not None:
        say(f"summary image (as a viewer shows it): {summary}")
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


_DETAILS = ("state", "reason", "inference_seconds", "name", "version")


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


def _print_model() -> None:
    """The bundled demo model (the demo's configuration names no checkpoint) and its training."""
    from hyperct_core.checkpoint import read_card
    from hyperct_core.demo import demo_checkpoint_path

    card = read_card(demo_checkpoint_path())
    recipe = card.extra.get("demo_recipe", {})
    say(f"\nmodel: {card.name} {card.version}, DEMO (not for clinical use); trained only on "
        f"{recipe.get('phantoms', 'synthetic')} synthetic phantoms "
        "(rebuild: hyperct-agent model make-demo)")  # fmt: skip


def _summary_png(received: list[Path], out: Path) -> Path | None:
    """A PNG copy of the summary image PACS received, for opening without a DICOM viewer."""
    from PIL import Image
    from pydicom import dcmread

    for path in received:
        ds = dcmread(path)
        if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7":  # Secondary Capture Image
            Image.fromarray(ds.pixel_array).save(out)
            return out
    return None


def _print_findings(db_path: Path, received: list[Path]) -> None:
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from agent.report.inputs import operating_points
    from hyperct_core.checkpoint import read_card
    from hyperct_core.demo import demo_checkpoint_path
    from hyperct_core.tasks import task_by_name
    from storage.models import Job, Result

    engine = create_engine(f"sqlite:///{db_path}")
    with Session(engine) as session:
        job = session.scalars(select(Job)).one()
        results = session.scalars(select(Result).order_by(Result.task_index)).all()
    engine.dispose()
    # As the reports say it: a task without an operating point is not assessed, never absent.
    assessed = operating_points(read_card(demo_checkpoint_path()))
    say("\nfindings:")
    say(f"  {'finding':<44} {'group':<14} {'probability':>11}  at threshold")
    for r in results:
        task = task_by_name(r.task_name)
        flag = "PRESENT" if r.flagged else "absent" if r.task_name in assessed else "not assessed"
        group = "echo-derived" if task.group == "opportunistic" else "conventional"
        say(f"  {task.display_name[:44]:<44} {group:<14} {r.probability:>11.3f}  {flag}")
    if job.echo_referral:
        say("\nRECOMMENDATION: transthoracic echocardiography; triggered by "
            + ", ".join(job.referral_tasks or []))  # fmt: skip
    else:
        say("\nno echocardiography referral: no echocardiography-derived cardiac condition "
            "at or above its threshold")  # fmt: skip
