"""Deterministic UIDs for the reports (PS3.5 Annex B.2, ISO/IEC 9834-8 "2.25").

A report's UIDs are a function of the source series, the model (its device
UID: name, version and weights) and the result revision, so sending or
building the same result again yields the same SOP Instance, and PACS files a
resend as a duplicate rather than as a second, conflicting report.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

# Fixed namespace of the project: changing it would change every report's UIDs.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:hyperct-agent:report-uids")


def derive_uid(*parts: str) -> str:
    """``2.25.<decimal UUID>`` of a name-based (v5) UUID of ``parts``.

    The parts are joined with a separator that cannot occur in a UID, so
    ``("1.2", "3")`` and ``("1", "2.3")`` differ. At most 44 characters (<= 64).
    """
    name = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


@dataclass(frozen=True)
class ReportUIDs:
    """Series and SOP Instance UIDs of one result (source series, model, revision)."""

    series_instance_uid: str
    measurement_report_uid: str
    text_report_uid: str
    # The summary image (SC or PDF) has a modality of its own, so a series of its own.
    summary_series_instance_uid: str
    summary_uid: str

    @classmethod
    def derive(cls, source_series_uid: str, device_uid: str, revision: int) -> ReportUIDs:
        if revision < 1:
            raise ValueError("revision starts at 1")
        key = (source_series_uid, device_uid, str(revision))
        return cls(
            series_instance_uid=derive_uid("series", *key),
            measurement_report_uid=derive_uid("tid1500", *key),
            text_report_uid=derive_uid("text", *key),
            summary_series_instance_uid=derive_uid("summary-series", *key),
            summary_uid=derive_uid("summary", *key),
        )

    def tracking_uid(self, what: str) -> str:
        """Tracking Unique Identifier of one measurement group of this result."""
        return derive_uid("tracking", self.series_instance_uid, what)
