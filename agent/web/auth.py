"""HTTP Basic authentication for the dashboard (RFC 7617), with PBKDF2 password hashes.

``python -m agent.web.auth`` asks for a password and prints the
``password_hash`` value for ``[web]``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import getpass
import hashlib
import hmac
import ipaddress
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from agent.config import (
    PBKDF2_MAX_ITERATIONS,
    PBKDF2_MIN_ITERATIONS,
    WebSettings,
    parse_password_hash,
)

SCHEME = "pbkdf2_sha256"
# OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256.
ITERATIONS = 600_000

# Failed logins a client may make at once, and how fast it earns another try.
LOGIN_BURST = 5
LOGIN_REFILL_SECONDS = 30.0
# Password hashes computed at the same time, whoever asks: a burst of logins from
# many addresses queues here instead of taking every core.
CONCURRENT_VERIFICATIONS = 2
VERIFY_QUEUE_SECONDS = 10.0
# Clients remembered by the limiter; the least recently seen are forgotten first.
TRACKED_CLIENTS = 4096


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT$HASH`` with base64 salt and hash."""
    if not PBKDF2_MIN_ITERATIONS <= iterations <= PBKDF2_MAX_ITERATIONS:
        raise ValueError(f"iterations outside {PBKDF2_MIN_ITERATIONS}..{PBKDF2_MAX_ITERATIONS}")
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Check ``password`` against a hash; a malformed or too costly hash never matches."""
    try:
        iterations, salt, expected = parse_password_hash(encoded)
    except ValueError:
        return False
    actual = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return hmac.compare_digest(actual, expected)


def client_key(address: str) -> str:
    """The unit a limit applies to: one IPv4 address, or one IPv6 /64 (one site's prefix)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginLimiter:
    """A token bucket of failed logins per client.

    A login that has to compute the hash takes a token first and gives it back
    when the password was right, so a burst of concurrent guesses from one
    client costs at most ``burst`` hashes. An empty bucket answers at once with
    the seconds until the next token.
    """

    def __init__(
        self,
        burst: int = LOGIN_BURST,
        refill_seconds: float = LOGIN_REFILL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        tracked: int = TRACKED_CLIENTS,
    ) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.clock = clock
        self.tracked = tracked
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._lock = threading.Lock()

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) / self.refill_seconds)

    def take(self, client: str) -> float:
        """0 when a try is granted (one token taken), else the seconds to wait."""
        key = client_key(client)
        with self._lock:
            now = self.clock()
            tokens = self._tokens(key, now)
            if tokens < 1.0:
                return (1.0 - tokens) * self.refill_seconds
            self._buckets[key] = (tokens - 1.0, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.tracked:
                self._buckets.popitem(last=False)
            return 0.0

    def give_back(self, client: str) -> None:
        key = client_key(client)
        with self._lock:
            now = self.clock()
            if key in self._buckets:
                self._buckets[key] = (min(float(self.burst), self._tokens(key, now) + 1.0), now)


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    DENIED = "denied"  # 401: no credentials, or not Basic ones
    FAILED = "failed"  # 401: wrong user name or password (one try spent)
    LIMITED = "limited"  # 429: too many failed logins from this client
    BUSY = "busy"  # 503: every verification slot stayed taken


class BasicAuth:
    """Checks ``Authorization`` headers against the ``[web]`` credentials (RFC 7617)."""

    def __init__(self, settings: WebSettings, limiter: LoginLimiter | None = None) -> None:
        self.username = settings.username or ""
        self.password = settings.password
        self.password_hash = settings.password_hash
        self.limiter = limiter if limiter is not None else LoginLimiter()
        # A hash costs ~0.3 s to check; remember headers already accepted
        # (as digests, so the process does not keep the password in a second place).
        self._accepted: set[bytes] = set()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(CONCURRENT_VERIFICATIONS)
        # Counted for /metrics-like introspection and tests: passwords checked,
        # and the most checks that ever ran at once.
        self.verifications = 0
        self.peak_concurrent = 0
        self._running = 0

    @property
    def required(self) -> bool:
        return bool(self.username)

    def check(self, header: str | None, client: str) -> tuple[Verdict, float]:
        """(verdict, seconds to wait before retrying) for one request from ``client``."""
        if not self.required:
            return Verdict.ALLOWED, 0.0
        if not header or not header.startswith("Basic "):
            return Verdict.DENIED, 0.0
        key = hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest()
        with self._lock:
            if key in self._accepted:
                return Verdict.ALLOWED, 0.0
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return Verdict.DENIED, 0.0
        user, _, password = decoded.partition(":")
        wait = self.limiter.take(client)
        if wait > 0:
            return Verdict.LIMITED, wait
        if not self._slots.acquire(timeout=VERIFY_QUEUE_SECONDS):
            self.limiter.give_back(client)
            return Verdict.BUSY, 1.0
        try:
            with self._lock:
                self.verifications += 1
                self._running += 1
                self.peak_concurrent = max(self.peak_concurrent, self._running)
            ok = self._verify(user, password)
        finally:
            with self._lock:
                self._running -= 1
            self._slots.release()
        if not ok:
            return Verdict.FAILED, 0.0
        self.limiter.give_back(client)
        with self._lock:
            if len(self._accepted) > 64:
                self._accepted.clear()
            self._accepted.add(key)
        return Verdict.ALLOWED, 0.0

    def _verify(self, user: str, password: str) -> bool:
        # Both comparisons always run: the answer's timing says nothing about which failed.
        user_ok = hmac.compare_digest(user.encode(), self.username.encode())
        if self.password_hash is not None:
            pw_ok = verify_password(password, self.password_hash)
        else:
            pw_ok = hmac.compare_digest(password.encode(), (self.password or "").encode())
        return user_ok and pw_ok


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def main() -> int:
    first = getpass.getpass("dashboard password: ")
    if not first:
        print("empty password refused", file=sys.stderr)
        return 1
    if getpass.getpass("again: ") != first:
        print("passwords differ", file=sys.stderr)
        return 1
    print(hash_password(first))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
