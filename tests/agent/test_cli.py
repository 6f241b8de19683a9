"""The command line as an operator uses it: db upgrade, status --json, echo, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.agent.conftest import NODE_AET, NodeUnderTest
from tests.agent.test_node import scu_send
from tests.support.ct_series import ct_series

ROOT = Path(__file__).resolve().parents[2]


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or ROOT,
        env=env,
    )


def config_for(tmp_path: Path, db_url: str, extra: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[database]\nurl = "{db_url}"\n[logging]\nformat = "json"\n{extra}')
    return path


def test_db_upgrade_then_status_json(tmp_path: Path, db_url: str) -> None:
    config = config_for(tmp_path, db_url)
    up = cli("db", "upgrade", "--config", str(config))
    assert up.returncode == 0, up.stderr
    assert up.stdout.startswith("database at revision ")
    status = cli("status", "--json", "--config", str(config))
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)
    assert counts["studies"] == counts["series"] == counts["instances"] == 0
    assert all(isinstance(counts[k], int) for k in ("studies", "series", "instances"))
    assert set(counts["jobs"]) >= {"receiving", "queued", "done", "failed"}
    assert set(counts["reports"]) >= {"pending", "sent", "failed"}


def test_status_counts_what_the_node_received(tmp_path: Path, node: NodeUnderTest) -> None:
    assert scu_send(node.port, ct_series(5)) == [0] * 5
    url = node.engine.url.render_as_string(hide_password=False)
    status = cli("status", "--json", "--config", str(config_for(tmp_path, url)))
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)
    assert (counts["studies"], counts["series"], counts["instances"]) == (1, 1, 5)
    assert counts["jobs"]["receiving"] == 1


def test_status_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    config = config_for(tmp_path, f"sqlite:///{tmp_path / 'fresh.db'}")
    status = cli("status", "--config", str(config))
    assert status.returncode == 1
    assert "Traceback" not in status.stderr
    assert "db upgrade" in status.stderr


def test_echo_destination(tmp_path: Path, node: NodeUnderTest) -> None:
    dest = (
        f'[[destinations]]\nname = "self"\nae_title = "{NODE_AET}"\n'
        f'host = "127.0.0.1"\nport = {node.port}\n'
        f'[[destinations]]\nname = "wrong"\nae_title = "NOBODY"\n'
        f'host = "127.0.0.1"\nport = {node.port}\n'
    )
    config = config_for(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", dest)
    ok = cli("echo", "self", "--config", str(config))
    assert ok.returncode == 0, ok.stderr
    assert "success" in ok.stdout
    refused = cli("echo", "wrong", "--config", str(config))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "failed" in refused.stderr
    unknown = cli("echo", "nowhere", "--config", str(config))
    assert unknown.returncode == 2
    assert "unknown destination 'nowhere' (known: self, wrong)" in unknown.stderr


def test_serve_on_a_busy_port_is_one_line(tmp_path: Path, node: NodeUnderTest) -> None:
    config = config_for(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", f"[node]\nport = {node.port}\n")
    proc = cli("serve", "--config", str(config))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hyperct-agent: error: cannot listen on")


@pytest.mark.slow
def test_installed_wheel_finds_its_data_files(tmp_path: Path) -> None:
    """alembic/, templates/ and agent.toml work from a wheel, away from the checkout."""
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = dist.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    share = venv / "share" / "hyperct-agent"
    assert (share / "alembic" / "env.py").is_file()
    assert (share / "agent.toml").is_file()
    assert list((share / "alembic" / "versions").glob("0001_*.py"))
    # Dependencies come from this environment's site-packages without its
    # editable-install hook (PYTHONPATH does not run .pth files), so `agent`
    # can only be imported from the wheel.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import agent, agent.resources as r; print(agent.__file__); print(r.data_root())",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    module_file, data_root = probe.stdout.split()
    assert Path(module_file).is_relative_to(venv)
    assert Path(data_root) == share
    up = subprocess.run(
        [str(venv / "bin" / "hyperct-agent"), "db", "upgrade"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=120,
    )
    assert up.returncode == 0, up.stderr
    assert (
        work / "var" / "hyperct.db"
    ).is_file()  # the embedded default, under the working directory
