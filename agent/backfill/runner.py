"""The retrieval stage of ``serve --role node``: claims planned series and retrieves them, paced.

Each pass takes lapsed leases back, marks series that arrived meanwhile as
``already``, closes campaigns with nothing left and, inside a window, claims
as many series as the pacing allows. Retrieves run on a small pool; each ends
by comparing what the archive reported (the sub-operation counts) and what
the database recorded for the series with what the query promised: anything
less is a failed attempt, retried after a backoff and dead after
``max_attempts``. The instances themselves arrive through the node's receive
path and become jobs of origin ``backfill``; the sweep and screening take it
from there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from agent.backfill.pacing import Pacing, local_now
from agent.backfill.types import RetrieveOutcome, Retriever, SeriesRef
from agent.config import Settings
from agent.config_backfill import Archive
from agent.logs import get_logger
from agent.node.handlers import NodeHandlers
from storage.backfill_queue import (
    RETRIEVALS,
    claim_retrievals,
    finish_campaigns,
    held_retrievals,
    instances_recorded,
    retrieval_done,
    retrieval_failed,
    settle_already_stored,
    started_since,
)
from storage.models import BackfillCampaign
from storage.types import utcnow

log = get_logger("agent.backfill")

SUCCESS, WARNING = 0x0000, 0xB000


def judge(outcome: RetrieveOutcome, received: int, expected: int | None) -> str | None:
    """Why a retrieve did not bring the whole series, or None when it did."""
    if outcome.status is None:
        return outcome.error or "no response from the archive"
    if outcome.status not in (SUCCESS, WARNING):
        return outcome.error or f"archive answered 0x{outcome.status:04X}"
    if outcome.failed:
        total = outcome.completed + outcome.failed + outcome.warning
        return f"partial: {outcome.failed} of {total} sub-operations failed"
    want = expected if expected else outcome.completed + outcome.warning
    if received == 0:
        return "no instances arrived"
    if received < want:
        return f"partial: {received} of {want} instances recorded"
    return None


def retriever_for(settings: Settings, archive: Archive, handlers: NodeHandlers | None) -> Retriever:
    """WADO-RS when the archive has a DICOMweb URL, else C-MOVE or C-GET as configured."""
    if archive.dicomweb_url:
        from agent.backfill.wado import WadoRetriever

        if handlers is None:
            raise ValueError("a WADO-RS retrieve needs the node's handlers")
        return WadoRetriever(archive, handlers, settings.node.accepted_sop_classes)
    if archive.retrieve == "get":
        from agent.backfill.get import GetRetriever

        if handlers is None:
            raise ValueError("a C-GET retrieve needs the node's handlers")
        return GetRetriever(settings.node, archive, handlers)
    from agent.backfill.move import MoveRetriever

    return MoveRetriever(settings.node, archive)


class BackfillRunner:
    """Claims and retrieves planned series of running campaigns, within ``[backfill]``."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        worker: str,
        handlers: NodeHandlers | None = None,
        paced: bool = True,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.worker = worker
        self.handlers = handlers
        b = settings.backfill
        self.pacing = Pacing.from_settings(
            b.windows if paced else [],
            b.max_concurrent,
            b.series_per_hour if paced else 1 << 30,
        )
        self.archives = {a.name: a for a in settings.archives}
        self._pool = ThreadPoolExecutor(max_workers=b.max_concurrent, thread_name_prefix="retrieve")
        self._held: set[int] = set()
        self._lock = threading.Lock()
        #: Called when a retrieve ends (the pipeline wakes this stage and the sweep).
        self.on_done: Callable[[], None] = lambda: None

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    def run_once(self) -> int:
        """One pass; returns how many retrieves it started."""
        b = self.settings.backfill
        with self.sessions.begin() as session:
            lapsed = RETRIEVALS.take_over_lapsed(
                session, self.settings.pipeline.lease_seconds, max_attempts=b.max_attempts
            )
            already = settle_already_stored(session)
            finished = finish_campaigns(session)
        if lapsed:
            log.warning("retrieves taken over: their retriever stopped", series=lapsed)
        if already:
            log.info("planned series already stored: not retrieved", series=already)
        for name in finished:
            log.info("campaign done", campaign=name)
        if not self.pacing.open_at(local_now()):
            return 0
        now = utcnow()
        with self.sessions.begin() as session:
            room = self.pacing.allowed(
                held_retrievals(session), started_since(session, now - timedelta(hours=1))
            )
            with self._lock:
                room = min(room, b.max_concurrent - len(self._held))
            rows = claim_retrievals(session, self.worker, room, now)
            work = []
            for row in rows:
                archive = session.get(BackfillCampaign, row.campaign_id)
                ref = SeriesRef(row.study_instance_uid, row.series_instance_uid,
                                row.expected_instances)  # fmt: skip
                work.append((row.id, archive.archive if archive else "", ref))
        for row_id, archive_name, ref in work:
            with self._lock:
                self._held.add(row_id)
            self._pool.submit(self._retrieve, row_id, archive_name, ref)
        return len(work)

    def _retrieve(self, row_id: int, archive_name: str, ref: SeriesRef) -> None:
        try:
            self._retrieve_one(row_id, archive_name, ref)
        except Exception as exc:  # the database went away: the lease lapses and it is retried
            log.error("retrieve not recorded", series_row=row_id, error=type(exc).__name__)
        finally:
            with self._lock:
                self._held.discard(row_id)
            self.on_done()

    def _retrieve_one(self, row_id: int, archive_name: str, ref: SeriesRef) -> None:
        archive = self.archives.get(archive_name)
        if archive is None:
            outcome = RetrieveOutcome(None, error=f"archive {archive_name!r} not in [[archives]]")
        else:
            try:
                outcome = retriever_for(self.settings, archive, self.handlers).retrieve(ref)
            except Exception as exc:  # a retrieve that broke is one failed attempt
                outcome = RetrieveOutcome(None, error=f"{type(exc).__name__}: {exc}")
        b = self.settings.backfill
        with self.sessions.begin() as session:
            received = instances_recorded(session, ref.series_instance_uid)
            counts: dict[str, int | None] = {
                "completed_suboperations": outcome.completed,
                "failed_suboperations": outcome.failed,
                "warning_suboperations": outcome.warning,
                "received_instances": received,
            }
            problem = judge(outcome, received, ref.expected_instances)
            if problem is None:
                kept = retrieval_done(session, row_id, self.worker, counts)
                state = "retrieved" if kept else None
            else:
                new = retrieval_failed(
                    session, row_id, self.worker, problem, counts,
                    max_attempts=b.max_attempts, retry_seconds=b.retry_seconds,
                )  # fmt: skip
                state = None if new is None else str(new)
        log.info(
            "series retrieved" if problem is None else "retrieve failed",
            series_row=row_id,
            archive=archive_name,
            state=state or "claim taken back",
            received=received,
            expected=ref.expected_instances,
            error=problem,
        )

    def release(self, session: Session) -> int:
        """Give back the series still held (shutdown); their attempts do not count."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        return RETRIEVALS.release(session, self.worker)

    def renew(self, session: Session) -> set[int]:
        return RETRIEVALS.renew(session, self.worker, self.held())
