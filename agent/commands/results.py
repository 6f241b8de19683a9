"""``hyperct-agent results``: what was screened, filtered, as a table or an export."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.errors import AgentError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "results",
        help="list screening results (filters; table, CSV or JSON)",
        description="One row per series: its state, echo referral and, once screened, "
        "the probability of every task. No patient data.",
    )
    p.add_argument("--since", type=_when, help="received on/after DATE or ISO time (UTC)")
    p.add_argument("--until", type=_until, help="received before ISO time, or on/before DATE")
    echo = p.add_mutually_exclusive_group()
    echo.add_argument("--echo", dest="echo", action="store_const", const=True,
                      help="only series flagged for echocardiography")  # fmt: skip
    echo.add_argument("--no-echo", dest="echo", action="store_const", const=False,
                      help="only screened series not flagged for echocardiography")  # fmt: skip
    p.add_argument("--task", help="only series where this task is flagged (or above --above)")
    p.add_argument("--above", type=_probability, help="probability greater than this (0-1)")
    p.add_argument("--state", action="append", help="only this job state (repeatable)")
    p.add_argument("--limit", type=int, help="at most this many rows (newest first)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--output", type=Path, help="write to this file instead of standard output")
    p.add_argument("--config", type=Path, help="agent.toml (default: the embedded defaults)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.commands.jobs import _state
    from agent.runtime import open_runtime
    from storage.db import make_session_factory
    from storage.results import ResultFilter, list_results

    if args.task is not None:
        _check_task(args.task)
    flt = ResultFilter(
        since=args.since,
        until=args.until,
        echo=args.echo,
        task=args.task,
        above=args.above,
        states=tuple(_state(s) for s in args.state or []),
        limit=args.limit,
    )
    runtime = open_runtime(args.config, migrate=False)
    try:
        with make_session_factory(runtime.engine, read_only=True)() as session:
            rows = list_results(session, flt)
    finally:
        runtime.close()
    out: Any = sys.stdout
    if args.output is not None:
        try:
            out = args.output.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            raise AgentError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    try:
        _emit(rows, args.format, args.task, out)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _emit(rows: list[Any], fmt: str, task: str | None, out: Any) -> None:
    from storage.results import task_columns, to_record, write_csv

    if fmt == "csv":
        write_csv(rows, out)
        return
    if fmt == "json":
        tasks = task_columns(rows)
        json.dump([to_record(r, tasks) for r in rows], out, indent=2)
        out.write("\n")
        return
    if not rows:
        print("no results match", file=out)
        return
    extra = f" {'p(' + task + ')':>10}" if task else ""
    head = f"{'received (UTC)':<16} {'job':>5} {'state':<10} {'echo':<4}{extra}"
    print(f"{head}  study / series: detail", file=out)
    for r in rows:
        received = r.received_at.strftime("%Y-%m-%d %H:%M") if r.received_at else "-"
        echo = "-" if r.echo_referral is None else ("YES" if r.echo_referral else "no")
        p = ""
        if task:
            value = r.probabilities.get(task)
            p = f" {value:>10.3f}" if value is not None else f" {'-':>10}"
        series = f"{r.series_number if r.series_number is not None else '?'}"
        series += f" {r.series_description}" if r.series_description else ""
        if r.state == "done":
            detail = f"flagged {len(r.flagged_tasks)}: " + (_few(r.flagged_tasks) or "none")
        else:
            detail = r.last_error or r.reason or ""
        print(f"{received:<16} {r.job_id:>5} {r.state:<10} {echo:<4}{p}  {r.study_instance_uid}",
              file=out)  # fmt: skip
        print(f"{'':<16} {'':>5} {'':<10} {'':<4}{' ' * len(p)}  {series}: {detail}", file=out)


def _few(names: list[str], shown: int = 4) -> str:
    # The table is for a glance; --format csv/json carries every task.
    more = f", +{len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _check_task(name: str) -> None:
    from hyperct_core.tasks import TASK_NAMES

    if name not in TASK_NAMES:
        raise AgentError(f"unknown task {name!r} (known: {', '.join(TASK_NAMES)})")


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or ISO time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _until(text: str) -> datetime:
    value = _when(text)
    # A bare date means "through the end of that day".
    if _is_date(text):
        value += timedelta(days=1)
    return value


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) <= 10


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"probability {value} is outside 0-1")
    return value
