"""Delivery: C-STORE each pending report to its destination, with retries and backoff.

The delivery state lives in the database (``reports`` rows), so a restart or
a PACS outage loses nothing: a failed send is retried after a doubling delay
until ``[reports].delivery_attempts``, then left ``dead`` for
``hyperct-agent reports resend``.

A claimed delivery is a lease, like a job's (``[pipeline] lease_seconds``):
the heartbeat renews the leases of the reports being sent (:meth:`Deliverer.renew_leases`),
so a slow PACS does not let another agent send the same report again, and a
sender that died has its deliveries taken over once their leases lapse.

The stored file is sent as it is: its data set goes on the wire as encoded on
disk, in the file's own transfer syntax (PS3.7 9.3.1.1, PS3.8 9.3.5). Only a
peer that accepts none but another syntax gets it re-encoded.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ImplicitVRLittleEndian
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from sqlalchemy.orm import Session, sessionmaker

from agent.config import Destination, Settings
from agent.logs import get_logger
from agent.send import associate, scu
from storage.audit import audit
from storage.files import InstanceStore
from storage.queue import (
    claim_reports,
    renew_reports,
    report_failed,
    report_sent,
    take_over_lapsed_reports,
)

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


@dataclass(frozen=True)
class _Stored:
    """A report file and what its File Meta Information says (PS3.10 7.1)."""

    item: _Pending
    path: Path
    sop_class: UID
    transfer_syntax: UID


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
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        # A file path given to send_c_store is sent from its bytes after the File Meta
        # Information, not decoded and re-encoded (pynetdicom's default reads it whole).
        # Process-wide, set once: the agent sends files by path only here.
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True

    def held(self) -> list[int]:
        """Ids of the deliveries this worker is sending now (their leases need renewing)."""
        with self._held_lock:
            return sorted(self._held)

    def _settle(self, item: _Pending) -> None:
        with self._held_lock:
            self._held.discard(item.report_id)

    def _still_held(self, item: _Pending) -> bool:
        with self._held_lock:
            return item.report_id in self._held

    def renew_leases(self) -> None:
        """Renew the leases of the deliveries in progress (called by the heartbeat)."""
        held = self.held()
        if not held:
            return
        try:
            with self.sessions.begin() as session:
                renewed = renew_reports(session, self.worker, held)
        except Exception as exc:  # the heartbeat goes on: the database may come back in time
            log.warning("delivery leases not renewed", reports=len(held), error=type(exc).__name__)
            return
        # One settled between held() and the renewal is not lost, only done.
        with self._held_lock:
            lost = (set(held) - renewed) & self._held
            self._held -= lost
        if lost:
            log.warning("delivery lease lost: reports taken back", reports=sorted(lost))
        else:
            log.debug("delivery leases renewed", reports=len(renewed))

    def run_once(self) -> int:
        """Send what is due; returns how many reports were delivered."""
        reports = self.settings.reports
        with self.sessions.begin() as session:
            taken = take_over_lapsed_reports(
                session,
                self.settings.pipeline.lease_seconds,
                max_attempts=reports.delivery_attempts,
            )
            pending = [
                _Pending(
                    r.id, r.destination, r.rel_path or "", r.sop_instance_uid, r.series_instance_uid
                )
                for r in claim_reports(session, self.worker, self.batch)
            ]
            with self._held_lock:
                self._held.update(item.report_id for item in pending)
        if taken:
            log.warning(
                "deliveries taken over: their sender stopped renewing its lease", reports=taken
            )
        by_destination: dict[str, list[_Pending]] = defaultdict(list)
        for item in pending:
            by_destination[item.destination].append(item)
        sent = 0
        try:
            for name, items in by_destination.items():
                dest = next((d for d in self.settings.destinations if d.name == name), None)
                if dest is None:
                    for item in items:
                        self._failed(item, f"destination {name!r} is no longer configured")
                    continue
                sent += self._send(dest, items)
        finally:
            # Whatever is left unsettled (an error above) lapses and is taken over.
            with self._held_lock:
                self._held.difference_update(item.report_id for item in pending)
        return sent

    def _read_meta(self, item: _Pending) -> _Stored | None:
        try:
            path = self.store.path_of(item.rel_path)
            meta = read_file_meta_info(path)
            stored = _Stored(
                item, path, UID(meta.MediaStorageSOPClassUID), UID(meta.TransferSyntaxUID)
            )
        except (OSError, ValueError, InvalidDicomError, AttributeError) as exc:
            self._failed(item, f"report file unreadable: {type(exc).__name__}: {exc}")
            return None
        return stored

    def _send(self, dest: Destination, items: list[_Pending]) -> int:
        files = [s for s in map(self._read_meta, items) if s is not None]
        if not files:
            return 0
        ae = scu(self.settings.node)
        # Each stored syntax in a context of its own, so a peer that accepts it is
        # not steered to another one; Implicit VR Little Endian, which every peer
        # supports (PS3.5 10.1), as the fallback.
        for sop_class, syntax in sorted({(f.sop_class, f.transfer_syntax) for f in files}):
            ae.add_requested_context(sop_class, syntax)
        for sop_class in sorted({f.sop_class for f in files}):
            if (sop_class, ImplicitVRLittleEndian) not in {
                (f.sop_class, f.transfer_syntax) for f in files
            }:
                ae.add_requested_context(sop_class, ImplicitVRLittleEndian)
        assoc = associate(ae, dest)  # over TLS when the destination has a tls table
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "destination unreachable"
            for f in files:
                self._failed(f.item, f"{reason} ({dest.ae_title}@{dest.host}:{dest.port})")
            return 0
        sent = 0
        try:
            for f in files:
                if not self._still_held(f.item):
                    log.warning("delivery skipped: lease taken back", report=f.item.report_id)
                    continue
                try:
                    rsp = _store(assoc, f)
                except (RuntimeError, ValueError, AttributeError, OSError) as exc:
                    self._failed(f.item, f"C-STORE not sent: {exc}")
                    continue
                code = int(rsp.Status) if "Status" in rsp else None
                if code in _STORED:
                    sent += self._sent(f.item, dest)
                else:
                    shown = "no response" if code is None else f"status 0x{code:04X}"
                    self._failed(f.item, f"C-STORE refused by {dest.name}: {shown}")
                if not assoc.is_established:
                    break  # aborted: the rest wait for the next attempt
        finally:
            if assoc.is_established:
                assoc.release()
        for f in files:
            if self._still_held(f.item):
                self._failed(f.item, f"association with {dest.name} ended before the C-STORE")
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
        self._settle(item)
        if ok:
            log.info("report delivered", destination=dest.name, report=item.report_id)
        else:
            log.warning("delivery not recorded: lease taken back", report=item.report_id)
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
        self._settle(item)
        log.warning("report not delivered", report=item.report_id, error=error, state=str(state))


def _store(assoc: Association, stored: _Stored) -> Dataset:
    """C-STORE one file: as encoded on disk when the peer accepted its syntax."""
    accepted = [c for c in assoc.accepted_contexts if c.abstract_syntax == stored.sop_class]
    if any(c.transfer_syntax[0] == stored.transfer_syntax for c in accepted):
        return assoc.send_c_store(stored.path)  # as stored (see Deliverer.__init__)
    if not accepted:
        raise ValueError(f"the destination accepted no context for SOP class {stored.sop_class}")
    log.debug(
        "report re-encoded: the destination refused its transfer syntax",
        report=stored.item.report_id,
        stored=str(stored.transfer_syntax),
        sent=str(accepted[0].transfer_syntax[0]),
    )
    return assoc.send_c_store(dcmread(stored.path))
