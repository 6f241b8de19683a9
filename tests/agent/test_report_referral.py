"""The echo referral decided once: stored as made, quoted alike by SR, text and summary."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pytest
from pydicom.dataset import Dataset

from agent.report import (
    Findings,
    ReferralDecision,
    ReportInputError,
    build_reports,
    decide,
)
from agent.report.summary import _REFER, conclusion, render_summary, summary_object
from agent.report.text import render_sections
from hyperct_core.tasks import task_by_name
from tests.agent.report_cases import UNASSESSED, make_model, probabilities
from tests.agent.report_tools import walk
from tests.support.ct_series import ct_series

LV, RV = "reduced_lv_systolic_function", "reduced_rv_systolic_function"
CREATED = datetime.datetime(2026, 11, 29, 10, 0, 0)


@pytest.fixture(scope="module")
def source() -> list[Dataset]:
    return ct_series(4, rows=16, columns=16)


def test_decision_names_what_fired_under_which_rule_and_survives_storage() -> None:
    model = make_model(thresholds={LV: 0.5, RV: 0.7, "cardiomegaly": 0.5})
    findings = Findings.from_model(probabilities(**{LV: 0.5, RV: 0.69}), model)
    decision = decide(findings)
    # At the threshold fires (ties count); just below does not.
    assert decision.fired == (LV,) and decision.recommended
    assert decision.thresholds == ((RV, 0.7), (LV, 0.5))  # task index order
    assert set(decision.unassessed) == set(findings.referral_tasks) - {LV, RV}
    assert decision.parameters() == [f"{RV}>=0.7", f"{LV}>=0.5"]
    # What the job row holds (JSON) gives the same decision back.
    stored = json.loads(json.dumps(decision.rule_record()))
    assert ReferralDecision.from_stored(list(decision.fired), stored) == decision


def test_a_decision_made_under_another_rule_is_refused(source: list[Dataset]) -> None:
    model = make_model()
    probs = probabilities(**{LV: 0.9})
    made = decide(Findings.from_model(probs, model))
    moved = Findings.from_model(probs, model, threshold_overrides={LV: 0.95})
    with pytest.raises(ReportInputError, match="another rule"):
        build_reports(source, moved, model, series_number=9901, decision=made)
    with pytest.raises(ReportInputError, match="another rule"):
        render_sections(moved, model, made)
    with pytest.raises(ReportInputError, match="another rule"):
        summary_object(source, moved, model, None, revision=1, series_number=9902, decision=made)


def test_sr_text_and_summary_quote_the_decision_given(
    source: list[Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(thresholds={LV: 0.5, RV: 0.5})
    findings = Findings.from_model(probabilities(**{LV: 0.8, RV: 0.6}), model)
    decision = decide(findings)
    assert decision.fired == (RV, LV)

    # Handed a decision, no builder applies the rule again.
    import importlib

    rule = importlib.import_module("agent.report.referral")

    def refuse(_findings: Findings) -> ReferralDecision:
        raise AssertionError("the rule was applied again")

    monkeypatch.setattr(rule, "decide", refuse)
    sr, text = build_reports(source, findings, model, series_number=9901, decision=decision)
    page = render_summary(findings, model, None, created=CREATED, decision=decision)
    head, why = conclusion(findings, decision)

    params = [
        item.TextValue
        for item in walk(sr)
        if item.get("ValueType") == "TEXT" and str(item.TextValue).startswith("triggered_by=")
    ]
    assert params == [f"triggered_by={RV},{LV}"]
    body = "\n".join(i.TextValue for i in walk(text) if i.get("ValueType") == "TEXT")
    [triggered] = [line for line in body.splitlines() if "Triggered by:" in line]
    for task in (LV, RV):
        name = task_by_name(task).display_name
        assert name in triggered and name in head
    assert "0.50" in why  # the threshold the decision was made under
    assert tuple(np.asarray(page)[135, 40]) == _REFER


def test_not_assessed_when_no_referral_task_has_an_operating_point() -> None:
    model = make_model(thresholds={"emphysema": 0.5})
    findings = Findings.from_model(probabilities(**{UNASSESSED[0]: 0.99}), model)
    decision = decide(findings)
    assert not decision.recommended and decision.assessed == ()
    head, _why = conclusion(findings, decision)
    assert head == "Echocardiography referral not assessed"
