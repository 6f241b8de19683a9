"""Reports for PACS (agent.report): TID 1500 SR and readable SR, checked as a receiver would.

Each SR is written as a Part 10 file and judged by dicom3tools' dciodvfy,
PixelMed's DicomSRValidator, DCMTK's dsrdump and dsr2html (what a viewer
shows) and highdicom's reader; nothing here trusts the builder's own objects
for what ended up in the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from agent.report import (
    DEFAULT_REFERRAL_TASKS,
    Findings,
    ModelIdentity,
    ReportInputError,
    build_reports,
    referral,
    render_sections,
    write_reports,
)
from agent.report.codes import (
    FINDING_CODING,
    MAX_CODE_MEANING,
    PRIVATE_SCHEME,
    all_codes,
)
from agent.report.sr import DEMO_MARK
from hyperct_core.checkpoint import ModelCard
from hyperct_core.tasks import NUM_TASKS, TASK_NAMES, TASKS, task_by_name
from tests.agent.report_tools import (
    QUALITATIVE_ROW_WARNING,
    dciodvfy,
    dsr2html,
    dsrdump,
    parse_measurement_report,
    pixelmed_validate,
    walk,
)
from tests.support.ct_series import ct_series, write_series

# Distinct per-task thresholds, so a test cannot pass by assuming one threshold for all.
CARD_THRESHOLDS = {name: round(0.30 + 0.02 * i, 2) for i, name in enumerate(TASK_NAMES)}
WEIGHTS = "3f" * 32
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
STANDARD_SCHEMES = {"DCM", "SCT", "LN", "UCUM", "RFC5646"}


def make_model(
    *,
    is_demo: bool = True,
    version: str = "1.2.0",
    weights: str = WEIGHTS,
    thresholds: dict[str, float] | None = None,
):
    return ModelIdentity(
        name="hyperct-test",
        version=version,
        weights_sha256=weights,
        is_demo=is_demo,
        thresholds=CARD_THRESHOLDS if thresholds is None else thresholds,
    )


# A card with operating points for all but these tasks (two of them referral tasks).
UNASSESSED = ("pulmonary_hypertension", "ventricular_enlargement", "lung_nodule")
PARTIAL_THRESHOLDS = {k: v for k, v in CARD_THRESHOLDS.items() if k not in UNASSESSED}


def probabilities(low: float = 0.05, **high: float) -> list[float]:
    values = {name: low for name in TASK_NAMES}
    values.update(high)
    return [values[name] for name in TASK_NAMES]


@pytest.fixture(scope="module")
def source() -> list[Dataset]:
    return ct_series(12, rows=16, columns=16)


def build_and_write(
    source: Sequence[Dataset],
    findings: Findings,
    model: ModelIdentity,
    folder: Path,
    **kwargs,
) -> list[Path]:
    reports = build_reports(source, findings, model, series_number=9901, **kwargs)
    return write_reports(reports, folder)


# Scenarios for the validator tests: the rule fires (demo model) or not (validated model).
SCENARIOS = {
    "demo-referral": (True, probabilities(reduced_lv_systolic_function=0.9, cardiomegaly=0.8)),
    "validated-no-referral": (False, probabilities(0.2, emphysema=0.99)),
}


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def written(request, source, tmp_path_factory) -> tuple[str, list[Path]]:
    is_demo, probs = SCENARIOS[request.param]
    model = make_model(is_demo=is_demo)
    findings = Findings.from_model(probs, model)
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, build_and_write(source, findings, model, folder)


# --- external validators -------------------------------------------------------------


def test_every_report_passes_dciodvfy(written, record_property):
    name, paths = written
    assert len(paths) == 2
    for path in paths:
        result = dciodvfy(path)
        assert result.errors == [], f"{name}: {path.name}: {result.errors}"
        # Warnings are allowed; keep them visible in the JUnit report (-o junit_family).
        record_property(f"dciodvfy_warnings_{path.name}", sorted(set(result.warnings)))


@pytest.mark.dcmtk
def test_every_report_renders_with_dsrdump(written):
    name, paths = written
    for path in paths:
        status, output = dsrdump(path)
        assert status == 0, output
        errors = [ln for ln in output.splitlines() if ln.startswith("E:")]
        assert errors == [], f"{name}: {errors}"
        assert "Verification Flag   : UNVERIFIED" in output
        assert "Completion Flag     : COMPLETE" in output


# --- TID 1500 content read back with highdicom ------------------------------------------


def test_highdicom_reads_back_all_25_probabilities(source, tmp_path):
    model = make_model()
    probs = [((i * 7919) % 1000) / 999.0 for i in range(NUM_TASKS)]
    findings = Findings.from_model(probs, model)
    sr_path, _ = build_and_write(source, findings, model, tmp_path)

    parsed = parse_measurement_report(sr_path)

    assert list(parsed.by_task) == list(TASK_NAMES)
    for name, expected in zip(TASK_NAMES, probs, strict=True):
        group = parsed.by_task[name]
        assert group.probability == pytest.approx(expected, abs=1e-12), name
        assert group.probability_unit is not None and group.probability_unit.value == "1"
        assert group.probability_unit.scheme_designator == "UCUM"
        assert group.tracking_identifier == task_by_name(name).display_name
        assert UID_RE.match(group.tracking_uid) and len(group.tracking_uid) <= 64
        coding = FINDING_CODING[name]
        assert group.finding_type == coding.finding_type
        expected_sites = [coding.finding_site] if coding.finding_site else []
        assert group.finding_sites == expected_sites
        assert group.algorithm_version == "1.2.0"
        assert f"task={name}" in group.algorithm_parameters
    assert len({g.tracking_uid for g in parsed.by_task.values()}) == NUM_TASKS
    # What a renderer prints is Numeric Value: 3 decimals; the float keeps full precision.
    ds = pydicom.dcmread(sr_path)
    shown = [d.NumericValue for d in walk(ds) if "NumericValue" in d]
    assert len(shown) == NUM_TASKS
    assert all(re.fullmatch(r"[01]\.[0-9]{3}", str(v.original_string)) for v in shown), shown


def test_present_absent_follows_threshold_in_force(source, tmp_path):
    model = make_model()
    overrides = {"emphysema": 0.9, "cardiomegaly": 0.1}
    probs = probabilities(
        0.0,
        # Exactly at the card threshold: present (>=).
        lung_nodule=CARD_THRESHOLDS["lung_nodule"],
        # Just below the card threshold: absent.
        atelectasis=CARD_THRESHOLDS["atelectasis"] - 1e-6,
        # Above the card threshold but below the site override: absent.
        emphysema=0.8,
        # Below the card threshold but above the site override: present.
        cardiomegaly=0.2,
    )
    findings = Findings.from_model(probs, model, threshold_overrides=overrides)
    sr_path, _ = build_and_write(source, findings, model, tmp_path)

    parsed = parse_measurement_report(sr_path)

    present = {
        name
        for name, group in parsed.by_task.items()
        for concept, value in group.evaluations
        if concept == FINDING_CODING[name].finding_type and value.meaning == "Present"
    }
    absent = {
        name
        for name, group in parsed.by_task.items()
        for concept, value in group.evaluations
        if concept == FINDING_CODING[name].finding_type and value.meaning == "Absent"
    }
    assert present == {"lung_nodule", "cardiomegaly"}
    assert absent == set(TASK_NAMES) - present
    assert "threshold=0.9" in parsed.by_task["emphysema"].algorithm_parameters
    assert "threshold=0.1" in parsed.by_task["cardiomegaly"].algorithm_parameters


def test_referral_group_only_when_rule_fires(source, tmp_path):
    model = make_model()
    # Conventional findings far above threshold do not refer with the default rule.
    quiet = Findings.from_model(probabilities(0.1, cardiomegaly=0.99, emphysema=0.99), model)
    assert referral(quiet) == []
    parsed = parse_measurement_report(build_and_write(source, quiet, model, tmp_path / "q")[0])
    assert parsed.referral is None

    firing = Findings.from_model(
        probabilities(
            0.1,
            pulmonary_hypertension=0.95,
            right_atrial_filling_pressure=CARD_THRESHOLDS["right_atrial_filling_pressure"],
            cardiomegaly=0.99,
        ),
        model,
    )
    triggering = referral(firing)
    assert triggering == ["pulmonary_hypertension", "right_atrial_filling_pressure"]
    parsed = parse_measurement_report(build_and_write(source, firing, model, tmp_path / "f")[0])
    group = parsed.referral
    assert group is not None
    assert group.tracking_uid not in {g.tracking_uid for g in parsed.by_task.values()}
    follow_up = [(c.value, v.value) for c, v in group.evaluations if c.value == "111053"]
    assert follow_up == [("111053", "433236007")]
    assert group.finding_type is None
    triggers = [(c, v.meaning) for c, v in group.evaluations if c.value != "111053"]
    assert triggers == [(FINDING_CODING[t].finding_type, "Present") for t in triggering]
    assert f"triggered_by={','.join(triggering)}" in group.algorithm_parameters
    rule = [p for p in group.algorithm_parameters if re.fullmatch(r"[a-z_]+>=[0-9.]+", p)]
    assert rule == [f"{t}>={CARD_THRESHOLDS[t]:g}" for t in DEFAULT_REFERRAL_TASKS]


def test_site_referral_tasks_replace_the_cards(source, tmp_path):
    model = make_model()
    findings = Findings.from_model(
        probabilities(0.1, cardiomegaly=0.99, reduced_lv_systolic_function=0.99),
        model,
        referral_tasks=["cardiomegaly", "pericardial_effusion"],
    )
    assert referral(findings) == ["cardiomegaly"]
    sections = render_sections(findings, model)
    assert "Triggered by: Cardiomegaly (probability 0.990" in sections["impression"]
    assert "Reduced LV systolic function" not in sections["impression"]


def test_referral_rule_ignores_tasks_outside_the_list_and_counts_ties():
    model = make_model()
    at = CARD_THRESHOLDS["ventricular_enlargement"]
    findings = Findings.from_model(
        probabilities(0.0, ventricular_enlargement=at, emphysema=1.0), model
    )
    assert referral(findings) == ["ventricular_enlargement"]
    below = Findings.from_model(probabilities(0.0, ventricular_enlargement=at - 1e-9), model)
    assert referral(below) == []


# --- document attributes ----------------------------------------------------------------


def test_patient_and_study_attributes_come_from_the_source(source, tmp_path):
    model = make_model()
    paths = build_and_write(source, Findings.from_model(probabilities(), model), model, tmp_path)
    src = source[0]
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "ReferringPhysicianName",
        ):
            assert ds[keyword].value == src[keyword].value, keyword
        assert ds.Modality == "SR"
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert ds.VerificationFlag == "UNVERIFIED"
        assert "VerifyingObserverSequence" not in ds
        evidence = ds.CurrentRequestedProcedureEvidenceSequence
        assert len(evidence) == 1
        series = evidence[0].ReferencedSeriesSequence
        assert [s.SeriesInstanceUID for s in series] == [src.SeriesInstanceUID]
        cited = {r.ReferencedSOPInstanceUID for r in series[0].ReferencedSOPSequence}
        assert cited == {d.SOPInstanceUID for d in source}


def test_source_without_type2_attributes_still_makes_valid_reports(tmp_path):
    source = ct_series(3, rows=8, columns=8)
    for ds in source:
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
            delattr(ds, keyword)
    model = make_model()
    paths = build_and_write(source, Findings.from_model(probabilities(), model), model, tmp_path)
    assert "PatientSex" not in source[0]  # the caller's dataset is left alone
    for path in paths:
        assert dciodvfy(path).errors == []
        ds = pydicom.dcmread(path)
        assert ds.PatientSex == "" and ds.AccessionNumber == "" and ds.StudyID == ""
        assert ds.PatientID == source[0].PatientID


def test_headers_read_from_files_are_enough(source, tmp_path):
    """The pipeline passes ``dcmread(..., stop_before_pixels=True)`` headers."""
    model = make_model()
    findings = Findings.from_model(probabilities(0.7), model)
    files = write_series(source, tmp_path / "ct")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    from_files = build_reports(headers, findings, model, series_number=9901)
    in_memory = build_reports(source, findings, model, series_number=9901)
    assert [r.SOPInstanceUID for r in from_files] == [r.SOPInstanceUID for r in in_memory]
    for path in write_reports(from_files, tmp_path / "sr"):
        assert dciodvfy(path).errors == []


def test_contributing_equipment_names_the_model(source, tmp_path):
    model = make_model(is_demo=False)
    paths = build_and_write(source, Findings.from_model(probabilities(), model), model, tmp_path)
    for path in paths:
        ds = pydicom.dcmread(path)
        assert ds.DeviceUID == model.device_uid  # General Equipment
        assert ds.Manufacturer and ds.ManufacturerModelName == "hyperct-test"
        processing = [
            item
            for item in ds.ContributingEquipmentSequence
            if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
            and item.get("DeviceUID") == model.device_uid
        ]
        # highdicom lists itself as a second processing equipment, without a Device UID.
        assert len(processing) == 1
        item = processing[0]
        assert item.ManufacturerModelName == "hyperct-test"
        assert "hyperct-test 1.2.0" in list(item.SoftwareVersions)
        assert item.Manufacturer


def test_uids_are_deterministic_per_series_model_and_revision(source, tmp_path):
    model = make_model()
    findings = Findings.from_model(probabilities(), model)

    def uids(src, mdl, **kw) -> list[tuple[str, str]]:
        reports = build_reports(src, findings, mdl, series_number=9901, **kw)
        return [(r.SeriesInstanceUID, r.SOPInstanceUID) for r in reports]

    first = uids(source, model)
    assert uids(source, model) == first
    (series_a, sop_a), (series_b, sop_b) = first
    assert series_a == series_b and sop_a != sop_b
    for uid in (series_a, sop_a, sop_b):
        assert UID_RE.match(uid) and len(uid) <= 64

    variants = {
        "revision": uids(source, model, revision=2),
        "version": uids(source, make_model(version="1.3.0")),
        "weights": uids(source, make_model(weights="00" * 32)),
        "series": uids(ct_series(2, rows=8, columns=8), model),
    }
    seen = {uid for pair in first for uid in pair}
    for what, pairs in variants.items():
        new = {uid for pair in pairs for uid in pair}
        assert not (new & seen), f"changing the {what} must change every UID"
        seen |= new
    # The demo flag is not part of the model identity's UIDs; name/version/weights are.
    assert make_model(is_demo=False).device_uid == model.device_uid
    assert make_model(version="1.3.0").device_uid != model.device_uid


def test_demo_model_is_marked_in_text_and_algorithm_identification(source, tmp_path):
    for is_demo in (True, False):
        model = make_model(is_demo=is_demo)
        findings = Findings.from_model(probabilities(reduced_lv_systolic_function=0.9), model)
        sr_path, text_path = build_and_write(source, findings, model, tmp_path / str(is_demo))
        parsed = parse_measurement_report(sr_path)
        groups = [*parsed.by_task.values(), parsed.referral]
        task_names = {g.algorithm_name for g in parsed.by_task.values()}
        assert len(task_names) == 1
        assert (DEMO_MARK in task_names.pop()) is is_demo
        text = pydicom.dcmread(text_path)
        body = "\n".join(i.TextValue for i in walk(text) if i.get("ValueType") == "TEXT")
        assert (DEMO_MARK in body) is is_demo
        assert (DEMO_MARK in text.SeriesDescription) is is_demo
        assert len(text.SeriesDescription) <= 64
        assert all(g is not None for g in groups)


# --- the text report ----------------------------------------------------------------------


def _sections(ds: Dataset) -> list[tuple[str, list[tuple[str, str]]]]:
    """(heading, [(item concept, text), ...]) of each section of the readable SR, in order."""
    return [
        (
            item.ConceptNameCodeSequence[0].CodeMeaning,
            [(t.ConceptNameCodeSequence[0].CodeMeaning, t.TextValue) for t in item.ContentSequence],
        )
        for item in ds.ContentSequence
        if item.ValueType == "CONTAINER"
    ]


def test_readable_report_is_tid_2000_with_impression_first(source, tmp_path):
    model = make_model(is_demo=False)
    probs = probabilities(0.01, pulmonary_hypertension=0.93, emphysema=0.61)
    findings = Findings.from_model(probs, model)
    _, text_path = build_and_write(source, findings, model, tmp_path)
    ds = pydicom.dcmread(text_path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    template = ds.ContentTemplateSequence[0]
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "2000")
    containers = [d for d in walk(ds) if d.get("ValueType") == "CONTAINER"]
    assert ds.ContinuityOfContent == "SEPARATE"
    assert {c.ContinuityOfContent for c in containers} == {"SEPARATE"}

    sections = _sections(ds)
    assert [h for h, _ in sections] == [
        "Impressions",
        "Findings",
        "Recommendations",
        "Current Procedure Descriptions",
    ]
    impression, found, recommendation, method = (items for _, items in sections)
    assert {c for c, _ in impression} == {"Impression"}
    assert impression[0][1] == (
        "Echocardiography recommended. Triggered by: Pulmonary hypertension "
        "(probability 0.930, threshold 0.340)."
    )
    # One item per finding, positives first, each with its probability and threshold.
    assert {c for c, _ in found} == {"Finding"}
    assert len(found) == NUM_TASKS
    texts = [t for _, t in found]
    assert texts[:2] == [
        "Pulmonary hypertension: present (probability 0.930, threshold 0.340).",
        "Emphysema: present (probability 0.610, threshold 0.580).",
    ]
    for task, p in zip(TASK_NAMES, probs, strict=True):
        state = "present" if p >= CARD_THRESHOLDS[task] else "absent"
        line = f"{task_by_name(task).display_name}: {state} (probability {p:.3f}, "
        assert sum(t.startswith(line) for t in texts) == 1, task
    assert recommendation == [("Recommendation", "Transthoracic echocardiography.")]
    assert len(method) == 1
    statement = method[0][1]
    assert "hyperct-test 1.2.0" in statement and "not verified by a physician" in statement
    for task in DEFAULT_REFERRAL_TASKS:
        assert task_by_name(task).display_name in statement
    # The disclaimer is said once in the whole document.
    everything = " ".join(t for _, items in sections for _, t in items)
    assert everything.count("not verified by a physician") == 1


def test_readable_report_says_when_no_referral(source):
    model = make_model(is_demo=False)
    sections = render_sections(Findings.from_model(probabilities(), model), model)
    assert sections["impression"].startswith("No echocardiography referral")
    assert "Triggered by" not in sections["impression"]
    assert sections["recommendations"] == "No echocardiography referral from this screening.\n"


def test_text_report_can_be_left_out(source):
    model = make_model()
    reports = build_reports(
        source,
        Findings.from_model(probabilities(), model),
        model,
        series_number=7,
        text_report=False,
    )
    assert [r.SOPClassUID for r in reports] == ["1.2.840.10008.5.1.4.1.1.88.34"]
    assert reports[0].SeriesNumber == 7


# --- codes and size ------------------------------------------------------------------------


def test_code_meanings_fit_lo_and_private_codes_are_declared(source, tmp_path):
    assert all(len(c.meaning) <= MAX_CODE_MEANING for c in all_codes())
    model = make_model()
    findings = Findings.from_model(probabilities(0.9), model)  # every group, referral included
    for path in build_and_write(source, findings, model, tmp_path):
        ds = pydicom.dcmread(path)
        meanings = [d.CodeMeaning for d in walk(ds) if "CodeMeaning" in d]
        assert meanings and max(len(m) for m in meanings) <= MAX_CODE_MEANING
        used = {d.CodingSchemeDesignator for d in walk(ds) if "CodingSchemeDesignator" in d}
        declared = {
            i.CodingSchemeDesignator for i in ds.get("CodingSchemeIdentificationSequence", [])
        }
        assert used - STANDARD_SCHEMES <= declared
    sr = pydicom.dcmread(build_and_write(source, findings, model, tmp_path)[0])
    assert PRIVATE_SCHEME in {
        d.CodingSchemeDesignator for d in walk(sr) if "CodingSchemeDesignator" in d
    }


def test_sr_stays_small_for_a_300_slice_series(tmp_path):
    """The SR grows only by its evidence list, one short item per source image.

    Bound: 25 groups at well under 2 KiB each plus the fixed header (~50 KiB
    measured) and at most 200 bytes per cited image (SOP Class + SOP Instance UID
    item) -- 50 KiB + 300 x 200 B, about 110 KiB; the spec's counter-example, a
    300-image reference list per group, is over 1 MB.
    """
    model = make_model()
    findings = Findings.from_model(probabilities(0.9), model)
    small = build_and_write(ct_series(30, rows=8, columns=8), findings, model, tmp_path / "s")
    large = build_and_write(ct_series(300, rows=8, columns=8), findings, model, tmp_path / "l")
    for s, big in zip(small, large, strict=True):
        per_image = (big.stat().st_size - s.stat().st_size) / 270
        assert per_image <= 200, per_image
        assert big.stat().st_size <= 50 * 1024 + 300 * 200, big.stat().st_size


# --- inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        ([0.5] * 24, "expected 25 probabilities"),
        ([0.5] * 24 + [1.5], "not in [0, 1]"),
        ([0.5] * 24 + [float("nan")], "not in [0, 1]"),
    ],
)
def test_findings_refuse_bad_probabilities(probs, message):
    with pytest.raises(ReportInputError, match=re.escape(message)):
        Findings.from_model(probs, make_model())


def test_findings_refuse_unknown_or_missing_tasks():
    model = make_model()
    with pytest.raises(ReportInputError, match="unknown task 'echo'"):
        Findings.from_model(probabilities(), model, referral_tasks=["echo"])
    # A task without a threshold is not an error: it is not assessed.
    only = Findings(TASK_NAMES, tuple(probabilities(0.9)), {"emphysema": 0.5}, ())
    assert [only.status(t) for t in ("emphysema", "cardiomegaly")] == ["present", "not assessed"]
    with pytest.raises(ReportInputError, match="index order"):
        Findings(tuple(reversed(TASK_NAMES)), tuple(probabilities()), CARD_THRESHOLDS, ())
    with pytest.raises(ReportInputError, match="threshold of 'emphysema'"):
        Findings.from_model(probabilities(), model, threshold_overrides={"emphysema": 2.0})


def test_model_identity_from_card():
    card = ModelCard(
        name="hyperct-x",
        version="2.0",
        tasks=list(TASK_NAMES),
        model={},
        preprocessing={},
        backbone={},
        thresholds=CARD_THRESHOLDS,
        training_data={},
        validated=False,
    )
    demo = ModelIdentity.from_card(card, WEIGHTS)
    assert demo.is_demo and demo.referral_tasks == DEFAULT_REFERRAL_TASKS
    assert set(DEFAULT_REFERRAL_TASKS) == {t.name for t in TASKS if t.group == "opportunistic"}
    assert len(DEFAULT_REFERRAL_TASKS) == 7
    card.validated = True
    card.extra = {"referral_tasks": ["cardiomegaly"]}
    real = ModelIdentity.from_card(card, WEIGHTS)
    assert not real.is_demo and real.referral_tasks == ("cardiomegaly",)
    assert Findings.from_model(probabilities(), real).referral_tasks == ("cardiomegaly",)


def test_source_must_be_one_series(source):
    model = make_model()
    findings = Findings.from_model(probabilities(), model)
    mixed = [*source[:2], *ct_series(1, rows=8, columns=8, study_uid=source[0].StudyInstanceUID)]
    with pytest.raises(ReportInputError, match="one series"):
        build_reports(mixed, findings, model, series_number=1)
    with pytest.raises(ReportInputError, match="no source images"):
        build_reports([], findings, model, series_number=1)


def test_write_reports_is_idempotent(source, tmp_path):
    model = make_model()
    reports = build_reports(
        source, Findings.from_model(probabilities(), model), model, series_number=1
    )
    first = write_reports(reports, tmp_path)
    again = write_reports(reports, tmp_path)
    assert first == again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in first)
    assert [pydicom.dcmread(p).SOPInstanceUID for p in first] == [r.SOPInstanceUID for r in reports]


# --- tasks without an operating point ------------------------------------------------------


def test_tasks_without_operating_point_are_not_assessed(source, tmp_path):
    model = make_model(is_demo=False, thresholds=PARTIAL_THRESHOLDS)
    # High probabilities on the unassessed tasks: still neither Present nor Absent,
    # and the unassessed referral task cannot fire the rule.
    probs = probabilities(0.05, pulmonary_hypertension=0.99, lung_nodule=0.99)
    findings = Findings.from_model(
        probs, model, threshold_overrides={"ventricular_enlargement": 0.1}
    )
    assert [findings.status(t) for t in UNASSESSED] == ["not assessed"] * 3
    assert referral(findings) == []
    sr_path, text_path = build_and_write(source, findings, model, tmp_path)

    parsed = parse_measurement_report(sr_path)
    assert parsed.referral is None
    for task, group in parsed.by_task.items():
        values = [v.meaning for c, v in group.evaluations]
        if task in UNASSESSED:
            assert values == ["Undetermined"], task
            assert any("not assessed" in p for p in group.algorithm_parameters)
        else:
            assert values in (["Present"], ["Absent"]), task

    sections = dict(_sections(pydicom.dcmread(text_path)))
    found = [t for _, t in sections["Findings"]]
    unassessed = [t for t in found if "not assessed" in t]
    assert len(unassessed) == len(UNASSESSED)
    assert found[-len(UNASSESSED) :] == unassessed  # after the assessed findings
    for task in UNASSESSED:
        name = task_by_name(task).display_name
        assert [t for t in found if t.startswith(name + ":")] == [
            f"{name}: not assessed (no validated operating point for this finding)."
        ]
    impression = " ".join(t for _, t in sections["Impressions"])
    assert impression.startswith("No echocardiography referral")
    assert "Not assessed for the referral (no validated operating point): " in impression
    assert "Pulmonary hypertension, Ventricular enlargement." in impression


def test_pipeline_rule_in_force_keeps_unassessed_tasks_unassessed():
    """``[referral.thresholds]`` moves an assessed task's threshold, never assesses a new one."""
    from agent.config import Settings
    from agent.pipeline.screen import findings_for

    model = make_model(thresholds=PARTIAL_THRESHOLDS)
    card = _card(PARTIAL_THRESHOLDS)
    settings = Settings.model_validate(
        {"referral": {"thresholds": {"pulmonary_hypertension": 0.1, "cardiomegaly": 0.9}}}
    )
    findings = findings_for(probabilities(0.5), card, model, settings)
    assert findings.status("pulmonary_hypertension") == "not assessed"
    assert findings.thresholds["cardiomegaly"] == 0.9
    assert findings.status("cardiomegaly") == "absent"
    assert set(findings.thresholds) == set(PARTIAL_THRESHOLDS)


