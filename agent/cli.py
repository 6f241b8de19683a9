"""The ``hyperct-agent`` command line.

Each command group lives in a module of :mod:`agent.commands` exposing
``register(subparsers)``; its handler takes the parsed arguments and returns
an exit status. Heavy imports (torch) stay inside handlers so that ``serve``
and ``--help`` start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent import __version__
from agent.errors import AgentError

COMMAND_MODULES = (
    "serve",
    "db",
    "echo",
    "status",
    "jobs",
    "reports",
    "model",
    "explain",
    "results",
    "studies",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperct-agent",
        description="DICOM screening agent for non-contrast chest CT (HyperCT).",
    )
    parser.add_argument("--version", action="version", version=f"hyperct-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"agent.commands.{name}").register(sub)
    return parser


def _library_errors() -> tuple[type[BaseException], ...]:
    """Error types of the model library, mapped to one line when it is loaded."""
    mod = sys.modules.get("hyperct_core.errors")
    if mod is None:
        return ()
    return (mod.HyperCTError,)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AgentError as exc:
        print(f"hyperct-agent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except Exception as exc:
        if isinstance(exc, _library_errors()):
            print(f"hyperct-agent: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
