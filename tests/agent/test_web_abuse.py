"""The dashboard under hostile or merely odd clients: malformed HTTP, IPv6, password guessing.

Every client here is a real socket on loopback. Source addresses 127.0.0.2 and
up stand for "another client" (the whole 127/8 block is loopback on Linux).
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine

from agent.config import Settings, load_settings
from agent.errors import ConfigError
from agent.web import Dashboard, start_dashboard
from agent.web import server as web_server
from agent.web.auth import (
    CONCURRENT_VERIFICATIONS,
    LOGIN_BURST,
    LoginLimiter,
    client_key,
    hash_password,
    verify_password,
)
from tests.agent.pipeline_env import Serve, agent_config, wait_for
from tests.agent.test_web import web_config


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


def raw_exchange(port: int, data: bytes, *, drip: bytes = b"", host: str = "127.0.0.1") -> bytes:
    """Send ``data`` (then ``drip`` a byte every 0.2 s) and read the answer until EOF.

    Bounded: the client gives up after 30 s whatever the server does.
    """
    with socket.create_connection((host, port), timeout=30) as sock:
        try:
            sock.sendall(data)
            for i in range(len(drip)):
                sock.sendall(drip[i : i + 1])
                time.sleep(0.2)
        except OSError:
            pass  # the server answered and closed while the client was still talking
        answer = b""
        while len(answer) < 1 << 20:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
        return answer


def status_of(answer: bytes) -> int:
    """The status code of an HTTP/1.x answer, 0 when there is none."""
    first = answer.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[0].startswith(b"HTTP/1.") else 0


def client_hello() -> bytes:
    """The first flight of a real TLS client (the ssl module's own ClientHello)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="dashboard.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def get(
    port: int, path: str = "/", *, auth: tuple[str, str] | None = None, source: str = "127.0.0.1"
) -> tuple[int, dict[str, str]]:
    """One GET with http.client from a chosen loopback source address."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    headers = {}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        conn.request("GET", path, headers=headers)
        rsp = conn.getresponse()
        rsp.read()
        return rsp.status, dict(rsp.headers)
    finally:
        conn.close()


HEADER_FLOOD = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n"
MALFORMED = {
    "bad request line": (b"HELLO\r\n\r\n", 400),
    "bad version": (b"GET / HTTX/1.1\r\n\r\n", 400),
    "four words": (b"GET / / HTTP/1.1\r\n\r\n", 400),
    "HTTP/0.9": (b"GET /\r\n", 400),
    "70 KB URL": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "binary garbage": (b"\x00\xff\x13\x80garbage\x00\r\n\r\n", 400),
    "letters then noise": (b"xyzzy \x01\x02 plugh\r\n\r\n", 400),
    "header flood": (HEADER_FLOOD, 431),
    "60 KB of 1 KB headers": (
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(60)),
        431,
    ),
    "70 KB header": (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n", 431),
    "unknown method": (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "OPTIONS": (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "POST with a body": (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405),
}


def test_malformed_requests_get_a_4xx_and_the_server_goes_on(
    dashboard_on: type, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_server, "HEAD_SECONDS", 1.5)
    d = dashboard_on()
    cases = {**MALFORMED, "TLS ClientHello": (client_hello(), 400)}
    seen = {name: status_of(raw_exchange(d.port, data)) for name, (data, _want) in cases.items()}
    assert seen == {name: want for name, (_data, want) in cases.items()}

    # Slow clients: a head still incomplete at the deadline is answered 408 and
    # closed, however steadily it drips (the drip below would last 8 s).
    drip = b"X-Slow: " + b"s" * 40
    for start in (b"GET / HTTP/1.1\r\nHost: x\r\n", b"GET /abc", b""):
        assert status_of(raw_exchange(d.port, start, drip=drip)) == 408, start

    # A real TLS client on the plain port fails its handshake, nothing more.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", d.port), timeout=30) as sock,
        pytest.raises((ssl.SSLError, OSError)),
    ):
        ctx.wrap_socket(sock, server_hostname="dashboard.test")

    assert get(d.port)[0] == 200
    assert get(d.port, "/healthz")[0] in (200, 503)  # no model here; the answer is what counts
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "Exception" not in err, err[-2000:]


def test_idle_connections_from_one_client_do_not_lock_out_another(
    dashboard_on: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_server, "HEAD_SECONDS", 30.0)
    d = dashboard_on()
    idle: list[socket.socket] = []
    try:
        for _ in range(web_server.MAX_PER_CLIENT):
            idle.append(socket.create_connection(("127.0.0.1", d.port), timeout=30))
        # The client's next connection is refused at once, with a reason.
        assert status_of(raw_exchange(d.port, b"GET / HTTP/1.1\r\n\r\n")) == 429
        # Another address is served while the idle sockets stay open.
        assert get(d.port, source="127.0.0.2")[0] == 200
    finally:
        for sock in idle:
            sock.close()

    def served() -> bool:
        return get(d.port)[0] == 200

    # Closed sockets give their slots back (the handler notices the EOF at once).
    deadline = time.monotonic() + 20
    while not served():
        assert time.monotonic() < deadline, "slots never given back"
        time.sleep(0.1)


def skip_without_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except (OSError, AttributeError):
        pytest.skip("no IPv6 loopback on this machine")


def test_the_dashboard_binds_ipv6_loopback(dashboard_on: type) -> None:
    skip_without_ipv6_loopback()
    for host in ("::1", "[::1]"):
        d = dashboard_on(host=host)
        conn = http.client.HTTPConnection("::1", d.port, timeout=30)
        try:
            conn.request("GET", "/")
            rsp = conn.getresponse()
            assert rsp.status == 200 and b"No studies received yet" in rsp.read()
        finally:
            conn.close()
        # Served on IPv6 only: the IPv4 loopback has nothing on that port.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", d.port), timeout=10).close()


def test_serve_runs_the_dashboard_on_ipv6_and_survives_junk(tmp_path: Path) -> None:
    """``serve`` itself, ``[web] host = "::1"``: junk on the port, then a real answer."""
    skip_without_ipv6_loopback()
    bogus = tmp_path / "not-a-checkpoint"
    bogus.mkdir()
    config = agent_config(tmp_path, bogus, extra='[web]\nenabled = true\nhost = "::1"\nport = 0\n')
    serve = Serve(config)
    try:
        [web] = wait_for(lambda: serve.events("web dashboard listening"), 30, "dashboard", serve)
        port = int(web["port"])
        for junk, want in ((client_hello(), 400), (b"HELLO\r\n\r\n", 400)):
            assert status_of(raw_exchange(port, junk, host="::1")) == want
        conn = http.client.HTTPConnection("::1", port, timeout=30)
        try:
            conn.request("GET", "/healthz")
            rsp = conn.getresponse()
            # The model cannot load from an empty folder: healthz says so, and answers.
            assert rsp.status in (200, 503) and b'"checks"' in rsp.read()
        finally:
            conn.close()
    finally:
        assert serve.stop() == 0
    assert not any("Traceback" in line for line in serve.lines), "".join(serve.lines[-20:])


def test_failed_logins_are_rate_limited_per_client(dashboard_on: type) -> None:
    d = dashboard_on(username="admin", password_hash=hash_password("hunter2", iterations=1000))
    wrong = ("admin", "guess")

    def attempt(_i: int) -> int:
        return get(d.port, auth=wrong)[0]

    with ThreadPoolExecutor(16) as pool:
        burst = Counter(pool.map(attempt, range(16)))
    # Every guess is answered: 401 after a hash, 429 without one (too many
    # tries, or too many connections at once from this address).
    assert set(burst) <= {401, 429} and sum(burst.values()) == 16
    assert burst[401] <= LOGIN_BURST and d.auth.verifications == burst[401]

    later = [get(d.port, auth=wrong) for _ in range(LOGIN_BURST + 1)]
    codes = [code for code, _h in later]
    assert burst[401] + codes.count(401) == LOGIN_BURST == d.auth.verifications
    assert codes[-1] == 429 and int(later[-1][1]["Retry-After"]) >= 1

    # The right password from the attacking address waits too (no hash is run) ...
    assert get(d.port, auth=("admin", "hunter2"))[0] == 429
    assert d.auth.verifications == LOGIN_BURST
    # ... while another client logs in during the attack.
    assert get(d.port, auth=("admin", "hunter2"), source="127.0.0.2")[0] == 200
    assert get(d.port, auth=wrong, source="127.0.0.3")[0] == 401

    # Tokens come back with time (the limiter's clock, moved an hour on).
    clock = d.auth.limiter.clock
    d.auth.limiter.clock = lambda: clock() + 3600
    assert get(d.port, auth=("admin", "hunter2"))[0] == 200


def test_concurrent_password_checks_are_bounded(dashboard_on: type) -> None:
    """Sixteen clients guessing at once: each gets its 401, at most a few hashes run at once."""
    hashed = hash_password("hunter2", iterations=200_000)
    d = dashboard_on(username="admin", password_hash=hashed)
    go = threading.Barrier(16)

    def attempt(i: int) -> int:
        go.wait(timeout=30)
        return get(d.port, auth=("admin", f"guess{i}"), source=f"127.0.0.{10 + i}")[0]

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(attempt, range(16)))
    assert codes == [401] * 16 and d.auth.verifications == 16
    assert 1 <= d.auth.peak_concurrent <= CONCURRENT_VERIFICATIONS


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("pbkdf2_sha256$900000000$c2FsdA==$" + "A" * 43 + "=", "outside"),
        ("pbkdf2_sha256$10$c2FsdA==$" + "A" * 43 + "=", "outside"),
        ("pbkdf2_sha256$\u0661\u0660\u0660\u0660$c2FsdA==$" + "A" * 43 + "=", "not pbkdf2"),
        ("pbkdf2_sha256$1000$not base64!$" + "A" * 43 + "=", "base64"),
        ("pbkdf2_sha256$1000$c2FsdA==$AAAA", "32 bytes"),
    ],
)
def test_password_hash_cost_and_shape_are_checked(tmp_path: Path, value: str, why: str) -> None:
    path = web_config(tmp_path, f'username = "a"\npassword_hash = "{value}"')
    with pytest.raises(ConfigError, match=r"\[web\]") as err:
        load_settings(path)
    assert why in str(err.value) and "\n" not in str(err.value)
    # A hash that slipped past the configuration still never runs at that cost.
    assert not verify_password("x", value)


def test_limits_count_an_ipv6_client_by_its_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_key("::ffff:127.0.0.1") == client_key("127.0.0.1") == "127.0.0.1"
    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"


def test_the_limiter_refills_one_try_per_period() -> None:
    now = [1000.0]
    limiter = LoginLimiter(burst=3, refill_seconds=30.0, clock=lambda: now[0], tracked=2)
    assert [limiter.take("10.0.0.1") for _ in range(3)] == [0.0] * 3
    assert limiter.take("10.0.0.1") == pytest.approx(30.0)
    now[0] += 15
    assert limiter.take("10.0.0.1") == pytest.approx(15.0)
    now[0] += 15
    assert limiter.take("10.0.0.1") == 0.0 and limiter.take("10.0.0.1") > 0
    limiter.give_back("10.0.0.1")  # a right password returns its token
    assert limiter.take("10.0.0.1") == 0.0
    # The table is bounded: the least recently seen client is forgotten (starts afresh).
    limiter.take("10.0.0.2")
    limiter.take("10.0.0.3")
    assert [limiter.take("10.0.0.1") for _ in range(3)] == [0.0] * 3
