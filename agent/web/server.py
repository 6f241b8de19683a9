"""The dashboard's HTTP server: the standard library's ThreadingHTTPServer, GET only.

No web framework: four HTML pages, two plain-text endpoints and Basic
authentication are little enough that ``http.server`` does it without a new
dependency. Every request opens a read-only session (under SQLite WAL it
never blocks the node's writes) and closes it before the page is written.

Whatever arrives on the port gets an HTTP answer or a closed socket, never a
traceback: a request line or header that is not HTTP/1.x (RFC 9112 section 3)
is answered 400, a long target 414, long or many header fields 431, another
method 405, a request head not complete within ``HEAD_SECONDS`` 408.
Connections are bounded in total and per client address.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agent import __version__
from agent.backfill.progress import duration
from agent.config import Settings, WebSettings, is_loopback_host
from agent.errors import AgentError, ConfigError
from agent.logs import get_logger
from agent.resources import templates_dir
from agent.web import chart
from agent.web.auth import BasicAuth, Verdict, client_key
from agent.web.health import (
    Probe,
    database_probe,
    listener_probe,
    model_probe,
    run_checks,
    storage_probe,
    workers_probe,
)
from agent.web.metrics import build_registry, inference_histogram, time_inference
from storage import results as queries
from storage.backfill_queue import campaign_progress
from storage.db import make_session_factory
from storage.monitoring import latest_checks
from storage.referrals import list_referrals, referred_on

log = get_logger("agent.web")

# Pages hold no script and load nothing from elsewhere; say so to the browser.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# Longest request line accepted (the method, target and version); browsers and
# proxies keep URLs well below this.
MAX_REQUEST_LINE = 8192
# Bytes of header fields accepted in one request, all lines together.
MAX_HEADER_BYTES = 32768
# Seconds a client has to send its whole request head, however slowly it drips.
HEAD_SECONDS = 10.0
# Seconds one read or write may stall once the request is under way.
SOCKET_SECONDS = 30.0
# Connections served at once, and from one client address (IPv6: one /64).
MAX_CONNECTIONS = 64
MAX_PER_CLIENT = 8
# After an error answer, what the client still sends is read and dropped for this
# long, so the answer is not lost to a connection reset.
DRAIN_SECONDS = 2.0
DRAIN_BYTES = 1 << 20


class Dashboard:
    """Pages, ``/metrics`` and ``/healthz`` over one database; ``start``/``stop``."""

    def __init__(
        self,
        web: WebSettings,
        sessions: sessionmaker[Session],
        registry: CollectorRegistry,
        probes: dict[str, Probe],
    ) -> None:
        if not web.has_credentials and not is_loopback_host(web.host):
            # Settings validation refuses this already; a second lock on the door.
            raise ConfigError(f"[web].host {web.host!r} is not loopback and no credentials are set")
        self.web = web
        self.sessions = sessions
        self.registry = registry
        self.probes = probes
        self.auth = BasicAuth(web)
        self.templates = Environment(
            loader=FileSystemLoader(templates_dir() / "web"),
            autoescape=select_autoescape(["html", "j2"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["duration"] = duration
        self.templates.globals["version"] = __version__
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"dashboard": self})
        try:
            self._httpd = _Server(self.web.host, self.web.port, handler)
        except OSError as exc:
            raise AgentError(
                f"dashboard cannot listen on {self.web.host}:{self.web.port}: {exc.strerror or exc}"
            ) from None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="web-dashboard", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- pages ------------------------------------------------------------------

    def render(self, name: str, **context: Any) -> str:
        return self.templates.get_template(name).render(**context)

    def page(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            checks = run_checks(self.probes)
            ok = all(c.ok for c in checks)
            health = {"status": "ok" if ok else "unhealthy", "checks": [asdict(c) for c in checks]}
            code = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            return code, "application/json", json.dumps(health, indent=2).encode()
        html = "text/html; charset=utf-8"
        with self.sessions() as session:
            latest = latest_checks(session)
            drift_alerts = sum(c.alert for c in latest)  # shown in every page's header

            def render(name: str, **context: Any) -> str:
                return self.render(name, drift_alerts=drift_alerts, **context)

            if path == "/":
                limit = _int(query, "limit", 100, 1, 1000)
                rows = queries.recent_studies(session, limit)
                return 200, html, render("worklist.html.j2", rows=rows, limit=limit).encode()
            if path.startswith("/studies/"):
                uid = unquote(path[len("/studies/") :])
                trail = queries.study_trail(session, uid)
                if trail is None:
                    body = render("error.html.j2", message="No such study.")
                    return 404, html, body.encode()
                charts = {
                    s.series_instance_uid: chart.probability_chart(s.results)
                    for s in trail.series
                    if s.results
                }
                body = render("study.html.j2", trail=trail, charts=charts)
                return 200, html, body.encode()
            if path == "/failures":
                body = render("failures.html.j2", failures=queries.failures(session))
                return 200, html, body.encode()
            if path == "/monitor":
                alerts = [c for c in latest if c.alert]
                body = render("monitor.html.j2", checks=latest, alerts=alerts)
                return 200, html, body.encode()
            if path == "/referrals":
                referrals = [
                    (referral, cts, referred_on(referral))
                    for referral, cts in list_referrals(session)
                ]
                body = render("referrals.html.j2", referrals=referrals)
                return 200, html, body.encode()
            if path == "/backfill":
                campaigns = campaign_progress(session)
                return 200, html, self.render("backfill.html.j2", campaigns=campaigns).encode()
            if path == "/throughput":
                hours = _int(query, "hours", 24, 1, 24 * 14)
                buckets = queries.throughput(session, hours)
                svg = chart.throughput_chart(buckets)
                body = render("throughput.html.j2", buckets=buckets, chart=svg, hours=hours)
                return 200, html, body.encode()
        return 404, html, self.render("error.html.j2", message="Not found.").encode()


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer on the host's own address family, with bounded connections."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, handler: type[_Handler]) -> None:
        # The family comes from the address: "::1" and "::" need AF_INET6, and
        # a scoped link-local address keeps its scope from getaddrinfo. A name
        # with both families (localhost) binds IPv4, where it always did.
        name = host.strip().strip("[]") or None
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        family, _type, _proto, _canon, address = infos[0]
        self.address_family = family
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        super().__init__(address[:2] if family == socket.AF_INET else address, handler)  # type: ignore[arg-type]

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a DNS query that can
        # stall start-up for nothing: the pages never print it.
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # "::" means every address, IPv4 ones included, whatever the system default.
            with contextlib.suppress(OSError, AttributeError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        key = client_key(str(client_address[0]))
        with self._lock:
            total = sum(self._open.values())
            refusal = None
            if total >= MAX_CONNECTIONS:
                refusal = b"503 Service Unavailable"
            elif self._open.get(key, 0) >= MAX_PER_CLIENT:
                refusal = b"429 Too Many Requests"
            else:
                self._open[key] = self._open.get(key, 0) + 1
        if refusal is not None:
            log.debug("dashboard: connection refused", status=refusal[:3].decode())
            _refuse(request, refusal)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._closed(key)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed(client_key(str(client_address[0])))

    def _closed(self, key: str) -> None:
        with self._lock:
            left = self._open.get(key, 0) - 1
            if left > 0:
                self._open[key] = left
            else:
                self._open.pop(key, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr; one log line instead.
        exc = sys.exc_info()[1]
        log.warning("dashboard: request failed", error=type(exc).__name__)


def _refuse(sock: socket.socket, status: bytes) -> None:
    """Say why in one short answer without waiting on the client, then close."""
    body = status[4:] + b"\n"
    answer = b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain\r\n"
    answer += b"Retry-After: 1\r\nConnection: close\r\n"
    answer += b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(answer)


class _HeadReader:
    """The request stream as ``http.client.parse_headers`` reads it, with a budget for all lines.

    parse_headers bounds each line (64 KB) and their count (100), which still
    lets one request hold 6 MB; the budget holds the whole header section.
    """

    def __init__(self, stream: Any, budget: int) -> None:
        self.stream = stream
        self.budget = budget

    def readline(self, limit: int = -1) -> bytes:
        if self.budget < 0:
            raise http.client.LineTooLong("header section")
        size = self.budget + 1 if limit < 0 else min(limit, self.budget + 1)
        line: bytes = self.stream.readline(size)
        self.budget -= len(line)
        if self.budget < 0:
            raise http.client.LineTooLong("header section")
        return line


def _drain(sock: socket.socket) -> None:
    """Read and drop what the client still sends, bounded in bytes and time (lingering close)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + DRAIN_SECONDS
        left = DRAIN_BYTES
        while left > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = sock.recv(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)


