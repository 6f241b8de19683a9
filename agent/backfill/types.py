"""What planning hands to retrieval: a series to fetch, and what a retrieve reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SeriesRef:
    """One series to retrieve, as the archive's query described it."""

    study_instance_uid: str
    series_instance_uid: str
    expected_instances: int | None = None


@dataclass(frozen=True)
class RetrieveOutcome:
    """The end of one retrieve: final status and sub-operation counts (PS3.4 C.4.2.1.6).

    ``status`` is the DIMSE status of the final response (0x0000 success,
    0xB000 warning: some sub-operations failed, 0xA7xx/0xA9xx/0xCxxx
    refusals), or None when no response came (association refused or lost,
    HTTP error for DICOMweb). ``error`` says why in one line when it failed.
    """

    status: int | None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    error: str | None = None


class Retriever(Protocol):
    """Fetches one series from an archive into the agent's node (move, get or WADO-RS)."""

    def retrieve(self, series: SeriesRef) -> RetrieveOutcome: ...
