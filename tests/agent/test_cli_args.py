"""Odd command-line arguments: one line on standard error, a non-zero exit, never a traceback.

Every command runs through the real entry point (``agent.cli.main`` in process,
``python -m agent`` where the process boundary matters: standard output on a full
disk, a file size limit) against a migrated database on SQLite and PostgreSQL
holding three series whose jobs are ``dead``.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.engine import Engine

from agent.cli import main
from storage.db import make_session_factory
from storage.ingest import record_instance
from storage.models import Job, JobState, Series
from tests.storage.storage_records import make_record

ROOT = Path(__file__).resolve().parents[2]
STUDY = "1.2.826.0.1.3680043.10.99"


@dataclass
class AgentDb:
    config: Path
    engine: Engine
    jobs: dict[int, str]  # job id -> series UID

    def states(self) -> dict[int, JobState]:
        with make_session_factory(self.engine)() as s:
            return {j.id: j.state for j in s.scalars(select(Job))}


@pytest.fixture
def agent_db(tmp_path: Path, engine: Engine) -> AgentDb:
    """Three one-instance series, their jobs dead, and an agent.toml naming the database."""
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        for n in (1, 2, 3):
            uid = f"{STUDY}.{n}"
            record_instance(
                s,
                make_record(
                    n,
                    study_instance_uid=STUDY,
                    series_instance_uid=uid,
                    sop_instance_uid=f"{uid}.1",
                ),
            )
    with sessions.begin() as s:
        for job in s.scalars(select(Job)):
            job.state = JobState.DEAD
        query = select(Job.id, Series.series_instance_uid).join(Series, Job.series_id == Series.id)
        jobs = {job_id: uid for job_id, uid in s.execute(query)}
    url = engine.url.render_as_string(hide_password=False)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n[storage]\nroot = "{tmp_path / "storage"}"\n'
        '[logging]\nformat = "json"\nlevel = "error"\n'
    )
    return AgentDb(config, engine, jobs)


def run(*argv: str) -> tuple[int, str, str]:
    """``hyperct-agent ARGV`` in process: exit status, standard output, standard error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse: --help, or a bad argument
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def cli(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "agent", *argv],
        text=True,
        timeout=120,
        cwd=ROOT,
        **kwargs,  # type: ignore[call-overload]
    )


def assert_one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["results", "--limit", "99999999999999999999"],
            "--limit: 99999999999999999999 is outside",
        ),
        (["results", "--limit", "-1"], "--limit: -1 is outside 1-2147483647"),
        (["results", "--limit", "0"], "outside 1-2147483647"),
        (["jobs", "list", "--limit", "1e3"], "not a whole number"),
        (["jobs", "list", "--limit", "5" * 10_000], "is outside"),
        (["jobs", "retry", "99999999999999999999"], "job id 99999999999999999999 is outside"),
        (["jobs", "retry", "²"], "not a job id or series UID: '²'"),
        (["jobs", "requeue", "٣"], "not a job id or series UID: '٣'"),
        (["jobs", "requeue", "３"], "(job ids are ASCII digits)"),
        (["results", "--above", "０.５"], "--above: not a number"),
        (["results", "--above", "nan"], "--above: not a number"),
        (["results", "--above", "1e999"], "is outside 0-1"),
        (["results", "--since", "0001-01-01", "--until", "9999-12-31"], "1900-01-01 to 9999-12-31"),
        (["results", "--until", "9999-12-31T23:00-05:00"], "is outside 1900-01-01"),
        (["results", "--since", "2026-13-01"], "not a date or ISO time"),
        (["results", "--since", "２０２６-01-01"], "not a date or ISO time"),
        (["results", "--task", "nope\x00"], "unknown task"),
        (["jobs", "list", "--state", "zombie"], "unknown job state 'zombie'"),
        (["studies", "show", "1" * 65], "not a UID"),
        (["studies", "show", "1.2\x00.3"], "not a UID"),
        (["reports", "resend", "1.2.é"], "not a UID"),
        (["reports", "resend", "1.2", "--destination", "pacs\n"], "not a name"),
        (["explain", "1.2 3"], "not a UID"),
        (["status", "--config", "agent\x00.toml"], "--config: not a path"),
        (["results", "--output", ""], "--output: not a path"),
        (["serve", "--grace", "inf"], "--grace: not a number"),
        (["serve", "--grace", "1e9"], "is outside 0-3600"),
        (["serve", "--grace", "-1"], "--grace: -1 is outside 0-3600"),
    ],
)
def test_odd_arguments_are_refused_in_one_line(
    agent_db: AgentDb, argv: list[str], says: str
) -> None:
    before = agent_db.states()
    code, out, err = run(*argv, "--config", str(agent_db.config))
    assert code == 2
    assert says in assert_one_line(err)
    assert out == ""
    assert agent_db.states() == before  # nothing was requeued by a look-alike digit


