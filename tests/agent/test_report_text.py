"""The readable report (TID 2000) and the size and codes of both reports."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from agent.report import (
    DEFAULT_REFERRAL_TASKS,
    Findings,
    build_reports,
    render_sections,
)
from agent.report.codes import (
    MAX_CODE_MEANING,
    PRIVATE_SCHEME,
    all_codes,
)
from hyperct_core.tasks import NUM_TASKS, TASK_NAMES, task_by_name
from tests.agent.report_cases import (
    CARD_THRESHOLDS,
    STANDARD_SCHEMES,
    build_and_write,
    make_model,
    probabilities,
    text_sections,
)
from tests.agent.report_tools import (
    walk,
)
from tests.support.ct_series import ct_series


@pytest.fixture(scope="module")
def source() -> list[Dataset]:
    return ct_series(12, rows=16, columns=16)


# --- the text report ----------------------------------------------------------------------


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

    sections = text_sections(ds)
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
