"""What the series decisions read: one immutable summary per series.

:class:`SeriesFacts` is built either from the database (a series the node
received) or from a folder of DICOM files (``hyperct-agent explain --dir``).
Both builders read the same header fields the same way (the files go through
the node's own :func:`~agent.node.header.read_header`), so a decision on a
folder is the decision the agent would make on receiving it.

Only study/series descriptors and geometry are read; patient attributes are
never looked at.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.errors import AgentError
from agent.node.header import InstanceHeader, InvalidIdentifier, UnreadableHeader, read_header
from hyperct_core.volume import DUPLICATE_MM
from storage.ingest import same_orientation
from storage.models import Instance, Series, Study


class SeriesNotFound(AgentError):
    """No series (or study) with the given UID or id is in the database."""


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


# -- from the database -------------------------------------------------------


def facts_from_db(
    session: Session, series: int | str, storage_root: Path | None = None
) -> SeriesFacts:
    """Facts of one stored series, by primary key or Series Instance UID.

    Two queries: the series with its study, then its instances' positions.
    Where instances share a position, their stored files under
    ``storage_root`` tell whether one image was sent twice; without a root
    every shared position counts as two images. Raises
    :class:`SeriesNotFound` when there is no such series.
    """
    where = Series.id == series if isinstance(series, int) else Series.series_instance_uid == series
    found = _facts_where(session, where, storage_root)
    if not found:
        raise SeriesNotFound(f"no series {series!r} in the database")
    return found[0]


def study_facts_from_db(
    session: Session, study_instance_uid: str, storage_root: Path | None = None
) -> list[SeriesFacts]:
    """Facts of every stored series of a study (empty when the study is unknown)."""
    return _facts_where(session, Study.study_instance_uid == study_instance_uid, storage_root)


def _facts_where(session: Session, where: Any, storage_root: Path | None) -> list[SeriesFacts]:
    rows = session.execute(
        select(Series, Study.study_instance_uid, Study.study_description)
        .join(Study, Series.study_id == Study.id)
        .where(where)
        .order_by(Series.series_number, Series.series_instance_uid)
    ).all()
    if not rows:
        return []
    ids = [row.Series.id for row in rows]
    positions: dict[int, list[tuple[float, Path | None]]] = defaultdict(list)
    frames: dict[int, list[int]] = defaultdict(list)
    files: dict[int, list[Path | None]] = defaultdict(list)
    for series_id, position, n_frames, rel_path in session.execute(
        select(
            Instance.series_id,
            Instance.slice_position,
            Instance.number_of_frames,
            Instance.rel_path,
        ).where(Instance.series_id.in_(ids))
    ):
        path = None if storage_root is None else _stored_path(storage_root, rel_path)
        if position is not None:
            positions[series_id].append((float(position), path))
        frames[series_id].append(n_frames or 1)
        files[series_id].append(path)
    out = []
    for row in rows:
        s: Series = row.Series
        counts = frames[s.id]
        kept, repeated = settle_repeats(positions[s.id])
        checked, problem = frame_geometry(files[s.id], counts)
        out.append(
            SeriesFacts(
                series_instance_uid=s.series_instance_uid,
                study_instance_uid=row.study_instance_uid,
                modality=s.modality,
                sop_class_uid=s.sop_class_uid,
                series_number=s.series_number,
                series_description=s.series_description,
                body_part_examined=s.body_part_examined,
                protocol_name=s.protocol_name,
                study_description=row.study_description,
                requested_procedure=s.requested_procedure,
                image_type=s.image_type,
                contrast_agent=s.contrast_agent,
                instance_count=s.instance_count,
                number_of_frames=sum(counts) - repeated,
                multiframe_instances=sum(1 for n in counts if n > 1),
                slice_positions=kept,
                repeated_images=repeated,
                frames_checked=checked,
                frame_problem=problem,
                orientation_consistent=bool(s.orientation_consistent),
                image_orientation=_tuple(s.image_orientation),
                pixel_spacing=_tuple(s.pixel_spacing),
                slice_thickness=s.slice_thickness,
                first_received_at=s.first_received_at,
                last_received_at=s.last_received_at,
            )
        )
    return out


def _stored_path(root: Path, rel_path: str) -> Path | None:
    rel = PurePosixPath(rel_path)
    return None if rel.is_absolute() or ".." in rel.parts else root / rel


def settle_repeats(
    positioned: Sequence[tuple[float, Path | None]],
) -> tuple[tuple[float, ...], int]:
    """Sorted positions with each slice sent twice kept once, and how many were left out.

    Runs of positions closer than :data:`~hyperct_core.volume.DUPLICATE_MM`
    are one slice sent twice when :func:`~hyperct_core.volume.same_images`
    finds their files hold the same image, the test the volume reader applies
    when screening; otherwise (different images, or a file unknown or
    unreadable) all are kept, and completeness sees two instances at one
    position. Only files at shared positions are read.
    """
    items = sorted(positioned, key=lambda it: it[0])
    runs: list[list[tuple[float, Path | None]]] = []
    for item in items:
        if runs and item[0] - runs[-1][-1][0] < DUPLICATE_MM:
            runs[-1].append(item)
        else:
            runs.append([item])
    kept: list[float] = []
    repeated = 0
    for run in runs:
        if len(run) > 1 and _one_image([path for _, path in run]):
            kept.append(run[0][0])
            repeated += len(run) - 1
        else:
            kept.extend(position for position, _ in run)
    return tuple(kept), repeated


def frame_geometry(paths: Sequence[Path | None], frames: Sequence[int]) -> tuple[bool, str | None]:
    """Whether a multi-frame series' files were checked, and why screening would refuse them.

    Only series whose instances are all multi-frame are checked (the others
    are judged from the positions the node records), by
    :func:`~hyperct_core.volume.check_geometry`: the volume reader's own checks,
    with the pixel data left unread.
    """
    if not frames or any(n <= 1 for n in frames):
        return False, None
    known = [p for p in paths if p is not None]
    if len(known) < len(paths):
        return False, None
    from hyperct_core.errors import PreprocessError
    from hyperct_core.volume import check_geometry

    try:
        check_geometry(known)
    except PreprocessError as exc:
        return True, str(exc)
    except OSError as exc:
        return True, f"cannot read the files ({exc.strerror or type(exc).__name__})"
    return True, None


def _one_image(paths: Sequence[Path | None]) -> bool:
    from hyperct_core.errors import PreprocessError
    from hyperct_core.volume import same_images

    known = [p for p in paths if p is not None]
    if len(known) < len(paths):
        return False
    try:
        return same_images(known)
    except (PreprocessError, OSError):
        return False


def _tuple(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


# -- from files ----------------------------------------------------------------


@dataclass(frozen=True)
class FolderFacts:
    """The series found among some files, and each file left out with the reason."""

    series: list[SeriesFacts]
    # Reasons are generic (no file content), so files can be counted per reason.
    skipped: list[tuple[Path, str]]


# Why a file is left out; the node's receive rules where one applies.
NOT_DICOM = "not DICOM: no 'DICM' after a 128-byte preamble, and not a bare DICOM dataset"
NO_PIXELS = "no Pixel Data (not an image)"
TRUNCATED = "truncated: the file ends inside Pixel Data"
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
    :func:`~agent.node.header.read_header`, its SOP Class against
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
            problem = _pixel_data_problem(path)
            mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except OSError as exc:
            skipped.append((path, f"cannot be read ({exc.strerror or type(exc).__name__})"))
            continue
        except InvalidDicomError:
            skipped.append((path, NOT_DICOM))
            continue
        except (UnreadableHeader, InvalidIdentifier) as exc:
            reason = f"header: {exc}"
            if "missing" in str(exc) and _pixel_data_problem(path) == NO_PIXELS:
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


def read_part10_header(path: Path) -> InstanceHeader:
    """The node's header reading applied to a file (PS3.10 7.1).

    The dataset after the File Meta Information goes through
    :func:`~agent.node.header.read_header` exactly as a received C-STORE
    dataset does, in the file's transfer syntax. Some writers leave out the
    preamble and ``DICM``: a file that starts with the meta group, or with a
    bare dataset (read in Implicit, then Explicit VR Little Endian), is read
    too. Raises InvalidDicomError when the file is none of these.
    """
    with path.open("rb") as fp:
        head = fp.read(132)
        if head[128:132] == b"DICM":
            fp.seek(132)
        elif head[:2] == b"\x02\x00":  # the meta group without the preamble
            fp.seek(0)
        else:
            fp.seek(0)
            return _bare_dataset_header(fp.read())
        # The meta group is Explicit VR Little Endian (PS3.10 7.1) and ends
        # where group 0002 does; its Group Length is not trusted for that.
        try:
            meta = read_dataset(
                fp, is_implicit_VR=False, is_little_endian=True, stop_when=_past_meta
            )
            ts = meta.get("TransferSyntaxUID")
        except Exception:  # pydicom raises many types on malformed input
            raise UnreadableHeader("file meta information cannot be decoded") from None
        dataset = fp.read()
    if not ts:
        raise UnreadableHeader("no Transfer Syntax UID in the file meta information")
    return read_header(dataset, UID(str(ts)))


def _past_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 0x0002


def _bare_dataset_header(data: bytes) -> InstanceHeader:
    # A dataset starts with a group 0008 element (PS3.5 7.1); text never does.
    if len(data) < 8 or data[:2] != b"\x08\x00":
        raise InvalidDicomError("no DICM prefix")
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        try:
            return read_header(data, syntax)
        except (UnreadableHeader, InvalidIdentifier):
            continue
    raise InvalidDicomError("no DICM prefix and not a bare dataset")


def _pixel_data_problem(path: Path) -> str | None:
    """Why the file's Pixel Data is unusable, or None (PS3.5 7.1: value length and offset)."""
    try:
        with warnings.catch_warnings():
            # pydicom only warns when encapsulated Pixel Data lacks its delimiter.
            warnings.filterwarnings("error", message="End of file reached")
            ds = dcmread(path, defer_size=64, force=True)
        # The raw element: reading the value would load (or decode) the pixels.
        raw: Any = ds._dict  # noqa: SLF001
        elem = next((raw[t] for t in _PIXEL_TAGS if t in raw), None)
    except Exception:  # pydicom raises many types on a file cut short
        return TRUNCATED
    if elem is None:
        return NO_PIXELS
    length: int | None = getattr(elem, "length", None)
    tell: int | None = getattr(elem, "value_tell", None)
    if length is None or tell is None or length == 0xFFFFFFFF:  # encapsulated: read above
        return None
    return TRUNCATED if tell + length > path.stat().st_size else None


# Pixel Data, Float Pixel Data, Double Float Pixel Data (PS3.3 C.7.6.3).
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


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
