"""``hyperct-agent explain`` as an operator runs it, and that it tells what the job tells.

For series of every kind (complete, gap, a slice sent twice, two images at one
position, mixed orientation, localizer, contrast, too few slices, Enhanced CT,
and a study with two candidates), the decision and reasons ``explain`` prints
from the database after a real sweep, and from ``--dir`` on the same files,
are the job row's state and reasons.
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid
from sqlalchemy import select

from agent.cli import main
from agent.config import load_settings
from agent.pipeline.sweep import Sweeper
from agent.series.completeness import FOLDER_FINAL, forced_reason
from hyperct_core.errors import PreprocessError
from hyperct_core.grid_phantom import Grid, make_enhanced
from hyperct_core.volume import volume_from_datasets
from storage.models import Instance, Job, Series
from storage.types import utcnow
from tests.agent.conftest import NodeUnderTest
from tests.agent.test_cli import cli, config_for
from tests.support.ct_series import CANARY_BIRTH, CANARY_ID, CANARY_NAME, ct_series, write_series

# Small series: 16 x 16 pixels, a dozen slices; the thresholds are scaled to match.
SMALL = (
    "[completeness]\nidle_seconds = 0.5\nforce_seconds = 2.0\nmin_coverage_mm = 10.0\n"
    "[eligibility]\nmin_slices = 8\n"
)


def series(n: int, spacing: float = 1.0, **attrs: object) -> list[Dataset]:
    return ct_series(n, rows=16, columns=16, spacing=spacing, attrs=attrs)


def resent(datasets: list[Dataset], index: int, pixels_from: int | None = None) -> list[Dataset]:
    """``datasets`` plus slice ``index`` again under a new SOP Instance UID.

    ``pixels_from`` gives the copy another slice's pixels: two images at one position.
    """
    twin = copy.deepcopy(datasets[index])
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if pixels_from is not None:
        twin.PixelData = datasets[pixels_from].PixelData
    return [*datasets, twin]


def mixed_orientation() -> list[Dataset]:
    datasets = series(12)
    datasets[4].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # one coronal image
    return datasets


def enhanced() -> list[Dataset]:
    ds = make_enhanced(Grid(size=(16, 16, 9)))
    ds.BodyPartExamined, ds.SeriesDescription, ds.SeriesNumber = "CHEST", "CHEST 2.0", 5
    return [ds]


def enhanced_two_frames_at_one_position() -> list[Dataset]:
    (ds,) = enhanced()
    frames = ds.PerFrameFunctionalGroupsSequence
    frames[5].PlanePositionSequence[0].ImagePositionPatient = list(
        frames[4].PlanePositionSequence[0].ImagePositionPatient
    )
    return [ds]


def two_candidates() -> dict[str, list[Dataset]]:
    """One study, a thick series (number 3) and a thin one (number 4) that ranks first."""
    study = generate_uid()
    thick = ct_series(10, rows=16, columns=16, spacing=2.5, study_uid=study,
                      attrs={"SeriesNumber": 3, "SeriesDescription": "CHEST 2.5"})  # fmt: skip
    thin = ct_series(24, rows=16, columns=16, spacing=1.0, study_uid=study,
                     attrs={"SeriesNumber": 4, "SeriesDescription": "CHEST 1.0"})  # fmt: skip
    return {"thick": thick, "thin": thin}


# variant -> (its instances, the state the sweep records)
def variants() -> dict[str, tuple[list[Dataset], str]]:
    gap = [-float(i) for i in range(13) if i != 6]
    candidates = two_candidates()
    return {
        "complete": (series(12), "queued"),
        "gap": (ct_series(12, rows=16, columns=16, spacing=1.0, positions=gap), "incomplete"),
        "sent twice": (resent(series(12), 5), "queued"),
        "two images at one position": (resent(series(12), 5, pixels_from=6), "incomplete"),
        "mixed orientation": (mixed_orientation(), "incomplete"),
        "localizer": (
            series(
                12,
                ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                SeriesDescription="Topogram 0.6 T20f",
            ),  # fmt: skip
            "skipped",
        ),
        "contrast": (series(12, ContrastBolusAgent="IOPAMIDOL"), "skipped"),
        "too few slices": (series(6, spacing=2.5), "skipped"),
        "enhanced CT": (enhanced(), "queued"),
        "enhanced CT, two frames at one position": (
            enhanced_two_frames_at_one_position(),
            "incomplete",
        ),
        "thick": (candidates["thick"], "skipped"),
        "thin": (candidates["thin"], "queued"),
    }


def uid(datasets: list[Dataset]) -> str:
    return str(datasets[0].SeriesInstanceUID)


_SERIES_LINE = re.compile(r"^  series .* (\S+)$")


def decisions(output: str) -> dict[str, tuple[str, str]]:
    """Series Instance UID -> (decision, reason) as ``explain`` prints them."""
    lines = output.splitlines()
    found = {}
    for i, line in enumerate(lines):
        match = _SERIES_LINE.match(line)
        if match and lines[i + 1].startswith("    decision: "):
            state = lines[i + 1].removeprefix("    decision: ")
            reason = lines[i + 2].removeprefix("    reason: ")
            found[match.group(1)] = (state, reason)
    return found


def assert_no_patient_data(text: str) -> None:
    for canary in (CANARY_NAME, CANARY_ID, CANARY_BIRTH, "CANARY"):
        assert canary not in text


def block(output: str, series_uid: str) -> str:
    """The lines of one series in the output."""
    start = output.index(f" {series_uid}\n    decision:")
    end = output.find("\n\n", start)
    return output[start : None if end < 0 else end]


def test_explain_tells_what_the_sweep_stored_for_every_kind_of_series(
    tmp_path: Path, node: NodeUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = variants()
    folder = tmp_path / "in"
    for name, (datasets, _) in cases.items():
        files = write_series(datasets, folder / name.replace(" ", "_"))
        assert node.storescu(*files).returncode == 0, name
    url = node.engine.url.render_as_string(hide_password=False)
    config = config_for(tmp_path, url, f'[storage]\nroot = "{node.store.root}"\n{SMALL}')
    settings = load_settings(config)
    Sweeper(settings, node.sessions).run_once(now=utcnow() + timedelta(seconds=60))

    with node.sessions() as session:
        stored = {
            series_uid: (str(state), reason)
            for series_uid, state, reason in session.execute(
                select(Series.series_instance_uid, Job.state, Job.reason).join(Job)
            )
        }
    # The sweep decided as intended (the equalities below would hold for any decision).
    assert {name: stored[uid(d)][0] for name, (d, _) in cases.items()} == {
        name: state for name, (_, state) in cases.items()
    }
    assert "each slice is read once" in stored[uid(cases["sent twice"][0])][1]
    assert "not with the same image" in stored[uid(cases["two images at one position"][0])][1]
    assert stored[uid(cases["thick"][0])][1].startswith("not chosen: thicker slices (2.5 mm)")

    from_dir = cli("explain", "--dir", str(folder), "--config", str(config))
    assert from_dir.returncode == 0, from_dir.stderr
    assert "skipped" not in from_dir.stdout.split("study", 1)[0]  # no file left out
    folder_decisions = decisions(from_dir.stdout)
    for name, (datasets, _) in cases.items():
        series_uid = uid(datasets)
        # The command's main in this process: one interpreter start per series is slow.
        assert main(["explain", series_uid, "--config", str(config)]) == 0
        one = capsys.readouterr()
        assert_no_patient_data(one.out + one.err)
        assert decisions(one.out) == {series_uid: stored[series_uid]}, name
        assert "next sweep" not in one.out, name  # judged now, it is still the same
        # A folder has no force timer: that clause alone may read differently.
        state, reason = stored[series_uid]
        reason = reason.replace(forced_reason(settings.completeness), FOLDER_FINAL)
        assert folder_decisions[series_uid] == (state, reason), name

    # Settings changed since: the stored decision is shown, and what they would decide now.
    (tmp_path / "looser").mkdir()
    looser_settings = SMALL.replace("min_slices = 8", "min_slices = 4")
    storage = f'[storage]\nroot = "{node.store.root}"\n'
    looser = config_for(tmp_path / "looser", url, storage + looser_settings)
    few = uid(cases["too few slices"][0])
    assert main(["explain", few, "--config", str(looser)]) == 0
    out = capsys.readouterr().out
    assert decisions(out) == {few: stored[few]}
    assert (
        "judged now with the configured settings: queued: complete and eligible "
        "(the stored decision stands until new instances arrive)" in out
    )

    # Screening reads the same: the slice sent twice once, two images at one position never.
    def stored_files(datasets: list[Dataset]) -> list[Path]:
        with node.sessions() as session:
            rel = session.scalars(
                select(Instance.rel_path)
                .join(Series)
                .where(Series.series_instance_uid == uid(datasets))
            ).all()
        return [node.store.path_of(p) for p in rel]

    volume = volume_from_datasets(stored_files(cases["sent twice"][0]))
    assert volume.shape[0] == 12
    for refused in ("two images at one position", "enhanced CT, two frames at one position"):
        with pytest.raises(PreprocessError, match="duplicate slice position: .* different images"):
            volume_from_datasets(stored_files(cases[refused][0]))
    enhanced_reason = stored[uid(cases["enhanced CT, two frames at one position"][0])][1]
    assert enhanced_reason.startswith(
        "the frames cannot form one volume: duplicate slice position: instance 1 frame"
    )


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # written on purpose
def test_explain_dir_says_why_each_file_was_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_series(series(12), folder / "good")
    (folder / "notes.txt").write_text("not DICOM\n")
    no_pixels = series(1)[0]
    del no_pixels.PixelData
    no_pixels.save_as(folder / "no_pixels.dcm", enforce_file_format=True)
    bad_uid = series(1)[0]
    bad_uid.StudyInstanceUID = "1.2.03.4"  # PS3.5 9.1: no leading zero in a component
    bad_uid.save_as(folder / "bad_uid.dcm", enforce_file_format=True)
    no_series = series(1)[0]
    del no_series.SeriesInstanceUID
    no_series.save_as(folder / "no_series.dcm", enforce_file_format=True)
    whole = (folder / "good" / "img0000.dcm").read_bytes()
    (folder / "cut_pixels.dcm").write_bytes(whole[:-100])
    (folder / "cut_header.dcm").write_bytes(whole[:400])
    rle = series(1)[0]
    rle.compress(RLELossless)
    rle.save_as(folder / "cut_rle.dcm", enforce_file_format=True)
    (folder / "cut_rle.dcm").write_bytes((folder / "cut_rle.dcm").read_bytes()[:-60])
    (folder / "copy.dcm").write_bytes(whole)
    sr = series(1, SOPClassUID="1.2.840.10008.5.1.4.1.1.88.22")[0]  # Enhanced SR
    sr.save_as(folder / "sr.dcm", enforce_file_format=False)

    proc = cli(
        "explain", "--dir", str(folder), "--config", str(config_for(tmp_path, "sqlite://", SMALL))
    )
    assert proc.returncode == 0, proc.stderr
    assert_no_patient_data(proc.stdout + proc.stderr)
    head = proc.stdout.split("\nstudy ", 1)[0].splitlines()
    assert head[0] == f"skipped 9 of the files under {folder}:"
    lines = sorted(head[1:])
    assert lines == sorted(
        [
            "  1 not DICOM: no 'DICM' after a 128-byte preamble, and not a bare DICOM dataset: "
            "notes.txt",
            "  1 no Pixel Data (not an image): no_pixels.dcm",
            "  1 header: StudyInstanceUID is not a valid UID: bad_uid.dcm",
            "  1 header: SeriesInstanceUID is missing: no_series.dcm",
            # The node's receive rules refuse a cut file before it is stored.
            "  1 header: Pixel Data's length runs beyond the end of the data: cut_pixels.dcm",
            "  1 header: a Pixel Data fragment runs beyond the end of the data: cut_rle.dcm",
            "  1 header: StudyInstanceUID is missing, and no Pixel Data follows "
            "(a file cut short?): cut_header.dcm",
            "  1 same SOP Instance UID as another file (counted once, as the node records it): "
            "good/img0000.dcm",
            "  1 SOP Class 1.2.840.10008.5.1.4.1.1.88.22 (Enhanced SR Storage) is not accepted: "
            "sr.dcm",
        ]
    )
    assert list(decisions(proc.stdout).values()) == [("queued", "complete and eligible")]


def test_explain_dir_groups_many_files_per_reason(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"page{i}.txt").write_text("text")
    proc = cli("explain", "--dir", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[1] == (
        "  5 not DICOM: no 'DICM' after a 128-byte preamble, and not a bare DICOM dataset: "
        "page0.txt, page1.txt, page2.txt, ..."
    )
    assert proc.stderr == (
        f"hyperct-agent: error: {tmp_path}: no DICOM files found that the node would store "
        "(reasons above)\n"
    )


def test_explain_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    empty = cli("explain", "--dir", str(tmp_path / "empty"))
    assert empty.returncode == 1
    assert empty.stderr == (
        f"hyperct-agent: error: {tmp_path / 'empty'}: "
        "no DICOM files found that the node would store\n"
    )

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


def test_explain_a_series_the_sweep_has_not_decided_yet(
    tmp_path: Path, node: NodeUnderTest
) -> None:
    cases = two_candidates()
    thick = series(10, spacing=5.0)  # another study: too thick
    for datasets in (*cases.values(), thick):
        files = write_series(datasets, tmp_path / "in" / uid(datasets))
        assert node.storescu(*files).returncode == 0
    url = node.engine.url.render_as_string(hide_password=False)
    config = str(config_for(tmp_path, url, f'[storage]\nroot = "{node.store.root}"\n{SMALL}'))
    study_uid = str(cases["thin"][0].StudyInstanceUID)

    whole = cli("explain", study_uid, "--config", config)
    assert whole.returncode == 0, whole.stderr
    out = whole.stdout
    assert_no_patient_data(out + whole.stderr)
    assert f"study {study_uid} 'CT CHEST WITHOUT CONTRAST': 2 series" in out
    assert "chosen: none (no series queued or screened)" in out  # nothing decided yet
    for datasets in cases.values():
        lines = block(out, uid(datasets))
        assert "decision: receiving" in lines
        assert "decided by: the sweep, as stored in the job row" in lines
    # Each judged alone, as the next sweep would: both queue (no sibling chosen yet).
    assert "next sweep (judged now, configured settings): queued: complete and eligible" in block(
        out, uid(cases["thin"])
    )

    one = cli("explain", uid(thick), "--config", config)
    assert one.returncode == 0, one.stderr
    assert one.stdout.count("decision:") == 1  # only the series asked for
    assert "[FAIL] slice_thickness: 5 mm outside 0.5-3 mm" in one.stdout
    assert (
        "next sweep (judged now, configured settings): skipped: not eligible; "
        "slice_thickness: 5 mm outside 0.5-3 mm" in one.stdout
    )
