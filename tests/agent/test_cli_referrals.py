"""``hyperct-agent referrals``: list, show and audited state changes, on both backends."""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from agent.cli import main
from storage.db import make_session_factory
from storage.models import AuditEvent, Job, ReferralEvent, Series, Study
from storage.referrals import link_referral
from tests.agent.test_cli import config_for


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Ran:
    """The command in this process (a subprocess per call costs seconds on a busy machine)."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's one-line usage error
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return Ran(code, out, err)


def _referrals(engine: Engine) -> tuple[int, int]:
    """Two CTs of one patient (one referral, a repeat) and one of another: the two IDs."""
    with make_session_factory(engine).begin() as s:
        jobs = []
        for n, (who, day) in enumerate(
            [("a" * 64, "20260110"), ("a" * 64, "20260301"), ("b" * 64, "20260302")]
        ):
            study = Study(study_instance_uid=f"1.2.9.{n}", study_date=day, patient_pseudonym=who)
            series = Series(study=study, series_instance_uid=f"1.2.9.{n}.1")
            job = Job(series=series)
            s.add_all([study, series, job])
            s.flush()
            jobs.append(job.id)
        first = link_referral(s, jobs[0], ["reduced_lv_systolic_function"], repeat_days=365)
        link_referral(s, jobs[1], ["reduced_lv_systolic_function"], repeat_days=365)
        other = link_referral(s, jobs[2], ["pulmonary_hypertension"], repeat_days=365)
    return first.referral_id, other.referral_id


def test_list_show_and_set_state(
    tmp_path: Path, db_url: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    first, other = _referrals(engine)
    config = str(config_for(tmp_path, db_url))

    listed = _cli(capsys, "referrals", "list", "--json", "--config", config)
    assert listed.returncode == 0, listed.stderr
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert (rows[first]["cts"], rows[first]["referred_on"], rows[first]["state"]) == (
        2,
        "20260110",
        "new",
    )
    assert rows[other]["cts"] == 1

    changed = _cli(
        capsys,
        "referrals",
        "set-state",
        str(first),
        "echo_done",
        "--note",
        "TTE normal",
        "--config",
        config,
    )
    assert changed.returncode == 0, changed.stderr
    user = getpass.getuser()
    assert changed.stdout.strip() == f"referral {first}: new -> echo_done (by {user})"

    table = _cli(capsys, "referrals", "list", "--state", "echo_done", "--config", config)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 2 and lines[1].split()[:3] == [str(first), "echo_done", "2026-01-10"]

    shown = _cli(capsys, "referrals", "show", str(first), "--config", config)
    assert shown.returncode == 0, shown.stderr
    assert f"referral {first}: echo_done" in shown.stdout
    assert "2026-03-01  repeat" in shown.stdout and "2026-01-10  raised it" in shown.stdout
    assert "new -> echo_done" in shown.stdout and f"by {user}  (TTE normal)" in shown.stdout

    with make_session_factory(engine)() as s:
        events = s.scalars(select(ReferralEvent).where(ReferralEvent.referral_id == first)).all()
        assert [(e.to_state, e.actor) for e in events][-1] == ("echo_done", user)
        audit = s.scalars(select(AuditEvent).where(AuditEvent.outcome == "state_changed")).one()
        assert audit.detail == {
            "referral_id": first,
            "from": "new",
            "to": "echo_done",
            "actor": user,
        }

    # Bad input: one line each, nothing changed.
    unknown = _cli(capsys, "referrals", "set-state", "999", "declined", "--config", config)
    assert unknown.returncode == 1 and unknown.stderr.strip().endswith("no referral 999")
    assert len(unknown.stderr.strip().splitlines()) == 1
    bad = _cli(capsys, "referrals", "set-state", str(other), "cancelled", "--config", config)
    assert bad.returncode == 2 and "unknown referral state 'cancelled'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    missing = _cli(capsys, "referrals", "show", "12x", "--config", config)
    assert missing.returncode == 2 and "not a referral ID: '12x'" in missing.stderr
    with make_session_factory(engine)() as s:
        assert (
            len(s.scalars(select(ReferralEvent)).all()) == 3
        )  # 2 raised (the repeat raises none) + 1 change
