"""The audit trail (reliability row 17), its syslog form (IHE ATNA), and UIDs in logs.

Start and stop, accepted and rejected associations (with the reason),
received instances and TLS failures each leave a database record; with
``[audit] syslog`` each also arrives as an RFC 5424 message on a real UDP
socket. Log lines carry keyed hashes of UIDs, not the UIDs.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import socket
import stat
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from agent.audit_output import SyslogSink, atna_message, configure_audit_output
from agent.config import Settings, load_settings
from agent.errors import ConfigError
from agent.logs import configure_logging, get_logger, installation_uid_key
from storage.audit import AuditRecord, audit, set_audit_sink
from storage.models import AuditEvent
from storage.types import utcnow
from tests.agent.conftest import DCMTK_ENV, NODE_AET, NodeUnderTest, dcmtk
from tests.agent.test_crash import ServeProcess
from tests.support.ct_series import CANARY_ID, CANARY_NAME, ct_series, write_series

_HEADER = re.compile(
    r"^<(?P<pri>\d+)>1 (?P<ts>\S+Z) (?P<host>\S+) hyperct-agent (?P<pid>\d+) IHE\+RFC-3881 - "
)


@pytest.fixture
def collector() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def _received(sock: socket.socket, want: int) -> list[tuple[int, ET.Element]]:
    """(PRI, AuditMessage) of the datagrams that arrived, at least ``want`` unless it times out."""
    out: list[tuple[int, ET.Element]] = []
    sock.settimeout(5)
    while len(out) < want:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        text = data.decode("utf-8")
        match = _HEADER.match(text)
        assert match, text[:200]
        body = text[match.end() :]
        assert body.startswith("\ufeff")  # RFC 5424 6.4: UTF-8 MSG with a BOM
        out.append((int(match["pri"]), ET.fromstring(body[1:])))
    return out


def _event_id(message: ET.Element) -> str:
    return message.find("EventIdentification/EventID").get("csd-code")  # type: ignore[union-attr]


def _type_code(message: ET.Element) -> str | None:
    code = message.find("EventIdentification/EventTypeCode")
    return None if code is None else code.get("csd-code")


def _rows(engine_or_sessions, **where: str) -> list[AuditEvent]:
    with engine_or_sessions() as s:
        query = select(AuditEvent).order_by(AuditEvent.id)
        for key, value in where.items():
            query = query.where(getattr(AuditEvent, key) == value)
        return list(s.scalars(query).all())


# -- the database trail, on both backends ---------------------------------------------


def test_node_audits_associations_and_instances(node: NodeUnderTest, tmp_path: Path) -> None:
    datasets = ct_series(3)
    files = write_series(datasets, tmp_path / "in")
    assert node.storescu(*files).returncode == 0
    assert node.storescu(*files[:1], called="NOTME").returncode != 0
    assert node.storescu(*files[:1]).returncode == 0  # an identical resend is audited too

    received = _rows(node.sessions, event_type="instance_received")
    assert [r.outcome for r in received] == ["stored"] * 3 + ["duplicate"]
    sent = {(d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID) for d in datasets}
    got = {(r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid) for r in received}
    assert got == sent
    assert {r.source_ae for r in received} == {"PACS"}
    [rejected] = _rows(node.sessions, event_type="association", outcome="rejected")
    assert rejected.source_ae == "PACS"
    assert rejected.detail is not None and rejected.detail["called_ae"] == "NOTME"
    assert "called" in rejected.detail["reason"].lower()
    assert len(_rows(node.sessions, event_type="association", outcome="accepted")) == 2
    for row in _rows(node.sessions):
        assert CANARY_NAME not in json.dumps(row.detail or {})
        assert CANARY_ID not in json.dumps(row.detail or {})


# -- serve: start/stop in the database and on syslog ---------------------------------------


def test_serve_audits_start_stop_and_instances_to_syslog(
    tmp_path: Path, collector: socket.socket
) -> None:
    port = collector.getsockname()[1]
    config = tmp_path / "agent.toml"
    config.write_text(
        '[node]\nport = 0\n[storage]\nroot = "storage"\nmin_free_bytes = 0\n'
        '[database]\nurl = "sqlite:///agent.db"\n[logging]\nlevel = "info"\nformat = "json"\n'
        f'[audit]\nsyslog = "udp://127.0.0.1:{port}"\n'
    )
    datasets = ct_series(2)
    files = write_series(datasets, tmp_path / "in")
    serve = ServeProcess(config)
    try:
        proc = subprocess.run(
            [dcmtk("storescu"), "-aet", "PACS", "-aec", NODE_AET, "127.0.0.1", str(serve.port),
             *map(str, files)],
            capture_output=True, text=True, timeout=60, env=DCMTK_ENV,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        rejected = subprocess.run(
            [dcmtk("echoscu"), "-aet", "PACS", "-aec", "NOTME", "127.0.0.1", str(serve.port)],
            capture_output=True, text=True, timeout=60, env=DCMTK_ENV,
        )  # fmt: skip
        assert rejected.returncode != 0
    finally:
        assert serve.stop() == 0
    messages = _received(collector, want=5)
    kinds = [(_event_id(m), _type_code(m)) for _, m in messages]
    assert kinds[0] == ("110100", "110120")  # Application Activity: Application Start
    assert kinds[-1] == ("110100", "110121")  # ... Application Stop
    transferred = [m for _, m in messages if _event_id(m) == "110104"]
    assert len(transferred) == 2
    for message in transferred:
        obj = message.find("ParticipantObjectIdentification")
        assert obj is not None and obj.get("ParticipantObjectID") == datasets[0].StudyInstanceUID
        details = {d.get("type"): base64.b64decode(d.get("value", "")).decode() for d in obj}
        assert details["SeriesInstanceUID"] == datasets[0].SeriesInstanceUID
        roles = {
            p.get("UserID"): p.find("RoleIDCode").get("csd-code")  # type: ignore[union-attr]
            for p in message.findall("ActiveParticipant")
        }
        assert roles == {"PACS": "110153", NODE_AET: "110152"}  # source, destination
    alerts = [(pri, m) for pri, m in messages if _event_id(m) == "110113"]
    assert len(alerts) == 1 and alerts[0][0] == 10 * 8 + 4  # authpriv.warning
    outcome = alerts[0][1].find("EventIdentification")
    assert outcome is not None and outcome.get("EventOutcomeIndicator") == "4"
    raw = b"".join(ET.tostring(m) for _, m in messages).decode()
    assert CANARY_NAME not in raw and CANARY_ID not in raw

    db = create_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    with db.connect() as conn:
        rows = conn.execute(
            select(AuditEvent.event_type, AuditEvent.outcome).order_by(AuditEvent.id)
        ).all()
    db.dispose()
    assert rows[0] == ("application", "started") and rows[-1] == ("application", "stopped")
    assert rows.count(("instance_received", "stored")) == 2
    assert ("association", "rejected") in rows


# -- the sink: committed records only; unreachable syslog harmless ----------------------------


def test_only_committed_records_reach_the_sink(session, collector: socket.socket) -> None:
    seen: list[AuditRecord] = []
    set_audit_sink(seen.append)
    try:
        audit(session, "admin", "job_retry", detail={"job": 1})
        session.rollback()
        assert seen == []
        audit(session, "admin", "job_requeue", detail={"job": 2})
        session.commit()
        assert [(r.event_type, r.outcome) for r in seen] == [("admin", "job_requeue")]
    finally:
        set_audit_sink(None)


def test_unreachable_syslog_does_not_fail_the_commit(session) -> None:
    sink = SyslogSink("unix:///nonexistent/hyperct-log", "HYPERCT")
    set_audit_sink(sink)
    try:
        audit(session, "application", "started")
        session.commit()  # sending fails; the record is in the database regardless
        assert session.scalar(select(AuditEvent.outcome)) == "started"
    finally:
        set_audit_sink(None)
        sink.close()


def test_atna_mapping_of_admin_and_report_sent() -> None:
    def record(event_type: str, outcome: str, **kw: object) -> AuditRecord:
        fields: dict = dict.fromkeys(
            ("source_ae", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "detail")
        )
        fields.update(kw)
        return AuditRecord(utcnow(), event_type, outcome, **fields)

    admin = ET.fromstring(atna_message(record("admin", "job_retry"), "HYPERCT", "h") or "")
    assert (_event_id(admin), _type_code(admin)) == ("110113", "110132")
    report = ET.fromstring(
        atna_message(record("report_sent", "success", source_ae="PACS"), "HYPERCT", "h") or ""
    )
    assert _event_id(report) == "110106"  # Export
    roles = {
        p.get("UserID"): p.find("RoleIDCode").get("csd-code")  # type: ignore[union-attr]
        for p in report.findall("ActiveParticipant")
    }
    assert roles == {"PACS": "110152", "HYPERCT": "110153"}  # the report goes to PACS
    assert atna_message(record("association", "accepted"), "HYPERCT", "h") is None


def test_syslog_setting_is_checked(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[audit]\nsyslog = "tcp://example:514"\n')
    with pytest.raises(ConfigError, match=r"\[audit\].syslog: .*udp://HOST:PORT"):
        load_settings(config)
    settings = Settings.model_validate({"audit": {"syslog": "unix:///dev/log"}})
    configure_audit_output(settings)  # a datagram socket; nothing is sent yet
    configure_audit_output(Settings())


# -- UIDs in logs ---------------------------------------------------------------------------


UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def _log_lines(**kwargs: object) -> str:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream, **kwargs)  # type: ignore[arg-type]
    get_logger("agent.test").info("instance refused", sop_instance_uid=UID, peer="127.0.0.1")
    get_logger("agent.test").info(f"series {UID} complete", syntax="1.2.840.10008.1.2.1")
    logging.getLogger("pynetdicom.test").warning("Received store request for %s", UID)
    return stream.getvalue()


def test_uids_in_log_lines_are_keyed_hashes(tmp_path: Path) -> None:
    key = installation_uid_key(tmp_path / "storage")
    assert installation_uid_key(tmp_path / "storage") == key  # stable per installation
    assert stat.S_IMODE((tmp_path / "storage" / ".uid-hash-key").stat().st_mode) == 0o600
    try:
        text = _log_lines(uid_key=key)
        assert UID not in text
        tokens = set(re.findall(r"uid#[0-9a-f]{16}", text))
        assert len(tokens) == 1  # one UID, one token, in fields, messages and foreign lines
        assert text.count(next(iter(tokens))) == 3
        assert "127.0.0.1" in text  # addresses are not UIDs
        assert "1.2.840.10008.1.2.1" in text  # nor are the standard's own UIDs
        assert next(iter(tokens)) not in _log_lines(uid_key=b"another installation")
        assert text.count(UID) == 0 and _log_lines(raw_uids=True).count(UID) == 3
    finally:
        configure_logging("warning", "console", stream=io.StringIO())


def test_libraries_routine_info_lines_only_at_debug() -> None:
    """APScheduler, Alembic and highdicom narrate routine work at INFO; an operator's log
    at the default level carries the agent's own lines and the libraries' warnings."""
    try:
        for level, expected in (("info", False), ("debug", True)):
            stream = io.StringIO()
            configure_logging(level, "json", stream=stream)
            for name in ("apscheduler.scheduler", "alembic.runtime.migration", "highdicom.base"):
                logging.getLogger(name).info("routine line from %s", name)
                logging.getLogger(name).warning("warning from %s", name)
            text = stream.getvalue()
            assert ("routine line from highdicom.base" in text) is expected
            assert ("routine line from apscheduler.scheduler" in text) is expected
            assert ("routine line from alembic.runtime.migration" in text) is expected
            assert text.count("warning from") == 3
    finally:
        configure_logging("warning", "console", stream=io.StringIO())
