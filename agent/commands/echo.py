"""``hyperct-agent echo DESTINATION``: C-ECHO a configured destination."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from agent.commands import args as args_
from agent.errors import AgentError


def register(sub: Any) -> None:
    p = sub.add_parser("echo", help="verify a destination with C-ECHO")
    p.add_argument("destination", type=args_.name, help="name of a [[destinations]] entry")
    p.add_argument("--config", type=args_.path, help="agent.toml (default: the embedded defaults)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.config import load_settings
    from agent.logs import configure_logging
    from agent.send import echo

    settings = load_settings(args.config)
    configure_logging(settings.logging.level, settings.logging.format)
    # The outcome is reported below in one line; pynetdicom's own error lines would repeat it.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    dest = settings.destination(args.destination)
    code = echo(settings.node, dest)
    if code != 0:
        raise AgentError(
            f"C-ECHO to {dest.name} ({dest.ae_title}@{dest.host}:{dest.port}) failed: {code}"
        )
    print(f"C-ECHO to {dest.name} ({dest.ae_title}@{dest.host}:{dest.port}): success")
    return 0
