"""Why a dataset is refused: each maps to one DIMSE status at receive (PS3.4 B.2.3)."""

from __future__ import annotations


class UnreadableHeader(ValueError):
    """The dataset cannot be decoded or lacks what every stored instance needs."""


class BeyondLimits(UnreadableHeader):
    """The dataset decodes, but its image or inflated size is beyond the configured limits."""


class InvalidIdentifier(ValueError):
    """A UID that is not a valid DICOM UID, or that disagrees with the command set."""
