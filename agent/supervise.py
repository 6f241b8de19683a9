"""``serve --role all``: one node and one screen worker as child processes, supervised.

The model lives in a process of its own, so loading it does not slow
reception, and a crash or an OOM kill of the model ends only the screen
worker: this parent starts it again after a backoff that doubles while it
keeps dying. SIGTERM and SIGINT go to both children, each of which stops
cleanly within ``--grace``. If the node dies, the worker is stopped and the
command exits non-zero: without its node the agent receives nothing.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

#: Environment variable that tells a child its supervisor's pid (it stops if orphaned).
SUPERVISOR_ENV = "HYPERCT_SUPERVISOR_PID"
#: Environment variable naming the pipe a node child writes to once it is up.
READY_ENV = "HYPERCT_READY_FD"
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0
#: A worker that ran this long before dying starts again after the first delay.
STABLE_S = 60.0
# Seconds beyond --grace the children may take to stop (their own watchdogs fire first).
_STOP_MARGIN_S = 40.0
_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1  # prctl(2)


def child_command(role: str, args: argparse.Namespace) -> list[str]:
    """This same program (interpreter options and launcher kept) as ``serve --role ROLE``."""
    argv = list(getattr(sys, "orig_argv", []))
    prefix = [sys.executable, "-m", "agent"]
    if "serve" in argv[1:]:
        prefix = [sys.executable, *argv[1 : argv.index("serve", 1)]]
    cmd = [*prefix, "serve", "--role", role, "--grace", repr(float(args.grace))]
    if args.config is not None:
        cmd += ["--config", str(args.config)]
    return cmd


def _exit_status(code: int) -> int:
    """A child's status as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


class _Child:
    def __init__(
        self, role: str, args: argparse.Namespace, log: Any, ready_fd: int | None = None
    ) -> None:
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
        env.pop(READY_ENV, None)
        fds: tuple[int, ...] = ()
        if ready_fd is not None:
            env[READY_ENV], fds = str(ready_fd), (ready_fd,)
        self.role = role
        self.started = time.monotonic()
        self.proc = subprocess.Popen(child_command(role, args), env=env, pass_fds=fds)
        log.info("child started", role=role, pid=self.proc.pid)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)


def supervise(args: argparse.Namespace) -> int:
    from agent.logs import get_logger
    from agent.runtime import open_runtime

    stopping = threading.Event()
    received: list[int] = []

    def _on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    # Bad config or an unreachable database: one line here, before any child starts;
    # and the schema is migrated once, not raced by the two children.
    open_runtime(args.config, migrate=True).close()
    log = get_logger("agent.supervise")
    if stopping.is_set():
        return 0
    supervisor = _Supervisor(args, log, stopping, received)
    try:
        return supervisor.run()
    except BaseException:
        supervisor.signal(signal.SIGTERM)
        raise


class _Supervisor:
    def __init__(
        self,
        args: argparse.Namespace,
        log: Any,
        stopping: threading.Event,
        received: list[int],
    ) -> None:
        self.args = args
        self.log = log
        self.stopping = stopping
        self.received = received
        self.node: _Child | None = None
        self.worker: _Child | None = None

    def signal(self, signum: int) -> None:
        for child in (self.node, self.worker):
            if child is not None:
                child.signal(signum)

    def run(self) -> int:
        """Supervise until a signal or the node's death; then stop both and say how it ended."""
        args, log = self.args, self.log
        # The worker starts once the node is up: the model's load does not slow the
        # node's start, and a node that cannot start (its one error line said why)
        # ends the command at once, with nothing more to say.
        read_end, write_end = os.pipe()
        try:
            self.node = node = _Child("node", args, log, ready_fd=write_end)
        finally:
            os.close(write_end)
        try:
            ready = self._wait_ready(node, read_end)
        finally:
            os.close(read_end)
        if not ready:
            if not self.stopping.is_set():
                return _exit_status(node.proc.wait()) or 1
            self.signal(self.received[0])
            return _exit_status(node.proc.wait())
        self.worker = _Child("screen", args, log)
        delay, restart_at = 0.0, 0.0
        while not self.stopping.is_set() and node.proc.poll() is None:
            now = time.monotonic()
            worker = self.worker
            if worker is None and now >= restart_at:
                self.worker = _Child("screen", args, log)
            elif worker is not None and worker.proc.poll() is not None:
                ran = now - worker.started
                quick = ran < STABLE_S and delay > 0
                delay = min(RESTART_MAX_S, delay * 2) if quick else RESTART_FIRST_S
                log.error(
                    "screen worker exited; restarting it",
                    exit_status=_exit_status(worker.proc.returncode),
                    ran_seconds=round(ran, 1),
                    restart_in_seconds=delay,
                )
                self.worker, restart_at = None, now + delay
            self.stopping.wait(_POLL_S)

        node_died = not self.stopping.is_set()
        if node_died:
            log.error(
                "node exited; stopping the screen worker",
                exit_status=_exit_status(node.proc.returncode),
            )
        self.signal(self.received[0] if self.received else signal.SIGTERM)
        deadline = time.monotonic() + args.grace + _STOP_MARGIN_S
        for child in (c for c in (node, self.worker) if c is not None):
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("child did not stop in time; killing it", role=child.role)
                child.proc.kill()
                child.proc.wait()
        node_status = _exit_status(node.proc.returncode)
        if node_died:
            return node_status or 1
        if node_status:
            return node_status
        # A worker killed by the forwarded signal before it set its handlers is no error.
        code = self.worker.proc.returncode if self.worker is not None else 0
        return code if code > 0 else 0

    def _wait_ready(self, node: _Child, read_end: int) -> bool:
        """True once the node says it is up; False if it exited first or a signal came."""
        while not self.stopping.is_set():
            readable, _, _ = select.select([read_end], [], [], _POLL_S)
            if readable:
                return bool(os.read(read_end, 1))  # b"": the node exited before it was up
        return False


def tell_supervisor_ready() -> None:
    """In a node child of ``serve --role all``: say it is up (listening, dashboard running)."""
    fd = os.environ.pop(READY_ENV, "")
    if fd.isdigit():
        try:
            os.write(int(fd), b"1")
            os.close(int(fd))
        except OSError:
            pass  # the supervisor is gone: follow_supervisor ends this process


def follow_supervisor(stop: threading.Event, log: Any) -> None:
    """In a child of ``serve --role all``: end with the supervisor.

    On Linux the kernel kills the child when the supervisor dies, so a
    ``kill -9`` of the agent ends all of it at once, as it did when it was one
    process (leases then lapse and are taken over). Elsewhere the child notices
    within a second and stops cleanly.
    """
    expected = os.environ.get(SUPERVISOR_ENV, "")
    if not expected.isdigit():
        return
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != int(expected):  # it died before the line above
                os._exit(1)
            return

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != int(expected):
                log.error("supervisor gone; stopping")
                stop.set()
                return

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
