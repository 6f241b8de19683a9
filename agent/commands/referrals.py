"""``hyperct-agent referrals list|show|set-state``: echo referrals, one per patient episode.

A referral is raised when screening recommends an echo for a patient not
referred within ``[referral] repeat_days``; later CTs of the episode link to
it. What became of it (acknowledged, echo done, ...) is set here by hand, and
every change is recorded with the OS user who made it.
"""

from __future__ import annotations

import argparse
import getpass
import json
from datetime import datetime
from typing import Any

from agent.commands import args as args_
from agent.errors import AgentError


def register(sub: Any) -> None:
    p = sub.add_parser("referrals", help="list echo referrals, show one, record what became of it")
    rsub = p.add_subparsers(dest="referrals_command", metavar="ACTION")
    rsub.required = True

    ls = rsub.add_parser("list", help="referrals, newest first, with their state")
    ls.add_argument("--state", type=referral_state, help="only referrals in this state")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=run_list)

    show = rsub.add_parser("show", help="one referral: its CTs and its state history")
    show.add_argument("id", type=referral_id, help="the referral's ID")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=run_show)

    st = rsub.add_parser("set-state", help="record what became of a referral (audited)")
    st.add_argument("id", type=referral_id, help="the referral's ID")
    st.add_argument("state", type=referral_state, help=f"one of: {', '.join(_states())}")
    st.add_argument("--note", help="why, or what was done (kept with the change)")
    st.set_defaults(func=run_set_state)

    for parser in (ls, show, st):
        parser.add_argument(
            "--config", type=args_.path, help="agent.toml (default: embedded defaults)"
        )


def _states() -> list[str]:
    from storage.models import ReferralState

    return [s.value for s in ReferralState]


def referral_state(text: str) -> Any:
    """A referral state (``new``, ``acknowledged``, ``echo_done``, ...)."""
    from storage.models import ReferralState

    try:
        return ReferralState(text)
    except ValueError:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise argparse.ArgumentTypeError(
            f"unknown referral state {shown!r} (one of: {', '.join(_states())})"
        ) from None


def referral_id(text: str) -> int:
    """A referral ID: a positive integer."""
    if not text.isdigit() or not 0 < int(text) < 2**63:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise argparse.ArgumentTypeError(f"not a referral ID: {shown!r}")
    return int(text)


def os_user() -> str:
    """Who is changing a referral: the OS user running the command."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        return "unknown"


def run_list(args: argparse.Namespace) -> int:
    from agent.runtime import open_runtime
    from storage.referrals import list_referrals, referred_on

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions() as session:
            listed: list[dict[str, Any]] = [
                {
                    "id": r.id,
                    "state": r.state.value,
                    "referred_on": referred_on(r),
                    "cts": n,
                    "tasks": list(r.tasks or []),
                    "patient": r.patient_pseudonym,
                    "job": r.job_id,
                    "updated_at": r.updated_at.isoformat(),
                }
                for r, n in list_referrals(session, args.state)
            ]
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    if not listed:
        print("no referrals" + (f" in state {args.state.value}" if args.state else ""))
        return 0
    print(f"{'id':>5}  {'state':<14} {'referred':<10} {'CTs':>3}  {'patient':<12} findings")
    for r in listed:
        patient = (r["patient"] or "-")[:12]
        print(
            f"{r['id']:>5}  {r['state']:<14} {_day(r['referred_on']):<10} {r['cts']:>3}  "
            f"{patient:<12} {', '.join(r['tasks']) or '-'}"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    from agent.runtime import open_runtime
    from storage.referrals import UnknownReferral, referral_view, referred_on

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions() as session:
            try:
                view = referral_view(session, args.id)
            except UnknownReferral as exc:
                raise AgentError(str(exc)) from None
            r = view.referral
            shown: dict[str, Any] = {
                "id": r.id,
                "state": r.state.value,
                "referred_on": referred_on(r),
                "referred_at": r.referred_at.isoformat(),
                "patient": r.patient_pseudonym,
                "tasks": list(r.tasks or []),
                "raised_by_job": r.job_id,
                "cts": [
                    {
                        "job": c.job_id,
                        "study_instance_uid": c.study_instance_uid,
                        "series_instance_uid": c.series_instance_uid,
                        "study_date": c.study_date,
                        "repeat": c.repeat,
                    }
                    for c in view.cts
                ],
                "history": [
                    {
                        "at": e.occurred_at.isoformat(),
                        "from": e.from_state,
                        "to": e.to_state,
                        "actor": e.actor,
                        "note": e.note,
                    }
                    for e in view.events
                ],
            }
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    print(f"referral {shown['id']}: {shown['state']}")
    print(f"  referred on {_day(shown['referred_on'])} (raised {_time(shown['referred_at'])})")
    print(f"  patient {shown['patient'] or '- (no patient ID: this CT alone)'}")
    print(f"  findings: {', '.join(shown['tasks']) or '-'}")
    print(f"  CTs ({len(shown['cts'])}):")
    for c in shown["cts"]:
        kind = "repeat" if c["repeat"] else "raised it"
        print(
            f"    job {c['job']:>5}  {_day(c['study_date'])}  {kind:<9}  {c['study_instance_uid']}"
        )
    print("  history:")
    for e in shown["history"]:
        change = f"{e['from']} -> {e['to']}" if e["from"] else e["to"]
        note = f"  ({e['note']})" if e["note"] else ""
        print(f"    {_time(e['at'])}  {change:<30} by {e['actor']}{note}")
    return 0


def run_set_state(args: argparse.Namespace) -> int:
    from agent.runtime import open_runtime
    from storage.referrals import UnknownReferral, set_referral_state

    actor = os_user()
    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions.begin() as session:
            try:
                event = set_referral_state(
                    session, args.id, args.state, actor=actor, note=args.note
                )
            except UnknownReferral as exc:
                raise AgentError(str(exc)) from None
            before, after = event.from_state, event.to_state
    finally:
        runtime.close()
    print(f"referral {args.id}: {before} -> {after} (by {actor})")
    return 0


def _day(da: str | None) -> str:
    value = (da or "").replace(".", "")
    return f"{value[:4]}-{value[4:6]}-{value[6:]}" if len(value) == 8 else (da or "-")


def _time(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
