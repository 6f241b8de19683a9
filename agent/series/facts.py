"""What the series decisions read: one immutable summary per series.

:class:`SeriesFacts` is plain data, built from the database
(:mod:`agent.intake.stored`, a series the node received) or from a folder of
DICOM files (:mod:`agent.intake.folder`, ``hyperct-agent explain --dir``);
the rules in :mod:`agent.series` judge it without knowing which.

Only study/series descriptors and geometry are held; patient attributes
never are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class SeriesFacts:
    """Everything completeness, eligibility and selection look at, for one series.

    ``slice_positions`` holds Image Position (Patient) projected on the slice
    normal (PS3.3 C.7.6.2.1.1), one per instance that has a position, sorted
    ascending. A multi-frame (Enhanced CT, PS3.3 A.38) instance contributes the
    position of its first frame only, as the node records it; its frames count
    in ``number_of_frames``. ``first/last_received_at`` are timezone-aware.

    An instance whose image repeats another's at the same position (one slice
    sent again under a new SOP Instance UID) counts in ``repeated_images``;
    its position and frame are left out of ``slice_positions`` and
    ``number_of_frames``, as the volume reader reads such a slice once.
    """

    series_instance_uid: str
    study_instance_uid: str
    modality: str | None = None
    sop_class_uid: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    body_part_examined: str | None = None
    protocol_name: str | None = None
    study_description: str | None = None
    # Requested Procedure Description (0032,1060): a study-level contrast word source.
    requested_procedure: str | None = None
    # Image Type values joined by "\\" (PS3.3 C.7.6.1.1.2), e.g. "ORIGINAL\\PRIMARY\\AXIAL".
    image_type: str | None = None
    contrast_agent: str | None = None
    instance_count: int = 0
    # Frames over all instances: a single-frame image counts 1.
    number_of_frames: int = 0
    # Instances holding more than one frame.
    multiframe_instances: int = 0
    slice_positions: tuple[float, ...] = ()
    repeated_images: int = 0
    # Multi-frame series: whether the files' frame geometry was checked, and why
    # the volume reader refuses it (None: it does not, or it was not checked).
    frames_checked: bool = False
    frame_problem: str | None = None
    orientation_consistent: bool = True
    image_orientation: tuple[float, ...] | None = None
    pixel_spacing: tuple[float, ...] | None = None
    slice_thickness: float | None = None
    first_received_at: datetime | None = None
    last_received_at: datetime | None = None

    @property
    def is_multiframe(self) -> bool:
        return self.multiframe_instances > 0

    @property
    def coverage_mm(self) -> float | None:
        """Extent of the slice positions along the normal; None when not known.

        Unknown for multi-frame series, whose frame positions are not summarised.
        """
        if self.is_multiframe or not self.slice_positions:
            return None
        return self.slice_positions[-1] - self.slice_positions[0]

    @property
    def image_type_values(self) -> tuple[str, ...]:
        if not self.image_type:
            return ()
        return tuple(v.strip().upper() for v in self.image_type.split("\\"))

    def label(self) -> str:
        """A short human name: number and description, never patient data."""
        number = "?" if self.series_number is None else str(self.series_number)
        desc = f" {self.series_description!r}" if self.series_description else ""
        return f"series {number}{desc}"
