"""Eligibility on query attributes: the live rules, judged only on what was returned."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from agent.backfill.find import TimeRange
from agent.backfill.judge import date_problem, judge, uid_problem
from agent.config import EligibilitySettings

RULES = EligibilitySettings(min_slices=64)


def ds(**attrs: object) -> Dataset:
    d = Dataset()
    for keyword, value in attrs.items():
        setattr(d, keyword, value)
    return d


STUDY = ds(StudyInstanceUID="1.2.3", StudyDescription="CT CHEST")


def test_nothing_returned_is_no_reason_to_skip() -> None:
    verdict = judge(ds(), ds(SeriesInstanceUID="1.2.3.4"), RULES)
    assert verdict.eligible, verdict.reason
    # What only the images say (SOP class, Image Type, orientation) is never judged here.
    assert "sop_class" not in verdict.reason and "axial" not in verdict.reason


@pytest.mark.parametrize(
    ("series", "check"),
    [
        (ds(Modality="MR", SeriesDescription="CHEST"), "modality"),
        (ds(Modality="CT", SeriesDescription="HEAD", BodyPartExamined="HEAD"), "chest"),
        (ds(Modality="CT", SeriesDescription="CHEST W CONTRAST"), "non_contrast"),
        (ds(Modality="CT", SeriesDescription="SURVIEW"), "series_kind"),
        (ds(Modality="CT", SeriesDescription="CHEST", SliceThickness="5"), "slice_thickness"),
        (
            ds(Modality="CT", SeriesDescription="CHEST", NumberOfSeriesRelatedInstances="20"),
            "slices",
        ),
    ],
)
def test_each_returned_attribute_is_judged_by_the_live_rule(series: Dataset, check: str) -> None:
    verdict = judge(ds(), series, RULES)
    assert not verdict.eligible
    assert verdict.reason.startswith("not eligible: ") and f"{check}:" in verdict.reason


def test_study_description_counts_for_chest_and_contrast() -> None:
    series = ds(Modality="CT", SeriesDescription="AXIAL 1.25", NumberOfSeriesRelatedInstances="300")
    assert judge(STUDY, series, RULES).eligible
    head = ds(StudyInstanceUID="1.2.3", StudyDescription="CT HEAD")
    assert "chest:" in judge(head, series, RULES).reason
    enhanced = ds(StudyInstanceUID="1.2.3", StudyDescription="CTA CHEST")
    assert "non_contrast:" in judge(enhanced, series, RULES).reason


def test_instance_count_is_not_slices_in_a_multiframe_study() -> None:
    series = ds(Modality="CT", SeriesDescription="CHEST", NumberOfSeriesRelatedInstances="1")
    study = ds(StudyInstanceUID="1.2.3", SOPClassesInStudy="1.2.840.10008.5.1.4.1.1.2.1")
    assert judge(study, series, RULES).eligible
    assert not judge(STUDY, series, RULES).eligible


def test_uids_and_dates() -> None:
    assert uid_problem("1.2.840.10008", "UID") is None
    assert uid_problem(None, "Study Instance UID") == "no Study Instance UID"
    assert "not a valid UID" in (uid_problem("1.02.3", "UID") or "")
    assert "not a valid UID" in (uid_problem("1." + "2" * 64, "UID") or "")
    assert date_problem(None, "20240101", "20240131") is None
    assert date_problem("20240115", "20240101", "20240131") is None
    assert "not a date" in (date_problem("20240230", "20240101", "20240131") or "")
    assert "outside" in (date_problem("20240201", "20240101", "20240131") or "")


def test_time_ranges_cover_the_day_without_gaps() -> None:
    whole = TimeRange()
    assert whole.dicom() == "000000-235959.999999"
    parts = [whole]
    for _ in range(17):  # down to one second
        parts = [h for p in parts for h in (p.halves() or (p,))]
    assert len(parts) == 86400 and all(p.start == p.end for p in parts)
    assert [p.start for p in parts] == list(range(86400))
    assert TimeRange(37530, 37530).dicom() == "102530-102530.999999"
    assert TimeRange(5, 5).halves() is None
