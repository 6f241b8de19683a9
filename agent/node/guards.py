"""Association limits beyond pynetdicom's overall one: per calling AE title.

pynetdicom rejects an association when the acceptor already serves
``maximum_associations``; one busy or hostile peer can still take all of them.
:func:`install_association_guards` wraps the acceptor's negotiation so that a
calling AE title already holding ``max_per_ae`` associations is rejected with
the same A-ASSOCIATE-RJ pynetdicom uses for its own limit (rejected-transient,
service-provider presentation, local limit exceeded: PS3.8 9.3.4).

The reason of a rejection made here is left on the association for the
``EVT_REJECTED`` handler to audit (:func:`rejection_reason`).
"""

from __future__ import annotations

import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association

_PER_AE_ATTR = "_hyperct_max_per_ae"
_REASON_ATTR = "_hyperct_reject_reason"
_original_negotiate = ACSE._negotiate_as_acceptor
_installed = False
_lock = threading.Lock()
# Naming and counting must not interleave between two requests of one AE.
_admit = threading.Lock()


def set_max_per_ae(ae: Any, limit: int | None) -> None:
    ae.__dict__[_PER_AE_ATTR] = limit


def rejection_reason(assoc: Association) -> str:
    """Why ``assoc`` was rejected, in words (ours, else the A-ASSOCIATE-RJ's reason)."""
    reason = assoc.__dict__.get(_REASON_ATTR)
    if reason:
        return str(reason)
    primitive = assoc.acceptor.primitive
    if primitive is not None and primitive.result is not None:
        try:
            return str(primitive.reason_str)
        except (KeyError, ValueError):
            return f"result {primitive.result}, diagnostic {primitive.diagnostic}"
    return "unknown"


def _negotiate_guarded(self: ACSE) -> None:
    limit = self.assoc.ae.__dict__.get(_PER_AE_ATTR)
    primitive = self.requestor.primitive
    if not limit or primitive is None:
        _original_negotiate(self)
        return
    calling = str(primitive.calling_ae_title).strip()
    with _admit:
        # Claim the title before counting, so two requests racing here see each other.
        self.requestor.ae_title = primitive.calling_ae_title
        same = sum(
            1
            for other in self.assoc.ae.active_associations
            if other is not self.assoc
            and other.is_acceptor
            and not (other.is_rejected or other.is_aborted or other.is_released)
            and str(other.requestor.ae_title).strip() == calling
        )
    if same >= limit:
        self.assoc.__dict__[_REASON_ATTR] = (
            f"calling AE already holds {same} associations (limit {limit})"
        )
        self.send_reject(0x02, 0x03, 0x02)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()
        return
    _original_negotiate(self)


def install_association_guards() -> None:
    """Wrap the acceptor negotiation (idempotent); AEs without a limit are unaffected."""
    global _installed
    with _lock:
        if not _installed:
            ACSE._negotiate_as_acceptor = _negotiate_guarded  # type: ignore[method-assign]
            _installed = True
