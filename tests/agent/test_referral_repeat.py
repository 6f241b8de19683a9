"""A repeat within a patient's episode: every output says so, as the stored decision does."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from agent.report import Findings, ReferralDecision, decide
from agent.report.summary import conclusion
from agent.report.text import render_sections
from tests.agent.report_cases import build_and_write, make_model, probabilities, text_sections
from tests.agent.report_tools import (
    QUALITATIVE_ROW_WARNING,
    dciodvfy,
    dsr2html,
    dsrdump,
    parse_measurement_report,
    pixelmed_validate,
)
from tests.support.ct_series import ct_series

LV = "reduced_lv_systolic_function"
CREATED = datetime.datetime(2026, 11, 29, 10, 0, 0)
PREVIOUS = "Echocardiography previously recommended on 2026-01-10"
ALREADY = "Echocardiography already recommended on 2026-01-10: not recommended again"


@pytest.fixture(scope="module")
def source() -> list[Dataset]:
    return ct_series(4, rows=16, columns=16)


def _fired() -> tuple[Findings, ReferralDecision]:
    model = make_model(thresholds={LV: 0.5})
    findings = Findings.from_model(probabilities(**{LV: 0.8}), model)
    return findings, decide(findings)


def test_repeat_survives_storage_and_words_follow_the_mode() -> None:
    findings, decision = _fired()
    assert decision.repeat_line() is None and not decision.repeat
    annotated = decision.as_repeat("20260110", "annotate")
    suppressed = decision.as_repeat("20260110", "suppress")
    for d in (annotated, suppressed):
        stored = json.loads(json.dumps(d.rule_record()))
        assert ReferralDecision.from_stored(list(d.fired), stored) == d
    assert annotated.recommended and annotated.repeat_line() == PREVIOUS
    assert not suppressed.recommended and suppressed.repeat_line() == ALREADY
    with pytest.raises(ValueError, match="repeat mode"):
        decision.as_repeat("20260110", "shout")


@pytest.mark.parametrize("mode", ["annotate", "suppress"])
def test_every_output_states_the_repeat(source: list[Dataset], tmp_path: Path, mode: str) -> None:
    findings, decision = _fired()
    repeat = decision.as_repeat("20260110", mode)
    model = make_model(thresholds={LV: 0.5})
    sr_path, text_path = build_and_write(source, findings, model, tmp_path, decision=repeat)

    # TID 1500: the group says it, coded; a suppressed repeat has no Recommended Follow-up.
    parsed = parse_measurement_report(sr_path)
    assert parsed.referral is not None
    assert parsed.referral.tracking_identifier == repeat.repeat_line()
    assert "previously_recommended_on=2026-01-10" in parsed.referral.algorithm_parameters
    assert f"repeat_mode={mode}" in parsed.referral.algorithm_parameters
    follow_up = [v for n, v in parsed.referral.evaluations if n == codes.DCM.RecommendedFollowUp]
    assert follow_up == ([] if mode == "suppress" else [codes.SCT.TransthoracicEchocardiography])

    # The readable SR: impression and recommendation say it in words.
    sections = dict(text_sections(dcmread(text_path)))
    impressions = next(t for _, t in sections["Impressions"] if t.startswith("Echocardiography"))
    recommendations = " ".join(t for _, t in sections["Recommendations"])
    if mode == "annotate":
        assert impressions.startswith("Echocardiography recommended.")
        assert PREVIOUS in impressions and PREVIOUS in recommendations
        assert recommendations.startswith("Transthoracic echocardiography.")
    else:
        assert impressions.startswith(ALREADY)
        assert "recommended." not in impressions.split(":")[0]
        assert "Transthoracic echocardiography" not in recommendations
        assert recommendations.startswith("No new recommendation")

    # Validators and a renderer accept the changed documents.
    for path in (sr_path, text_path):
        assert dciodvfy(path).errors == []
        status, dump = dsrdump(path)
        assert status == 0 and not [ln for ln in dump.splitlines() if ln.startswith("E:")]
    page = dsr2html(sr_path) + dsr2html(text_path)
    assert (repeat.repeat_line() or "") in page

    # The summary page and the plain-text sections quote the same decision.
    headline, why = conclusion(findings, repeat)
    if mode == "annotate":
        assert headline.startswith("Echocardiography recommended") and PREVIOUS in why
    else:
        assert headline == ALREADY
    text = "".join(render_sections(findings, model, repeat).values())
    assert (repeat.repeat_line() or "") in text


@pytest.mark.slow  # PixelMed starts a JVM per document
@pytest.mark.parametrize("mode", ["annotate", "suppress"])
def test_repeat_reports_pass_pixelmed(source: list[Dataset], tmp_path: Path, mode: str) -> None:
    findings, decision = _fired()
    model = make_model(thresholds={LV: 0.5})
    for path in build_and_write(
        source, findings, model, tmp_path, decision=decision.as_repeat("20260110", mode)
    ):
        checked = pixelmed_validate(path)
        assert checked.errors == []
        assert [w for w in checked.warnings if not QUALITATIVE_ROW_WARNING.match(w)] == []
