"""Eligibility with the default settings: one series a line, the exact checks that fail."""

from __future__ import annotations

import pytest

from agent.config import (
    ENHANCED_CT_IMAGE_STORAGE,
    LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
    EligibilitySettings,
)
from agent.series.eligibility import assess_eligibility
from agent.series.facts import SeriesFacts
from tests.agent.series_cases import chest

S = EligibilitySettings()
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
LOCALIZER = "ORIGINAL\\PRIMARY\\LOCALIZER"

CASES = [
    # id, facts, the checks that fail (empty: eligible)
    ("thin non-contrast chest", chest(), set()),
    ("localizer", chest(series_description="Topogram 0.6 T20f", image_type=LOCALIZER,
                        instance_count=1, number_of_frames=1), {"image_type", "series_kind",
                                                                 "slices"}),
    ("contrast by agent", chest(contrast_agent="IOPAMIDOL 370"), {"non_contrast"}),
    ("agent saying none", chest(contrast_agent="NONE"), set()),
    ("contrast by series description", chest(series_description="CHEST C+ 1.0"),
     {"non_contrast"}),
    ("CTA", chest(series_description="CTA CHEST"), {"non_contrast"}),
    ("arterial phase", chest(series_description="Thorax arterial 1.0 Br40"), {"non_contrast"}),
    ("contrast by study description", chest(study_description="CT CHEST W/ CONTRAST"),
     {"non_contrast"}),
    ("non-contrast description", chest(series_description="CHEST NON-CONTRAST"), set()),
    ("w/o contrast", chest(study_description="CT CHEST W/O CONTRAST"), set()),
    ("without contrast", chest(study_description="CT THORAX WITHOUT CONTRAST"), set()),
    ("unenhanced", chest(series_description="UNENHANCED CHEST"), set()),
    ("low-dose lung screening", chest(series_description="LOW DOSE CHEST 1.0"), set()),
    ("reformat", chest(image_type="DERIVED\\SECONDARY\\AXIAL", series_description="AX MPR"),
     {"image_type"}),
    ("coronal reformat", chest(image_type="DERIVED\\SECONDARY\\CORONAL",
                               series_description="COR 3.0", image_orientation=CORONAL),
     {"image_type", "series_kind", "axial"}),
    ("dose report", chest(image_type="DERIVED\\SECONDARY\\OTHER", series_description="Dose Report",
                          instance_count=1, number_of_frames=1),
     {"image_type", "series_kind", "slices"}),
    ("MIP", chest(series_description="CHEST MIP 10mm"), {"series_kind"}),
    ("thick 5 mm", chest(slice_thickness=5.0), {"slice_thickness"}),
    ("too thin", chest(slice_thickness=0.4), {"slice_thickness"}),
    ("no thickness", chest(slice_thickness=None), {"slice_thickness"}),
    ("too few slices", chest(instance_count=40, number_of_frames=40), {"slices"}),
    ("non-chest", chest(body_part_examined="ABDOMEN", series_description="ABD PELVIS 2.5",
                        protocol_name="ABDOMEN ROUTINE", study_description="CT ABDOMEN"),
     {"chest"}),
    ("chest by protocol only", chest(body_part_examined=None, series_description="2.5 B30f",
                                     protocol_name="Thorax routine", study_description=None),
     set()),
    ("MR", chest(modality="MR", sop_class_uid=MR_IMAGE_STORAGE), {"modality", "sop_class"}),
    ("gantry tilt 20 deg", chest(image_orientation=(1.0, 0.0, 0.0, 0.0, 0.9397, 0.3420)), set()),
    ("enhanced CT", chest(sop_class_uid=ENHANCED_CT_IMAGE_STORAGE, instance_count=1,
                          multiframe_instances=1, image_type="ORIGINAL\\PRIMARY\\AXIAL\\NONE"),
     set()),
    # highdicom's converter appends "(enhanced conversion)" to the series description.
    ("legacy converted enhanced CT", chest(sop_class_uid=LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
                                           instance_count=1, multiframe_instances=1,
                                           series_description="CHEST W/O (enhanced conversion)"),
     set()),
]  # fmt: skip


@pytest.mark.parametrize(("facts", "failing"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_eligibility_table(facts: SeriesFacts, failing: set[str]) -> None:
    result = assess_eligibility(facts, S)
    assert {c.name for c in result.checks if not c.passed} == failing, result.checks
    assert result.eligible is (not failing)


def test_every_check_is_reported_even_after_a_failure() -> None:
    mr = chest(modality="MR", sop_class_uid=MR_IMAGE_STORAGE, slice_thickness=6.0)
    result = assess_eligibility(mr, S)
    assert [c.name for c in result.checks] == [
        "modality",
        "sop_class",
        "chest",
        "non_contrast",
        "image_type",
        "series_kind",
        "axial",
        "slice_thickness",
        "slices",
    ]
    failed = {c.name: c.detail for c in result.failed}
    assert failed == {
        "modality": "MR is not one of CT",
        "sop_class": "MR Image Storage is not one of CT Image Storage, Enhanced CT Image Storage, "
        "Legacy Converted Enhanced CT Image Storage",
        "slice_thickness": "6 mm outside 0.5-3 mm",
    }
    assert result.reason().startswith("not eligible: modality: MR is not one of CT; sop_class:")


def test_details_name_the_evidence() -> None:
    details = {c.name: c.detail for c in assess_eligibility(chest(), S).checks}
    assert details["chest"] == "body part 'CHEST' matches /chest/"
    assert details["slices"] == "120 slices (>= 64)"
    contrast = assess_eligibility(chest(series_description="CHEST C+ 1.0"), S).failed[0]
    assert contrast.detail == "series description 'CHEST C+ 1.0': contrast words 'C+'"


def test_settings_change_the_verdict() -> None:
    abdomen = chest(body_part_examined="ABDOMEN", series_description="ABD", protocol_name=None,
                    study_description=None)  # fmt: skip
    assert not assess_eligibility(abdomen, S).eligible
    loose = S.model_copy(update={"chest_patterns": ["abd"], "min_slices": 200})
    failed = {c.name for c in assess_eligibility(abdomen, loose).failed}
    assert failed == {"slices"}  # chest now matches; 120 slices are too few
