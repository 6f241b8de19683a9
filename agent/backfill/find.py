"""Finding studies in an archive one day at a time, split by Study Time below its result limit.

An archive caps the matches one query returns (Orthanc's ``LimitFindResults``,
a PACS's "maximum results"). Some say so (C-FIND final status Cancel or
Refused: Out of Resources, PS3.4 C.4.1.1.4; QIDO-RS ``Warning: 299`` or
``413``, PS3.18 8.3.4.4), others stop silently at the limit. A day whose
query hits either is queried again in two halves by Study Time range
matching (PS3.4 C.2.2.2.5), and so on down to one second, so the limit never
hides a study. Modalities in Study is asked, never matched: Orthanc, for one,
applies its limit before that filter and then answers "success" with fewer
matches than exist; the planner filters on the returned value instead.
:class:`~agent.backfill.query.StudyRootFind` (C-FIND) and
:class:`~agent.backfill.qido.QidoFind` (QIDO-RS) answer the same questions.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from agent.errors import AgentError

#: Keys asked of every study (study level, PS3.4 C.6.2.1.2). No patient attribute.
STUDY_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ModalitiesInStudy",
    "SOPClassesInStudy",
)
#: Keys asked of every series (series level); Slice Thickness where the archive has it.
SERIES_KEYS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "ProtocolName",
    "NumberOfSeriesRelatedInstances",
    "SliceThickness",
)

_DAY_SECONDS = 86400
# A day split into more queries than this is an archive answering every slice with
# "too many": stop splitting (what came back is kept, the slices are counted).
MAX_QUERIES_PER_DAY = 2048


def keep_only(ds: Dataset, keys: Sequence[str]) -> Dataset:
    """``ds`` without what was not asked: QIDO-RS returns patient attributes unasked
    (PS3.18 10.6.3.3.1) and a C-FIND SCP may too; they never go further than here."""
    wanted = {*keys, "SpecificCharacterSet", "StudyInstanceUID"}
    for tag in list(ds.keys()):  # tags only: reading an element would decode its value
        if keyword_for_tag(tag) not in wanted:
            del ds[tag]
    return ds


def text(ds: Dataset, keyword: str) -> str | None:
    """An attribute's value as one stripped string; None when absent, empty or unreadable."""
    try:
        with warnings.catch_warnings():  # an invalid value warns; it is judged below
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except Exception:  # a value pydicom cannot convert: as good as not returned
        return None
    if value is None:
        return None
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    value = str(value).strip().strip("\x00").strip()
    return value or None


class ArchiveError(AgentError):
    """The archive cannot be queried: unreachable, refusing, or not answering in DICOM."""


@dataclass(frozen=True)
class TimeRange:
    """Seconds ``start``..``end`` of a day, both included."""

    start: int = 0
    end: int = _DAY_SECONDS - 1

    def dicom(self) -> str:
        """As a TM range; the upper bound takes fractions, so 10:15:30.5 is inside 101530."""
        return f"{_hhmmss(self.start)}-{_hhmmss(self.end)}.999999"

    def halves(self) -> tuple[TimeRange, TimeRange] | None:
        if self.end <= self.start:
            return None
        mid = (self.start + self.end) // 2
        return TimeRange(self.start, mid), TimeRange(mid + 1, self.end)


def _hhmmss(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


@dataclass
class FindResult:
    """The answers to one query, and whether the archive said it returned them all."""

    answers: list[Dataset] = field(default_factory=list)
    complete: bool = True
    # Answers that could not be decoded into a data set.
    malformed: int = 0


class Finder(Protocol):
    """Queries an archive at study and series level (C-FIND or QIDO-RS)."""

    def studies(self, day: str, times: TimeRange | None) -> FindResult: ...

    def series(self, study_instance_uid: str) -> FindResult: ...

    def close(self) -> None: ...


@dataclass
class ResultLimit:
    """The archive's result limit: configured, or learnt from a query it cut short."""

    configured: int | None = None
    detected: int | None = None

    def reached(self, result: FindResult) -> bool:
        n = len(result.answers) + result.malformed
        if not result.complete:
            # The archive stopped early: it returned as many as it will.
            if n and (self.detected is None or n < self.detected):
                self.detected = n
            return True
        limits = [v for v in (self.configured, self.detected) if v]
        return bool(limits) and n >= min(limits)


@dataclass
class DayScan:
    """The studies of one day, and what finding them took."""

    studies: list[Dataset] = field(default_factory=list)
    queries: int = 0
    split: bool = False
    # One-second slices still at the limit: some studies of that second may be hidden.
    slices_at_limit: int = 0
    malformed: int = 0


def scan_day(finder: Finder, day: str, limit: ResultLimit) -> DayScan:
    """Every study of ``day`` (YYYYMMDD) the archive has, splitting by Study Time as needed.

    The first query leaves Study Time out (universal matching), so a study
    without one is found on a day under the limit. Duplicates across slices
    (a study answered twice) are dropped by Study Instance UID.
    """
    scan = DayScan()
    seen: set[str] = set()
    pending: list[TimeRange | None] = [None]
    while pending:
        times = pending.pop()
        result = finder.studies(day, times)
        scan.queries += 1
        if limit.reached(result):
            parts = (TimeRange() if times is None else times).halves()
            if parts is not None and scan.queries + len(pending) < MAX_QUERIES_PER_DAY:
                scan.split = True
                pending.extend(reversed(parts))
                # A study without a Study Time matches no range: keep those answered now.
                _add(scan, seen, [ds for ds in result.answers if not text(ds, "StudyTime")])
                continue
            if not result.complete and not result.answers and not result.malformed:
                # Nothing at all for one second, yet "too many": a refusal of the query
                # itself, which no split will answer.
                raise ArchiveError(
                    f"the archive refuses the study query for {day} even for one second"
                    f" ({_hhmmss((times or TimeRange()).start)}): not a result limit"
                )
            scan.slices_at_limit += 1
        scan.malformed += result.malformed
        _add(scan, seen, result.answers)
    return scan


def _add(scan: DayScan, seen: set[str], answers: list[Dataset]) -> None:
    for ds in answers:
        uid = text(ds, "StudyInstanceUID")
        if uid and uid in seen:
            continue
        if uid:
            seen.add(uid)
        scan.studies.append(ds)
