"""``hyperct-agent outcomes import``: a CSV export in, labels and matches out, on both backends.

The identifiers in the file (and a canary name, ID and birth date in extra columns)
must appear in no database column, no output and no log line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from agent.cli import main
from agent.pseudonym import Pseudonymizer
from storage.models import EchoOutcome
from tests.support.outcome_cts import screened_ct

KEY = "outcome-import-test-key-0123456789"
CANARY_ID, CANARY_NAME, CANARY_BIRTH = "CANARYID5521", "CANARYNAME^ECHO", "19020304"

HEADER = (
    "Patient_ID,issuer,accession,exam_date,sex,lvef_percent,lvidd_cm,lavi_ml_m2,"
    "tr_velocity_m_s,pasp_mmhg,e_a_ratio,rv_function,patient_name,birth_date\n"
)
ROWS = [
    # 2: P1, enlarged LV for a woman, reduced LVEF; CT 22 days later is the closest
    f"{CANARY_ID},SITE,,2026-01-10,F,45,5.5,,,,,normal,{CANARY_NAME},{CANARY_BIRTH}\n",
    # 3: P2, nothing screened within 180 days
    "P2,,,20260110,,62,,40,3.0,38,2.1,moderately reduced,,\n",
    # 4: accession only, matched to the CT of that accession
    ",,ACC9,20260110,M,55,5.6,30,2.5,30,1.0,normal,,\n",
    # 5: not a date; 6: a shifted column puts the ID where a number goes
    "P3,,,10/01/2026,,50,,,,,,,,\n",
    f"P3,,,20260110,,{CANARY_ID},,,,,,,,\n",
    # 7: LVIDd given in mm: outside any plausible cm value
    "P3,,,20260110,,50,55,,,,,,,\n",
    # 8: no identifier at all
    ",,,20260110,,50,,,,,,,,\n",
]


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """The command run in this process (a subprocess per call costs seconds)."""

    def run(config: Path, *args: str) -> Ran:
        code = main(["outcomes", *args, "--config", str(config)])
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


@pytest.fixture
def config(tmp_path: Path, engine: Engine) -> Path:
    path = tmp_path / "agent.toml"
    url = engine.url.render_as_string(hide_password=False)
    path.write_text(
        f'[database]\nurl = "{url}"\n[storage]\nroot = "{tmp_path / "storage"}"\n'
        f'[patients]\npseudonym_key = "{KEY}"\n[logging]\nlevel = "debug"\nformat = "json"\n'
    )
    return path


def test_import_labels_matches_and_is_idempotent(
    tmp_path: Path, engine: Engine, config: Path, cli: Callable[..., Ran]
) -> None:
    pseudonyms = Pseudonymizer(KEY.encode())
    p1 = pseudonyms.patient(CANARY_ID, "site")  # the issuer's case does not matter
    with Session(engine) as session:
        screened_ct(session, "20251001", p1)
        closest = screened_ct(session, "20260201", p1)
        screened_ct(session, "20250601", pseudonyms.patient("P2"))  # 223 days before
        by_accession = screened_ct(session, "20260105", "e" * 64, pseudonyms.accession("ACC9"))
        session.commit()
    csv_file = tmp_path / "echo.csv"
    csv_file.write_text(HEADER + "".join(ROWS))

    first = cli(config, "import", str(csv_file))
    assert first.returncode == 1, first.stderr  # rows were rejected
    assert first.stdout.strip() == (
        "imported 3, updated 0, duplicates 0, matched 2, unmatched 1, rejected 4"
    )
    assert "row 5: exam_date is not a date (YYYYMMDD or YYYY-MM-DD)" in first.stderr
    assert "row 6: lvef_percent is not a number" in first.stderr
    assert "row 7: lvidd_cm is outside 1-15" in first.stderr
    assert "row 8: no patient_id or accession" in first.stderr
    assert "ignored columns: patient_name, birth_date" in first.stderr

    with Session(engine) as session:
        rows = {
            r.exam_date + (r.accession_pseudonym or r.patient_pseudonym or ""): r
            for r in session.scalars(select(EchoOutcome))
        }
        by_patient = {r.patient_pseudonym: r for r in rows.values()}
    one = by_patient[p1]
    assert (one.job_id, one.match_days) == (closest, -22)
    assert one.labels == {
        "reduced_lv_systolic_function": 1,
        "ventricular_enlargement": 1,  # 5.5 cm > 5.3 cm for a woman
        "reduced_rv_systolic_function": 0,
    }
    assert one.measurements == {"lvef_percent": 45.0, "lvidd_cm": 5.5, "rv_function": "normal"}
    two = by_patient[pseudonyms.patient("P2")]
    assert two.job_id is None
    assert two.labels == {
        "reduced_lv_systolic_function": 0,
        "atrial_chamber_enlargement": 1,
        "pulmonary_hypertension": 1,
        "left_atrial_filling_pressure": 1,
        "right_atrial_filling_pressure": 0,
        "reduced_rv_systolic_function": 1,
    }
    three = by_patient["e" * 64]  # matched by accession: the CT's patient
    assert three.job_id == by_accession and three.labels["ventricular_enlargement"] == 0

    again = cli(config, "import", str(csv_file))
    assert again.stdout.strip() == (
        "imported 0, updated 0, duplicates 3, matched 2, unmatched 1, rejected 4"
    )
    with Session(engine) as session:
        assert len(session.scalars(select(EchoOutcome)).all()) == 3

    # P2's CT screened later: ``outcomes match`` picks it up
    with Session(engine) as session:
        late = screened_ct(session, "20260120", pseudonyms.patient("P2"))
        session.commit()
    matched = cli(config, "match")
    assert matched.returncode == 0, matched.stderr
    assert matched.stdout.strip() == "newly matched 1; outcomes 3, matched 3, unmatched 0"
    with Session(engine) as session:
        assert session.scalar(select(EchoOutcome.job_id).where(EchoOutcome.id == two.id)) == late

    # no identifier anywhere: outputs, logs, any column of any table
    assert '"event": "outcomes imported"' in first.stderr  # the log is in what is checked
    shown = first.stdout + first.stderr + again.stdout + again.stderr + matched.stderr
    canaries = (CANARY_ID, CANARY_NAME, CANARY_NAME.split("^")[0], CANARY_BIRTH, "ACC9")
    for canary in canaries:
        assert canary not in shown
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        dump = repr([conn.execute(t.select()).all() for t in meta.tables.values()])
    for canary in canaries:
        assert canary not in dump


def test_bad_files_are_one_line_errors(
    tmp_path: Path, config: Path, cli: Callable[..., Ran]
) -> None:
    missing = cli(config, "import", str(tmp_path / "nope.csv"))
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1
    assert "cannot read" in missing.stderr
    no_date = tmp_path / "no_date.csv"
    no_date.write_text("patient_id,lvef_percent\nP1,40\n")
    out = cli(config, "import", str(no_date))
    assert out.returncode != 0 and out.stderr.strip().endswith(
        "the header has no 'exam_date' column"
    )
    latin = tmp_path / "latin.csv"
    latin.write_bytes("patient_id;exam_date;lvef_percent\nMÜLLER;20260110;40,5\n".encode("cp1252"))
    out = cli(config, "import", str(latin))
    assert "not utf-8-sig text" in out.stderr and "MÜLLER" not in out.stderr
    ok = cli(config, "import", str(latin), "--encoding", "cp1252")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith("imported 1,")
