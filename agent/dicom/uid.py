"""The one rule for a DICOM UID (PS3.5 9.1), applied wherever a UID enters the agent.

A UID is one or more components of digits separated by ``.``; a component
is ``0`` or has no leading zero; the whole is at most 64 characters. A UID
that breaks the rule is refused, never repaired or recorded as sent.
"""

from __future__ import annotations

import re

from agent.dicom.errors import InvalidIdentifier

MAX_UID_LENGTH = 64

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(uid: str) -> bool:
    """Whether ``uid`` is a DICOM UID (PS3.5 9.1)."""
    return (
        isinstance(uid, str)
        and 0 < len(uid) <= MAX_UID_LENGTH
        and _UID_RE.fullmatch(uid) is not None
    )


def checked_uid(uid: str, name: str) -> str:
    """``uid`` itself when valid; else :class:`InvalidIdentifier` naming ``name``."""
    if not is_valid_uid(uid):
        raise InvalidIdentifier(f"{name} is not a valid UID")
    return uid