def test_referral_not_assessed_when_no_referral_task_has_an_operating_point():
    model = make_model(thresholds={"cardiomegaly": 0.3})
    findings = Findings.from_model(probabilities(0.99), model)
    assert referral(findings) == []
    sections = render_sections(findings, model)
    assert (
        sections["impression"].splitlines()[-1].startswith("Echocardiography referral not assessed")
    )
    assert "absent" not in sections["findings"]


def _card(thresholds, extra=None) -> ModelCard:
    return ModelCard(
        name="hyperct-x",
        version="2.0",
        tasks=list(TASK_NAMES),
        model={},
        preprocessing={},
        backbone={},
        thresholds=thresholds,
        training_data={},
        validated=True,
        extra=extra or {},
    )


def test_operating_points_come_from_the_card_as_it_is_written():
    # A missing or null threshold: no operating point.
    partial = {**PARTIAL_THRESHOLDS, "lung_nodule": None}
    identity = ModelIdentity.from_card(_card(partial), WEIGHTS)
    assert set(identity.thresholds) == set(TASK_NAMES) - set(UNASSESSED)
    # `model evaluate --write-thresholds` records which thresholds it chose; the
    # card's other thresholds are placeholders, and an entry may say validated: false.
    chosen = {"cardiomegaly": {"threshold": 0.48}, "emphysema": {"validated": False}}
    card = _card(CARD_THRESHOLDS, {"operating_points": {"tasks": chosen}})
    assert dict(ModelIdentity.from_card(card, WEIGHTS).thresholds) == {
        "cardiomegaly": CARD_THRESHOLDS["cardiomegaly"]
    }


