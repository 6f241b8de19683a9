"""``hyperct-agent reports resend UID``: deliver a report again."""

from __future__ import annotations

import argparse
from typing import Any

from agent.commands import args as args_
from agent.errors import AgentError


def register(sub: Any) -> None:
    p = sub.add_parser("reports", help="report deliveries")
    rsub = p.add_subparsers(dest="reports_command", metavar="ACTION")
    rsub.required = True
    resend = rsub.add_parser(
        "resend", help="send a report again (by report SOP/series UID or source series UID)"
    )
    resend.add_argument("uid", type=args_.uid)
    resend.add_argument("--destination", type=args_.name, help="only to this destination")
    resend.add_argument("--config", type=args_.path, help="agent.toml (default: embedded defaults)")
    resend.set_defaults(func=run_resend)


def run_resend(args: argparse.Namespace) -> int:
    from sqlalchemy import or_, select

    from agent.runtime import open_runtime
    from storage.audit import audit
    from storage.models import Job, Report, ReportState, Series
    from storage.queue import DELIVERIES

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions.begin() as session:
            source_jobs = (
                select(Job.id)
                .join(Series, Job.series_id == Series.id)
                .where(Series.series_instance_uid == args.uid)
            )
            stmt = select(Report).where(
                or_(
                    Report.sop_instance_uid == args.uid,
                    Report.series_instance_uid == args.uid,
                    Report.job_id.in_(source_jobs),
                )
            )
            if args.destination:
                stmt = stmt.where(Report.destination == args.destination)
            reports = list(session.scalars(stmt))
            if not reports:
                raise AgentError(f"no report for {args.uid!r}")
            # A sending report whose lease lapsed has no live sender: queue it again.
            lease = runtime.settings.pipeline.lease_seconds
            busy = [r for r in reports if r.state == ReportState.SENDING]
            busy = [r for r in busy if not DELIVERIES.lease_lapsed(r, lease)]
            if busy:
                raise AgentError(f"report {busy[0].id} is being sent right now; try again shortly")
            for report in reports:
                DELIVERIES.requeue(session, report)
                audit(
                    session,
                    "admin",
                    "report_resend",
                    sop_instance_uid=report.sop_instance_uid,
                    detail={"destination": report.destination},
                )
            count = len(reports)
    finally:
        runtime.close()
    print(f"{count} report delivery(ies) queued; a running agent sends them within one sweep")
    return 0
