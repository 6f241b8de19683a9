"""Patients without patient data: the node keeps keyed pseudonyms, never the identifiers.

Studies with distinctive canary identifiers go through the real node (DCMTK
storescu); afterwards no table, on either backend, and no debug log line holds
any canary, while the pseudonyms link the studies of one patient.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, select

from agent.errors import ConfigError
from agent.logs import configure_logging
from agent.pseudonym import KEY_FILE, Pseudonymizer, load_pseudonymizer
from storage.models import Series, Study
from tests.agent.conftest import start_test_node
from tests.agent.test_cli import cli, config_for
from tests.support.ct_series import ct_series, write_series

KEY = Pseudonymizer(b"canary-test-key-" * 2)

PATIENT_A = {
    "PatientName": "QXCANARYNAME^ALPHA",
    "PatientID": "QXCANARYPID41",
    "IssuerOfPatientID": "QXCANARYISSUER",
    "PatientBirthDate": "18990417",
    "AccessionNumber": "QXCANARYACC1",
}
PATIENT_B = {
    "PatientName": "QXCANARYNAME^BETA",
    "PatientID": "QXCANARYPID42",
    "IssuerOfPatientID": "QXCANARYISSUER",
    "PatientBirthDate": "18990418",
    "AccessionNumber": "QXCANARYACC3",
}
ACQUISITION = {"Manufacturer": "ACME CT", "KVP": "120", "ConvolutionKernel": ["B30f", "SOFT"]}


def _canaries() -> list[str]:
    values = [*PATIENT_A.values(), *PATIENT_B.values(), "QXCANARYACC2"]
    # Also each part of a name and the common stem, whatever the encoding.
    return sorted({*values, *(p for v in values for p in v.split("^")), "QXCANARY"})


def _dump(engine: Engine) -> str:
    """Every value of every table, as text."""
    meta = MetaData()
    meta.reflect(engine)
    parts = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                parts.append(f"{table.name}: {tuple(row)!r}")
    return "\n".join(parts)


def test_canaries_never_stored_nor_logged(tmp_path: Path, engine: Engine) -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    node = start_test_node(tmp_path, engine, pseudonymizer=KEY)
    try:
        studies = [
            ct_series(3, attrs={**PATIENT_A, **ACQUISITION}),
            ct_series(2, attrs={**PATIENT_A, "AccessionNumber": "QXCANARYACC2"}),
            ct_series(2, attrs=PATIENT_B),
        ]
        for n, datasets in enumerate(studies):
            sent = node.storescu(*write_series(datasets, tmp_path / f"in{n}"))
            assert sent.returncode == 0, sent.stderr
    finally:
        node.node.stop()
        node.store.close()

    with node.sessions() as s:
        rows = {
            uid: (patient, accession)
            for uid, patient, accession in s.execute(
                select(Study.study_instance_uid, Study.patient_pseudonym, Study.accession_pseudonym)
            )
        }
        series = s.execute(
            select(Series.manufacturer, Series.kvp, Series.convolution_kernel).order_by(Series.id)
        ).all()
    a1, a2, b = (rows[d[0].StudyInstanceUID] for d in studies)
    assert a1[0] == a2[0] == KEY.patient("QXCANARYPID41", "QXCANARYISSUER")
    assert b[0] == KEY.patient("QXCANARYPID42", "QXCANARYISSUER") != a1[0]
    assert len({a1[1], a2[1], b[1]}) == 3 and None not in (a1[1], a2[1], b[1])
    assert tuple(series[0]) == ("ACME CT", 120.0, "B30f\\SOFT")

    dump = _dump(engine)
    text = stream.getvalue()
    assert "series ready" in text or "store answered" in text  # debug lines were captured
    assert "QXCANARYACC" not in dump  # the accession numbers too
    for canary in _canaries():
        assert canary not in dump, canary
        assert canary not in text, canary


def test_later_series_fills_a_missing_pseudonym(tmp_path: Path, engine: Engine) -> None:
    node = start_test_node(tmp_path, engine, pseudonymizer=KEY)
    try:
        first = ct_series(2, attrs={"PatientID": None, "AccessionNumber": None})
        study = first[0].StudyInstanceUID
        second = ct_series(2, study_uid=study, attrs={**PATIENT_A, "PatientID": "OTHER"})
        third = ct_series(2, study_uid=study, attrs=PATIENT_B)
        for n, datasets in enumerate((first, second, third)):
            assert node.storescu(*write_series(datasets, tmp_path / f"s{n}")).returncode == 0
    finally:
        node.node.stop()
        node.store.close()
    with node.sessions() as s:
        got = s.execute(select(Study.patient_pseudonym, Study.accession_pseudonym)).one()
    # Filled by the second series, never changed by the third.
    assert tuple(got) == (KEY.patient("OTHER", "QXCANARYISSUER"), KEY.accession("QXCANARYACC1"))


def test_damaged_key_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"\xff\xfe not hex")
    with pytest.raises(ConfigError, match="not a pseudonym key"):
        load_pseudonymizer("", tmp_path)
    with pytest.raises(ConfigError, match="at least 16"):
        load_pseudonymizer("short", tmp_path)
    assert "canary" not in repr(Pseudonymizer(b"canary-secret-key-0123"))


def test_serve_with_a_damaged_key_stops_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    root.mkdir()
    (root / KEY_FILE).write_text("not a key\n")
    config = config_for(
        tmp_path,
        f"sqlite:///{tmp_path / 'agent.db'}",
        f'[storage]\nroot = "{root}"\n[node]\nport = 0\n',
    )
    proc = cli("serve", "--role", "node", "--config", str(config))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"hyperct-agent: error: {root / KEY_FILE}: not a pseudonym key (hex expected)"
