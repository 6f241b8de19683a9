"""Screening links a fired echo referral to its patient's episode (both backends).

Three CTs go through the real node (DCMTK storescu) with a pseudonym key: two
of one patient 50 days apart, one of another. Screening them (the real
completion path and report writer; findings made from known probabilities, so
no model runs) raises two referrals; the second CT of the first patient is a
repeat, and its reports say so as ``[referral] repeat_mode`` asks.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import Engine, func, select, update

from agent.cli import main
from agent.commands.results import _emit
from agent.commands.studies import format_trail
from agent.config import Settings
from agent.pipeline.reporting import ReportFiles
from agent.pipeline.screen import ClaimedJob, Screener
from agent.pseudonym import Pseudonymizer
from agent.report import Findings
from storage.files import report_rel_path
from storage.models import Job, JobState, Referral, Series, Study
from storage.result_list import list_results
from storage.trail import study_trail
from tests.agent.conftest import NodeUnderTest, start_test_node
from tests.agent.report_cases import make_model, probabilities
from tests.agent.report_tools import parse_measurement_report, walk
from tests.support.ct_series import ct_series, write_series

pytestmark = pytest.mark.slow  # four screenings' SRs per backend: ~15 s each on a shared machine

LV = "reduced_lv_systolic_function"
MODEL = make_model(thresholds={LV: 0.5})
FINDINGS = Findings.from_model(probabilities(**{LV: 0.8}), MODEL)
KEY = Pseudonymizer(b"episode-test-key" * 2)


def _claim_all(screener: Screener) -> list[ClaimedJob]:
    claimed: list[ClaimedJob] = []
    while batch := screener._claim():
        claimed += batch
    return claimed


def _screen(node: NodeUnderTest, screener: Screener, *job_ids: int) -> None:
    with node.sessions.begin() as s:
        s.execute(update(Job).where(Job.id.in_(job_ids)).values(state=JobState.QUEUED))
    claimed = _claim_all(screener)
    assert sorted(j.job_id for j in claimed) == sorted(job_ids)
    for job in claimed:
        job.headers = [dcmread(p, stop_before_pixels=True) for p in job.paths]
        assert screener._complete(job, FINDINGS, MODEL) == 1


def _job_of(node: NodeUnderTest, study_uid: str) -> Job:
    with node.sessions() as s:
        return s.scalars(
            select(Job).join(Series).join(Study).where(Study.study_instance_uid == study_uid)
        ).one()


@pytest.mark.parametrize("mode", ["annotate", "suppress"])
def test_one_referral_per_patient_episode(
    tmp_path: Path, engine: Engine, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    node = start_test_node(tmp_path, engine, pseudonymizer=KEY)
    patient = {"PatientID": "EPISODE-1", "IssuerOfPatientID": "H"}
    studies = [
        ct_series(3, attrs={**patient, "StudyDate": "20260110"}),
        ct_series(3, attrs={**patient, "StudyDate": "20260301"}),
        ct_series(3, attrs={"PatientID": "EPISODE-2", "StudyDate": "20260301"}),
    ]
    try:
        for n, datasets in enumerate(studies):
            assert node.storescu(*write_series(datasets, tmp_path / f"in{n}")).returncode == 0
    finally:
        node.node.stop()
    settings = Settings.model_validate(
        {
            "referral": {"repeat_days": 365, "repeat_mode": mode, "tasks": [LV]},
            "reports": {"summary_image": False},  # the SRs say it; the page has its own test
        }
    )
    screener = Screener(
        settings, node.sessions, node.store, None, "w1", ReportFiles(node.store, settings.reports)
    )  # type: ignore[arg-type]
    first, second, other = (_job_of(node, d[0].StudyInstanceUID) for d in studies)
    try:
        _screen(node, screener, first.id)
        _screen(node, screener, second.id, other.id)
        first, second, other = (_job_of(node, d[0].StudyInstanceUID) for d in studies)
        assert (first.referral_repeat, second.referral_repeat, other.referral_repeat) == (
            False,
            True,
            False,
        )
        assert first.referral_id == second.referral_id != other.referral_id
        assert second.referral_rule is not None
        assert second.referral_rule["repeat"] == {"of": "20260110", "mode": mode}
        assert "repeat" not in (first.referral_rule or {})

        # The second CT's reports, read from the store, state the episode.
        with node.sessions() as s:
            series_uid = s.scalar(
                select(Series.series_instance_uid).where(Series.id == second.series_id)
            )
        folder = node.store.root / Path(report_rel_path(series_uid, "x")).parent
        [measurement] = [
            p for p in folder.glob("*.dcm") if str(dcmread(p).SOPClassUID).endswith(".88.34")
        ]
        text = "\n".join(
            str(i.TextValue)
            for p in folder.glob("*.dcm")
            for i in walk(dcmread(p))
            if i.get("ValueType") == "TEXT"
        )
        assert "recommended on 2026-01-10" in text
        group = parse_measurement_report(measurement).referral
        assert group is not None
        assert "previously_recommended_on=2026-01-10" in group.algorithm_parameters
        assert (mode == "suppress") == (group.tracking_identifier or "").startswith(
            "Echocardiography already recommended on 2026-01-10"
        )

        # The command line reads the same stored episode.
        words = {
            "annotate": "echo previously recommended on 2026-01-10",
            "suppress": "echo already recommended on 2026-01-10, not recommended again",
        }[mode]
        with node.sessions() as s:
            rows = {r.job_id: r for r in list_results(s)}
            trail = study_trail(s, studies[1][0].StudyInstanceUID)
        assert (rows[second.id].referral_repeat_of, rows[second.id].referral_repeat_mode) == (
            "20260110",
            mode,
        )
        table = io.StringIO()
        _emit(list(rows.values()), "table", None, table)
        assert words.replace(", not", ": not") in table.getvalue()
        echo = "rep" if mode == "suppress" else "YES"
        assert f"{second.id} done       {echo}" in table.getvalue()
        shown = "\n".join(format_trail(trail))
        assert f"referral {first.referral_id}: {words}" in shown
        with node.sessions() as s:
            first_trail = study_trail(s, studies[0][0].StudyInstanceUID)
        assert f"referral {first.referral_id} (raised by this screening)" in "\n".join(
            format_trail(first_trail)
        )

        config = tmp_path / "agent.toml"
        url = engine.url.render_as_string(hide_password=False)
        config.write_text(
            f'[database]\nurl = "{url}"\n[storage]\nroot = "{node.store.root}"\n'
            '[logging]\nformat = "json"\nlevel = "warning"\n'
        )
        capsys.readouterr()
        assert main(["explain", studies[1][0].StudyInstanceUID, "--config", str(config)]) == 0
        explained = capsys.readouterr().out
        said = {
            "annotate": f"echo referral: recommended (referral {first.referral_id}), fired by {LV}"
            "; Echocardiography previously recommended on 2026-01-10",
            "suppress": "echo referral: Echocardiography already recommended on 2026-01-10: "
            f"not recommended again (referral {first.referral_id}); fired by {LV}",
        }[mode]
        assert said in explained, explained

        # A re-screening of the repeat keeps its referral; nothing new is raised.
        _screen(node, screener, second.id)
        again = _job_of(node, studies[1][0].StudyInstanceUID)
        assert (again.referral_id, again.referral_repeat) == (first.referral_id, True)
        with node.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Referral)) == 2
    finally:
        node.store.close()
