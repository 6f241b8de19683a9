"""What one received instance may hold, checked from its header before anything else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReceiveLimits:
    """Bounds on one instance's image and encoded size.

    ``max_dataset_bytes`` bounds a Deflated Explicit VR Little Endian dataset
    once inflated (PS3.5 A.5), as the transport bounds every dataset on the wire.
    """

    max_dataset_bytes: int = 1 << 30
    max_frame_pixels: int = 4096 * 4096
    max_frames: int = 4096


DEFAULT_LIMITS = ReceiveLimits()
