"""Series facts from a folder of DICOM files (``hyperct-agent explain --dir``).

Each file is judged as the node judges a received instance: its header by
:func:`~agent.dicom.part10.read_part10_header` (the node's own header
reading and UID rule), so a decision on a folder is the decision the agent
would make on receiving it. Only study/series descriptors and geometry are
read; patient attributes are never looked at.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from agent.dicom.errors import InvalidIdentifier, UnreadableHeader
from agent.dicom.header import InstanceHeader
from agent.dicom.part10 import NO_PIXELS, TRUNCATED, pixel_data_problem, read_part10_header
from agent.intake.volume_checks import frame_geometry, settle_repeats
from agent.series.facts import SeriesFacts
from storage.ingest import same_orientation


@dataclass(frozen=True)
class FolderFacts:
    """The series found among some files, and each file left out with the reason."""

    series: list[SeriesFacts]
    # Reasons are generic (no file content), so files can be counted per reason.
    skipped: list[tuple[Path, str]]


# Why a file is left out; the node's receive rules where one applies.
NOT_DICOM = "not DICOM: no 'DICM' after a 128-byte preamble, and not a bare DICOM dataset"
COPY = "same SOP Instance UID as another file (counted once, as the node records it)"


def facts_from_files(paths: Iterable[Path | str]) -> list[SeriesFacts]:
    """Facts of every series among ``paths`` (DICOM Part 10 files; others are ignored).

    Headers only (pixel data is never decoded). Descriptive strings are cut to
    the database's column widths so a folder and a stored series compare equal.
    Receive times are the files' modification times. See :func:`read_files`
    for the files that were skipped.
    """
    return read_files(paths).series


def read_files(
    paths: Iterable[Path | str], sop_classes: Collection[str] | None = None
) -> FolderFacts:
    """Like :func:`facts_from_files`, also naming each file skipped and why.

    A file is judged as the node judges a received instance: its header by
    :func:`~agent.dicom.part10.read_part10_header`, its SOP Class against
    ``sop_classes`` (the node's accepted classes; None accepts any), and it
    must carry Pixel Data that the file holds whole.
    """
    by_series: dict[str, list[tuple[InstanceHeader, datetime, Path]]] = defaultdict(list)
    skipped: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw)
        try:
            header = read_part10_header(path)
            problem = pixel_data_problem(path)
            mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except OSError as exc:
            skipped.append((path, f"cannot be read ({exc.strerror or type(exc).__name__})"))
            continue
        except InvalidDicomError:
            skipped.append((path, NOT_DICOM))
            continue
        except (UnreadableHeader, InvalidIdentifier) as exc:
            reason = f"header: {exc}"
            if "missing" in str(exc) and pixel_data_problem(path) == NO_PIXELS:
                reason += ", and no Pixel Data follows (a file cut short?)"
            skipped.append((path, reason))
            continue
        if sop_classes is not None and header.sop_class_uid not in sop_classes:
            name = UID(header.sop_class_uid).name
            skipped.append((path, f"SOP Class {header.sop_class_uid} ({name}) is not accepted"))
            continue
        if problem is not None:
            skipped.append((path, problem))
            continue
        if header.sop_instance_uid in seen:
            skipped.append((path, COPY))
            continue
        seen.add(header.sop_instance_uid)
        by_series[header.series_instance_uid].append((header, mtime, path))
    series = [_facts_from_headers(items) for items in by_series.values()]
    series.sort(key=lambda f: (f.study_instance_uid, f.series_number or 0, f.series_instance_uid))
    return FolderFacts(series, skipped)


def read_folder(folder: Path, sop_classes: Collection[str] | None = None) -> FolderFacts:
    """Every regular file under ``folder``, recursively, in name order."""
    return read_files(sorted(p for p in folder.rglob("*") if p.is_file()), sop_classes)


_FIT = {
    "modality": 16,
    "series_description": 64,
    "body_part_examined": 16,
    "protocol_name": 64,
    "study_description": 64,
    "image_type": 128,
    "contrast_agent": 64,
    "requested_procedure": 64,
}


def _fit(value: str | None, field: str) -> str | None:
    return None if value is None else value[: _FIT[field]]


def _facts_from_headers(items: list[tuple[InstanceHeader, datetime, Path]]) -> SeriesFacts:
    # The series row keeps the first recorded instance's descriptors; a folder
    # has no arrival order, so take the lowest Instance Number.
    items = sorted(items, key=lambda it: (it[0].instance_number is None, it[0].instance_number))
    first = items[0][0]
    headers = [h for h, _, _ in items]
    orientation = next((h.image_orientation for h in headers if h.image_orientation), None)
    consistent = all(
        h.image_orientation is None
        or orientation is None
        or same_orientation(orientation, h.image_orientation)
        for h in headers
    )
    frames = [h.number_of_frames or 1 for h in headers]
    times = [t for _, t, _ in items]
    kept, repeated = settle_repeats(
        [(h.slice_position, path) for h, _, path in items if h.slice_position is not None]
    )
    checked, problem = frame_geometry([path for _, _, path in items], frames)
    return SeriesFacts(
        series_instance_uid=first.series_instance_uid,
        study_instance_uid=first.study_instance_uid,
        modality=_fit(first.modality, "modality"),
        sop_class_uid=first.sop_class_uid,
        series_number=first.series_number,
        series_description=_fit(first.series_description, "series_description"),
        body_part_examined=_fit(first.body_part_examined, "body_part_examined"),
        protocol_name=_fit(first.protocol_name, "protocol_name"),
        study_description=_fit(first.study_description, "study_description"),
        requested_procedure=_fit(first.requested_procedure, "requested_procedure"),
        image_type=_fit(first.image_type, "image_type"),
        contrast_agent=_fit(first.contrast_agent, "contrast_agent"),
        instance_count=len(headers),
        number_of_frames=sum(frames) - repeated,
        multiframe_instances=sum(1 for n in frames if n > 1),
        slice_positions=kept,
        repeated_images=repeated,
        frames_checked=checked,
        frame_problem=problem,
        orientation_consistent=consistent,
        image_orientation=orientation,
        pixel_spacing=next((h.pixel_spacing for h in headers if h.pixel_spacing), None),
        slice_thickness=next(
            (h.slice_thickness for h in headers if h.slice_thickness is not None), None
        ),
        first_received_at=min(times),
        last_received_at=max(times),
    )


__all__ = [
    "COPY",
    "NOT_DICOM",
    "NO_PIXELS",
    "TRUNCATED",
    "FolderFacts",
    "facts_from_files",
    "read_files",
    "read_folder",
]
