"""A private network namespace with only loopback, for peers that listen on every interface.

DCMTK storescp and Orthanc 1.10 cannot be bound to 127.0.0.1; inside a
namespace of its own, "every interface" is just a private loopback. Every
process that talks to them is started inside the same namespace. Needs root
and iproute2 (both present on CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

NODELAY = {**os.environ, "TCP_NODELAY": "1"}


class NetNS:
    def __init__(self, name: str) -> None:
        self.name = name
        self._procs: list[subprocess.Popen[Any]] = []

    def _wrap(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        kwargs.setdefault("env", NODELAY)
        kwargs.setdefault("timeout", 300)
        return subprocess.run(self._wrap(cmd), **kwargs)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("env", NODELAY)
        proc = subprocess.Popen(self._wrap(cmd), **kwargs)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@contextmanager
def private_netns() -> Iterator[NetNS]:
    if shutil.which("ip") is None or os.geteuid() != 0:
        reason = "network namespaces need root and iproute2"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"hct-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    ns = NetNS(name)
    try:
        ns.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        yield ns
    finally:
        ns.close()
