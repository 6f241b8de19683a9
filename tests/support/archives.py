"""Real archives for backfill tests: Orthanc with its DICOMweb plugin, in a private netns.

Orthanc 1.10 listens on every interface; inside a network namespace of its
own (:mod:`tests.support.netns`) that is a private loopback, so its ports are
fixed (4242, 8042) and no traffic leaves the machine. The test process
reaches it through :class:`NamespaceThread`: one thread moved into the
namespace with setns(2), which acts on the calling thread only. Whatever
runs there (a finder, a node for C-MOVE to reach, the CLI) sees Orthanc on
127.0.0.1; the rest of the process (PostgreSQL on 127.0.0.1:5432) does not
move. :meth:`NamespaceThread.proxy` wraps an object so each method call runs
in the namespace.

Use::

    with running_orthanc(tmp_path, limit_find_results=3) as orthanc:
        orthanc.store(files)
        finder = orthanc.thread.proxy(orthanc.thread.call(StudyRootFind, archive, node))
"""

from __future__ import annotations

import ctypes
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.netns import NetNS, private_netns

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
STORESCU = "/usr/bin/storescu"
ORTHANC_AET = "ORTHANC"
DICOM_PORT = 4242
HTTP_PORT = 8042
_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def _enter(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
    finally:
        os.close(fd)


class NamespaceThread:
    """One worker thread inside network namespace ``name``; threads it starts are too."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"netns-{name}", initializer=_enter, initargs=(name,)
        )

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def proxy(self, obj: Any) -> Any:
        return _InNamespace(self, obj)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _InNamespace:
    def __init__(self, thread: NamespaceThread, obj: Any) -> None:
        self._thread = thread
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._obj, name)
        if not callable(value):
            return value
        return lambda *a, **kw: self._thread.call(value, *a, **kw)


@dataclass
class Orthanc:
    ns: NetNS
    thread: NamespaceThread
    workdir: Path
    aet: str = ORTHANC_AET
    dicom_port: int = DICOM_PORT
    http_port: int = HTTP_PORT

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def archive(self, name: str = "orthanc", **extra: Any) -> dict[str, Any]:
        """An ``[[archives]]`` table for this Orthanc."""
        return {
            "name": name,
            "ae_title": self.aet,
            "host": "127.0.0.1",
            "port": self.dicom_port,
            **extra,
        }

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        """Orthanc's REST API (from inside the namespace); JSON in, JSON out."""
        data = None if body is None else json.dumps(body).encode()
        url = f"http://127.0.0.1:{self.http_port}{path}"

        def go() -> Any:
            req = urllib.request.Request(url, data=data, method=method)
            with urllib.request.urlopen(req, timeout=30) as rsp:
                raw = rsp.read()
            return json.loads(raw) if raw else None

        return self.thread.call(go)

    def store(self, files: Sequence[Path]) -> None:
        """Send ``files`` with DCMTK storescu, as a modality would."""
        out = self.ns.run(
            [STORESCU, "-aec", self.aet, "127.0.0.1", str(self.dicom_port), *map(str, files)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr[-2000:]

    def add_modality(self, name: str, ae_title: str, port: int, host: str = "127.0.0.1") -> None:
        """Tell Orthanc of a peer (a C-MOVE destination, a C-FIND caller)."""
        self.rest("PUT", f"/modalities/{name}", {"AET": ae_title, "Host": host, "Port": port})

    def counts(self) -> dict[str, int]:
        stats = self.rest("GET", "/statistics")
        return {k: int(stats[k]) for k in ("CountStudies", "CountSeries", "CountInstances")}


def _tool(path: str, package: str) -> None:
    if not Path(path).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is not installed (CI must install {package})")
        pytest.skip(f"{path} is not installed (apt-get install {package})")


@contextmanager
def running_orthanc(
    workdir: Path,
    *,
    limit_find_results: int = 0,
    dicomweb: bool = True,
    modalities: dict[str, tuple[str, str, int]] | None = None,
    config: dict[str, Any] | None = None,
) -> Iterator[Orthanc]:
    """Orthanc in a private network namespace, ready when this yields."""
    _tool(ORTHANC, "orthanc")
    _tool(STORESCU, "dcmtk")
    if dicomweb:
        _tool(DICOMWEB_PLUGIN, "orthanc-dicomweb")
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "Name": "backfill-test-archive",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "DicomAet": ORTHANC_AET,
        "DicomPort": DICOM_PORT,
        "HttpPort": HTTP_PORT,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowStore": True,
        "LimitFindResults": limit_find_results,
        "StorageCompression": False,
        "Plugins": [DICOMWEB_PLUGIN] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
        **(config or {}),
    }
    (workdir / "orthanc.json").write_text(json.dumps(settings))
    with private_netns() as ns:
        log = (workdir / "orthanc.log").open("wb")
        proc = ns.popen([ORTHANC, str(workdir / "orthanc.json")], stdout=log, stderr=log)
        thread = NamespaceThread(ns.name)
        orthanc = Orthanc(ns, thread, workdir)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    orthanc.rest("GET", "/system")
                    break
                except (urllib.error.URLError, OSError):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = (workdir / "orthanc.log").read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"Orthanc did not start:\n{tail}") from None
                    time.sleep(0.1)
            yield orthanc
        finally:
            thread.close()
            log.close()
