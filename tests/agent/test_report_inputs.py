"""What reports are built from: findings, the model identity, the card's operating points."""

from __future__ import annotations

import re

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
from hyperct_core.checkpoint import ModelCard
from hyperct_core.tasks import TASK_NAMES, TASKS, task_by_name
from tests.agent.report_cases import (
    CARD_THRESHOLDS,
    PARTIAL_THRESHOLDS,
    UNASSESSED,
    WEIGHTS,
    build_and_write,
    make_model,
    probabilities,
    text_sections,
)
from tests.agent.report_tools import (
    parse_measurement_report,
)
from tests.support.ct_series import ct_series


@pytest.fixture(scope="module")
def source() -> list[Dataset]:
    return ct_series(12, rows=16, columns=16)


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

    sections = dict(text_sections(pydicom.dcmread(text_path)))
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
    tasks = data["extra"]["operating_points"]["tasks"]
    assert assessed == {task for task, record in tasks.items() if record.get("validated", True)}
    assert assessed < set(TASK_NAMES)
