"""``hyperct-agent status``: what the agent holds, from the database."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent.commands import args as args_


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="counts of studies, series, instances, jobs and reports")
    p.add_argument("--config", type=args_.path, help="agent.toml (default: the embedded defaults)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.backfill.progress import progress_line
    from agent.runtime import open_runtime
    from storage.backfill_queue import campaign_progress
    from storage.queries import status_counts

    runtime = open_runtime(args.config, migrate=False, check_files=False)
    try:
        with runtime.sessions() as session:
            counts = status_counts(session)
            campaigns = campaign_progress(session)
    finally:
        runtime.close()
    # Archive backfill: per campaign, retrieved (done), dead (failed), remaining, rate, ETA.
    counts["backfill"] = [c.as_dict() for c in campaigns]
    if args.json:
        print(json.dumps(counts, indent=2, sort_keys=True))
        return 0
    for key in ("studies", "series", "instances"):
        print(f"{key:<10} {counts[key]}")
    for group in ("jobs", "reports"):
        states = ", ".join(f"{state} {n}" for state, n in counts[group].items())
        print(f"{group:<10} {states}")
    for campaign in campaigns:
        print(f"{'backfill':<10} {progress_line(campaign)}")
    return 0