def test_demo_card_assesses_only_its_evaluated_tasks():
    import json

    from hyperct_core.demo import demo_checkpoint_path

    data = json.loads((demo_checkpoint_path() / "card.json").read_text())
    card = _card(data["thresholds"], data["extra"])
    assessed = set(ModelIdentity.from_card(card, WEIGHTS).thresholds)
    assert assessed == set(data["extra"]["operating_points"]["tasks"])
    assert assessed < set(TASK_NAMES)


# --- as a viewer shows them ------------------------------------------------------------------


@pytest.fixture(scope="module")
def viewer_case(source, tmp_path_factory) -> tuple[Findings, list[Path]]:
    """A demo-model report where the rule fires and three tasks are not assessed.

    Probabilities with many digits, so a renderer that shows them unrounded is caught.
    """
    model = make_model(thresholds=PARTIAL_THRESHOLDS)
    probs = probabilities(
        0.0385270643234312,
        reduced_lv_systolic_function=0.35852706432343,
        cardiomegaly=0.8123456789012,
        pulmonary_hypertension=0.97,
    )
    findings = Findings.from_model(probs, model)
    return findings, build_and_write(source, findings, model, tmp_path_factory.mktemp("viewer"))


def _no_long_numbers(page: str) -> None:
    long = re.findall(r"\b0\.[0-9]{4,}", page)
    assert long == [], long[:5]


