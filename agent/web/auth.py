"""HTTP Basic authentication for the dashboard (RFC 7617), with PBKDF2 password hashes.

``python -m agent.web.auth`` asks for a password and prints the
``password_hash`` value for ``[web]``.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import secrets
import sys
import threading

from agent.config import WebSettings

SCHEME = "pbkdf2_sha256"
# OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256.
ITERATIONS = 600_000


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT$HASH`` with base64 salt and hash."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != SCHEME:
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


class BasicAuth:
    """Checks ``Authorization`` headers against the ``[web]`` credentials."""

    def __init__(self, settings: WebSettings) -> None:
        self.username = settings.username or ""
        self.password = settings.password
        self.password_hash = settings.password_hash
        # A hash costs ~0.3 s to check; remember headers already accepted
        # (as digests, so the process does not keep the password in a second place).
        self._accepted: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        return bool(self.username)

    def allows(self, header: str | None) -> bool:
        if not self.required:
            return True
        if not header or not header.startswith("Basic "):
            return False
        key = hashlib.sha256(header.encode()).digest()
        with self._lock:
            if key in self._accepted:
                return True
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user_ok = hmac.compare_digest(user.encode(), self.username.encode())
        if self.password_hash is not None:
            pw_ok = verify_password(password, self.password_hash)
        else:
            pw_ok = hmac.compare_digest(password.encode(), (self.password or "").encode())
        if user_ok and pw_ok:
            with self._lock:
                if len(self._accepted) > 64:
                    self._accepted.clear()
                self._accepted.add(key)
            return True
        return False


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
