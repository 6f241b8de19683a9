"""Echo SRs (TID 5200) sent by DCMTK storescu to a running node become outcomes.

The reports are built as an echo system sends them (tests/support/echo_sr.py) and
checked with dciodvfy first, so the input itself is a valid Comprehensive SR.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import MetaData, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from agent.config import NodeSettings
from agent.logs import configure_logging
from agent.node.handlers import NodeHandlers, receive_limits
from agent.node.server import start_node
from agent.outcomes.intake import EchoReportIntake
from agent.pseudonym import Pseudonymizer
from storage.db import make_engine, make_session_factory
from storage.files import InstanceStore
from storage.models import AuditEvent, EchoOutcome, Instance, Series, Study
from tests.agent.conftest import DCMTK_ENV, NODE_AET, NodeUnderTest, dcmtk, start_test_node
from tests.agent.pipeline_env import Serve, agent_config, wait_for
from tests.support.echo_sr import EchoStudy, echo_report, num, section, standard_sections
from tests.support.outcome_cts import screened_ct

KEY = b"echo-sr-intake-test-key-0123456789"
CANARY_ID, CANARY_NAME, CANARY_BIRTH = "CANARYID9902", "CANARYNAME^SONO", "19030405"
pytestmark = pytest.mark.dcmtk


@pytest.fixture
def echo_node(tmp_path: Path, engine: Engine) -> Iterator[NodeUnderTest]:
    store = InstanceStore(tmp_path / "storage")
    store.prepare()
    settings = NodeSettings.model_validate({"ae_title": NODE_AET, "host": "127.0.0.1", "port": 0})
    intake = EchoReportIntake(store, Pseudonymizer(KEY), match_days=180)
    handlers = NodeHandlers(
        store, make_session_factory(engine), limits=receive_limits(settings), echo_reports=intake
    )
    node = NodeUnderTest(start_node(settings, handlers), store, handlers.sessions, engine, handlers)
    yield node
    node.node.stop()
    store.close()


def valid_file(report: object, path: Path) -> Path:
    report.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    assert "Error" not in checked.stdout + checked.stderr, checked.stderr
    return path


def canary_study(**kw: str) -> EchoStudy:
    return EchoStudy(
        CANARY_ID, patient_name=CANARY_NAME, birth_date=CANARY_BIRTH, issuer="SITE", **kw
    )


def dump(engine: Engine) -> str:
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        return repr([conn.execute(t.select()).all() for t in meta.tables.values()])


def test_echo_report_becomes_a_matched_outcome(
    echo_node: NodeUnderTest, engine: Engine, tmp_path: Path
) -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    patient = Pseudonymizer(KEY).patient(CANARY_ID, "SITE")
    with Session(engine) as session:
        screened_ct(session, "20250601", patient)  # 223 days before: outside
        ct = screened_ct(session, "20260101", patient)
        session.commit()
    study = canary_study(accession="ECHOACC77", study_date="20260110", sex="M")
    report = echo_report(study)
    path = valid_file(report, tmp_path / "echo.dcm")

    sent = echo_node.storescu(path)
    assert sent.returncode == 0, sent.stderr
    assert echo_node.storescu(path).returncode == 0  # resent: nothing new

    with Session(engine) as session:
        rows = session.scalars(select(EchoOutcome)).all()
        assert len(rows) == 1
        row = rows[0]
        assert (row.source, row.source_key) == ("sr", f"sr:{report.SOPInstanceUID}")
        assert (row.job_id, row.match_days, row.exam_date) == (ct, 9, "20260110")
        assert row.patient_pseudonym == patient
        # 61 mm -> 6.1 cm; 80 ml / 2.0 m2 -> 40 ml/m2; 310 cm/s -> 3.1 m/s
        assert row.measurements == {
            "lvef_percent": 45.0,
            "lvidd_cm": 6.1,
            "lavi_ml_m2": 40.0,
            "tr_velocity_m_s": 3.1,
            "pasp_mmhg": 42.0,
            "e_a_ratio": 1.1,
        }
        assert row.labels == {
            "reduced_lv_systolic_function": 1,
            "ventricular_enlargement": 1,  # 6.1 cm > 5.9 cm for a man
            "atrial_chamber_enlargement": 1,
            "left_atrial_filling_pressure": 1,
            "right_atrial_filling_pressure": 0,
            "pulmonary_hypertension": 1,
        }
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
        assert session.scalar(select(func.count()).select_from(Series)) == 2  # the CTs only
        assert (
            session.scalar(
                select(Study.id).where(Study.study_instance_uid == report.StudyInstanceUID)
            )
            is None
        )
        audits = session.scalars(
            select(AuditEvent.outcome).where(AuditEvent.event_type == "outcome_received")
        ).all()
        assert audits == ["imported", "duplicate"]
    assert row.rel_path is not None and row.rel_path.startswith("outcomes/")
    stored = dcmread(echo_node.store.path_of(row.rel_path))
    assert stored.SOPInstanceUID == report.SOPInstanceUID
    assert echo_node.files() == []  # nothing under instances/
    assert echo_node.temp_files() == []

    text = stream.getvalue()
    assert "echo report received" in text
    for canary in (CANARY_ID, CANARY_NAME, CANARY_NAME.split("^")[0], CANARY_BIRTH, "ECHOACC77"):
        assert canary not in text
        assert canary not in dump(engine)


def test_other_sr_is_answered_success_and_ignored(
    echo_node: NodeUnderTest, engine: Engine, tmp_path: Path
) -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    other = echo_report(
        canary_study(),
        sections=[],
        title=codes.DCM.ImagingMeasurementReport,
        sop_class=hd.sr.EnhancedSR,
    )
    path = valid_file(other, tmp_path / "other.dcm")
    sent = echo_node.storescu(path)
    assert sent.returncode == 0, sent.stderr
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(EchoOutcome)) == 0
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
    assert not (echo_node.store.root / "outcomes").exists()
    assert echo_node.temp_files() == []
    text = stream.getvalue()
    assert "structured report ignored: not an echo report" in text
    assert CANARY_ID not in text and CANARY_NAME not in text


def test_malformed_echo_report_is_refused(echo_node: NodeUnderTest, engine: Engine) -> None:
    wrong_unit = section(
        codes.SCT.LeftVentricle,
        num(codes.LN.LeftVentricleInternalEndDiastolicDimension, 5.5, "s"),
    )
    report = echo_report(canary_study(), sections=[*standard_sections()[:1], wrong_unit])
    no_date = echo_report(canary_study())
    del no_date.StudyDate
    del no_date.ContentDate
    ae = AE(ae_title="ECHO")
    ae.add_requested_context(report.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", echo_node.port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        answers = [assoc.send_c_store(ds) for ds in (report, no_date)]
    finally:
        assoc.release()
    assert [int(a.Status) for a in answers] == [0xC210, 0xC210]
    assert answers[0].ErrorComment == "echo report: LVIDd in unit 's'"
    assert answers[1].ErrorComment == "echo report: no Study Date"
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(EchoOutcome)) == 0
    assert not (echo_node.store.root / "outcomes").exists()
    assert echo_node.temp_files() == []


def test_without_the_intake_echo_srs_are_not_accepted(tmp_path: Path, engine: Engine) -> None:
    """``accept_echo_sr = false``: serve builds no intake, and no SR context is offered."""
    node = start_test_node(tmp_path, engine)
    try:
        path = valid_file(echo_report(canary_study()), tmp_path / "echo.dcm")
        sent = node.storescu(path)
    finally:
        node.node.stop()
        node.store.close()
    assert sent.returncode != 0
    assert "no presentation context" in (sent.stdout + sent.stderr).lower()
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(EchoOutcome)) == 0


@pytest.mark.slow
def test_serve_node_takes_echo_reports(tmp_path: Path) -> None:
    """``serve --role node`` as deployed: the intake wired from [outcomes] and [patients]."""
    unloadable = tmp_path / "not-a-checkpoint"  # a node never opens it
    unloadable.mkdir()
    key = KEY.decode()
    config = agent_config(tmp_path, unloadable, extra=f'[patients]\npseudonym_key = "{key}"\n')
    engine = make_engine(f"sqlite:///{tmp_path / 'agent.db'}")
    report = echo_report(canary_study(study_date="20260110"))
    path = valid_file(report, tmp_path / "echo.dcm")
    node = Serve(config, args=("--role", "node"))
    try:
        with Session(engine) as session:  # the node migrated the database at start
            ct = screened_ct(session, "20260105", Pseudonymizer(KEY).patient(CANARY_ID, "SITE"))
            session.commit()
        sent = subprocess.run(
            [dcmtk("storescu"), "-aec", NODE_AET, "127.0.0.1", str(node.port), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=DCMTK_ENV,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(lambda: node.events("echo report received"), 30, "the echo report", node)
    finally:
        assert node.stop() == 0
    with Session(engine) as session:
        row = session.scalars(select(EchoOutcome)).one()
        assert (row.job_id, row.match_days) == (ct, 5)
        assert row.labels["pulmonary_hypertension"] == 1
    engine.dispose()
    log = "".join(node.lines)
    for canary in (CANARY_ID, CANARY_NAME, CANARY_NAME.split("^")[0], CANARY_BIRTH):
        assert canary not in log
