"""SeriesFacts for the decision tests: a good chest CT, varied one field at a time."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.config import CT_IMAGE_STORAGE
from agent.series.facts import SeriesFacts

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
STUDY = "1.2.3"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def stack(n: int, spacing: float = 2.5, start: float = -300.0) -> tuple[float, ...]:
    return tuple(start + i * spacing for i in range(n))


def chest(uid: str = "1.2.3.1", **changes: Any) -> SeriesFacts:
    """120 axial slices 2.5 mm apart (297.5 mm), thin, non-contrast, last one at T0.

    ``slice_positions`` given without ``instance_count`` sets the count to match.
    """
    positions = changes.get("slice_positions", stack(120))
    if "slice_positions" in changes and "instance_count" not in changes:
        changes.setdefault("instance_count", len(positions))
        changes.setdefault("number_of_frames", len(positions))
    base = SeriesFacts(
        series_instance_uid=uid,
        study_instance_uid=STUDY,
        modality="CT",
        sop_class_uid=CT_IMAGE_STORAGE,
        series_number=2,
        series_description="CHEST 2.5",
        body_part_examined="CHEST",
        protocol_name="CHEST ROUTINE",
        study_description="CT CHEST",
        image_type="ORIGINAL\\PRIMARY\\AXIAL",
        contrast_agent=None,
        instance_count=120,
        number_of_frames=120,
        slice_positions=positions,
        orientation_consistent=True,
        image_orientation=AXIAL,
        pixel_spacing=(0.7, 0.7),
        slice_thickness=2.5,
        first_received_at=T0 - timedelta(seconds=40),
        last_received_at=T0,
    )
    return dataclasses.replace(base, **changes)


IDLE_NOW = T0 + timedelta(seconds=60)  # past the default idle timer, before the forced timeout
