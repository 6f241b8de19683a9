"""Builders for instance records (imported by module name: tests/ is not a package)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from storage.ingest import InstanceRecord

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

RecordFactory = Callable[..., InstanceRecord]


def make_record(n: int = 1, *, payload: bytes | None = None, **overrides: Any) -> InstanceRecord:
    """Instance ``n`` of a synthetic axial CT series, one slice every 2.5 mm."""
    payload = payload if payload is not None else f"instance {n}".encode()
    z = -2.5 * n
    rec = InstanceRecord(
        study_instance_uid="1.2.826.0.1.3680043.10.1.1",
        series_instance_uid="1.2.826.0.1.3680043.10.1.1.2",
        sop_instance_uid=f"1.2.826.0.1.3680043.10.1.1.2.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        series_number=2,
        series_description="CHEST 2.5 mm",
        body_part_examined="CHEST",
        study_date="20260102",
        instance_number=n,
        image_position=(-200.0, -200.0, z),
        image_orientation=AXIAL,
        pixel_spacing=(0.75, 0.75),
        slice_thickness=2.5,
        slice_position=z,
        rel_path=f"instances/aa/bb/{n:04d}-{hashlib.sha256(payload).hexdigest()[:16]}.dcm",
        size_bytes=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        calling_ae="STORESCU",
        received_at=T0 + timedelta(seconds=n),
    )
    return replace(rec, **overrides) if overrides else rec
