"""The dashboard's HTTP server: the standard library's ThreadingHTTPServer, GET only.

No web framework: four HTML pages, two plain-text endpoints and Basic
authentication are little enough that ``http.server`` does it without a new
dependency. Every request opens a read-only session (under SQLite WAL it
never blocks the node's writes) and closes it before the page is written.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agent import __version__
from agent.config import Settings, WebSettings, is_loopback_host
from agent.errors import AgentError, ConfigError
from agent.logs import get_logger
from agent.resources import templates_dir
from agent.web import chart
from agent.web.auth import BasicAuth
from agent.web.health import (
    Probe,
    database_probe,
    listener_probe,
    model_probe,
    run_checks,
    storage_probe,
)
from agent.web.metrics import build_registry, inference_histogram, time_inference
from storage import results as queries
from storage.db import make_session_factory

log = get_logger("agent.web")

# Pages hold no script and load nothing from elsewhere; say so to the browser.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


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
            self._httpd = ThreadingHTTPServer((self.web.host, self.web.port), handler)
        except OSError as exc:
            raise AgentError(
                f"dashboard cannot listen on {self.web.host}:{self.web.port}: {exc.strerror or exc}"
            ) from None
        self._httpd.daemon_threads = True
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
            if path == "/":
                limit = _int(query, "limit", 100, 1, 1000)
                rows = queries.recent_studies(session, limit)
                return 200, html, self.render("worklist.html.j2", rows=rows, limit=limit).encode()
            if path.startswith("/studies/"):
                uid = unquote(path[len("/studies/") :])
                trail = queries.study_trail(session, uid)
                if trail is None:
                    body = self.render("error.html.j2", message="No such study.")
                    return 404, html, body.encode()
                charts = {
                    s.series_instance_uid: chart.probability_chart(s.results)
                    for s in trail.series
                    if s.results
                }
                body = self.render("study.html.j2", trail=trail, charts=charts)
                return 200, html, body.encode()
            if path == "/failures":
                body = self.render("failures.html.j2", failures=queries.failures(session))
                return 200, html, body.encode()
            if path == "/throughput":
                hours = _int(query, "hours", 24, 1, 24 * 14)
                buckets = queries.throughput(session, hours)
                svg = chart.throughput_chart(buckets)
                body = self.render("throughput.html.j2", buckets=buckets, chart=svg, hours=hours)
                return 200, html, body.encode()
        return 404, html, self.render("error.html.j2", message="Not found.").encode()


class _Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = f"hyperct-agent/{__version__}"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def _refuse_write(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"read-only\n", {"Allow": "GET, HEAD"}
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_write  # noqa: N815

    def _serve(self, head: bool) -> None:
        if not self.dashboard.auth.allows(self.headers.get("Authorization")):
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
        log.debug("dashboard request", route=urlsplit(self.path).path.split("/")[1] or "/")


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
) -> Dashboard:
    """Build and start the dashboard of a running agent (``serve``).

    ``model`` is the pipeline's ModelHolder (its inference is timed from here
    on) and ``node`` the RunningNode; either may be None in tools and tests.
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
    if node is not None:
        probes["listener"] = listener_probe(node)
    probes.update(extra_probes or {})
    registry = build_registry(sessions, model, histogram)
    dashboard = Dashboard(settings.web, sessions, registry, probes)
    dashboard.start()
    if on_ready is not None:
        on_ready(dashboard)
    return dashboard
