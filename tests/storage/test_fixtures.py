"""The shared database fixtures skip without PostgreSQL, except under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_SERVER = "postgresql+psycopg://postgres@127.0.0.1:1/test"  # port 1: connection refused


def _run_pg_case(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["HYPERCT_TEST_PG_URL"] = NO_SERVER
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rs",
            "tests/storage/test_db.py::test_models_and_migrations_agree",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_postgresql_cases_skip_with_reason_without_a_server() -> None:
    proc = _run_pg_case(ci=None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped" in proc.stdout
    assert "no PostgreSQL server at" in proc.stdout


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_postgresql_cases_fail_under_ci_without_a_server(ci: str) -> None:
    proc = _run_pg_case(ci=ci)
    assert proc.returncode != 0
    assert "CI=true but no PostgreSQL server at" in proc.stdout
    assert "skipped" not in proc.stdout
