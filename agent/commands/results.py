"""``hyperct-agent results``: what was screened, filtered, as a table or an export."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from agent.commands import args as args_
from agent.errors import AgentError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "results",
        help="list screening results (filters; table, CSV or JSON)",
        description="One row per series: its state, echo referral and, once screened, "
        "the probability of every task. No patient data.",
    )
    p.add_argument(
        "--since",
        type=args_.since,
        help=f"received on/after DATE or ISO time (UTC; {args_.DATE_RANGE})",
    )
    p.add_argument("--until", type=args_.until, help="received before ISO time, or on/before DATE")
    echo = p.add_mutually_exclusive_group()
    echo.add_argument("--echo", dest="echo", action="store_const", const=True,
                      help="only series flagged for echocardiography")  # fmt: skip
    echo.add_argument("--no-echo", dest="echo", action="store_const", const=False,
                      help="only screened series not flagged for echocardiography")  # fmt: skip
    p.add_argument("--task", type=args_.task,
                   help="only series where this task is flagged (or above --above)")  # fmt: skip
    p.add_argument("--above", type=args_.probability, help="probability greater than this (0-1)")
    p.add_argument("--state", type=args_.job_state, action="append",
                   help="only this job state (repeatable)")  # fmt: skip
    p.add_argument("--limit", type=args_.limit, help="at most this many rows (newest first)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--output", type=args_.path,
                   help="write to this file instead of standard output")  # fmt: skip
    p.add_argument("--config", type=args_.path,
                   help="agent.toml (default: the embedded defaults)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.runtime import open_runtime
    from storage.db import make_session_factory
    from storage.results import ResultFilter, list_results

    if args.since is not None and args.until is not None and args.since >= args.until:
        raise AgentError(f"--since {args.since:%Y-%m-%d %H:%M} is not before --until")
    flt = ResultFilter(
        since=args.since,
        until=args.until,
        echo=args.echo,
        task=args.task,
        above=args.above,
        states=tuple(args.state or ()),
        limit=args.limit,
    )
    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with make_session_factory(runtime.engine, read_only=True)() as session:
            rows = list_results(session, flt)
    finally:
        runtime.close()
    if args.output is None:
        _emit(rows, args.format, args.task, sys.stdout)
    else:
        write_output(args.output, lambda out: _emit(rows, args.format, args.task, out))
    return 0


def write_output(path: Path, write: Callable[[TextIO], None]) -> None:
    """Write a whole export to ``path``, or fail in one line leaving no partial file.

    A regular file (or a new one) is written beside itself under a temporary
    name and renamed into place once complete, so a full disk leaves the old
    file, or none. A device or pipe (``/dev/stdout``, a FIFO) is written directly.
    """
    try:
        regular = not path.exists() or path.is_file()
        final = path.resolve() if regular else path  # through a symbolic link, not over it
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop
        raise AgentError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
    target = final.with_name(f".{final.name}.{os.getpid()}.tmp") if regular else path
    try:
        with target.open("w", encoding="utf-8", newline="") as out:
            write(out)
        if regular:
            os.replace(target, final)
    except OSError as exc:
        if regular:
            target.unlink(missing_ok=True)
        raise AgentError(f"cannot write {path}: {exc.strerror or exc}") from None


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
        if r.echo_referral and r.referral_repeat_mode == "suppress":
            echo = "rep"  # recommended before in this episode: not again
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
        if r.echo_referral and r.referral_repeat_of:
            detail += f"; {_repeat_words(r.referral_repeat_of, r.referral_repeat_mode)}"
        print(f"{received:<16} {r.job_id:>5} {r.state:<10} {echo:<4}{p}  {r.study_instance_uid}",
              file=out)  # fmt: skip
        print(f"{'':<16} {'':>5} {'':<10} {'':<4}{' ' * len(p)}  {series}: {detail}", file=out)


def _repeat_words(referred_on: str, mode: str | None) -> str:
    from agent.report.referral import readable_date

    day = readable_date(referred_on)
    if mode == "suppress":
        return f"echo already recommended on {day}: not recommended again"
    return f"echo previously recommended on {day}"


def _few(names: list[str], shown: int = 4) -> str:
    # The table is for a glance; --format csv/json carries every task.
    more = f", +{len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
