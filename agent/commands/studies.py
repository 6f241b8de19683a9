"""``hyperct-agent studies show UID``: the whole trail of one study."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.commands import args as args_
from agent.errors import AgentError


def register(sub: Any) -> None:
    p = sub.add_parser("studies", help="what happened to a study, step by step")
    ssub = p.add_subparsers(dest="studies_command", metavar="ACTION")
    ssub.required = True
    show = ssub.add_parser(
        "show",
        help="received, decisions, inference, probabilities, reports, deliveries, audit",
        description="Patient name, ID and birth date are not shown unless --show-patient is "
        "given; they are read from the stored DICOM file, never from the database.",
    )
    show.add_argument("uid", type=args_.uid, help="Study Instance UID")
    show.add_argument(
        "--show-patient",
        action="store_true",
        help="also show patient name, ID and birth date (read from the stored DICOM header)",
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument(
        "--config", type=args_.path, help="agent.toml (default: the embedded defaults)"
    )
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from agent.runtime import open_runtime
    from storage.audit import audit
    from storage.db import make_session_factory
    from storage.results import study_trail

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    patient = None
    try:
        with make_session_factory(runtime.engine, read_only=True)() as session:
            trail = study_trail(session, args.uid)
        if trail is None:
            raise AgentError(f"no study {args.uid!r} in the database")
        if args.show_patient:
            patient = patient_header(trail, runtime.settings.storage.root)
            # Who looked at patient data is worth an audit row (the data itself is not in it).
            with runtime.sessions.begin() as session:
                audit(session, "admin", "patient_data_shown", study_instance_uid=args.uid)
    finally:
        runtime.close()
    if args.json:
        data = asdict(trail)
        if patient is not None:
            data["patient"] = patient
        print(json.dumps(data, indent=2, default=_json_default))
        return 0
    print("\n".join(format_trail(trail, patient)))
    return 0


def patient_header(trail: Any, root: Path) -> dict[str, str]:
    """Patient Name, ID and Birth Date (PS3.3 C.7.1.1) from the first stored instance."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    rel = next((s.first_instance_path for s in trail.series if s.first_instance_path), None)
    if rel is None:
        raise AgentError("no stored instance of this study to read the patient from")
    path = root / rel
    try:
        ds = dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["PatientName", "PatientID", "PatientBirthDate"],
        )
    except (OSError, InvalidDicomError) as exc:
        raise AgentError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return {
        "name": str(ds.get("PatientName", "") or ""),
        "id": str(ds.get("PatientID", "") or ""),
        "birth_date": str(ds.get("PatientBirthDate", "") or ""),
    }


def format_trail(trail: Any, patient: dict[str, str] | None = None) -> list[str]:
    t = _t
    lines = [f"study {trail.study_instance_uid}"]
    if patient is not None:
        lines.append(
            f"  patient: {patient['name'] or '(empty)'}  id {patient['id'] or '(empty)'}"
            f"  born {patient['birth_date'] or '(empty)'}"
        )
    lines.append(f"  date {trail.study_date or '-'}  description {trail.study_description or '-'}")
    lines.append(f"  first seen {t(trail.created_at)}  last change {t(trail.updated_at)}")
    lines.append(f"  echo referral: {'YES' if trail.echo_referral else 'no'}")
    for s in trail.series:
        label = f"{s.series_number if s.series_number is not None else '?'}"
        label += f" {s.series_description}" if s.series_description else ""
        lines += ["", f"series {label}  ({s.modality or '?'})  {s.series_instance_uid}"]
        lines.append(
            f"  received {s.instances} instance(s) {t(s.first_received_at)} .. "
            f"{t(s.last_received_at)} from {', '.join(s.calling_aes) or '-'}"
        )
        if s.job_id is None:
            lines.append("  no job yet")
            continue
        lines.append(f"  job {s.job_id}: {s.state}  attempts {s.attempts}")
        if s.reason:
            lines.append(f"  decision: {s.reason}")
        if s.image_check:
            lines.append(f"  image check: {s.image_check}")
        if s.last_error:
            retry = f" (next try {t(s.next_attempt_at)})" if s.next_attempt_at else ""
            lines.append(f"  error: {s.last_error}{retry}")
        if s.screened_at:
            lines.append(
                f"  screened {t(s.screened_at)} by model {s.model_version} (revision {s.revision})"
            )
            fired = ", ".join(s.referral_tasks) or "none"
            lines.append(
                f"  echo referral: {'YES' if s.echo_referral else 'no'} (fired by {fired})"
            )
            if s.referral_id is not None:
                lines.append(f"  referral {s.referral_id}{_repeat(s.referral_repeat)}")
            if s.referral_rule:  # as decided at screening, whatever the rule is now
                lines.append(f"  referral rule: {', '.join(s.referral_rule)}")
        if s.results:
            lines.append("  probabilities:")
            for r in s.results:
                mark = "FLAG" if r.flagged else ""
                lines.append(f"    {r.index:>2} {r.task:<40} {r.probability:6.3f} {mark}")
        for rep in s.reports:
            sent = f" sent {t(rep.sent_at)}" if rep.sent_at else ""
            err = f" error: {rep.last_error}" if rep.last_error else ""
            lines.append(
                f"  report {rep.kind} -> {rep.destination}: {rep.state}, attempts {rep.attempts}"
                f"{sent}{err}"
            )
    if trail.audit:
        lines += ["", "audit"]
        for a in trail.audit_runs:
            detail = f" {json.dumps(a.detail, sort_keys=True)}" if a.detail else ""
            ae = f" {a.source_ae}" if a.source_ae else ""
            times = t(a.first_at) + (f" .. {t(a.last_at)} ({a.count}x)" if a.count > 1 else "")
            lines.append(f"  {times} {a.event_type} {a.outcome}{ae}{detail}")
    return lines


def _t(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _repeat(repeat: dict[str, Any]) -> str:
    """How a screening stands in its patient's episode, as stored at screening."""
    if not repeat.get("of"):
        return " (raised by this screening)"
    from agent.report.referral import readable_date

    day = readable_date(repeat["of"])
    if repeat.get("mode") == "suppress":
        return f": echo already recommended on {day}, not recommended again"
    return f": echo previously recommended on {day}"
