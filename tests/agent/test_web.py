"""Who may reach the dashboard: loopback by default, credentials for anything else."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from agent.config import Settings, WebSettings, load_settings
from agent.errors import ConfigError
from agent.web import Dashboard, start_dashboard
from agent.web.auth import hash_password, verify_password
from agent.web.health import storage_probe
from tests.agent.pipeline_env import ROOT, Serve, agent_config, wait_for
from tests.agent.test_dashboard import http_get
from tests.support.netns import private_netns


def web_config(tmp_path: Path, web: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[database]\nurl = "sqlite:///agent.db"\n[web]\n{web}\n')
    return path


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "dashboard.example.org", ""])
def test_a_network_bind_without_credentials_is_a_config_error(tmp_path: Path, host: str) -> None:
    path = web_config(tmp_path, f'enabled = true\nhost = "{host}"')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert "[web]" in message and "not loopback" in message and "\n" not in message
    # Off, the same host is only a setting: nothing will listen on it.
    load_settings(web_config(tmp_path, f'enabled = false\nhost = "{host}"'))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_binds_need_no_credentials(tmp_path: Path, host: str) -> None:
    assert load_settings(web_config(tmp_path, f'enabled = true\nhost = "{host}"')).web.host == host


@pytest.mark.parametrize(
    "web",
    [
        'username = "admin"',
        'password = "x"',
        'username = "a"\npassword = "x"\npassword_hash = "pbkdf2_sha256$1$AA==$AA=="',
        'username = "a"\npassword_hash = "sha1:abc"',
    ],
)
def test_half_configured_credentials_are_refused(tmp_path: Path, web: str) -> None:
    with pytest.raises(ConfigError, match=r"\[web\]"):
        load_settings(web_config(tmp_path, web))


def test_serve_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    path = web_config(tmp_path, 'enabled = true\nhost = "0.0.0.0"')
    out = subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--config", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "not loopback" in out.stderr, out.stderr


def test_password_hashes() -> None:
    encoded = hash_password("s3cret", iterations=1000)
    assert encoded.startswith("pbkdf2_sha256$1000$")
    assert verify_password("s3cret", encoded)
    assert not verify_password("s3cret ", encoded)
    assert not verify_password("s3cret", encoded.replace("pbkdf2_sha256", "md5"))
    assert not verify_password("s3cret", "pbkdf2_sha256$x$y$z")
    assert hash_password("s3cret", iterations=1000) != encoded  # salted


@pytest.fixture
def dashboard_on(engine: Engine, tmp_path: Path) -> Iterator[type]:
    """Start dashboards over the migrated (empty) test database; stop them afterwards."""
    started: list[Dashboard] = []

    def start(**web: object) -> Dashboard:
        settings = Settings.model_validate(
            {"storage": {"root": str(tmp_path)}, "web": {"enabled": True, "port": 0, **web}}
        )
        dashboard = start_dashboard(settings, engine)
        started.append(dashboard)
        return dashboard

    yield start  # type: ignore[misc]
    for d in started:
        d.stop()


def test_credentials_are_required_when_configured(dashboard_on: type) -> None:
    hashed = hash_password("hunter2", iterations=1000)
    for creds in ({"password": "hunter2"}, {"password_hash": hashed}):
        d = dashboard_on(username="admin", **creds)
        base = f"http://127.0.0.1:{d.port}"
        for path in ("/", "/metrics", "/healthz", "/failures", "/studies/1.2.3"):
            code, _body, headers = http_get(base + path)
            assert code == 401 and headers["WWW-Authenticate"].startswith("Basic"), path
        assert http_get(base + "/", ("admin", "wrong"))[0] == 401
        assert http_get(base + "/", ("root", "hunter2"))[0] == 401
        code, body, headers = http_get(base + "/", ("admin", "hunter2"))
        assert code == 200 and "No studies received yet" in body
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert http_get(base + "/studies/1.2.3", ("admin", "hunter2"))[0] == 404


def test_loopback_range_without_credentials_and_read_only(dashboard_on: type) -> None:
    d = dashboard_on(host="127.0.0.2")
    base = f"http://127.0.0.2:{d.port}"
    code, body, _h = http_get(base + "/throughput")
    assert code == 200 and "throughput-chart" in body
    req = urllib.request.Request(base + "/", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405


def test_healthz_is_503_when_storage_is_missing(dashboard_on: type, tmp_path: Path) -> None:
    d = dashboard_on()
    gone = Settings.model_validate({"storage": {"root": str(tmp_path / "gone")}}).storage
    d.probes["storage"] = storage_probe(gone)
    code, body, _h = http_get(f"http://127.0.0.1:{d.port}/healthz")
    checks = {c["name"]: c for c in json.loads(body)["checks"]}
    assert code == 503 and not checks["storage"]["ok"] and checks["database"]["ok"]


def test_dashboard_refuses_a_network_bind_built_around_validation() -> None:
    unchecked = WebSettings.model_construct(enabled=True, host="0.0.0.0", port=0, username=None)
    with pytest.raises(ConfigError, match="not loopback"):
        Dashboard(unchecked, None, None, {})  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_network_bind_refuses_unauthenticated_requests(tmp_path: Path) -> None:
    """``serve`` on every interface, inside a private network namespace (loopback only).

    The checkpoint is not a checkpoint, so the model fails to load and the
    authenticated health check says so with 503.
    """
    bogus = tmp_path / "not-a-checkpoint"
    bogus.mkdir()
    hashed = hash_password("pw", iterations=1000)
    web = '[web]\nenabled = true\nhost = "0.0.0.0"\nport = 8080\nusername = "ops"\n'
    web += f'password_hash = "{hashed}"\n'
    config = agent_config(tmp_path, bogus, extra=web)
    with private_netns() as ns:
        serve = Serve(config, ns)
        try:
            wait_for(lambda: serve.events("web dashboard listening"), 30, "dashboard", serve)

            def curl(*args: str) -> tuple[str, str]:
                out = ns.run(
                    ["curl", "-s", "-w", "\n%{http_code}", *args],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                body, _, code = str(out.stdout).rpartition("\n")
                return code, body

            for path in ("/", "/metrics", "/healthz"):
                assert curl(f"http://127.0.0.1:8080{path}")[0] == "401"
            assert curl("-u", "ops:nope", "http://127.0.0.1:8080/")[0] == "401"
            assert curl("-u", "ops:pw", "http://127.0.0.1:8080/")[0] == "200"

            def model_failed() -> bool:
                code, body = curl("-u", "ops:pw", "http://127.0.0.1:8080/healthz")
                checks = {c["name"]: c for c in json.loads(body)["checks"]}
                return code == "503" and checks["model"]["detail"].startswith("failed")

            wait_for(model_failed, 30, "/healthz to report the model failure", serve)
        finally:
            assert serve.stop() == 0


def test_serve_with_the_dashboard_port_taken_stops_with_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-checkpoint"
    bogus.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = agent_config(tmp_path, bogus, extra=f"[web]\nenabled = true\nport = {port}\n")
        serve = Serve(config)
        code = serve.proc.wait(60)

    def error_lines() -> list[str]:
        return [line for line in serve.lines if line.startswith("hyperct-agent: error:")]

    errors = wait_for(error_lines, 10, "the error line (read by another thread)")
    assert code == 1 and len(errors) == 1
    assert f"dashboard cannot listen on 127.0.0.1:{port}" in errors[0]
    assert not any(line.startswith("Traceback") for line in serve.lines)