@pytest.mark.dcmtk
def test_readable_report_in_a_viewer_puts_the_conclusion_first(viewer_case):
    _, (_, text_path) = viewer_case
    page = dsr2html(text_path)
    order = [
        "Impressions",
        "Echocardiography recommended. Triggered by: Reduced LV systolic function "
        "(probability 0.359, threshold 0.320)",
        "Findings",
        "Reduced LV systolic function: present",
        "Cardiomegaly: present (probability 0.812, threshold 0.480)",
        "Emphysema: absent (probability 0.039, threshold 0.580)",
        "Pulmonary hypertension: not assessed",
        "Recommendations",
        "Recommendation: Transthoracic echocardiography.",
        "Current Procedure Descriptions",
    ]
    positions = [page.find(phrase) for phrase in order]
    assert -1 not in positions, [p for p, at in zip(order, positions, strict=True) if at < 0]
    assert positions == sorted(positions)
    assert page.count("not verified by a physician") == 1
    assert "Absent" not in page.replace("absent (", "")  # lower-case items only
    _no_long_numbers(page)


@pytest.mark.dcmtk
def test_measurement_report_in_a_viewer_names_every_value(viewer_case):
    _, (sr_path, _) = viewer_case
    page = dsr2html(sr_path)
    assert "Procedure reported = CT unspecified body region" in page
    assert "echocardiography Present" not in page
    assert "Recommended Follow-up: Transthoracic echocardiography" in page
    # The referral comes first, with the triggering finding named under it.
    referral = page.index('Tracking Identifier = "Echocardiography referral"')
    first_task = page.index('Tracking Identifier = "Reduced RV systolic function"')
    assert referral < page.index("Recommended Follow-up") < first_task
    assert "Depression of left ventricular systolic function: Present" in page[referral:first_task]
    assert "Probability: 0.359 1" in page and "Probability: 0.812 1" in page
    assert page.count("Undetermined") == len(UNASSESSED)
    _no_long_numbers(page)


def test_pixelmed_finds_no_errors(viewer_case):
    """PixelMed's DicomSRValidator: 0 errors on both SRs, and no unexplained warning."""
    _, (sr_path, text_path) = viewer_case
    assert [dciodvfy(p).errors for p in (sr_path, text_path)] == [[], []]
    measurement = pixelmed_validate(sr_path)
    assert measurement.errors == [], measurement.errors
    unexplained = [w for w in measurement.warnings if not QUALITATIVE_ROW_WARNING.match(w)]
    assert unexplained == [], unexplained[:5]
    # One per task's Present/Absent/Undetermined, plus the referral group's two items.
    assert len(measurement.warnings) == NUM_TASKS + 2
    readable = pixelmed_validate(text_path)
    assert readable.errors == [] and readable.warnings == []
