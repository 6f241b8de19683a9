"""``hyperct-agent jobs list|retry|requeue``: the work queue, by hand."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent.commands import args as args_
from agent.errors import AgentError


def register(sub: Any) -> None:
    p = sub.add_parser("jobs", help="list, retry or requeue screening jobs")
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    jsub.required = True

    ls = jsub.add_parser("list", help="jobs with their state and reason")
    ls.add_argument(
        "--state", type=args_.job_state, action="append", help="only this state (repeatable)"
    )
    ls.add_argument("--limit", type=args_.limit, default=50)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=run_list)

    retry = jsub.add_parser("retry", help="queue failed or dead jobs again (attempts reset)")
    retry.add_argument(
        "jobs",
        nargs="*",
        type=args_.job_ref,
        help="job ids or series UIDs (default: every dead job)",
    )
    retry.set_defaults(func=run_retry)

    requeue = jsub.add_parser(
        "requeue", help="screen a series again whatever its state (skipped, done, ...)"
    )
    requeue.add_argument("jobs", nargs="+", type=args_.job_ref, help="job ids or series UIDs")
    requeue.set_defaults(func=run_requeue)

    for parser in (ls, retry, requeue):
        parser.add_argument(
            "--config", type=args_.path, help="agent.toml (default: embedded defaults)"
        )


def run_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from agent.runtime import open_runtime
    from storage.models import Job, Series

    states = list(args.state or [])
    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions() as session:
            stmt = select(Job, Series).join(Series, Job.series_id == Series.id)
            if states:
                stmt = stmt.where(Job.state.in_(states))
            rows = session.execute(stmt.order_by(Job.id.desc()).limit(args.limit)).all()
            listed = [_row(job, series) for job, series in rows]
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    if not listed:
        print("no jobs" + (f" in state {', '.join(s.value for s in states)}" if states else ""))
        return 0
    print(f"{'job':>5}  {'state':<10} {'series':<34} {'inst':>5} {'tries':>5}  reason")
    for r in listed:
        print(
            f"{r['job']:>5}  {r['state']:<10} {r['series'][:34]:<34} {r['instances']:>5} "
            f"{r['attempts']:>5}  {r['last_error'] or r['reason'] or ''}"
        )
    return 0


def _row(job: Any, series: Any) -> dict[str, Any]:
    label = f"{series.series_number or '?'} {series.series_description or ''}".strip()
    return {
        "job": job.id,
        "state": str(job.state),
        "series": label,
        "series_instance_uid": series.series_instance_uid,
        "instances": series.instance_count,
        "attempts": job.attempts,
        "reason": job.reason,
        "last_error": job.last_error,
        "echo_referral": job.echo_referral,
        "updated_at": job.updated_at.isoformat() if job.updated_at else None,
    }


def _find(session: Any, ref: int | str) -> Any:
    """The job ``ref`` names: an id (checked by :func:`args_.job_ref`) or a series UID."""
    from sqlalchemy import select

    from storage.models import Job, Series

    if isinstance(ref, int):
        job = session.get(Job, ref)
    else:
        job = session.scalars(
            select(Job)
            .join(Series, Job.series_id == Series.id)
            .where(Series.series_instance_uid == ref)
        ).one_or_none()
    if job is None:
        raise AgentError(f"no job {ref!r} (give a job id or a series instance UID)")
    return job


def run_retry(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from agent.runtime import open_runtime
    from storage.audit import audit
    from storage.models import Job, JobState
    from storage.queue import requeue_job

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions.begin() as session:
            if args.jobs:
                jobs = [_find(session, ref) for ref in args.jobs]
                wrong = [j for j in jobs if j.state not in (JobState.FAILED, JobState.DEAD)]
                if wrong:
                    raise AgentError(
                        f"job {wrong[0].id} is {wrong[0].state}, not failed or dead "
                        "(use 'jobs requeue' to screen it again)"
                    )
            else:
                jobs = list(session.scalars(select(Job).where(Job.state == JobState.DEAD)))
            for job in jobs:
                requeue_job(session, job)
                audit(session, "admin", "job_retry", detail={"job": job.id})
            count = len(jobs)
    finally:
        runtime.close()
    print(f"{count} job(s) queued again")
    return 0


def run_requeue(args: argparse.Namespace) -> int:
    from agent.runtime import open_runtime
    from storage.audit import audit
    from storage.models import JobState
    from storage.queue import JOBS, requeue_job

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions.begin() as session:
            jobs = [_find(session, ref) for ref in args.jobs]
            # A running job whose lease lapsed has no live worker: it may be queued again.
            lease = runtime.settings.pipeline.lease_seconds
            busy = [j for j in jobs if j.state in (JobState.RUNNING, JobState.RECEIVING)]
            busy = [j for j in busy if not JOBS.lease_lapsed(j, lease)]
            if busy:
                raise AgentError(f"job {busy[0].id} is {busy[0].state}; wait for it to settle")
            for job in jobs:
                requeue_job(session, job)
                job.reason = "requeued by an administrator"
                audit(session, "admin", "job_requeue", detail={"job": job.id})
    finally:
        runtime.close()
    print(f"{len(jobs)} job(s) queued")
    return 0
