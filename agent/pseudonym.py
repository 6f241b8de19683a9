"""Keyed patient pseudonyms: link a patient's studies, referrals and echo results.

A pseudonym is HMAC-SHA256 (RFC 2104) under the installation's key of a
value that identifies a patient: (Issuer of Patient ID, Patient ID) (PS3.3
C.7.1.1) or an Accession Number (PS3.3 C.7.2.1). Without the key the database
cannot be turned back into identifiers, not even by hashing a guessed ID; the
key never enters the database. Values are normalised the way sites differ in
writing them (surrounding spaces, the case of the issuer) before hashing.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import ConfigError

KEY_FILE = "patient-pseudonym.key"
_KEY_BYTES = 32


@dataclass(frozen=True)
class PatientIdentity:
    """The identifiers a pseudonym is made of, as read from a header; never shown.

    Patient ID and Issuer of Patient ID (PS3.3 C.7.1.1), Accession Number
    (PS3.3 C.7.2.1). Its repr names no value, so a log line or traceback that
    prints it leaks nothing.
    """

    patient_id: str | None = field(default=None, repr=False)
    issuer: str | None = field(default=None, repr=False)
    accession_number: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Pseudonymizer:
    """Turns identifiers into pseudonyms with one installation key."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ValueError("a pseudonym key needs at least 16 bytes")

    def _digest(self, domain: str, value: str) -> str:
        msg = f"{domain}\x00{value}".encode()
        return hmac.new(self.key, msg, hashlib.sha256).hexdigest()

    def patient(self, patient_id: str | None, issuer: str | None = None) -> str | None:
        """The pseudonym of (Issuer of Patient ID, Patient ID); None without a Patient ID."""
        pid = (patient_id or "").strip()
        if not pid:
            return None
        return self._digest("patient", f"{(issuer or '').strip().upper()}\x00{pid}")

    def accession(self, accession_number: str | None) -> str | None:
        """The pseudonym of an Accession Number; None when it is empty."""
        value = (accession_number or "").strip()
        if not value:
            return None
        return self._digest("accession", value)

    def of(self, identity: PatientIdentity | None) -> tuple[str | None, str | None]:
        """(patient pseudonym, accession pseudonym) of ``identity``; Nones without one.

        Every instance of a series carries the same identifiers: the last few are
        remembered (in memory only), so the node hashes once per series, not per image.
        """
        if identity is None:
            return None, None
        return self._both(identity.patient_id, identity.issuer, identity.accession_number)

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one Pseudonymizer per process)
    def _both(
        self, patient_id: str | None, issuer: str | None, accession: str | None
    ) -> tuple[str | None, str | None]:
        return self.patient(patient_id, issuer), self.accession(accession)


def load_pseudonymizer(configured_key: str, storage_root: Path) -> Pseudonymizer:
    """The configured key, else the one under the storage root, created once (0600).

    Creation is atomic (written aside, then linked into place): two processes
    starting together end with one key, never one each.
    """
    if configured_key:
        if len(configured_key.encode()) < 16:
            raise ConfigError("[patients] pseudonym_key: at least 16 bytes, or empty for a file")
        return Pseudonymizer(configured_key.encode())
    path = storage_root / KEY_FILE
    try:
        return Pseudonymizer(_read_key(path))
    except FileNotFoundError:
        pass
    try:
        storage_root.mkdir(parents=True, exist_ok=True)
        aside = storage_root / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_bytes(_KEY_BYTES).hex())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(aside, path)  # fails if another process linked its key first
        except FileExistsError:
            pass
        finally:
            aside.unlink()
        return Pseudonymizer(_read_key(path))
    except OSError as exc:
        raise ConfigError(f"cannot create the patient pseudonym key {path}: {exc}") from None


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read the patient pseudonym key {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a pseudonym key (hex expected)") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{path}: not a pseudonym key (hex expected)") from None
    if len(key) < 16:
        raise ConfigError(f"{path}: pseudonym key too short")
    return key
