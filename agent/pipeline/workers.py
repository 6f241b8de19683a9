"""What each screen worker last recorded: its model and its inference times.

A screen worker (``serve --role screen``) keeps one small JSON file under
``<storage root>/workers/``: rewritten when its model is loaded (or fails),
after every batch and every ``lease_renew_seconds``. A node's dashboard reads
these files, so it reports the model without loading it: the node never
imports torch. A file not rewritten within ``lease_seconds`` is a worker that
stopped or died; its inference counts still add to the totals.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.logs import get_logger

log = get_logger("agent.workers")

FOLDER = "workers"
# A batch on CPU takes seconds; on a GPU well under one.
INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Files not rewritten for this long are removed when a worker starts.
_PRUNE_AFTER_S = 7 * 24 * 3600.0


def _file_name(worker: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in worker) + ".json"


class WorkerStatus:
    """This screen worker's status file; ``start`` it with the pipeline, ``stop`` at the end."""

    def __init__(self, root: Path, worker: str, holder: Any, every_seconds: float) -> None:
        self.folder = root / FOLDER
        self.path = self.folder / _file_name(worker)
        self.worker = worker
        self.holder = holder
        self.every = every_seconds
        self._lock = threading.Lock()
        self._count = 0
        self._sum = 0.0
        self._buckets = [0] * len(INFERENCE_BUCKETS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-status", daemon=True)

    def start(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _prune(self.folder)
        except OSError as exc:
            log.warning("worker status folder unavailable", error=str(exc))
        self._thread.start()

    def _run(self) -> None:
        self.write()  # "loading" at once
        while not self._stop.is_set() and self.holder.get(timeout=0.5) is None:
            if self.holder.error:
                break
        while not self._stop.is_set():
            self.write()
            self._stop.wait(self.every)

    def observe(self, seconds: float) -> None:
        """One batch's inference time (wall clock)."""
        with self._lock:
            self._count += 1
            self._sum += seconds
            for i, bound in enumerate(INFERENCE_BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1
        self.write()

    def _model(self) -> dict[str, Any]:
        if self.holder.loaded:
            identity = self.holder.identity
            return {
                "state": "loaded",
                "name": getattr(identity, "name", None),
                "version": getattr(identity, "version", None),
                "demo": getattr(identity, "is_demo", None),
            }
        if self.holder.error:
            return {"state": "failed", "error": self.holder.error}
        return {"state": "loading"}

    def write(self) -> None:
        # One writer at a time, from reading the counts to the rename: a write
        # that read older counts never replaces a newer file.
        with self._lock:
            record = {
                "worker": self.worker,
                "updated_at": time.time(),
                "stopped": self._stop.is_set(),  # a late batch after stop keeps saying so
                "model": self._model(),
                "inference": {"count": self._count, "sum": self._sum, "buckets": self._buckets},
            }
            tmp = self.folder / f".{self.path.name}.{uuid.uuid4().hex[:8]}"
            try:
                tmp.write_text(json.dumps(record))
                os.replace(tmp, self.path)
            except OSError as exc:  # a full or gone storage root: the dashboard shows it stale
                tmp.unlink(missing_ok=True)
                log.debug("worker status not written", error=str(exc))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)  # its last write must not land after this one
        self.write()


def timed(holder: Any, observe: Callable[[float], None]) -> None:
    """Time every batch ``holder``'s predictor runs (the screener calls ``get()`` per batch)."""
    original = holder.get

    def get(timeout: float | None = None) -> Any:
        predictor = original(timeout)
        return None if predictor is None else _Timed(predictor, observe)

    holder.get = get


class _Timed:
    def __init__(self, predictor: Any, observe: Callable[[float], None]) -> None:
        self._predictor = predictor
        self._observe = observe

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = self._predictor.predict(*args, **kwargs)
        self._observe(time.perf_counter() - started)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)


def _prune(folder: Path) -> None:
    cutoff = time.time() - _PRUNE_AFTER_S
    for path in folder.glob("*.json"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            continue


# -- the reading side (a node's dashboard) ---------------------------------------


@dataclass(frozen=True)
class WorkerRecord:
    worker: str
    age_seconds: float
    stopped: bool
    model: dict[str, Any]
    inference: dict[str, Any]


class WorkerBoard:
    """The screen workers' files as a node sees them; ``live`` ones wrote within ``max_age``."""

    def __init__(self, root: Path, max_age_seconds: float) -> None:
        self.folder = root / FOLDER
        self.max_age = max_age_seconds

    def records(self) -> list[WorkerRecord]:
        now = time.time()
        out = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                data = json.loads(path.read_text())
                out.append(
                    WorkerRecord(
                        str(data["worker"]),
                        max(0.0, now - float(data["updated_at"])),
                        bool(data.get("stopped")),
                        dict(data.get("model") or {}),
                        dict(data.get("inference") or {}),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced, or not ours
        return out

    def live(self) -> list[WorkerRecord]:
        return [r for r in self.records() if not r.stopped and r.age_seconds <= self.max_age]

    def model_state(self) -> tuple[bool, str]:
        """(loaded by a live worker, one line) for the health check."""
        live = self.live()
        loaded = [r for r in live if r.model.get("state") == "loaded"]
        if loaded:
            versions = sorted({str(r.model.get("version")) for r in loaded})
            return True, f"loaded (version {', '.join(versions)}) by {len(loaded)} screen worker(s)"
        failed = [r for r in live if r.model.get("state") == "failed"]
        if failed:
            return False, f"failed: {failed[0].model.get('error')}"
        if live:
            return False, "loading"
        return False, "no screen worker running (none reported within the lease)"
