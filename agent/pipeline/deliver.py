"""Delivery: C-STORE each pending report to its destination, with retries and backoff.

The delivery state lives in the database (``reports`` rows), so a restart or
a PACS outage loses nothing: a failed send is retried after a doubling delay
until ``[reports].delivery_attempts``, then left ``dead`` for
``hyperct-agent reports resend``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy.orm import Session, sessionmaker

from agent.config import Destination, Settings
from agent.logs import get_logger
from agent.send import associate, scu
from storage.audit import audit
from storage.files import InstanceStore
from storage.queue import claim_reports, report_failed, report_sent, requeue_stale_reports

log = get_logger("agent.deliver")

#: Status values of a C-STORE response that mean the report was stored (PS3.4 B.2.3).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class _Pending:
    report_id: int
    destination: str
    rel_path: str
    sop_instance_uid: str
    series_instance_uid: str


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: InstanceStore,
        worker: str,
        batch: int = 50,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.worker = worker
        self.batch = batch

    def run_once(self) -> int:
        """Send what is due; returns how many reports were delivered."""
        with self.sessions.begin() as session:
            # A sender that died mid-association left rows 'sending'.
            requeue_stale_reports(session, 4 * self.settings.node.timeouts.dimse)
            pending = [
                _Pending(
                    r.id, r.destination, r.rel_path or "", r.sop_instance_uid, r.series_instance_uid
                )
                for r in claim_reports(session, self.worker, self.batch)
            ]
        by_destination: dict[str, list[_Pending]] = defaultdict(list)
        for item in pending:
            by_destination[item.destination].append(item)
        sent = 0
        for name, items in by_destination.items():
            dest = next((d for d in self.settings.destinations if d.name == name), None)
            if dest is None:
                for item in items:
                    self._failed(item, f"destination {name!r} is no longer configured")
                continue
            sent += self._send(dest, items)
        return sent

    def _send(self, dest: Destination, items: list[_Pending]) -> int:
        datasets = []
        for item in items:
            try:
                datasets.append((item, dcmread(self.store.path_of(item.rel_path))))
            except (OSError, ValueError) as exc:
                self._failed(item, f"report file unreadable: {exc}")
        if not datasets:
            return 0
        ae = scu(self.settings.node)
        for sop_class in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = associate(ae, dest)  # over TLS when the destination has a tls table
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "destination unreachable"
            for item, _ in datasets:
                self._failed(item, f"{reason} ({dest.ae_title}@{dest.host}:{dest.port})")
            return 0
        sent = 0
        try:
            for item, ds in datasets:
                try:
                    rsp = assoc.send_c_store(ds)
                except (RuntimeError, ValueError) as exc:
                    self._failed(item, f"C-STORE not sent: {exc}")
                    continue
                code = int(rsp.Status) if "Status" in rsp else None
                if code in _STORED:
                    sent += self._sent(item, dest)
                else:
                    shown = "no response" if code is None else f"status 0x{code:04X}"
                    self._failed(item, f"C-STORE refused by {dest.name}: {shown}")
        finally:
            if assoc.is_established:
                assoc.release()
        return sent

    def _sent(self, item: _Pending, dest: Destination) -> int:
        with self.sessions.begin() as session:
            ok = report_sent(session, item.report_id, self.worker)
            if ok:
                audit(
                    session,
                    "report_sent",
                    "success",
                    source_ae=dest.ae_title,
                    series_instance_uid=item.series_instance_uid,
                    sop_instance_uid=item.sop_instance_uid,
                    detail={"destination": dest.name},
                )
        if ok:
            log.info("report delivered", destination=dest.name, report=item.report_id)
        return int(ok)

    def _failed(self, item: _Pending, error: str) -> None:
        reports = self.settings.reports
        with self.sessions.begin() as session:
            state = report_failed(
                session,
                item.report_id,
                self.worker,
                error,
                max_attempts=reports.delivery_attempts,
                retry_seconds=reports.delivery_retry_seconds,
            )
        log.warning("report not delivered", report=item.report_id, error=error, state=str(state))
