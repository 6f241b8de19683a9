"""SeriesFacts from a real node ingest (SQLite and PostgreSQL) equal those read from the files."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.uid import EnhancedCTImageStorage, generate_uid

from agent.config import CompletenessSettings
from agent.intake.folder import COPY, NOT_DICOM, facts_from_files, read_files
from agent.intake.stored import SeriesNotFound, facts_from_db, study_facts_from_db
from agent.series.completeness import judge_completeness
from agent.series.facts import SeriesFacts
from hyperct_core.grid_phantom import Grid, make_enhanced
from tests.agent.conftest import NodeUnderTest
from tests.agent.test_node import scu_send
from tests.support.ct_series import ct_series, write_series

# z positions 0, -2, ... with slices 6 and 7 missing, sent shuffled.
GAPPED = [-2.0 * i for i in range(20) if i not in (6, 7)]


def _untimed(f: SeriesFacts) -> SeriesFacts:
    return dataclasses.replace(f, first_received_at=None, last_received_at=None)


def test_db_facts_equal_file_facts_after_a_dcmtk_ingest(
    node: NodeUnderTest, tmp_path: Path
) -> None:
    study = generate_uid()
    datasets = ct_series(
        len(GAPPED),
        study_uid=study,
        positions=GAPPED,
        spacing=2.0,
        attrs={"SeriesNumber": 7, "ContrastBolusAgent": "NONE", "SeriesDescription": "LUNG 2.0"},
    )
    files = write_series(datasets, tmp_path / "in")
    random.Random(3).shuffle(files)
    before = datetime.now(UTC)
    proc = node.storescu(*files)
    assert proc.returncode == 0, proc.stderr
    after = datetime.now(UTC)

    uid = datasets[0].SeriesInstanceUID
    with node.sessions() as session:
        stored = facts_from_db(session, uid)
        by_id = facts_from_db(session, 1)
    (from_files,) = facts_from_files(files)

    assert _untimed(stored) == _untimed(from_files)
    assert by_id == stored
    # The values themselves, not only their agreement:
    assert stored.slice_positions == tuple(sorted(GAPPED))
    assert (stored.instance_count, stored.number_of_frames, stored.multiframe_instances) == (
        18,
        18,
        0,
    )
    assert (stored.series_number, stored.contrast_agent) == (7, "NONE")
    assert stored.study_description == "CT CHEST WITHOUT CONTRAST"
    assert stored.image_orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert stored.pixel_spacing == (0.7, 0.7) and stored.slice_thickness == 2.0
    assert stored.first_received_at is not None and stored.last_received_at is not None
    assert before <= stored.first_received_at <= stored.last_received_at <= after
    # Both say the same about the gap.
    settings = CompletenessSettings(min_coverage_mm=10.0)
    assert judge_completeness(stored, settings, after, final=True).reasons[0] == (
        "2 slices missing (gaps in the slice positions)"
    )


def test_study_facts_and_unknown_uids(node: NodeUnderTest) -> None:
    study = generate_uid()
    thin = ct_series(3, study_uid=study, spacing=1.0, attrs={"SeriesNumber": 5})
    thick = ct_series(2, study_uid=study, spacing=5.0, attrs={"SeriesNumber": 3})
    assert scu_send(node.port, thin + thick) == [0] * 5
    with node.sessions() as session:
        facts = study_facts_from_db(session, study)
        assert [f.series_number for f in facts] == [3, 5]
        assert [f.slice_thickness for f in facts] == [5.0, 1.0]
        assert [f.instance_count for f in facts] == [2, 3]
        assert study_facts_from_db(session, "1.2.3.999") == []
        with pytest.raises(SeriesNotFound, match="no series '1.2.3.999' in the database"):
            facts_from_db(session, "1.2.3.999")


def test_enhanced_ct_in_the_db_and_in_a_file(node: NodeUnderTest, tmp_path: Path) -> None:
    ds = make_enhanced(Grid(size=(16, 16, 9)))
    (path,) = write_series([ds], tmp_path / "enh")
    assert scu_send(node.port, [ds], sop_class=EnhancedCTImageStorage) == [0]
    with node.sessions() as session:
        stored = facts_from_db(session, ds.SeriesInstanceUID, node.store.root)
    (from_file,) = facts_from_files([path])
    assert stored.frames_checked and stored.frame_problem is None
    assert _untimed(stored) == _untimed(from_file)
    assert (stored.instance_count, stored.number_of_frames, stored.multiframe_instances) == (
        1,
        9,
        1,
    )
    assert stored.is_multiframe and stored.coverage_mm is None
    assert stored.slice_thickness == 2.0  # from the shared functional groups
    verdict = judge_completeness(stored, CompletenessSettings(), datetime.now(UTC), final=True)
    assert verdict.state == "complete"


def test_files_that_are_not_dicom_or_repeat_an_instance_are_set_aside(tmp_path: Path) -> None:
    datasets = ct_series(4)
    files = write_series(datasets, tmp_path / "a")
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(files[0].read_bytes())
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    found = read_files([*files, copy, junk])
    assert [f.instance_count for f in found.series] == [4]
    assert found.skipped == [(copy, COPY), (junk, NOT_DICOM)]
