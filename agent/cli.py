"""The ``hyperct-agent`` command line.

Each command group lives in a module of :mod:`agent.commands` exposing
``register(subparsers)``; its handler takes the parsed arguments and returns
an exit status. Heavy imports (torch) stay inside handlers so that ``serve``
and ``--help`` start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

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
    "outcomes",
    "backfill",
    "referrals",
    "demo",
    "monitor",
)


# Exit status of an error the code did not foresee (sysexits.h EX_SOFTWARE): still
# one line, so an operator's script sees it apart from bad input (2) and refusals (1).
EXIT_INTERNAL = 70
# Set to see the traceback of an unforeseen error instead of its one line.
DEBUG_ENV = "HYPERCT_DEBUG"


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a full disk behind stdout is reported here, not at exit
        return code
    except AgentError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except _StdoutError as exc:
        _drop_stdout(stdout)
        return _fail(f"cannot write standard output: {exc.strerror or exc}", 1)
    except Exception as exc:
        if isinstance(exc, _library_errors()):
            return _fail(str(exc), 1)
        if _is_database_error(exc):
            # Unreachable, read-only or locked database mid-command: its first line says why.
            return _fail(f"database: {_first_line(exc)}", 1)
        if os.environ.get(DEBUG_ENV):
            raise
        return _fail(
            f"unexpected {type(exc).__name__}: {_first_line(exc)}"
            f" (set {DEBUG_ENV}=1 for the traceback)",
            EXIT_INTERNAL,
        )
    finally:
        sys.stdout = stdout


class _StdoutError(OSError):
    """Standard output could not be written (a full disk, a closed file)."""


class _Stdout:
    """Standard output whose write errors are told apart from any other file's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutError(exc.errno, exc.strerror) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutError(exc.errno, exc.strerror) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _drop_stdout(stream: TextIO) -> None:
    """Point file descriptor 1 at /dev/null once writing to it failed.

    The interpreter flushes stdout again at exit and would print a second
    error about the same full disk; this lets that last flush succeed silently.
    """
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        if stream.fileno() == 1:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)


def _fail(message: str, code: int) -> int:
    print(f"hyperct-agent: error: {one_line(message)}", file=sys.stderr)
    return code


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (a path may hold them)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _is_database_error(exc: BaseException) -> bool:
    sa = sys.modules.get("sqlalchemy.exc")
    return sa is not None and isinstance(exc, sa.SQLAlchemyError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
