"""``hyperct-agent db upgrade``: bring the results database to the current schema."""

from __future__ import annotations

import argparse
from typing import Any

from agent.commands import args as args_


def register(sub: Any) -> None:
    p = sub.add_parser("db", help="manage the results database")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dsub.required = True
    up = dsub.add_parser("upgrade", help="apply pending migrations (serve does this at start)")
    up.add_argument("--config", type=args_.path, help="agent.toml (default: the embedded defaults)")
    up.set_defaults(func=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    from agent.runtime import open_runtime
    from storage.db import current_revision

    runtime = open_runtime(args.config, migrate=True)
    try:
        print(f"database at revision {current_revision(runtime.engine)}")
    finally:
        runtime.close()
    return 0
