"""``hyperct-agent explain`` as an operator runs it: a folder, a stored study, a stored series."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import update

from storage.models import Job, Series
from tests.agent.conftest import NodeUnderTest
from tests.agent.test_cli import cli, config_for
from tests.support.ct_series import CANARY_BIRTH, CANARY_ID, CANARY_NAME, ct_series, write_series


def issue_study(slices: int, rows: int = 16) -> dict[str, list[Dataset]]:
    """The issue's study: a localizer, a contrast series, a thick series and a thin one.

    ``slices`` is the thin series' count at 1 mm; the thick one covers the same length.
    """
    study = generate_uid()

    def series(n: int, spacing: float, **attrs: object) -> list[Dataset]:
        return ct_series(n, study_uid=study, spacing=spacing, rows=rows, columns=rows, attrs=attrs)

    return {
        "localizer": series(
            1,
            1.0,
            SeriesNumber=1,
            SeriesDescription="Topogram 0.6 T20f",
            ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        ),
        "contrast": series(
            slices,
            1.0,
            SeriesNumber=2,
            SeriesDescription="CHEST C+ 1.0",
            ContrastBolusAgent="IOPAMIDOL",
        ),
        "thick": series(slices // 5, 5.0, SeriesNumber=3, SeriesDescription="CHEST 5.0"),
        "thin": series(slices, 1.0, SeriesNumber=4, SeriesDescription="CHEST 1.0"),
    }


def uid(datasets: list[Dataset]) -> str:
    return str(datasets[0].SeriesInstanceUID)


def assert_no_patient_data(text: str) -> None:
    for canary in (CANARY_NAME, CANARY_ID, CANARY_BIRTH, "CANARY"):
        assert canary not in text


def block(output: str, series_uid: str) -> str:
    """The lines of one series in the output."""
    start = output.index(f" {series_uid}\n    decision:")
    end = output.find("\n\n", start)
    return output[start : None if end < 0 else end]


def test_explain_dir_chooses_the_thin_non_contrast_series(tmp_path: Path) -> None:
    study = issue_study(160)  # default settings: >= 64 slices, >= 150 mm
    for name, datasets in study.items():
        write_series(datasets, tmp_path / "in" / name)
    (tmp_path / "in" / "README.txt").write_text("not DICOM")

    proc = cli("explain", "--dir", str(tmp_path / "in"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert_no_patient_data(out + proc.stderr)
    assert "note: 1 files under" in out
    assert f"chosen: series 4 'CHEST 1.0' {uid(study['thin'])}" in out
    assert out.count("decision: screen") == 1
    assert "decision: screen" in block(out, uid(study["thin"]))

    localizer = block(out, uid(study["localizer"]))
    assert "decision: skip: not eligible" in localizer
    assert "[FAIL] image_type: Image Type ORIGINAL\\PRIMARY\\LOCALIZER lacks AXIAL" in localizer
    assert "[FAIL] series_kind" in localizer and "[FAIL] slices: 1 slice (< 64)" in localizer
    contrast = block(out, uid(study["contrast"]))
    assert "[FAIL] non_contrast: Contrast/Bolus Agent is 'IOPAMIDOL'" in contrast
    assert "[pass] slice_thickness" in contrast  # every check shown, not just the failure
    thick = block(out, uid(study["thick"]))
    assert "[FAIL] slice_thickness: 5 mm outside 0.5-3 mm" in thick
    assert "selection: not a candidate" in thick


def test_explain_dir_reports_a_missing_slice_as_partial(tmp_path: Path) -> None:
    positions = [-1.5 * i for i in range(120) if i != 50]
    write_series(ct_series(119, rows=16, columns=16, spacing=1.5, positions=positions), tmp_path)
    proc = cli("explain", "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "decision: skip: partial: 1 slice missing (gaps in the slice positions)" in proc.stdout
    assert "completeness: partial" in proc.stdout
    assert "chosen: none" in proc.stdout


def test_explain_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    empty = cli("explain", "--dir", str(tmp_path / "empty"))
    assert empty.returncode == 1
    assert empty.stderr == f"hyperct-agent: error: {tmp_path / 'empty'}: no DICOM files found\n"

    config = config_for(tmp_path, f"sqlite:///{tmp_path / 'a.db'}")
    assert cli("db", "upgrade", "--config", str(config)).returncode == 0
    unknown = cli("explain", "1.2.3.4.5", "--config", str(config))
    assert unknown.returncode == 1
    assert "Traceback" not in unknown.stderr
    # (alembic's JSON log lines about the revision check may come first)
    assert unknown.stderr.splitlines()[-1] == (
        "hyperct-agent: error: no series or study with UID '1.2.3.4.5' in the database"
    )
    neither = cli("explain")
    assert (
        neither.returncode == 2 and "one of the arguments uid --dir is required" in neither.stderr
    )


def test_explain_stored_study_and_series(tmp_path: Path, node: NodeUnderTest) -> None:
    study = issue_study(20)
    for datasets in study.values():
        files = write_series(datasets, tmp_path / "in" / uid(datasets))
        proc = node.storescu(*files)
        assert proc.returncode == 0, proc.stderr
    with node.sessions.begin() as session:
        series_id = session.query(Series.id).filter_by(series_instance_uid=uid(study["thick"]))
        session.execute(
            update(Job)
            .where(Job.series_id == series_id.scalar_subquery())
            .values(reason="not eligible; slice_thickness: 5 mm outside 0.5-3 mm")
        )
    url = node.engine.url.render_as_string(hide_password=False)
    small = (
        "[completeness]\nidle_seconds = 0.01\nmin_coverage_mm = 10.0\n"
        "[eligibility]\nmin_slices = 4\n"
    )
    config = str(config_for(tmp_path, url, small))
    study_uid = str(study["thin"][0].StudyInstanceUID)

    whole = cli("explain", study_uid, "--config", config)
    assert whole.returncode == 0, whole.stderr
    out = whole.stdout
    assert_no_patient_data(out + whole.stderr)
    assert f"study {study_uid} 'CT CHEST WITHOUT CONTRAST': 4 series" in out
    assert f"chosen: series 4 'CHEST 1.0' {uid(study['thin'])}" in out
    assert out.count("decision: screen") == 1
    assert "decision: screen" in block(out, uid(study["thin"]))
    assert "job: receiving" in block(out, uid(study["thin"]))

    one = cli("explain", uid(study["thick"]), "--config", config)
    assert one.returncode == 0, one.stderr
    assert uid(study["thin"]) in one.stdout  # the study's choice is named
    assert "decision:" in block(one.stdout, uid(study["thick"]))
    assert one.stdout.count("decision:") == 1  # only the series asked for
    assert "[FAIL] slice_thickness: 5 mm outside 0.5-3 mm" in one.stdout
    assert (
        "job: receiving - stored reason: not eligible; slice_thickness: 5 mm outside 0.5-3 mm"
        in one.stdout
    )