def test_ascii_job_ids_still_work_and_a_lookalike_is_not_job_3(agent_db: AgentDb) -> None:
    assert 3 in agent_db.jobs
    code, _, err = run("jobs", "requeue", "٣", "--config", str(agent_db.config))
    assert code == 2 and agent_db.states()[3] == JobState.DEAD
    code, out, err = run("jobs", "requeue", "3", "--config", str(agent_db.config))
    assert (code, out) == (0, "1 job(s) queued\n"), err
    assert agent_db.states()[3] == JobState.QUEUED
    code, out, err = run("jobs", "retry", agent_db.jobs[2], "--config", str(agent_db.config))
    assert (code, out) == (0, "1 job(s) queued again\n"), err
    code, _, err = run("jobs", "retry", "2147483647", "--config", str(agent_db.config))
    assert code == 1 and "no job 2147483647 " in assert_one_line(err)


def test_the_whole_supported_range_reaches_the_database(agent_db: AgentDb) -> None:
    cfg = ("--config", str(agent_db.config))
    widest = ("--since", "1900-01-01", "--until", "9999-12-31", "--limit", "2147483647")
    code, out, err = run("results", *widest, "--format", "json", *cfg)
    assert code == 0, err
    assert sorted(r["job_id"] for r in json.loads(out)) == sorted(agent_db.jobs)
    # The records were received at 2026-01-02 03:04:06-08 UTC; an offset is converted.
    code, out, err = run("results", "--since", "2026-01-02T04:00+01:00", "--format", "json", *cfg)
    assert code == 0 and len(json.loads(out)) == 3, err
    code, out, err = run("results", "--until", "2026-01-02T03:04:06Z", "--format", "json", *cfg)
    assert code == 0 and json.loads(out) == [], err
    code, out, err = run("jobs", "list", "--limit", "2147483647", "--json", *cfg)
    assert code == 0 and len(json.loads(out)) == 3, err
    code, _, err = run("results", "--since", "2026-02-01", "--until", "2026-01-01", *cfg)
    assert code == 1 and "is not before --until" in assert_one_line(err)


def test_an_unwritable_output_is_one_line(agent_db: AgentDb, tmp_path: Path) -> None:
    cfg = ("--config", str(agent_db.config))
    code, out, err = run("results", "--output", "/dev/full", *cfg)
    assert code == 1 and out == ""
    assert assert_one_line(err) == (
        "hyperct-agent: error: cannot write /dev/full: No space left on device"
    )
    missing = tmp_path / "no" / "such" / "dir" / "out.csv"
    code, _, err = run("results", "--format", "csv", "--output", str(missing), *cfg)
    assert code == 1 and "No such file or directory" in assert_one_line(err)
    code, _, err = run("results", "--output", str(tmp_path), *cfg)
    assert code == 1 and f"cannot write {tmp_path}" in assert_one_line(err)
    target = tmp_path / "out.json"
    code, _, err = run("results", "--format", "json", "--output", str(target), *cfg)
    assert code == 0, err
    assert len(json.loads(target.read_text())) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.json")] == []
    # Through a symbolic link the file it points at is replaced, not the link.
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    code, _, err = run("results", "--format", "csv", "--output", str(link), *cfg)
    assert code == 0, err
    assert link.is_symlink() and target.read_text().startswith("job_id,")


def _small_files() -> None:
    # A file size limit makes write() fail with EFBIG, as a full disk fails with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))


