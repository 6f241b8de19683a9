"""Audit records as RFC 5424 syslog messages shaped after IHE ATNA (DICOM PS3.15 A.5).

Each committed audit record (:mod:`storage.audit`) becomes one ``AuditMessage``
in the DICOM audit schema (PS3.15 A.5.1), sent as the MSG of an RFC 5424
message (facility authpriv, MSGID ``IHE+RFC-3881`` as in IHE ITI TF-2 3.20)
over UDP (RFC 5426) or a local datagram socket such as ``/dev/log``.

Event mapping (PS3.15 A.5.3, codes from PS3.16 CID 400-403):

========================== ===============================================
audit record               ATNA event
========================== ===============================================
application started/stop  Application Activity (110100): Start / Stop
instance_received/...     DICOM Instances Transferred (110104), action C
report_sent               Export (110106), action R: the report leaves
association rejected      Security Alert (110113): Node Authentication
security_alert (TLS)      Security Alert (110113): Node Authentication
admin                     Security Alert (110113): Use of Restricted Function
========================== ===============================================

Accepted associations stay in the database only: ATNA has no event for them.
UIDs of studies and series are sent (a receiving audit repository needs
them); patient data never is, as in the records themselves.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import xml.etree.ElementTree as ET
from typing import NamedTuple

from agent.config import Settings
from agent.logs import get_logger
from storage.audit import AuditRecord, set_audit_sink

log = get_logger("agent.audit")

# RFC 5424 6.2.1: facility 10 (security/authorization), severities 5 notice and 4 warning.
_FACILITY = 10
_MSGID = "IHE+RFC-3881"
_BOM = "\ufeff"


class _Code(NamedTuple):
    code: str
    meaning: str

    def element(self, parent: ET.Element, tag: str) -> None:
        ET.SubElement(
            parent,
            tag,
            {"csd-code": self.code, "codeSystemName": "DCM", "originalText": self.meaning},
        )


APPLICATION_ACTIVITY = _Code("110100", "Application Activity")
INSTANCES_TRANSFERRED = _Code("110104", "DICOM Instances Transferred")
EXPORT = _Code("110106", "Export")
SECURITY_ALERT = _Code("110113", "Security Alert")
APPLICATION_START = _Code("110120", "Application Start")
APPLICATION_STOP = _Code("110121", "Application Stop")
NODE_AUTHENTICATION = _Code("110126", "Node Authentication")
RESTRICTED_FUNCTION = _Code("110132", "Use of Restricted Function")
APPLICATION = _Code("110150", "Application")
DESTINATION = _Code("110152", "Destination Role ID")
SOURCE = _Code("110153", "Source Role ID")
STUDY_UID = _Code("110180", "Study Instance UID")

_SUCCESS = "0"
_MINOR_FAILURE = "4"
_SUCCESS_OUTCOMES = frozenset({"success", "started", "stopped", "stored", "duplicate", "accepted"})


def _event(record: AuditRecord) -> tuple[_Code, _Code | None, str] | None:
    """(EventID, EventTypeCode, EventActionCode) of a record, or None when ATNA has none."""
    kind, outcome = record.event_type, record.outcome
    if kind == "application":
        return (
            APPLICATION_ACTIVITY,
            APPLICATION_STOP if outcome == "stopped" else APPLICATION_START,
            "E",
        )
    if kind.startswith("instance_"):
        return INSTANCES_TRANSFERRED, None, "C"
    if kind == "report_sent":
        return EXPORT, None, "R"
    if kind == "association" and outcome == "rejected":
        return SECURITY_ALERT, NODE_AUTHENTICATION, "E"
    if kind == "security_alert":
        return SECURITY_ALERT, NODE_AUTHENTICATION, "E"
    if kind == "admin":
        return SECURITY_ALERT, RESTRICTED_FUNCTION, "E"
    return None


def atna_message(record: AuditRecord, ae_title: str, host: str) -> str | None:
    """The PS3.15 A.5.1 ``AuditMessage`` XML for ``record`` (None if it maps to no event)."""
    mapped = _event(record)
    if mapped is None:
        return None
    event_id, type_code, action = mapped
    ok = record.outcome in _SUCCESS_OUTCOMES
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": record.occurred_at.isoformat(),
            "EventOutcomeIndicator": _SUCCESS if ok else _MINOR_FAILURE,
        },
    )
    event_id.element(ident, "EventID")
    if type_code is not None:
        type_code.element(ident, "EventTypeCode")
    if not ok or record.detail:
        description = record.outcome
        reason = (record.detail or {}).get("reason")
        if reason:
            description += f": {reason}"
        ET.SubElement(ident, "EventOutcomeDescription").text = description

    ours = {
        "UserID": ae_title,
        "AlternativeUserID": str(os.getpid()),
        "NetworkAccessPointID": host,
        "NetworkAccessPointTypeCode": "1",
    }
    if event_id in (INSTANCES_TRANSFERRED, EXPORT) and record.source_ae:
        # Receiving: the peer is the source and requested the transfer; exporting: the reverse.
        receiving = event_id is INSTANCES_TRANSFERRED
        peer = {"UserID": record.source_ae, "UserIsRequestor": str(receiving).lower()}
        _participant(root, peer, SOURCE if receiving else DESTINATION)
        mine = {**ours, "UserIsRequestor": str(not receiving).lower()}
        _participant(root, mine, DESTINATION if receiving else SOURCE)
    else:
        _participant(root, {**ours, "UserIsRequestor": "false"}, APPLICATION)
        peer_address = (record.detail or {}).get("peer")
        if record.source_ae or peer_address:
            attrs = {"UserID": record.source_ae or str(peer_address), "UserIsRequestor": "true"}
            if peer_address:
                attrs |= {
                    "NetworkAccessPointID": str(peer_address),
                    "NetworkAccessPointTypeCode": "2",
                }
            ET.SubElement(root, "ActiveParticipant", attrs)
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": ae_title})
    if record.study_instance_uid:
        obj = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": record.study_instance_uid,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        STUDY_UID.element(obj, "ParticipantObjectIDTypeCode")
        for key, value in (
            ("SeriesInstanceUID", record.series_instance_uid),
            ("SOPInstanceUID", record.sop_instance_uid),
        ):
            if value:
                encoded = base64.b64encode(value.encode()).decode()
                ET.SubElement(obj, "ParticipantObjectDetail", {"type": key, "value": encoded})
    return ET.tostring(root, encoding="unicode")


def _participant(root: ET.Element, attrs: dict[str, str], role: _Code) -> None:
    role.element(ET.SubElement(root, "ActiveParticipant", attrs), "RoleIDCode")


def rfc5424(message: str, *, severity: int, hostname: str, app_name: str) -> bytes:
    """One RFC 5424 syslog message (6.1): header, no structured data, UTF-8 MSG with BOM."""
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    pri = _FACILITY * 8 + severity
    host = hostname[:255] or "-"
    header = f"<{pri}>1 {stamp} {host} {app_name[:48]} {os.getpid()} {_MSGID} -"
    return f"{header} {_BOM}{message}".encode()


class SyslogSink:
    """Sends ATNA messages to ``udp://HOST:PORT`` or ``unix:///PATH`` (datagrams)."""

    def __init__(self, url: str, ae_title: str, app_name: str = "hyperct-agent") -> None:
        self.ae_title = ae_title
        self.app_name = app_name
        self.hostname = socket.gethostname()
        self._warned = False
        self._lock = threading.Lock()
        if url.startswith("udp://"):
            host, _, port = url[len("udp://") :].rpartition(":")
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._address: str | tuple[str, int] = (host, int(port))
        else:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._address = url[len("unix://") :]

    def __call__(self, record: AuditRecord) -> None:
        message = atna_message(record, self.ae_title, self.hostname)
        if message is None:
            return
        ok = record.outcome in _SUCCESS_OUTCOMES
        data = rfc5424(
            message, severity=5 if ok else 4, hostname=self.hostname, app_name=self.app_name
        )
        try:
            with self._lock:
                self._sock.sendto(data, self._address)
        except OSError as exc:
            # The database keeps the record; one warning, not one per instance.
            if not self._warned:
                self._warned = True
                log.warning("audit syslog unreachable", error=exc.strerror or type(exc).__name__)

    def close(self) -> None:
        self._sock.close()


_current: SyslogSink | None = None


def configure_audit_output(settings: Settings) -> None:
    """Install (or remove) the syslog sink that ``[audit] syslog`` names."""
    global _current
    if _current is not None:
        _current.close()
        _current = None
    if settings.audit.syslog:
        _current = SyslogSink(settings.audit.syslog, settings.node.ae_title)
    set_audit_sink(_current)
