"""``hyperct-agent backfill plan|list|show|start|pause|resume|cancel``: archive campaigns."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import date, datetime
from typing import Any

from agent.commands import args as args_
from agent.errors import AgentError

# A campaign's range: a century of days at most (each day is at least one query).
MAX_DAYS = 36600


def day(text: str) -> date:
    """A date as YYYY-MM-DD or YYYYMMDD (DICOM DA)."""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            if text.isascii() and len(text) in (8, 10):
                return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"not a date: {text[:40]!r} (YYYY-MM-DD)")


def regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression: {text!r} ({exc})") from None
    return text


def modality(text: str) -> str:
    """A DICOM Modality (CS: at most 16 upper-case letters, digits, space or underscore)."""
    value = text.strip().upper()
    if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", value):
        raise argparse.ArgumentTypeError(f"not a modality: {text[:40]!r} (e.g. CT)")
    return value


def campaign_name(text: str) -> str:
    if not text or len(text) > 64 or not text.isprintable():
        raise argparse.ArgumentTypeError(f"not a campaign name: {text[:70]!r} (1-64 characters)")
    return text


def register(sub: Any) -> None:
    p = sub.add_parser("backfill", help="screen an archive: plan, start, pause, show campaigns")
    bsub = p.add_subparsers(dest="backfill_command", metavar="ACTION")
    bsub.required = True

    plan = bsub.add_parser(
        "plan", help="query an archive over a date range and plan the eligible series"
    )
    plan.add_argument("archive", type=args_.name, help="an [[archives]] name")
    plan.add_argument(
        "--from", dest="first", type=day, required=True, metavar="DATE", help="first study date"
    )
    plan.add_argument(
        "--to", dest="last", type=day, required=True, metavar="DATE", help="last study date"
    )
    plan.add_argument("--name", type=campaign_name, help="campaign name (default: ARCHIVE-FROM-TO)")
    plan.add_argument(
        "--modality",
        type=modality,
        action="append",
        metavar="MODALITY",
        help="only studies holding this modality (repeatable; default: [eligibility].modalities)",
    )
    plan.add_argument(
        "--study-description",
        type=regex,
        metavar="REGEX",
        help="only studies whose description matches",
    )
    plan.add_argument(
        "--series-description",
        type=regex,
        metavar="REGEX",
        help="only series whose description matches",
    )
    plan.add_argument(
        "--query",
        choices=("auto", "dimse", "dicomweb"),
        default="auto",
        help="C-FIND (dimse) or QIDO-RS (dicomweb); auto: QIDO-RS when the archive has a URL",
    )
    plan.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    plan.set_defaults(func=run_plan)

    ls = bsub.add_parser("list", help="campaigns with their state and progress")
    ls.set_defaults(func=run_list)
    show = bsub.add_parser("show", help="one campaign: series per state, plan summary, ETA")
    show.add_argument("campaign", type=campaign_name, help="campaign name or id")
    show.set_defaults(func=run_show)
    actions = {
        "start": "let retrieval begin (within [backfill].windows)",
        "pause": "stop starting retrieves",
        "resume": "continue a paused campaign",
        "cancel": "end a campaign; its waiting series are cancelled",
    }
    parsers = [plan, ls, show]
    for action, help_ in actions.items():
        ap = bsub.add_parser(action, help=help_)
        ap.add_argument("campaign", type=campaign_name, help="campaign name or id")
        ap.set_defaults(func=run_transition, action=action)
        parsers.append(ap)
    for parser in parsers:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument(
            "--config", type=args_.path, help="agent.toml (default: embedded defaults)"
        )


def _storage_errors() -> type[Exception]:
    from storage.backfill import CampaignError

    return CampaignError


def run_plan(args: argparse.Namespace) -> int:
    from agent.backfill.plan import PlanFilters, plan_campaign
    from agent.runtime import open_runtime
    from storage.backfill import create_campaign

    if args.last < args.first:
        raise AgentError(f"--to {args.last} is before --from {args.first}")
    total = (args.last - args.first).days + 1
    if total > MAX_DAYS:
        raise AgentError(f"{total} days is more than {MAX_DAYS}: plan a shorter range")
    runtime = open_runtime(args.config, migrate=False)
    try:
        settings = runtime.settings
        archive = settings.archive(args.archive)
        finder = _finder(args.query, archive, settings)
        filters = PlanFilters(
            modalities=tuple(args.modality or settings.eligibility.modalities),
            study_description=args.study_description,
            series_description=args.series_description,
        )
        name = args.name or f"{archive.name}-{args.first:%Y%m%d}-{args.last:%Y%m%d}"[:64]
        try:
            with runtime.sessions.begin() as session:
                campaign = create_campaign(
                    session,
                    name=name,
                    archive=archive.name,
                    date_from=f"{args.first:%Y%m%d}",
                    date_to=f"{args.last:%Y%m%d}",
                    filters=filters.as_json(),
                )
                campaign_id = campaign.id
        except _storage_errors() as exc:
            raise AgentError(str(exc)) from None
        bar = _progress_bar(total, name, disable=args.no_progress or args.json)
        try:
            outcome = plan_campaign(
                runtime.sessions,
                campaign_id,
                finder,
                settings.eligibility,
                first=args.first,
                last=args.last,
                filters=filters,
                find_limit=archive.find_limit,
                on_day=lambda _day, _outcome: bar.update(1),
            )
        finally:
            bar.close()
        with runtime.sessions() as session:
            shown = _describe(session, campaign_id)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        _print_campaign(shown)
    if outcome.error is not None:
        raise AgentError(f"planning {name!r} failed: {outcome.error}")
    return 0


def _finder(mode: str, archive: Any, settings: Any) -> Any:
    if mode == "dicomweb" or (mode == "auto" and archive.dicomweb_url):
        from agent.backfill.qido import QidoFind

        if not archive.dicomweb_url:
            raise AgentError(f"archive {archive.name!r} has no dicomweb_url for --query dicomweb")
        return QidoFind(archive, timeout=settings.node.timeouts.network)
    from agent.backfill.query import StudyRootFind

    return StudyRootFind(archive, settings.node)


def _progress_bar(total: int, name: str, *, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"planning {name}", unit="day", file=sys.stderr, disable=disable)


def run_list(args: argparse.Namespace) -> int:
    from agent.runtime import open_runtime
    from storage.backfill import list_campaigns

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions() as session:
            rows = [_describe(session, c.id) for c in list_campaigns(session)]
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no campaigns (plan one with 'backfill plan ARCHIVE --from DATE --to DATE')")
        return 0
    print(f"{'id':>4}  {'name':<28} {'archive':<12} {'dates':<17} {'state':<10} progress")
    for r in rows:
        p = r["progress"]
        print(
            f"{r['id']:>4}  {r['name'][:28]:<28} {r['archive'][:12]:<12} "
            f"{r['from']}-{r['to']} {r['state']:<10} "
            f"{p['done']}/{p['total']} retrieved, {p['failed']} failed, {p['remaining']} to go"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    from agent.runtime import open_runtime
    from storage.backfill import find_campaign

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions() as session:
            try:
                campaign = find_campaign(session, args.campaign)
            except _storage_errors() as exc:
                raise AgentError(str(exc)) from None
            shown = _describe(session, campaign.id)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        _print_campaign(shown)
    return 0


def run_transition(args: argparse.Namespace) -> int:
    from agent.runtime import open_runtime
    from storage import backfill
    from storage.audit import audit

    step = {
        "start": backfill.start_campaign,
        "pause": backfill.pause_campaign,
        "resume": backfill.resume_campaign,
        "cancel": backfill.cancel_campaign,
    }[args.action]
    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions.begin() as session:
            try:
                campaign = backfill.find_campaign(session, args.campaign)
                cancelled = step(session, campaign)
            except _storage_errors() as exc:
                raise AgentError(str(exc)) from None
            audit(
                session,
                "admin",
                f"backfill_{args.action}",
                detail={"campaign": campaign.id, "name": campaign.name},
            )
            name, state = campaign.name, str(campaign.state)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps({"name": name, "state": state, "cancelled_series": cancelled or 0}))
    else:
        extra = f"; {cancelled} waiting series cancelled" if args.action == "cancel" else ""
        print(f"campaign {name!r} is {state}{extra}")
    return 0


def _describe(session: Any, campaign_id: int) -> dict[str, Any]:
    from storage.backfill import eta, progress, retrieve_rate
    from storage.models import BackfillCampaign

    c = session.get(BackfillCampaign, campaign_id)
    p = progress(session, campaign_id)
    rate = retrieve_rate(session, campaign_id)
    when = eta(session, campaign_id) if p.remaining else None
    return {
        "id": c.id,
        "name": c.name,
        "archive": c.archive,
        "from": c.date_from,
        "to": c.date_to,
        "state": str(c.state),
        "filters": c.filters or {},
        "studies_found": c.studies_found,
        "series": p.counts,
        "progress": {
            "done": p.done,
            "failed": p.failed,
            "remaining": p.remaining,
            "total": p.total,
            "series_per_hour": round(rate, 1) if rate is not None else None,
            "eta": when.isoformat() if when is not None else None,
        },
        "plan_summary": c.plan_summary or {},
        "last_error": c.last_error,
        "created_at": c.created_at.isoformat() if c.created_at else None,
        "started_at": c.started_at.isoformat() if c.started_at else None,
        "finished_at": c.finished_at.isoformat() if c.finished_at else None,
    }


def _print_campaign(c: dict[str, Any]) -> None:
    p = c["progress"]
    print(f"campaign {c['name']!r} (id {c['id']}): {c['state']}")
    print(f"  archive {c['archive']}, study dates {c['from']}-{c['to']}")
    if c["filters"]:
        print("  filters: " + ", ".join(f"{k}={v}" for k, v in c["filters"].items()))
    print(f"  studies found: {c['studies_found']}")
    series = ", ".join(f"{n} {s}" for s, n in sorted(c["series"].items())) or "none"
    print(f"  series: {series}")
    print(f"  retrieval: {p['done']} done, {p['failed']} failed, {p['remaining']} remaining")
    if p["series_per_hour"] is not None:
        print(f"  rate: {p['series_per_hour']} series/hour, ETA {p['eta'] or '-'}")
    elif p["remaining"]:
        print("  ETA: unknown (no retrieve rate recorded yet)")
    notes = {k: v for k, v in c["plan_summary"].items() if v}
    if notes:
        print("  plan: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in notes.items()))
    if notes.get("slices_at_limit"):
        print(
            "  warning: some one-second slices still hit the archive's result limit;"
            " studies there may be missing (raise the archive's limit)"
        )
    if c["last_error"]:
        print(f"  error: {c['last_error']}")
