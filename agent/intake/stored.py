"""Series facts from the database: a series the node received, as its rows record it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.errors import AgentError
from agent.intake.volume_checks import frame_geometry, settle_repeats
from agent.series.facts import SeriesFacts
from storage.models import Instance, Series, Study


class SeriesNotFound(AgentError):
    """No series (or study) with the given UID or id is in the database."""


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


def _tuple(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)
