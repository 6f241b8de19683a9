"""``hyperct-agent monitor``: live performance and drift of the serving model.

* ``monitor check``: one drift check now (what ``serve`` runs every
  ``[monitor] check_minutes``), stored in ``monitor_checks``; prints one line per check.
* ``monitor report --out DIR [--from DATE --to DATE]``: ``DIR/report.html``, a
  self-contained report of live performance per task and window, referral yield and
  drift; and ``DIR/performance.csv``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.commands import args as args_
from agent.errors import AgentError


def _day(text: str) -> date:
    try:
        if not text.isascii():
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text[:40]!r}") from None


def register(sub: Any) -> None:
    p = sub.add_parser("monitor", help="live performance and drift of the serving model")
    msub = p.add_subparsers(dest="monitor_command", metavar="ACTION")
    msub.required = True
    check = msub.add_parser("check", help="run one drift check now and store it")
    check.add_argument("--config", type=args_.path, help="agent.toml (default: the embedded one)")
    check.set_defaults(func=run_check)
    report = msub.add_parser("report", help="write a self-contained HTML monitoring report")
    report.add_argument("--out", type=args_.path, required=True, help="folder for report.html")
    report.add_argument("--from", dest="start", type=_day,
                        help="first CT day (default: window_days before --to)")  # fmt: skip
    report.add_argument("--to", dest="end", type=_day, help="last CT day (default: today, UTC)")
    report.add_argument("--period", choices=("month", "quarter", "week"), default="month",
                        help="calendar window of the per-window figures")  # fmt: skip
    report.add_argument("--bootstrap", type=args_.integer(0, 100_000), default=1000,
                        help="bootstrap resamples of each AUC CI")  # fmt: skip
    report.add_argument("--config", type=args_.path, help="agent.toml (default: the embedded one)")
    report.set_defaults(func=run_report)


def run_check(args: argparse.Namespace) -> int:
    from agent.monitor.drift import run_check as check_once
    from agent.runtime import open_runtime

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        checks = check_once(runtime.sessions, runtime.settings)
    finally:
        runtime.close()
    for c in checks:
        print(c.sentence())
    alerts = sum(c.alert for c in checks)
    print(f"{len(checks)} checks, {alerts} alert{'s' if alerts != 1 else ''}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from agent.monitor.card import read_card_view
    from agent.monitor.report import gather, render, summary_lines
    from agent.runtime import open_runtime
    from storage.db import make_session_factory

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        settings = runtime.settings
        end = args.end or datetime.now(UTC).date()
        start = args.start or end - timedelta(days=settings.monitor.window_days)
        if start > end:
            raise AgentError(f"--from {start} is after --to {end}")
        card = read_card_view(settings.model)
        print(f"monitor report: {card.name} {card.version}, CTs {start} to {end}",
              file=sys.stderr)  # fmt: skip
        with make_session_factory(runtime.engine, read_only=True)() as session:
            data = gather(session, settings, card, start, end, period=args.period,
                          n_boot=args.bootstrap, progress=_progress)  # fmt: skip
    finally:
        runtime.close()
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "report.html", render(data, settings))
        _write_csv(out / "performance.csv", data)
    except OSError as exc:
        raise AgentError(f"cannot write {out}: {exc.strerror or exc}") from None
    for line in summary_lines(data):
        print(line)
    print(f"report: {out / 'report.html'}")
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _write(path: Path, text: str) -> None:
    """Written beside itself and renamed: a failure leaves the old report, not half a new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_csv(path: Path, data: Any) -> None:
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["task", "window", "matched", "positives", "auc", "ci_low", "ci_high", "threshold",
                "sensitivity", "specificity", "ppv", "brier", "ece", "note"])  # fmt: skip
    for task, windows in data.performance.windows.items():
        for f in [data.performance.overall[task], *windows]:
            cal = f.calibration or {}
            figures = (f.auc, f.ci_low, f.ci_high, f.threshold, f.sensitivity, f.specificity,
                       f.ppv, cal.get("brier"), cal.get("ece"))  # fmt: skip
            w.writerow([task, f.window, f.n, f.positives, *map(_cell, figures), f.note])
    _write(path, buf.getvalue())


def _cell(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"
