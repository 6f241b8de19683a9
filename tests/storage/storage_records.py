"""Builders for instance records (imported by module name: tests/ is not a package).

A record is built as the node builds one: from an :class:`InstanceHeader`,
whose UIDs pass the agent's one UID rule, through
:func:`~agent.intake.record.instance_record`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.dicom.header import InstanceHeader
from agent.intake.record import instance_record
from storage.ingest import InstanceRecord

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

RecordFactory = Callable[..., InstanceRecord]

_HEADER_FIELDS = frozenset(f.name for f in dataclasses.fields(InstanceHeader))


def make_record(n: int = 1, *, payload: bytes | None = None, **overrides: Any) -> InstanceRecord:
    """Instance ``n`` of a synthetic axial CT series, one slice every 2.5 mm.

    Overrides of header fields change the header the record is built from
    (so ``slice_position`` follows ``image_position``); the others, e.g.
    ``received_at`` or ``transfer_syntax_uid``, change the record.
    """
    payload = payload if payload is not None else f"instance {n}".encode()
    z = -2.5 * n
    fields: dict[str, Any] = {
        "study_instance_uid": "1.2.826.0.1.3680043.10.1.1",
        "series_instance_uid": "1.2.826.0.1.3680043.10.1.1.2",
        "sop_instance_uid": f"1.2.826.0.1.3680043.10.1.1.2.{n}",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "modality": "CT",
        "series_number": 2,
        "series_description": "CHEST 2.5 mm",
        "body_part_examined": "CHEST",
        "study_date": "20260102",
        "instance_number": n,
        "image_position": (-200.0, -200.0, z),
        "image_orientation": AXIAL,
        "pixel_spacing": (0.75, 0.75),
        "slice_thickness": 2.5,
    }
    fields.update((k, v) for k, v in overrides.items() if k in _HEADER_FIELDS)
    digest = hashlib.sha256(payload).hexdigest()
    record: dict[str, Any] = {
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "rel_path": f"instances/aa/bb/{n:04d}-{digest[:16]}.dcm",
        "size_bytes": len(payload),
        "sha256": digest,
        "calling_ae": "STORESCU",
        "received_at": T0 + timedelta(seconds=n),
    }
    record.update((k, v) for k, v in overrides.items() if k in record)
    rec = instance_record(InstanceHeader(**fields), **record)
    rest = {k: v for k, v in overrides.items() if k not in _HEADER_FIELDS and k not in record}
    return dataclasses.replace(rec, **rest) if rest else rec