class _Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = f"hyperct-agent/{__version__}"
    sys_version = ""
    timeout = SOCKET_SECONDS
    # A request line that fails to parse is answered with a status line (HTTP/0.9 has none).
    default_request_version = "HTTP/1.0"
    # Set before the request line is parsed, so logging never meets a missing attribute.
    path = ""
    command = ""
    requestline = ""
    _expired = False

    def handle_one_request(self) -> None:
        """Read and answer one request, any failure to read it being a 4xx answer."""
        self.close_connection = True
        # A client that drips its head byte by byte defeats a per-read timeout;
        # a timer stops reading once the whole head is overdue.
        timer = threading.Timer(HEAD_SECONDS, self._expire)
        timer.daemon = True
        timer.start()
        try:
            if not self._read_head():
                return
        except OSError:  # timed out or reset while reading: nobody to answer
            return
        finally:
            timer.cancel()
        try:
            getattr(self, f"do_{self.command}", self._refuse_method)()
            self.wfile.flush()
        except (TimeoutError, ConnectionError):
            log.debug("dashboard: client went away")

    def _read_head(self) -> bool:
        """Parse the request line and headers; False once an error answer is sent."""
        first = cast(io.BufferedReader, self.rfile).peek(1)[:1]
        if first and not (first.isalpha() or first in b"\r\n"):
            # Not a method token: TLS (0x16), binary noise. Answer before
            # waiting for a line end that may never come.
            return self._fail(HTTPStatus.BAD_REQUEST, "not an HTTP request")
        line = b""
        for _blank in range(4):  # RFC 9112 section 2.2: ignore a CRLF before the request line
            line = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if line not in (b"\r\n", b"\n"):
                break
        if self._expired:
            return self._fail(HTTPStatus.REQUEST_TIMEOUT, "request head too slow")
        if len(line) > MAX_REQUEST_LINE:
            return self._fail(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
        if not line or line in (b"\r\n", b"\n"):
            return False  # closed before asking anything: nothing to answer
        if not line.endswith(b"\n"):
            return self._fail(HTTPStatus.BAD_REQUEST, "request line incomplete")
        if len(line.split()) == 2:  # "GET /": HTTP/0.9, which has no status line to answer with
            return self._fail(HTTPStatus.BAD_REQUEST, "HTTP/0.9 is not served")
        self.raw_requestline = line
        stream = self.rfile
        self.rfile = cast(io.BufferedIOBase, _HeadReader(stream, MAX_HEADER_BYTES))
        try:
            parsed = self.parse_request()
        finally:
            self.rfile = stream
        if self._expired:
            return self._fail(HTTPStatus.REQUEST_TIMEOUT, "request head too slow")
        if not parsed:
            if not self.requestline.strip():
                return self._fail(HTTPStatus.BAD_REQUEST, "empty request line")
            return False  # parse_request has answered already
        return True

    def _fail(self, code: HTTPStatus, why: str) -> bool:
        self.request_version = "HTTP/1.0"
        self.send_error(code, why)
        return False

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The request may not have been read to its end; finish() drains it so
        # closing the socket does not reset the connection before the answer is read.
        self._linger = True
        super().send_error(code, message, explain)

    def finish(self) -> None:
        super().finish()
        if getattr(self, "_linger", False):
            _drain(self.connection)

    def _expire(self) -> None:
        self._expired = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RD)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def _refuse_method(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"read-only\n", {"Allow": "GET, HEAD"}
        )

    def _serve(self, head: bool) -> None:
        verdict, wait = self.dashboard.auth.check(
            self.headers.get("Authorization"), str(self.client_address[0])
        )
        if verdict is Verdict.LIMITED:
            log.debug("dashboard: login attempts limited", retry_after=int(wait) + 1)
            self._send(
                HTTPStatus.TOO_MANY_REQUESTS,
                "text/plain",
                b"too many failed logins, try again later\n",
                {"Retry-After": str(int(wait) + 1)},
                head,
            )
            return
        if verdict is Verdict.BUSY:
            self._send(
                HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"busy\n", {"Retry-After": "1"}, head
            )
            return
        if verdict is Verdict.FAILED:
            # Bounded by the login limiter: a few lines per client, then one per 30 s.
            log.warning("dashboard: failed login", client=str(self.client_address[0]))
        if verdict in (Verdict.DENIED, Verdict.FAILED):
            self._send(
                HTTPStatus.UNAUTHORIZED,
                "text/plain",
                b"authentication required\n",
                {"WWW-Authenticate": 'Basic realm="hyperct-agent", charset="UTF-8"'},
                head,
            )
            return
        url = urlsplit(self.path)
        try:
            code, ctype, body = self.dashboard.page(url.path, parse_qs(url.query))
        except SQLAlchemyError as exc:
            log.error("dashboard: database error", error=type(exc).__name__)
            code, ctype, body = 503, "text/plain", b"database unavailable\n"
        except Exception as exc:  # a page that breaks answers 500, the server goes on
            log.error("dashboard: page failed", error=f"{type(exc).__name__}: {exc}")
            code, ctype, body = 500, "text/plain", b"internal error\n"
        self._send(code, ctype, body, None, head)

    def _send(
        self,
        code: int,
        ctype: str,
        body: bytes,
        extra: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**_SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Paths carry study UIDs; the access log stays at debug and names the route only.
        route = urlsplit(self.path).path.split("/")[1] if self.path.startswith("/") else ""
        log.debug("dashboard request", route=route or "/")

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        # The default text quotes the client's bytes; the status code is enough.
        code = int(args[0]) if args and isinstance(args[0], int) else None
        log.debug("dashboard request refused", status=code)


def _int(query: dict[str, list[str]], key: str, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(query.get(key, [default])[0])))
    except ValueError:
        return default


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def start_dashboard(
    settings: Settings,
    engine: Engine,
    *,
    model: Any | None = None,
    node: Any | None = None,
    extra_probes: dict[str, Probe] | None = None,
    histogram: Histogram | None = None,
    on_ready: Callable[[Dashboard], None] | None = None,
    workers: Any | None = None,
) -> Dashboard:
    """Build and start the dashboard of a running agent (``serve``).

    ``model`` is the pipeline's ModelHolder (its inference is timed from here
    on) and ``node`` the RunningNode; either may be None in tools and tests.
    A node without a model passes ``workers`` (a WorkerBoard) instead: the
    model and inference times as the screen workers last recorded them.
    """
    sessions = make_session_factory(engine, read_only=True)
    if model is not None and histogram is None:
        histogram = inference_histogram()
        time_inference(model, histogram)
    probes: dict[str, Probe] = {
        "database": database_probe(engine),
        "storage": storage_probe(settings.storage),
    }
    if model is not None:
        probes["model"] = model_probe(model)
    elif workers is not None:
        probes["model"] = workers_probe(workers)
    if node is not None:
        probes["listener"] = listener_probe(node)
    probes.update(extra_probes or {})
    registry = build_registry(sessions, model, histogram, workers)
    dashboard = Dashboard(settings.web, sessions, registry, probes)
    dashboard.start()
    if on_ready is not None:
        on_ready(dashboard)
    return dashboard
