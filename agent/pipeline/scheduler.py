"""The pipeline's clock: APScheduler runs sweep, screen and deliver inside ``serve``.

A node runs the sweep and delivery (:data:`NODE_STAGES`), a screen worker
the screening (:data:`SCREEN_STAGES`); they meet only in the database, so
several of each may share one. A screen worker also keeps its status file
(:mod:`agent.pipeline.workers`), which a node's dashboard reads.

Each stage is an interval job that never overlaps itself; a stage that
produced work wakes the next at once, so a series does not wait a whole
interval between stages. ``stop`` lets in-flight work finish for a grace
period and then gives back whatever this process still holds (jobs back to
``queued``, deliveries back to ``pending``), so nothing acknowledged is lost.

A node also runs the monitoring check (:class:`agent.monitor.drift.DriftMonitor`)
every ``[monitor] check_minutes`` when ``[monitor] enabled``: one node per
database suffices, but several only add rows, never conflicting ones. And it
runs archive backfill's retrieval (:mod:`agent.backfill.runner`): the instances
it retrieves arrive at the node.

A heartbeat thread renews the leases of the jobs being screened and of the
series being retrieved. It is a
thread of its own, not a scheduler job, so it keeps beating while a batch is
in inference (torch releases the GIL inside its kernels; pure Python work is
preempted every few milliseconds).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agent.backfill.runner import BackfillRunner
from agent.config import Settings
from agent.logs import get_logger
from agent.monitor.drift import DriftMonitor
from agent.pipeline.deliver import Deliverer
from agent.pipeline.model import ModelHolder
from agent.pipeline.screen import ReportWriter, Screener
from agent.pipeline.sweep import Sweeper
from agent.pipeline.workers import WorkerStatus, timed
from storage.files import InstanceStore
from storage.outcomes import match_pending
from storage.queue import release_jobs, release_reports, renew_jobs

log = get_logger("agent.pipeline")

NODE_STAGES = ("sweep", "deliver", "backfill")
SCREEN_STAGES = ("screen",)
ALL_STAGES = ("sweep", "screen", "deliver", "backfill")
#: Seconds between matches of waiting echo outcomes to CTs screened since (on nodes).
OUTCOME_MATCH_SECONDS = 60.0


def worker_id() -> str:
    """Who holds a claim: host, process and a random suffix (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: InstanceStore,
        write_reports: ReportWriter | None = None,
        model: ModelHolder | None = None,
        stages: tuple[str, ...] = ALL_STAGES,
        handlers: Any = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.worker = worker_id()
        self.stages = stages
        self.model: ModelHolder | None = None
        self.screener: Screener | None = None
        self.status: WorkerStatus | None = None
        if "screen" in stages:
            if write_reports is None:
                raise ValueError("the screen stage needs a report writer")
            self.model = model or ModelHolder(
                settings.model, cache=settings.storage.root / "models"
            )
            self.screener = Screener(
                settings, sessions, store, self.model, self.worker, write_reports
            )
            if stages == SCREEN_STAGES:  # a worker of its own: nodes read what it records
                self.status = WorkerStatus(
                    settings.storage.root,
                    self.worker,
                    self.model,
                    settings.pipeline.lease_renew_seconds,
                )
                timed(self.model, self.status.observe)
        self.sweeper = Sweeper(settings, sessions)
        self.deliverer = Deliverer(settings, sessions, store, self.worker)
        self.monitor: DriftMonitor | None = None
        if "sweep" in stages and settings.monitor.enabled:
            self.monitor = DriftMonitor(settings, sessions)
        # ``handlers``: the node's (C-GET and WADO-RS store through them).
        self.backfill: BackfillRunner | None = None
        if "backfill" in stages:
            self.backfill = BackfillRunner(settings, sessions, self.worker, handlers)
            self.backfill.on_done = self._retrieved
        self._stopping = threading.Event()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        #: Set by :meth:`stop` when held work could not be given back (database gone).
        self.release_error: str | None = None
        self._heartbeat = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)

    def _beat(self) -> None:
        """Renew the leases of the batch and the deliveries in progress until the pipeline stops."""
        every = self.settings.pipeline.lease_renew_seconds
        while not self._stopping.wait(every):
            if "deliver" in self.stages:
                self.deliverer.renew_leases()
            self._renew_retrievals()
            if self.screener is None:
                continue
            held = self.screener.held()
            if not held:
                continue
            try:
                with self.sessions.begin() as session:
                    renewed = renew_jobs(session, self.worker, held)
            except Exception as exc:  # the database may come back before the lease runs out
                log.warning("lease not renewed", jobs=len(held), error=type(exc).__name__)
                continue
            # A job finished between held() and the renewal is not lost, only done.
            lost = set(held) - renewed
            if lost & set(self.screener.held()):
                log.warning("lease lost: jobs taken back", jobs=sorted(lost))
            else:
                log.debug("leases renewed", jobs=len(renewed))

    def _renew_retrievals(self) -> None:
        if self.backfill is None or not self.backfill.held():
            return
        try:
            with self.sessions.begin() as session:
                self.backfill.renew(session)
        except Exception as exc:  # the database may come back before the lease runs out
            log.warning("retrieve leases not renewed", error=type(exc).__name__)

    def _retrieved(self) -> None:
        self.wake("backfill")
        self.wake("sweep")

    def start(self) -> None:
        if self.model is not None:
            self.model.start()
        if self.status is not None:
            self.status.start()
        every = self.settings.pipeline.sweep_seconds
        now = datetime.now(UTC)
        stages: list[tuple[str, Callable[[], int], str | None]] = [
            ("sweep", self.sweeper.run_once, "screen"),
            ("screen", self._screen_all, "deliver"),
            ("deliver", self.deliverer.run_once, None),
        ]
        if self.backfill is not None:
            stages.append(("backfill", self.backfill.run_once, None))
        for name, stage, then in stages:
            if name not in self.stages:
                continue
            self._scheduler.add_job(
                self._guarded(name, stage, then),
                "interval",
                seconds=every,
                id=name,
                next_run_time=now,
            )
        if "sweep" in self.stages:
            self._scheduler.add_job(
                self._guarded("outcomes", self.match_outcomes, None),
                "interval",
                seconds=OUTCOME_MATCH_SECONDS,
                id="outcomes",
                next_run_time=now,
            )
        if self.monitor is not None:
            self._scheduler.add_job(
                self._guarded("monitor", self.monitor.run_once, None),
                "interval",
                seconds=self.settings.monitor.check_minutes * 60,
                id="monitor",
                next_run_time=now,
            )
        self._scheduler.start()
        if self.screener is not None or "deliver" in self.stages or self.backfill is not None:
            self._heartbeat.start()
        log.info(
            "pipeline started", worker=self.worker, stages=list(self.stages), every_seconds=every
        )

    def wake(self, stage: str) -> None:
        """Run ``stage`` as soon as possible (it never runs twice at once)."""
        if self._stopping.is_set():
            return
        job = self._scheduler.get_job(stage)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    def match_outcomes(self) -> int:
        """Echo outcomes still without a CT, matched to one screened since they came in."""
        with self.sessions.begin() as session:
            matched = match_pending(session, self.settings.outcomes.match_days)
        if matched:
            log.info("echo outcomes matched", count=matched)
        return matched

    def _screen_all(self) -> int:
        assert self.screener is not None
        total = 0
        while not self._stopping.is_set():
            done = self.screener.run_once()
            if not done:
                break
            total += done
            self.wake("deliver")
        return total

    def _guarded(self, name: str, stage: Callable[[], int], then: str | None) -> Callable[[], None]:
        def run() -> None:
            if self._stopping.is_set():
                return
            with self._busy_lock:
                self._busy += 1
            try:
                if stage() and then:
                    self.wake(then)
            except Exception as exc:  # logged here; the next interval tries again
                log.error("pipeline stage failed", stage=name, error=f"{type(exc).__name__}: {exc}")
            finally:
                with self._busy_lock:
                    self._busy -= 1

        return run

    def stop(self, grace_seconds: float = 10.0) -> bool:
        """Stop taking work; wait up to ``grace_seconds``; give back what is still held.

        Returns True when nothing was in flight at the end.
        """
        self._stopping.set()
        self._scheduler.shutdown(wait=False)
        deadline = time.monotonic() + grace_seconds
        while self._busy and time.monotonic() < deadline:
            time.sleep(0.05)
        idle = self._busy == 0
        if self.status is not None:
            self.status.stop()
        try:
            with self.sessions.begin() as session:
                jobs = release_jobs(session, self.worker)
                reports = release_reports(session, self.worker)
                retrieves = self.backfill.release(session) if self.backfill else 0
        except SQLAlchemyError as exc:
            # The database is gone: what this process holds is taken over once its
            # leases lapse; the caller says so.
            self.release_error = type(exc).__name__
            return idle
        if jobs or reports or retrieves:
            log.warning(
                "work given back to the queue", jobs=jobs, reports=reports, retrieves=retrieves
            )
        return idle