def test_a_failed_export_leaves_the_previous_file_and_no_partial_one(
    agent_db: AgentDb, tmp_path: Path
) -> None:
    export = tmp_path / "export.json"
    export.write_text("[]\n")
    proc = cli(
        "results", "--format", "json", "--output", str(export), "--config", str(agent_db.config),
        preexec_fn=_small_files,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert assert_one_line(proc.stderr) == (
        f"hyperct-agent: error: cannot write {export}: File too large"
    )
    assert export.read_text() == "[]\n"
    assert sorted(p.name for p in tmp_path.iterdir() if "export" in p.name) == ["export.json"]


def test_standard_output_on_a_full_disk_is_one_line(agent_db: AgentDb) -> None:
    with open("/dev/full", "w") as full:
        proc = cli("status", "--config", str(agent_db.config), stdout=full, stderr=subprocess.PIPE)
    assert proc.returncode == 1
    assert assert_one_line(proc.stderr) == (
        "hyperct-agent: error: cannot write standard output: No space left on device"
    )


# --- generated arguments -------------------------------------------------------------------

_numbers = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=4),
    st.sampled_from(["nan", "inf", "-0", "1e3", "0x10", " 7", "1_0", "2147483648", "", "-"]),
)
_offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(
    timezone
)
_dates = st.one_of(
    st.dates().map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.one_of(st.none(), _offsets)).map(lambda d: d.isoformat()),
    st.text(max_size=30),
)
_odd = st.one_of(
    st.text(max_size=80),
    st.text(st.characters(codec="ascii"), max_size=70),
    st.sampled_from(["1.2.3", f"{STUDY}.1", "..", "../x", "/etc/passwd", "1" * 64, "--", "-1"]),
)
_refs = st.one_of(_numbers, _odd, st.sampled_from(["1", "2", "3"]))


def _paths(tmp: Path) -> st.SearchStrategy[str]:
    # Only places a test may write to; "/" and "." are not walked by `explain --dir`.
    return st.one_of(
        st.sampled_from(["/dev/full", "/nonexistent/dir/x.csv", "a\x00b", "", str(tmp)]),
        st.text(
            st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=40
        ).map(lambda name: str(tmp / name)),  # fmt: skip
    )


def _pair(flag: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), values.map(lambda v: [flag, v]))


def _argvs(tmp: Path) -> st.SearchStrategy[list[str]]:
    paths = _paths(tmp)
    flat = st.lists(st.one_of(
        _pair("--limit", _numbers), _pair("--since", _dates), _pair("--until", _dates),
        _pair("--above", _numbers), _pair("--task", _odd), _pair("--state", _odd),
        _pair("--output", paths), _pair("--format", st.sampled_from(["json", "csv", "x"])),
    ), max_size=4).map(lambda groups: [a for g in groups for a in g])  # fmt: skip
    return st.one_of(
        flat.map(lambda a: ["results", *a]),
        st.tuples(_pair("--limit", _numbers), _pair("--state", _odd)).map(
            lambda t: ["jobs", "list", *t[0], *t[1]]
        ),
        st.lists(_refs, max_size=3).map(lambda r: ["jobs", "retry", *r]),
        st.lists(_refs, min_size=1, max_size=3).map(lambda r: ["jobs", "requeue", *r]),
        _odd.map(lambda u: ["studies", "show", "--json", u]),
        st.tuples(_odd, _pair("--destination", _odd)).map(
            lambda t: ["reports", "resend", *t[1], t[0]]
        ),
        _odd.map(lambda u: ["explain", u]),
        paths.map(lambda p: ["explain", "--dir", p]),
        st.just(["status", "--json"]),
    )


def test_generated_arguments_never_raise_a_traceback(
    agent_db: AgentDb, tmp_path_factory: pytest.TempPathFactory
) -> None:
    scratch = tmp_path_factory.mktemp("outputs")

    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(_argvs(scratch))
    def check(argv: list[str]) -> None:
        code, _, err = run(*argv, "--config", str(agent_db.config))
        assert "Traceback" not in err
        # 0 done, 1 refused (no such study, unwritable output), 2 bad argument; 70 would
        # be an error the agent did not foresee.
        assert code in (0, 1, 2), (argv, code, err)
        if code:
            assert len(err.strip().splitlines()) == 1, (argv, err)

    check()
